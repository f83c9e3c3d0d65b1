"""The process walk's kept /proc files (apps.ProcTable), on the real /proc.

Each scrape reads every process's name and memory through descriptors kept open since
the scrape before (compiled, exporter/_procfs.c, where it was built; else from Python over
base.KeptFiles: both readers run every test), and its parent only when that can have
changed. These tests hold the walk to what a walk from scratch reads, through the changes
that make kept state wrong if it is kept carelessly: a process that runs another program,
a parent that ends (its children go to a reaper), processes that end (their files
closed), a pid given to a newer process, more processes than the cap on kept files; and
the two readers to the same figures, on /proc and on a folder of hostile files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from exporter.collectors import apps as apps_module
from exporter.collectors.apps import ProcTable
from exporter.collectors.base import KeptFiles
from tests.conftest import missing_realpart
from tests.parts import hostile

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the Linux /proc path")
READERS = ["compiled", "python"]


@pytest.fixture(params=READERS)
def reader(request) -> str:
    if request.param == "compiled" and apps_module.Walker is None:
        missing_realpart("the compiled /proc reader (exporter._procfs) is not built: pip install -e . with gcc "
                         "and the Python headers")
    return request.param


def make_table(reader: str, **kwargs) -> ProcTable:
    table = ProcTable(compiled=reader == "compiled", **kwargs)
    assert table.compiled == (reader == "compiled")
    return table


def scan_procfs(wants_cmdline: bool, reader: str = "python"):
    """One walk of /proc from scratch: a table of its own, nothing kept."""
    table = make_table(reader)
    try:
        return table.scan(wants_cmdline)
    finally:
        table.close()


def by_pid(processes):
    return {proc.pid: proc for proc in processes}


def wait_for(condition, timeout: float = 10.0):
    result = hostile.wait_for(condition, timeout, interval=0.02)
    assert result, "condition not met in time"
    return result


def test_the_compiled_reader_is_built_and_the_default():
    if apps_module.Walker is None:
        missing_realpart("the compiled /proc reader (exporter._procfs) is not built")
    table = ProcTable()
    try:
        assert table.compiled
    finally:
        table.close()


def test_the_python_reader_can_be_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv(apps_module.READER_ENV, "python")
    assert not ProcTable().compiled


def test_a_kept_walk_reads_what_a_walk_from_scratch_reads(reader):
    table = make_table(reader)
    try:
        table.scan(False)
        sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(20)]
        try:
            for process in sleepers:  # asleep: done loading, its memory no longer moves
                wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
            time.sleep(0.1)
            kept = by_pid(table.scan(False))  # the sleepers new, the rest through kept files
            fresh = by_pid(scan_procfs(False, "python"))
            other = by_pid(scan_procfs(False, "compiled")) if apps_module.Walker is not None else fresh
            for pid in [process.pid for process in sleepers] + [os.getpid(), 1]:
                assert (kept[pid].name, kept[pid].ppid) == (fresh[pid].name, fresh[pid].ppid) == (other[pid].name, other[pid].ppid)
                assert kept[pid].name == "sleep" or pid in (os.getpid(), 1)
            mine = psutil.Process().memory_info()
            ours = kept[os.getpid()]
            # This process's own figures move a little between the reads; the sleepers' do not.
            assert abs(ours.rss - mine.rss) < 8 * 2**20 and abs(ours.memory - (mine.rss - mine.shared)) < 8 * 2**20
            for process in sleepers:
                info = psutil.Process(process.pid).memory_info()
                assert kept[process.pid].rss == fresh[process.pid].rss == other[process.pid].rss == info.rss
                assert kept[process.pid].memory == other[process.pid].memory == info.rss - info.shared
            # Two files kept per process (name and memory).
            assert table.kept() >= 2 * len(kept)
            # Kernel threads: no memory of their own.
            if kept.get(2) is not None and kept[2].name == "kthreadd":
                kthreads = [proc for proc in kept.values() if proc.ppid == 2]
                assert kthreads and all(proc.memory == proc.rss == 0 for proc in kthreads)
        finally:
            for process in sleepers:
                process.kill()
                process.wait()
    finally:
        table.close()


def test_a_process_that_runs_another_program_is_read_under_its_new_name(reader):
    """exec() keeps the pid and the kept descriptors: the next read gives the new name."""
    table = make_table(reader)
    process = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.stdin.readline(); "
                                "os.execv('/bin/sleep', ['sleep', '60'])"], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: by_pid(table.scan(False)).get(process.pid))
        before = by_pid(table.scan(False))[process.pid]
        assert before.name.startswith("python")
        process.stdin.write(b"go\n")
        process.stdin.flush()
        after = wait_for(lambda: (found := by_pid(table.scan(False)).get(process.pid)) and found.name == "sleep" and found)
        assert after.ppid == os.getpid()
        wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
        time.sleep(0.1)
        assert by_pid(table.scan(False))[process.pid].rss == psutil.Process(process.pid).memory_info().rss
    finally:
        process.kill()
        process.wait()
        table.close()


RENAMES_ITSELF = r"""
#include <sys/prctl.h>
#include <unistd.h>
int main(void) {
    char name[16] = "before", renamed[16] = "renamed", go;
    prctl(PR_SET_NAME, name);       /* every page the rename needs, touched now */
    if (read(0, &go, 1) != 1) return 1;
    if (read(0, &go, 1) != 1) return 1;
    prctl(PR_SET_NAME, renamed);    /* a rename that touches no memory */
    return read(0, &go, 1) == 1;    /* waits on code already in memory (until stdin closes) */
}
"""


def test_a_process_renamed_in_place_is_read_under_its_new_name(tmp_path, reader):
    """A rename (prctl, or a write to /proc/PID/comm) touches no memory: the compiled reader,
    which reads the name of a process whose memory did not move only every NAME_RECHECK-th
    scan, has it within that many scans; the Python reader at the next."""
    source = tmp_path / "renames.c"
    source.write_text(RENAMES_ITSELF)
    program = tmp_path / "renames"
    try:
        subprocess.run(["cc", "-O1", "-o", str(program), str(source)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        missing_realpart(f"a C compiler (cc) to build the renaming process: {exc}")
    table = make_table(reader)
    process = subprocess.Popen([str(program)], stdin=subprocess.PIPE)
    try:
        process.stdin.write(b"1")
        process.stdin.flush()
        wait_for(lambda: psutil.Process(process.pid).name() == "before"
                 and psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
        for _ in range(3):
            assert by_pid(table.scan(False))[process.pid].name == "before"
        statm = open(f"/proc/{process.pid}/statm").read()
        process.stdin.write(b"2")
        process.stdin.flush()
        wait_for(lambda: psutil.Process(process.pid).name() == "renamed")
        assert open(f"/proc/{process.pid}/statm").read() == statm  # the case this test is for
        if table.compiled:
            from exporter._procfs import NAME_RECHECK as within
        else:
            within = 1
        names = [by_pid(table.scan(False))[process.pid].name for _ in range(within)]
        assert names[-1] == "renamed", names
        if table.compiled:  # idle processes: a quarter of the names read per scan, plus those that moved
            before = table._walker.names_read
            count = len(table.scan(False))
            assert table._walker.names_read - before < count / 2
    finally:
        process.kill()
        process.wait()
        table.close()


def test_children_of_a_parent_that_ends_are_read_under_their_new_parent(tmp_path, reader):
    """A child's parent is read once, and again when the parent ends: the child then belongs
    to its reaper (here this test's process, made a subreaper, so that it can wait for it)."""
    import ctypes

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
    table = make_table(reader)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    child_pid = None
    try:
        child_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
        assert by_pid(table.scan(False))[child_pid].ppid == parent.pid
        assert by_pid(table.scan(False))[child_pid].ppid == parent.pid  # kept, not read again
        parent.stdin.write(b"\n")
        parent.stdin.flush()
        # While the parent is a zombie (not yet waited for) the child is already ours.
        wait_for(lambda: psutil.Process(parent.pid).status() == psutil.STATUS_ZOMBIE)
        assert by_pid(table.scan(False))[child_pid].ppid == os.getpid()
        parent.wait()
        assert by_pid(table.scan(False))[child_pid].ppid == os.getpid()
    finally:
        parent.kill()
        parent.wait()
        if child_pid is not None:
            os.kill(child_pid, signal.SIGKILL)
            os.waitpid(child_pid, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        table.close()


def test_files_of_ended_processes_are_closed_and_none_leak(reader):
    table = make_table(reader)
    try:
        table.scan(False)
        base = table.kept()
        for _ in range(3):
            sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(100)]
            listed = by_pid(table.scan(False))
            assert all(process.pid in listed for process in sleepers)
            assert table.kept() >= base + 200 - 20
            for process in sleepers:
                process.kill()
                process.wait()
            listed = by_pid(table.scan(False))
            assert not any(process.pid in listed for process in sleepers)
            assert table.kept() <= base + 20  # the machine's other processes come and go a little
        open_now = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
        table.close()
        assert table.kept() == 0
        closed = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
        assert open_now - closed >= base - 20
    finally:
        table.close()


def test_beyond_the_cap_files_are_read_by_path_with_the_same_figures(monkeypatch, reader):
    monkeypatch.setattr(KeptFiles, "_allowed", classmethod(lambda cls: 10))
    table = make_table(reader)
    try:
        for _ in range(3):
            capped = by_pid(table.scan(False))
            assert table.kept() == 10
        fresh = by_pid(scan_procfs(False))
        common = set(capped) & set(fresh)
        assert len(common) > 20
        assert all((capped[pid].name, capped[pid].ppid) == (fresh[pid].name, fresh[pid].ppid) for pid in common)
    finally:
        table.close()


def test_the_cap_is_a_quarter_of_the_open_files_limit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert KeptFiles._allowed() == 256
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert KeptFiles._allowed() == KeptFiles.MAX_KEPT


def test_a_kept_file_of_an_ended_process_never_reads_a_newer_process(tmp_path):
    """A descriptor of /proc/PID/... is bound to its process: once it has ended, the read
    fails and the path is opened anew (`fresh`), whoever has the pid now."""
    files = KeptFiles()
    process = subprocess.Popen(["sleep", "60"])
    try:
        path = f"/proc/{process.pid}/comm"
        assert files.read(path) == (b"sleep\n", True)
        assert files.read(path) == (b"sleep\n", False)
        process.kill()
        process.wait()
        with pytest.raises(FileNotFoundError):
            files.read(path)
        assert len(files) == 0
    finally:
        files.close()


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


def test_a_pid_given_to_a_newer_process_is_read_as_that_process(tmp_path, reader):
    """The kept files of an ended process are not the files of a newer process with its pid:
    the walk reads the newcomer's name, memory and parent (its parent read anew)."""
    newcomer = tmp_path / "newcomer"
    newcomer.symlink_to("/bin/sleep")  # the kernel names a process after the file it runs
    table = make_table(reader)
    first = subprocess.Popen(["sleep", "60"])
    second = None
    try:
        wait_for(lambda: (found := by_pid(table.scan(False)).get(first.pid)) and found.name == "sleep")
        pid = first.pid
        first.kill()
        first.wait()
        second = start_under_pid(pid, [str(newcomer), "60"])
        if second is None:
            pytest.skip("cannot hand out a chosen pid here (needs root and a writable ns_last_pid)")
        wait_for(lambda: psutil.Process(pid).name() == "newcomer")
        found = by_pid(table.scan(False))[pid]
        assert found.name == "newcomer" and found.ppid == os.getpid()
        wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_SLEEPING)
        time.sleep(0.1)
        assert by_pid(table.scan(False))[pid].rss == psutil.Process(pid).memory_info().rss
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
        table.close()


def test_the_shared_walk_keeps_its_table_across_scrapes(monkeypatch, reader):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kwargs: opened.append(path) or real_open(path, *args, **kwargs))
    table = make_table(reader)

    def opens() -> int:
        return len(opened) + (table._walker.opened if table.compiled else 0)

    try:
        table.scan(False)
        first = opens()
        table.scan(False)
        # The second walk opens only what has started since (a few on a busy machine), not a file per process.
        assert first > 100 and opens() - first < first / 10
    finally:
        table.close()


# --- a folder of files in /proc's layout: the readers on hostile content --------------------

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


def test_both_readers_read_a_folder_of_hostile_files_alike(tmp_path, reader):
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
    table = make_table(reader, root=str(tmp_path))
    try:
        for _ in range(2):  # once opened, once through kept files
            found = {proc.pid: (proc.name, proc.ppid, proc.memory, proc.rss) for proc in table.scan(False)}
            assert found == {
                10: ("alpha", 1, 30 * page, 40 * page),
                11: ("caf\udce9 \udcff", 10, 4 * page, 5 * page),
                16: ("kthread", 2, 0, 0),
                17: ("zombie", 10, 0, 0),
                18: ("shared-more", 1, 0, 3 * page),
                19: ("", 1, 3 * page, 4 * page),
                20: ("a-name-cut-short-here", 1, 3 * page, 4 * page),
            }
        assert table.kept() > 0
    finally:
        table.close()
    assert table.kept() == 0


def test_the_compiled_reader_refuses_what_it_cannot_read(tmp_path):
    if apps_module.Walker is None:
        missing_realpart("the compiled /proc reader (exporter._procfs) is not built")
    walker = apps_module.Walker(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        walker.scan(100)
    with pytest.raises(TypeError):
        walker.scan("100")
    walker = apps_module.Walker(str(tmp_path))
    write_process(tmp_path, 5, b"huge\n", b"99999999999999999999999 1 1 0 0 0 0\n")
    write_process(tmp_path, 6, b"long" * 40 + b"\n", b"3 2 1 0 0 0 0\n")
    write_process(tmp_path, 7, b"fine\n", b"3 2 1 0 0 0 0\n")
    found = {pid: name for pid, _, name, *_ in walker.scan(100)}
    assert found[7] == "fine" and 5 not in found  # a number beyond an unsigned long is no reading
    assert found[6] == ("long" * 16)  # a name is read up to 64 bytes
    assert walker.scan(-1) and len(walker) == 4  # no more kept; those kept stay
    walker.close()
    assert len(walker) == 0
    assert [pid for pid, *_ in walker.scan(0)] == [6, 7] and len(walker) == 0


def test_the_exporter_raises_its_open_files_limit_as_go_programs_do():
    script = ("import resource; from exporter.selfmetrics import raise_open_files_limit; "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); raise_open_files_limit(); "
              "print(*resource.getrlimit(resource.RLIMIT_NOFILE))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.split() == ["4096", "4096"]


def test_the_exporters_own_footprint_is_on_its_page_as_the_system_reads_it():
    """process_* on /metrics, as client_python names them: resident memory, CPU, open and
    maximum files (the limit raised to the hard one), threads; each against the kernel's
    figures for the exporter's pid."""
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
        assert fds > 100  # the walk's kept files: name and memory of each process
        assert page["process_max_fds"] == process.rlimit(psutil.RLIMIT_NOFILE)[0] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
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
