"""The process walk's kept /proc files (apps.ProcTable over base.KeptFiles), on the real /proc.

Each scrape reads every process's name and memory through descriptors kept open since
the scrape before, and its parent only when that can have changed. These tests hold the
walk to what a walk from scratch reads, through the changes that make kept state wrong
if it is kept carelessly: a process that runs another program, a parent that ends (its
children go to a reaper), processes that end (their files closed), more processes than
the cap on kept files.
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

from exporter.collectors.apps import ProcTable
from exporter.collectors.base import KeptFiles
from tests.parts import hostile

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the Linux /proc path")


def scan_procfs(wants_cmdline: bool):
    """One walk of /proc from scratch: a table of its own, nothing kept."""
    table = ProcTable()
    try:
        return table.scan(wants_cmdline)
    finally:
        table.files.close()


def by_pid(processes):
    return {proc.pid: proc for proc in processes}


def wait_for(condition, timeout: float = 10.0):
    result = hostile.wait_for(condition, timeout, interval=0.02)
    assert result, "condition not met in time"
    return result


def test_a_kept_walk_reads_what_a_walk_from_scratch_reads():
    table = ProcTable()
    try:
        table.scan(False)
        sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(20)]
        try:
            for process in sleepers:  # asleep: done loading, its memory no longer moves
                wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_SLEEPING)
            time.sleep(0.1)
            kept = by_pid(table.scan(False))  # the sleepers new, the rest through kept files
            fresh = by_pid(scan_procfs(False))
            for pid in [process.pid for process in sleepers] + [os.getpid(), 1]:
                assert (kept[pid].name, kept[pid].ppid) == (fresh[pid].name, fresh[pid].ppid)
                assert kept[pid].name == "sleep" or pid in (os.getpid(), 1)
            mine = psutil.Process().memory_info()
            ours = kept[os.getpid()]
            # This process's own figures move a little between the reads; the sleepers' do not.
            assert abs(ours.rss - mine.rss) < 8 * 2**20 and abs(ours.memory - (mine.rss - mine.shared)) < 8 * 2**20
            for process in sleepers:
                info = psutil.Process(process.pid).memory_info()
                assert kept[process.pid].rss == fresh[process.pid].rss == info.rss
                assert kept[process.pid].memory == info.rss - info.shared
            # Two files kept per process that has memory (name and memory), one per kernel thread.
            assert len(table.files) >= 2 * len(sleepers)
        finally:
            for process in sleepers:
                process.kill()
                process.wait()
    finally:
        table.files.close()


def test_a_process_that_runs_another_program_is_read_under_its_new_name(tmp_path):
    """exec() keeps the pid and the kept descriptors: the next read gives the new name."""
    table = ProcTable()
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
        table.files.close()


def test_children_of_a_parent_that_ends_are_read_under_their_new_parent(tmp_path):
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
    table = ProcTable()
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
        table.files.close()


def test_files_of_ended_processes_are_closed_and_none_leak():
    table = ProcTable()
    try:
        table.scan(False)
        base = len(table.files)
        for _ in range(3):
            sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(100)]
            listed = by_pid(table.scan(False))
            assert all(process.pid in listed for process in sleepers)
            assert len(table.files) >= base + 200 - 20
            for process in sleepers:
                process.kill()
                process.wait()
            listed = by_pid(table.scan(False))
            assert not any(process.pid in listed for process in sleepers)
            assert len(table.files) <= base + 20  # the machine's other processes come and go a little
        open_now = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
        table.files.close()
        assert len(table.files) == 0
        closed = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
        assert open_now - closed >= base - 20
    finally:
        table.files.close()


def test_beyond_the_cap_files_are_read_by_path_with_the_same_figures(monkeypatch):
    monkeypatch.setattr(KeptFiles, "_allowed", classmethod(lambda cls: 10))
    table = ProcTable()
    try:
        for _ in range(3):
            capped = by_pid(table.scan(False))
            assert len(table.files) == 10
        fresh = by_pid(scan_procfs(False))
        common = set(capped) & set(fresh)
        assert len(common) > 20
        assert all((capped[pid].name, capped[pid].ppid) == (fresh[pid].name, fresh[pid].ppid) for pid in common)
    finally:
        table.files.close()


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


def test_the_shared_walk_keeps_its_table_across_scrapes(monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kwargs: opened.append(path) or real_open(path, *args, **kwargs))
    table = ProcTable()
    try:
        table.scan(False)
        first = len(opened)
        opened.clear()
        table.scan(False)
        # The second walk opens only what has started since (a few on a busy machine), not a file per process.
        assert first > 100 and len(opened) < first / 10
    finally:
        table.files.close()


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
    """What serve starts itself with: glibc's arenas (malloc_info's <heap> elements) with
    eight threads allocating at once are two, and no thread keeps a cache of freed blocks;
    without, more arenas and thread caches."""
    from exporter.selfmetrics import MALLOC_TUNABLES

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


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
def test_serve_restarts_itself_once_with_the_malloc_tunables_and_keeps_the_users():
    from exporter.selfmetrics import MALLOC_TUNABLES
    from tests.parts.exporter_process import ExporterProcess

    def environ(pid: int) -> dict[str, str]:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            pairs = [item.decode().split("=", 1) for item in handle.read().split(b"\0") if b"=" in item]
        return dict(pairs)

    plain = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    for preset, expected in ((None, MALLOC_TUNABLES), ("glibc.malloc.arena_max=4", "glibc.malloc.arena_max=4")):
        env = dict(plain, **({"GLIBC_TUNABLES": preset} if preset else {}))
        exporter = ExporterProcess("docker:\n  enabled: false\n", env=env)
        try:
            exporter.wait_ready()
            assert exporter.scrape().status_code == 200
            # The same process (exec keeps the pid), started once more with the tunables set
            # (glibc cuts the variable at the first ':' as it parses it, in place).
            assert expected.startswith(environ(exporter.process.pid).get("GLIBC_TUNABLES"))
            assert psutil.Process(exporter.process.pid).cmdline()[1:4] == ["-m", "exporter", "--web.listen-address"]
        finally:
            exporter.stop()
