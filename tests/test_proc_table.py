"""The process table (collectors/proctable.py): its Linux reader on the real /proc, its
macOS reader with a stand-in for libproc, and one walk per scrape.

The Linux reader reads every process's memory through a descriptor kept open since the
walk before, its name when that memory changed or every few walks, and its parent only
when that can have changed. These
tests hold it to what a walk from scratch reads, through the changes that make kept state
wrong if it is kept carelessly: a process that runs another program or is renamed, a
parent that ends (its children go to a reaper), processes that end (their files closed), a
pid given to a newer process, more processes than the cap on kept files; and on a folder
of hostile files. The macOS reader's footprint comes from libproc's proc_pid_rusage (only
on a Mac): here its structure is held to XNU's header and its call and fallbacks run
through a stand-in function with the same C signature.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from exporter.collectors import proctable
from exporter.collectors.base import CollectorError, Deadline
from exporter.collectors.proctable import (FOOTPRINT, RESIDENT, MacReader, ProcessTable, ProcfsReader,
                                           RusageFunction, RusageInfoV2, footprint_reader)
from tests.parts import hostile

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the Linux /proc path")
MiB = 2**20


def scan_procfs(wants_cmdline: bool):
    """One walk of /proc from scratch: a reader of its own, nothing kept."""
    reader = ProcfsReader()
    try:
        return reader.read(wants_cmdline)
    finally:
        reader.close()


def by_pid(processes):
    return {proc.pid: proc for proc in processes}


def wait_for(condition, timeout: float = 10.0):
    result = hostile.wait_for(condition, timeout, interval=0.02)
    assert result, "condition not met in time"
    return result


# --- Linux: /proc -------------------------------------------------------------------------------

@linux_only
def test_a_kept_walk_reads_what_a_walk_from_scratch_reads_and_psutil_reads():
    reader = ProcfsReader()
    try:
        reader.read(False)
        sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(20)]
        try:
            for process in sleepers:  # asleep: done loading, its memory no longer moves
                wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
            time.sleep(0.1)
            kept = by_pid(reader.read(False))  # the sleepers new, the rest through kept files
            fresh = by_pid(scan_procfs(False))
            for pid in [process.pid for process in sleepers] + [os.getpid(), 1]:
                assert (kept[pid].name, kept[pid].ppid) == (fresh[pid].name, fresh[pid].ppid)
                assert kept[pid].name == "sleep" or pid in (os.getpid(), 1)
            mine = psutil.Process().memory_info()
            ours = kept[os.getpid()]
            # This process's own figures move a little between the reads; the sleepers' do not.
            assert abs(ours.resident - mine.rss) < 8 * MiB and abs(ours.memory - (mine.rss - mine.shared)) < 8 * MiB
            for process in sleepers:
                info = psutil.Process(process.pid).memory_info()
                assert kept[process.pid].resident == fresh[process.pid].resident == info.rss
                assert kept[process.pid].memory == fresh[process.pid].memory == info.rss - info.shared
                assert kept[process.pid].figure == proctable.ANONYMOUS
            # One file kept per process (its memory), far below the cap.
            assert reader.kept() == len(kept)
            # Kernel threads: no memory of their own.
            if kept.get(2) is not None and kept[2].name == "kthreadd":
                kthreads = [proc for proc in kept.values() if proc.ppid == 2]
                assert kthreads and all(proc.memory == proc.resident == 0 for proc in kthreads)
        finally:
            for process in sleepers:
                process.kill()
                process.wait()
    finally:
        reader.close()


@linux_only
def test_a_process_that_runs_another_program_is_read_under_its_new_name():
    """exec() keeps the pid and the kept descriptors: the next read gives the new name."""
    reader = ProcfsReader()
    process = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); "
                                "os.execv('/bin/sleep', ['sleep', '60'])"], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: by_pid(reader.read(False)).get(process.pid))
        before = by_pid(reader.read(False))[process.pid]
        assert before.name.startswith("python")
        process.stdin.write(b"go\n")
        process.stdin.flush()
        after = wait_for(lambda: (found := by_pid(reader.read(False)).get(process.pid)) and found.name == "sleep" and found)
        assert after.ppid == os.getpid()
        wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
        time.sleep(0.1)
        assert by_pid(reader.read(False))[process.pid].resident == psutil.Process(process.pid).memory_info().rss
    finally:
        process.kill()
        process.wait()
        reader.close()


@linux_only
def test_a_process_renamed_in_place_is_read_under_its_new_name_at_the_next_walk():
    """A rename (prctl(PR_SET_NAME), as a thread pool or a runtime does) keeps the pid and
    may touch no memory: the name is read again every REREAD_EVERY walks, so one of the
    next that many has it."""
    reader = ProcfsReader()
    script = ("import ctypes, sys; libc = ctypes.CDLL(None); libc.prctl(15, b'before'); sys.stdin.readline(); "
              "libc.prctl(15, b'renamed'); print('done', flush=True); sys.stdin.readline()")
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_for(lambda: psutil.Process(process.pid).name() == "before")
        for _ in range(3):
            assert by_pid(reader.read(False))[process.pid].name == "before"
        process.stdin.write(b"go\n")
        process.stdin.flush()
        assert process.stdout.readline() == b"done\n"
        names = [by_pid(reader.read(False))[process.pid].name for _ in range(ProcfsReader.REREAD_EVERY)]
        assert "renamed" in names and names[-1] == "renamed"
    finally:
        process.kill()
        process.wait()
        reader.close()


@linux_only
def test_children_of_a_parent_that_ends_are_read_under_their_new_parent(tmp_path):
    """A child's parent is read once, and again when the parent ends: the child then belongs
    to its reaper (here this test's process, made a subreaper, so that it can wait for it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    pid_file = tmp_path / "child"
    script = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        sys.stdin.readline()
    """)
    reader = ProcfsReader()
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    child_pid = None
    try:
        child_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
        assert by_pid(reader.read(False))[child_pid].ppid == parent.pid
        assert by_pid(reader.read(False))[child_pid].ppid == parent.pid  # kept, not read again
        parent.stdin.write(b"\n")
        parent.stdin.flush()
        # While the parent is a zombie (not yet waited for) the child is already ours.
        wait_for(lambda: psutil.Process(parent.pid).status() == psutil.STATUS_ZOMBIE)
        assert by_pid(reader.read(False))[child_pid].ppid == os.getpid()
        parent.wait()
        assert by_pid(reader.read(False))[child_pid].ppid == os.getpid()
    finally:
        parent.kill()
        parent.wait()
        if child_pid is not None:
            os.kill(child_pid, signal.SIGKILL)
            os.waitpid(child_pid, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        reader.close()


def proc_files_open():
    """The /proc/PID/... files this process has open, by what they name."""
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor, closed since
    return {name for name in names if name.startswith("/proc/") and name.split("/")[2].isdigit()}


@linux_only
def test_files_of_ended_processes_are_closed_and_none_leak():
    reader = ProcfsReader()
    try:
        reader.read(False)
        base = reader.kept()
        for _ in range(3):
            sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(100)]
            files = {f"/proc/{process.pid}/statm" for process in sleepers}
            listed = by_pid(reader.read(False))
            assert all(process.pid in listed for process in sleepers)
            assert files <= proc_files_open()
            for process in sleepers:
                process.kill()
                process.wait()
            listed = by_pid(reader.read(False))
            assert not any(process.pid in listed for process in sleepers)
            assert not files & proc_files_open()  # closed at the walk after they ended
        open_now = len(os.listdir("/proc/self/fd"))
        reader.close()
        assert reader.kept() == 0
        closed = len(os.listdir("/proc/self/fd"))
        assert open_now - closed >= base - 20
    finally:
        reader.close()


@linux_only
def test_beyond_the_cap_files_are_read_by_path_with_the_same_figures(monkeypatch):
    monkeypatch.setattr(proctable, "kept_files_allowed", lambda: 10)
    reader = ProcfsReader()
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(30)]
    try:
        for process in sleepers:
            wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
        for _ in range(3):
            capped = by_pid(reader.read(False))
            assert reader.kept() == 10
        fresh = by_pid(scan_procfs(False))
        for pid in [process.pid for process in sleepers] + [1]:
            assert (capped[pid].name, capped[pid].ppid, capped[pid].resident, capped[pid].memory) == (
                fresh[pid].name, fresh[pid].ppid, fresh[pid].resident, fresh[pid].memory)
    finally:
        for process in sleepers:
            process.kill()
            process.wait()
        reader.close()


def test_the_cap_is_a_quarter_of_the_open_files_limit_and_kept_files_never_change_it(monkeypatch):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reader = ProcfsReader()
    reader.read(False)
    reader.close()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert proctable.kept_files_allowed() == 256
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert proctable.kept_files_allowed() == 65536


@linux_only
def test_a_kept_file_of_an_ended_process_never_reads_a_newer_process():
    """What the reader relies on: a descriptor of /proc/PID/... is bound to its process;
    once it has ended, a read fails (ESRCH) whoever has the pid now, and the reader reads
    the pid afresh as a new process."""
    reader = ProcfsReader()
    process = subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: psutil.Process(process.pid).name() == "sleep")
        fd = os.open(f"/proc/{process.pid}/statm", os.O_RDONLY)
        try:
            assert os.pread(fd, 256, 0)
            assert by_pid(reader.read(False))[process.pid].name == "sleep"
            process.kill()
            process.wait()
            with pytest.raises(ProcessLookupError):
                os.pread(fd, 256, 0)
        finally:
            os.close(fd)
        listed = by_pid(reader.read(False))
        assert process.pid not in listed and reader.kept() == len(listed)
    finally:
        process.kill()
        process.wait()
        reader.close()


def start_under_pid(pid: int, argv: list[str], attempts: int = 50) -> subprocess.Popen | None:
    """A new process with the given pid, by setting the kernel's last handed-out pid just
    below it (root only; another process that forks in between takes it: try again)."""
    for _ in range(attempts):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
                handle.write(str(pid - 1))
        except OSError:
            return None
        process = subprocess.Popen(argv)
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    return None


@linux_only
def test_a_pid_given_to_a_newer_process_is_read_as_that_process(tmp_path):
    """The kept files of an ended process are not the files of a newer process with its pid:
    the walk reads the newcomer's name, memory and parent (its parent read anew)."""
    newcomer = tmp_path / "newcomer"
    newcomer.symlink_to("/bin/sleep")  # the kernel names a process after the file it runs
    reader = ProcfsReader()
    first = subprocess.Popen(["sleep", "60"])
    second = None
    try:
        wait_for(lambda: (found := by_pid(reader.read(False)).get(first.pid)) and found.name == "sleep")
        pid = first.pid
        first.kill()
        first.wait()
        second = start_under_pid(pid, [str(newcomer), "60"])
        if second is None:
            pytest.skip("cannot hand out a chosen pid here (needs root and a writable ns_last_pid)")
        wait_for(lambda: psutil.Process(pid).name() == "newcomer")
        found = by_pid(reader.read(False))[pid]
        assert found.name == "newcomer" and found.ppid == os.getpid()
        wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_SLEEPING)
        time.sleep(0.1)
        assert by_pid(reader.read(False))[pid].resident == psutil.Process(pid).memory_info().rss
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
        reader.close()


@linux_only
def test_a_second_walk_opens_only_what_started_since(monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kwargs: opened.append(path) or real_open(path, *args, **kwargs))
    reader = ProcfsReader()
    try:
        reader.read(False)
        first = len(opened)
        reader.read(False)
        # The second walk opens only what has started since (a few on a busy machine), not a file per
        # process; names and command lines are opened when read again, an eighth of them at a walk
        # (REREAD_EVERY), and a name whose memory moved.
        again = [path for path in opened[first:] if not path.endswith(("/cmdline", "/comm"))]
        assert first > 100 and len(again) < first / 10
        names = [path for path in opened[first:] if path.endswith("/comm")]
        assert len(names) < first / 3
    finally:
        reader.close()


# --- a folder of files in /proc's layout: the reader on hostile content --------------------------

def write_process(root, pid, comm: bytes | None, statm: bytes | None, ppid: int = 1, flags: int = 0x400000,
                  cmdline: bytes | None = None) -> None:
    folder = root / str(pid)
    folder.mkdir()
    if comm is not None:
        (folder / "comm").write_bytes(comm)
    if statm is not None:
        (folder / "statm").write_bytes(statm)
    name = comm.rstrip(b"\n") if comm else b"x"
    (folder / "stat").write_bytes(b"%d (%s) S %d %d %d 0 -1 %d 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n"
                                  % (pid, name, ppid, pid, pid, flags))
    (folder / "cmdline").write_bytes(cmdline if cmdline is not None else b"/usr/bin/" + name + b"\0--flag\0")


def test_the_reader_reads_a_folder_of_hostile_files(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")
    write_process(tmp_path, 10, b"alpha\n", b"100 40 10 1 0 50 0\n")
    write_process(tmp_path, 11, b"caf\xe9 \xff\n", b"7 5 1 0 0 0 0\n", ppid=10)  # not UTF-8
    write_process(tmp_path, 12, b"garbage\n", b"abc def\n")
    write_process(tmp_path, 13, b"nostatm\n", None)
    write_process(tmp_path, 14, None, b"1 1 1 1 1 1 1\n")
    write_process(tmp_path, 15, b"short\n", b"1 2")  # two fields
    write_process(tmp_path, 16, b"kthread\n", b"0 0 0 0 0 0 0\n", ppid=2, flags=0x00200000)
    write_process(tmp_path, 17, b"zombie\n", b"0 0 0 0 0 0 0\n", ppid=10)
    write_process(tmp_path, 18, b"shared-more\n", b"9 3 5 0 0 0 0\n")  # shared above resident: 0, not negative
    write_process(tmp_path, 19, b"", b"5 4 1 0 0 0 0\n")  # no name at all
    write_process(tmp_path, 20, b"a-name-cut-shor\n", b"5 4 1 0 0 0 0\n",  # 15 bytes: the cmdline's program
                  cmdline=b"/opt/a-name-cut-short-here\0--flag\0")
    for name in ("self", "14x", "-1", "0x1f", "sys"):
        (tmp_path / name).mkdir()
    (tmp_path / "21").write_text("a file, not a folder")
    reader = ProcfsReader(root=str(tmp_path))
    try:
        for _ in range(2):  # once opened, once through kept files
            found = {proc.pid: (proc.name, proc.ppid, proc.memory, proc.resident) for proc in reader.read(False)}
            assert found == {
                10: ("alpha", 1, 30 * page, 40 * page),
                11: ("caf\udce9 \udcff", 10, 4 * page, 5 * page),
                16: ("kthread", 2, 0, 0),
                17: ("zombie", 10, 0, 0),
                18: ("shared-more", 1, 0, 3 * page),
                19: ("", 1, 3 * page, 4 * page),
                20: ("a-name-cut-short-here", 1, 3 * page, 4 * page),
            }
        assert reader.kept() > 0
    finally:
        reader.close()
    assert reader.kept() == 0


# --- one walk per scrape, one switch ---------------------------------------------------------------

class CountingReader:
    platform = "linux"

    def __init__(self, processes=()):
        self.walks, self.processes = [], list(processes)

    def read(self, wants_cmdline):
        self.walks.append(wants_cmdline)
        return list(self.processes)

    def close(self):
        pass


def test_the_table_walks_once_per_scrape_and_afresh_for_another():
    reader = CountingReader([proctable.Proc(1, 0, "init", 4096, None, 8192)])
    table = ProcessTable(reader)
    scrape = Deadline(3.0)
    first = table.scan(scrape, False)
    assert table.scan(scrape, False) is first and reader.walks == [False]
    # A scrape that needs command lines after a walk without them: walked again, with them.
    assert table.scan(scrape, True).cmdlines and reader.walks == [False, True]
    assert table.scan(scrape, False).cmdlines and reader.walks == [False, True]
    table.scan(Deadline(3.0), False)
    assert reader.walks == [False, True, False]
    assert first.figures() == {proctable.ANONYMOUS: 1}


def test_a_reader_that_fails_is_a_collector_error_with_its_reason():
    class Failing(CountingReader):
        def read(self, wants_cmdline):
            raise PermissionError(13, "Permission denied", "/proc")

    with pytest.raises(CollectorError, match="cannot list processes: .*Permission denied"):
        ProcessTable(Failing()).scan(Deadline(1.0), False)


def test_one_switch_chooses_the_reader(monkeypatch):
    monkeypatch.delenv(proctable.SOURCE_ENV, raising=False)
    assert proctable.chosen_source(platform="darwin") == "macos"
    if os.path.isdir("/proc/self"):
        assert proctable.chosen_source(platform="linux") == "procfs"
    assert proctable.chosen_source({proctable.SOURCE_ENV: "macos"}, "linux") == "macos"
    assert proctable.chosen_source({proctable.SOURCE_ENV: "procfs"}, "linux") == "procfs"
    with pytest.raises(ValueError, match="AITOOLS_PROCESS_SOURCE must be one of procfs, macos, not 'ps'"):
        proctable.chosen_source({proctable.SOURCE_ENV: "ps"}, "linux")
    monkeypatch.setenv(proctable.SOURCE_ENV, "ps")  # a collector fails with the reason, it does not crash
    with pytest.raises(CollectorError, match="AITOOLS_PROCESS_SOURCE must be one of procfs, macos"):
        proctable.process_table()
    monkeypatch.setenv(proctable.SOURCE_ENV, "macos")
    table = proctable.process_table()
    assert isinstance(table.reader, MacReader) and proctable.process_table() is table
    if os.path.isdir("/proc/self"):
        monkeypatch.setenv(proctable.SOURCE_ENV, "procfs")
        assert isinstance(proctable.process_table().reader, ProcfsReader)


# --- macOS: libproc's footprint ---------------------------------------------------------------------

# struct rusage_info_v2, as XNU declares it in bsd/sys/resource.h
# (github.com/apple-oss-distributions/xnu, commit 1031c584a5e37aff177559b9f69dbd3c8c3fd30a):
# uint8_t ri_uuid[16]; then these uint64_t fields, in this order.
XNU_RUSAGE_INFO_V2 = """ri_user_time ri_system_time ri_pkg_idle_wkups ri_interrupt_wkups ri_pageins ri_wired_size
    ri_resident_size ri_phys_footprint ri_proc_start_abstime ri_proc_exit_abstime ri_child_user_time
    ri_child_system_time ri_child_pkg_idle_wkups ri_child_interrupt_wkups ri_child_pageins
    ri_child_elapsed_abstime ri_diskio_bytesread ri_diskio_byteswritten""".split()


def test_the_rusage_structure_has_xnus_layout():
    assert RusageInfoV2.ri_uuid.offset == 0 and RusageInfoV2.ri_uuid.size == 16
    for index, name in enumerate(XNU_RUSAGE_INFO_V2):
        field = getattr(RusageInfoV2, name)
        assert (field.offset, field.size) == (16 + 8 * index, 8), name
    assert [name for name, _ in RusageInfoV2._fields_] == ["ri_uuid", *XNU_RUSAGE_INFO_V2]
    assert RusageInfoV2.ri_resident_size.offset == 64 and RusageInfoV2.ri_phys_footprint.offset == 72
    assert ctypes.sizeof(RusageInfoV2) == 160
    assert proctable.RUSAGE_INFO_V2 == 2


def stand_in_libproc(figures: dict[int, tuple[int, int]], denied: set[int], others: int = errno.ESRCH):
    """A C function with proc_pid_rusage's signature (a ctypes callback): fills the
    structure it is handed for the pids of `figures`, fails with EPERM for `denied` and
    with `others` (ESRCH: ended) for any other pid; records the flavors asked."""
    flavors = []

    def proc_pid_rusage(pid, flavor, buffer):
        flavors.append(flavor)
        if pid in figures:
            buffer.contents.ri_resident_size, buffer.contents.ri_phys_footprint = figures[pid]
            buffer.contents.ri_wired_size = 1  # fields beside them stay apart
            return 0
        # The callback's errno (ctypes swaps it with the C library's around a call made with
        # use_errno, as the real function's is): what a failing proc_pid_rusage leaves.
        ctypes.set_errno(errno.EPERM if pid in denied else others)
        return -1

    return RusageFunction(proc_pid_rusage), flavors


def test_the_footprint_call_passes_the_structure_and_reads_errno():
    function, flavors = stand_in_libproc({41: (100 * MiB, 130 * MiB)}, denied={42})
    read = footprint_reader(function)
    assert read(41) == (100 * MiB, 130 * MiB)
    assert read(42) is None  # EPERM: another user's process
    with pytest.raises(ProcessLookupError):
        read(43)  # ESRCH: ended
    assert flavors == [2, 2, 2]


def test_the_mac_reader_loads_no_libproc_off_a_mac(caplog):
    if sys.platform == "darwin":
        pytest.skip("libproc is there on a Mac")
    assert proctable.load_proc_pid_rusage() is None
    with caplog.at_level(logging.WARNING, logger="exporter.collectors.proctable"):
        assert MacReader().footprint is None
    assert "proc_pid_rusage is not available here: process memory is the resident set" in caplog.text


def test_the_mac_reader_takes_the_footprint_and_the_resident_set_only_where_it_cannot(caplog):
    """The user's own processes: their footprint (and resident set) from libproc; another
    user's (EPERM): psutil's resident set; no psutil memory call where the footprint was read."""
    mine, other = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: all(psutil.Process(p.pid).status() == psutil.STATUS_SLEEPING for p in (mine, other)))
        function, _ = stand_in_libproc({mine.pid: (3 * MiB, 70 * MiB)}, denied={other.pid})
        reader = MacReader(footprint_reader(function))
        with caplog.at_level(logging.INFO, logger="exporter.collectors.proctable"):
            found = by_pid(reader.read(False))
            by_pid(reader.read(False))
        assert (found[mine.pid].memory, found[mine.pid].resident, found[mine.pid].figure) == (70 * MiB, 3 * MiB, FOOTPRINT)
        rss = psutil.Process(other.pid).memory_info().rss
        assert (found[other.pid].memory, found[other.pid].resident, found[other.pid].figure) == (rss, rss, RESIDENT)
        assert found[mine.pid].name == "sleep" and found[mine.pid].ppid == os.getpid()
        others = len(found) - 1
        # Said once, at the first walk: which figure for how many processes.
        assert caplog.text.count("process memory:") == 1
        assert (f"physical footprint (proc_pid_rusage) for 1 processes, resident set for {others}" in caplog.text)
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()


def test_the_mac_reader_never_asks_psutil_for_more_than_memory_info(monkeypatch):
    """memory_full_info() and USS can hang on other users' processes on macOS: never called."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("memory_full_info() called")

    monkeypatch.setattr(psutil.Process, "memory_full_info", refuse)
    found = MacReader(footprint=lambda pid: None).read(True)
    assert found and all(proc.figure == RESIDENT for proc in found)
    assert by_pid(found)[os.getpid()].cmdline == " ".join(psutil.Process().cmdline())  # read where asked


def test_the_exporters_own_footprint_is_on_its_page_as_the_system_reads_it():
    """process_* on /metrics, as client_python names them: resident memory, CPU, open and
    maximum files (the exporter's own limit, which serve raises within the platform's), threads; each against the
    kernel's figures for the exporter's pid."""
    import resource

    from prometheus_client.parser import text_string_to_metric_families

    from tests.parts.exporter_process import ExporterProcess

    exporter = ExporterProcess("docker:\n  enabled: false\n").wait_ready()
    try:
        for _ in range(3):
            exporter.scrape()
        page = {sample.name: sample.value for family in text_string_to_metric_families(exporter.scrape().text)
                for sample in family.samples if not sample.labels}
        process = psutil.Process(exporter.process.pid)
        fds = len(os.listdir(f"/proc/{process.pid}/fd"))
        assert abs(page["process_resident_memory_bytes"] - process.memory_info().rss) < 4 * 2**20
        assert 0 < page["process_cpu_seconds_total"] <= sum(process.cpu_times()[:2]) + 0.05
        assert abs(page["process_open_fds"] - fds) <= 8
        # The walk's kept files: the memory of each process, up to a quarter of the limit.
        assert fds > min(len(psutil.pids()), page["process_max_fds"] // 4) / 2
        assert page["process_max_fds"] == process.rlimit(psutil.RLIMIT_NOFILE)[0]
        assert page["process_max_fds"] >= resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert page["process_threads"] == process.num_threads()
        assert abs(page["process_start_time_seconds"] - process.create_time()) < 1
        assert page["process_virtual_memory_bytes"] == pytest.approx(process.memory_info().vms, rel=0.2)
    finally:
        exporter.stop()


MALLOC_ARENAS = """
import ctypes, os, sys, threading
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    for _ in range(2000):
        data = [bytes(4000) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(None)
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(1000) for _ in range(7)]
free_before = libc.mallinfo2().fordblks
for block in blocks:
    libc.free(ctypes.c_void_p(block))
# With a thread cache the seven freed blocks stay in it, not free in the arena.
print("freed-into-arena", libc.mallinfo2().fordblks - free_before, flush=True)
libc.fdopen.restype = ctypes.c_void_p
stream = libc.fdopen(os.dup(1), b"w")
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fflush(ctypes.c_void_p(stream))
"""


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
@pytest.mark.parametrize("tuned", [True, False])
def test_the_malloc_tunables_keep_two_arenas_and_no_thread_caches(tuned):
    """What the service unit and the Dockerfile start serve with: glibc's arenas (malloc_info's <heap> elements) with
    eight threads allocating at once are two, and no thread keeps a cache of freed blocks;
    without, more arenas and thread caches."""
    from exporter.service import MALLOC_TUNABLES

    env = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX")}
    if tuned:
        env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    done = subprocess.run([sys.executable, "-c", MALLOC_ARENAS], capture_output=True, text=True, check=True, env=env)
    heaps = done.stdout.count("<heap nr=")
    freed = int(done.stdout.split("freed-into-arena ", 1)[1].split()[0])
    if tuned:
        assert 1 <= heaps <= 2 and freed >= 7 * 1000, done.stdout[:300]
    else:
        assert heaps > 2 and freed == 0, done.stdout[:300]


@linux_only
def test_a_command_line_is_read_when_new_after_an_exec_and_every_few_walks(monkeypatch):
    """Reading /proc/PID/cmdline makes the kernel walk the process's memory: a known process's
    command line is read again only when its name changes (an exec) and once every
    REREAD_EVERY walks, yet an exec's new command line shows at the next walk."""
    reader = ProcfsReader()
    process = subprocess.Popen(["sh", "-c", "read line; exec sleep 61"], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: psutil.Process(process.pid).name() == "sh")  # past Popen's own exec
        first = by_pid(reader.read(True))[process.pid]
        assert first.name == "sh" and "read line" in first.cmdline
        reads = []
        real = proctable.read_small_file
        monkeypatch.setattr(proctable, "read_small_file",
                            lambda path, *args: reads.append(path) or real(path, *args))
        for _ in range(ProcfsReader.REREAD_EVERY):
            assert by_pid(reader.read(True))[process.pid].cmdline == first.cmdline
        assert reads.count(f"/proc/{process.pid}/cmdline") == 1  # once in REREAD_EVERY walks
        process.stdin.write(b"go\n")
        process.stdin.flush()
        deadline = time.monotonic() + 10
        while psutil.Process(process.pid).name() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.05)
        after = by_pid(reader.read(True))[process.pid]
        if after.cmdline is None:  # caught in the middle of its exec: none yet, read at the next walk
            after = by_pid(reader.read(True))[process.pid]
        assert after.name == "sleep" and after.cmdline == "sleep 61"
    finally:
        process.kill()
        process.wait()
