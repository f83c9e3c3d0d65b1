"""Where the memory goes: every process of the machine in exactly one application.

Each scrape walks the whole process table once and gives each process one app:

1. the exporter itself, and the processes of the bundle's own containers (label
   `dev.aitools.app=monitoring`, see compose.monitoring.yml), are `monitoring`;
   kernel threads are `system`;
2. everything under a container shim (`containerd-shim*`) belongs to the app of the shim
   (`docker`): a container's processes are the container's, whatever their names (a Node
   server or an Ollama in a container is counted once, in `docker`);
3. else the first app of `apps:` (in order) that claims the process by name or command line;
4. else the app of its nearest claimed ancestor, when that app passes on to children
   (`children: true`, all but `system`): Cursor's helpers, Ollama's runners, a dev
   server's workers, as Activity Monitor groups them;
5. else its own program name: the ten largest such programs get a label of their own,
   the rest go to `other`.

A process's memory: on Linux its resident set less its shared pages (/proc/PID/statm
resident - shared: anonymous memory, netdata apps.plugin's "real memory without shared"),
read from /proc directly or, with the psutil source, from psutil's memory_info() (rss -
shared). On macOS psutil's phys_footprint (memory_extras(), psutil 8) where it is
provided, else its rss; never memory_full_info(), which can hang on other users'
processes. `system` also holds the kernel's own memory: unreclaimable slab, page tables
and kernel stacks on Linux; wired pages (plus the compressor's pages when the processes'
figures are RSS, which leaves compressed pages out) on macOS.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil

from exporter.collectors.base import (CollectorError, Deadline, KeptFiles, SourceCollector, gauge, read_small_file,
                                      run_bounded)
from exporter.collectors.process import program_name
from exporter.config import DEFAULT_APPS, DEFAULT_TIMEOUT_SECONDS, App, DockerSection, ProcessGroup
from exporter.patterns import CMDLINE_LIMIT

PROC = "/proc"
MEMINFO = "/proc/meminfo"
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread
COMM_LENGTH = 15  # the kernel keeps at most this many bytes of a name (TASK_COMM_LEN - 1)
TOP_PROGRAMS = 10
OTHER, SYSTEM, MONITORING = "other", "system", "monitoring"
BUNDLE_LABEL = "dev.aitools.app=monitoring"
SHIM_PREFIX = "containerd-shim"
# The processes of a VM that runs the containers (Docker Desktop on macOS, and on Linux):
# the containers, the bundle's among them, are inside its memory, not processes of their own.
DOCKER_VM_PREFIXES = ("com.apple.Virtualization.VirtualMachine", "com.docker.krun", "com.docker.hyperkit",
                      "qemu-system-")
# procfs (Linux's /proc straight) or psutil (macOS; forced on Linux so the suite runs it).
SOURCE_ENV = "AITOOLS_APPS_SOURCE"
SOURCES = ("procfs", "psutil")
# Linux: the kernel's own memory, held by no process and not reclaimable: slab, page tables,
# kernel stacks, vmalloc and per-CPU areas.
KERNEL_MEMINFO_FIELDS = ("SUnreclaim", "PageTables", "SecPageTables", "KernelStack", "VmallocUsed", "Percpu")

# Which apps each profile's total counts, each byte once (README "Which apps each total
# counts"). development: everything the user runs to develop, IDE and Xcode included;
# production: the services only. Never counted: `system` (the OS's), `monitoring` (this
# tool's own), `other` and the unclaimed programs. Apps of the user's own configuration
# count in both.
BUDGET_APPS: dict[str, tuple[str, ...]] = {
    "development_total": ("docker", "node", "xcode", "ide", "ollama", "lmstudio", "python"),
    "production_total": ("docker", "node", "ollama", "lmstudio", "python"),
}
NEVER_COUNTED = (SYSTEM, MONITORING, OTHER)


def budget_apps(apps: Iterable[App]) -> dict[str, list[str]]:
    """budget -> the configured apps its total counts."""
    configured = [app.name for app in apps]
    defaults = {app.name for app in DEFAULT_APPS}
    own = [name for name in configured if name not in defaults and name not in NEVER_COUNTED]
    return {budget: [name for name in configured if name in counted] + own for budget, counted in BUDGET_APPS.items()}


class Matcher:
    """The first app (in configuration order) that claims a process by its name or command line."""

    def __init__(self, apps: tuple[App, ...]):
        self.apps = apps
        self.exact: dict[str, int] = {}
        self.prefixes: list[tuple[int, tuple[str, ...]]] = []
        self.cmdlines = [(index, app.cmdline) for index, app in enumerate(apps) if app.cmdline is not None]
        for index, app in enumerate(apps):
            prefixes = tuple(name[:-1] for name in app.names if name.endswith("*"))
            if prefixes:
                self.prefixes.append((index, prefixes))
            for name in app.names:
                if not name.endswith("*"):
                    self.exact.setdefault(name, index)

        self._by_name: dict[str, int | None] = {}  # the claims by name, a process table's few hundred names

    def claim(self, name: str, cmdline: str | None) -> int | None:
        try:
            best = self._by_name[name]
        except KeyError:
            best = self._claim_by_name(name)
            if len(self._by_name) >= 4096:  # a thousand differently named processes must not grow it
                self._by_name.clear()
            self._by_name[name] = best
        for index, pattern in self.cmdlines:
            if best is not None and index >= best:
                break
            if cmdline and pattern.search(cmdline):
                return index
        return best

    def _claim_by_name(self, name: str) -> int | None:
        best = self.exact.get(name)
        for index, prefixes in self.prefixes:
            if best is not None and index >= best:
                break
            if name.startswith(prefixes):
                return index
        return best


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    name: str
    memory: int  # what the apps count: resident less shared (Linux), the footprint or RSS (macOS)
    cmdline: str | None = None  # read only where a claim needs it
    rss: int = 0  # the whole resident set (the process groups count it)


# --- Linux: /proc straight ------------------------------------------------------------

def _cmdline_text(data: bytes) -> str:
    text = data.decode("utf-8", "surrogateescape")
    return text.rstrip("\0").replace("\0", " ")


def _parent(folder: str) -> tuple[int, bool]:
    """(parent pid, whether it is a kernel thread) from /proc/PID/stat."""
    stat = read_small_file(folder + "stat", 1024)
    fields = stat[stat.rindex(b")") + 2:].split(b" ", 7)  # state ppid pgrp session tty_nr tpgid flags ...
    return int(fields[1]), bool(int(fields[6]) & PF_KTHREAD)


try:  # the walk's reads compiled (setup.py; Linux, where a C compiler was there at install)
    from exporter._procfs import Walker
except ImportError:  # pragma: no cover - depends on the install
    Walker = None

# AITOOLS_PROCFS_READER=python: the walk reads from Python even where the compiled reads
# are installed (the tests run both; a way out should the compiled part misbehave).
READER_ENV = "AITOOLS_PROCFS_READER"


class ProcTable:
    """Linux: every process of /proc at every scrape, through files kept open between
    scrapes (one pread each instead of an open, a read and a close).

    Each scrape reads each process's `comm` (its name) and `statm` (its memory). `stat`
    (its parent, whether it is a kernel thread), which costs the kernel more to write than
    both, is read when the process is new to the table, and again when its parent has
    ended or its parent's pid now names a newer process: a process's parent changes only
    when the parent ends (the child goes to a reaper). The reads are compiled
    (exporter/_procfs.c, a Walker) where that was built at install, else made from Python
    (KeptFiles); the compiled reader also reads an idle process's name only every fourth
    scrape (_procfs.c says why). The command line is read where a claim needs it or the
    kernel cut the name short (then the program's file name is the name, as psutil gives it)."""

    def __init__(self, compiled: bool | None = None, root: str = PROC) -> None:
        if compiled is None:
            compiled = Walker is not None and os.environ.get(READER_ENV, "compiled") != "python"
        if compiled and Walker is None:
            raise RuntimeError("the compiled /proc reader (exporter._procfs) is not installed")
        self.root = root
        self._walker = Walker(root) if compiled else None
        # Command lines; names and memory too without the compiled reader. One cap for both.
        self.files = KeptFiles(others=self._walker.__len__ if self._walker is not None else None)
        # The Python reader's pid -> (parent pid, kernel thread), updated in place: a scrape
        # of a steady process table allocates nothing for it.
        self._parents: dict[int, tuple[int, bool]] = {}

    @property
    def compiled(self) -> bool:
        return self._walker is not None

    def kept(self) -> int:
        """How many descriptors the table keeps open."""
        return len(self.files) + (len(self._walker) if self._walker is not None else 0)

    def close(self) -> None:
        self.files.close()
        if self._walker is not None:
            self._walker.close()

    def _readings(self) -> list[Sequence]:
        """(pid, parent pid, name, resident pages, resident pages less shared ones) of every
        process; no memory for a kernel thread."""
        if self._walker is not None:
            # The files the walker keeps and the command lines KeptFiles keeps share one cap.
            return self._walker.scan(self.files.room())
        return self._read_python()

    def _read_python(self) -> list[list]:
        read = self.files.read
        known = self._parents
        with os.scandir(self.root) as entries:
            pids = [entry.name for entry in entries if entry.name.isdigit()]
        found: list[list] = []
        new: set[int] = set()      # processes this table had not seen (or not under this pid)
        ended: set[int] = set()    # zombies: ended, their children already given to a reaper
        for pid in pids:
            folder = f"{self.root}/{pid}/"
            number = int(pid)
            try:
                comm, fresh = read(folder + "comm", 64)
                statm, fresh_statm = read(folder + "statm", 256)
                if fresh_statm and not fresh:  # it ended between the two reads: this is its successor
                    comm, fresh = read(folder + "comm", 64)[0], True
                size, resident, shared = (int(field) for field in statm.split(b" ", 3)[:3])
                about = None if fresh else known.get(number)
                if about is None:
                    about = known[number] = _parent(folder)
                    new.add(number)
            except (OSError, ValueError, IndexError):
                continue  # ended since it was listed
            ppid, kernel_thread = about
            if kernel_thread:
                resident = shared = 0  # a kernel thread: no memory of its own
            elif size == 0:
                ended.add(number)
            name = (comm[:-1] if comm.endswith(b"\n") else comm).decode("utf-8", "surrogateescape")
            found.append([number, ppid, name, resident, max(0, resident - shared)])
        if len(known) != len(found):  # some have ended: forget them
            known = self._parents = {item[0]: known[item[0]] for item in found}
        # Processes whose parent has ended since it was read went to a reaper: read their parent again.
        for item in found:
            pid, ppid = item[0], item[1]
            if ppid and pid not in new and (ppid in ended or ppid in new or ppid not in known):
                try:
                    about = _parent(f"{self.root}/{pid}/")
                except (OSError, ValueError, IndexError):
                    continue
                item[1] = about[0]
                known[pid] = about
        return found

    def scan(self, wants_cmdline: bool) -> list[Proc]:
        page = os.sysconf("SC_PAGE_SIZE")
        found = [Proc(pid, ppid, name, anonymous * page, None, resident * page)
                 for pid, ppid, name, resident, anonymous in self._readings()]
        for proc in found if wants_cmdline else [proc for proc in found if len(proc.name) >= COMM_LENGTH
                                                 or proc.name.startswith(SHIM_PREFIX)]:
            try:
                raw = self.files.read(f"{self.root}/{proc.pid}/cmdline", 4096, CMDLINE_LIMIT)[0]
            except OSError:
                continue
            if raw:
                proc.cmdline = _cmdline_text(raw)
                if len(proc.name) >= COMM_LENGTH:
                    # Like psutil: the program's file name when it starts as the cut name does.
                    full = program_name(raw)
                    if full.startswith(proc.name):
                        proc.name = full
        self.files.sweep()
        return found


def wants_cmdlines(apps: tuple[App, ...], groups: tuple[ProcessGroup, ...] = ()) -> bool:
    """Whether a scan must read every command line: an app or a process group matches them."""
    return any(app.cmdline is not None for app in apps) or any(group.cmdline is not None for group in groups)


class SharedScan:
    """One walk of /proc per scrape for the collectors that read every process (apps and
    process): the first to ask for a scrape's deadline walks, the other takes the same list.
    A call with a deadline of its own (snapshot, tests) walks afresh."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadline: Deadline | None = None
        self._processes: list[Proc] = []
        self._table = ProcTable()

    def procfs(self, deadline: Deadline, cmdlines: bool) -> list[Proc]:
        with self._lock:
            if self._deadline is not deadline:
                self._processes = self._table.scan(cmdlines)
                self._deadline = deadline
            return self._processes


SHARED_SCAN = SharedScan()


def kernel_memory_procfs() -> int:
    with open(MEMINFO, "rb") as handle:
        text = handle.read().decode("ascii", "replace")
    total = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in KERNEL_MEMINFO_FIELDS:
            total += int(rest.split()[0]) * 1024
    return total


# --- psutil (macOS; on Linux when forced) ---------------------------------------------

def process_memory(process, footprint: bool = False) -> tuple[int, bool]:
    """(bytes, whether it is the footprint) of one psutil process. footprint (macOS): the
    phys_footprint where psutil gives it: memory_extras() (psutil 8; its pre-release name
    was memory_info_ex()). Else rss less shared pages where psutil tells them (Linux),
    else rss. Never memory_full_info()."""
    if footprint:
        for method in ("memory_extras", "memory_info_ex"):
            extras = getattr(process, method, None)
            value = getattr(extras(), "phys_footprint", None) if extras is not None else None
            if value is not None:
                return int(value), True
    info = process.memory_info()
    shared = getattr(info, "shared", None)
    return (max(0, info.rss - shared) if shared is not None else info.rss), False


def scan_psutil(wants_cmdline: bool, footprint: bool = False) -> tuple[list[Proc], bool]:
    attrs = ["name", "ppid", "cmdline"] if wants_cmdline else ["name", "ppid"]
    found, footprints = [], False
    for process in psutil.process_iter(attrs, ad_value=None):
        info = process.info
        name, ppid = info.get("name") or "", info.get("ppid") or 0
        try:
            memory, is_footprint = process_memory(process, footprint)
            footprints |= is_footprint
        except (psutil.AccessDenied, psutil.ZombieProcess):
            memory = 0  # counted, but its memory is not ours to read
        except psutil.NoSuchProcess:
            continue
        arguments = info.get("cmdline") if wants_cmdline else None
        if arguments is None and name.startswith(SHIM_PREFIX):
            try:
                arguments = process.cmdline()
            except psutil.Error:
                arguments = None
        found.append(Proc(process.pid, ppid, name, memory, " ".join(arguments) if arguments else None))
    return found, footprints


def kernel_memory_vm_stat(deadline: Deadline, footprints: bool) -> int:
    """macOS: wired pages, and the compressor's pages unless the footprints hold them."""
    from exporter.collectors.system import parse_vm_stat

    path = shutil.which("vm_stat")
    if path is None:
        raise CollectorError("vm_stat not found on PATH (the kernel's memory of the system app)")
    try:
        done = run_bounded([path], deadline)
        if done.returncode != 0:
            raise CollectorError(f"vm_stat failed: exit status {done.returncode}")
        page_size, pages = parse_vm_stat(done.stdout.decode("utf-8", "replace"))
    except TimeoutError:
        raise CollectorError(f"vm_stat did not finish within {deadline.seconds:g}s") from None
    except (OSError, ValueError) as exc:
        raise CollectorError(f"vm_stat failed: {exc}") from None
    return (pages.get("wired", 0) + (0 if footprints else pages.get("compressed", 0))) * page_size


# --- grouping ------------------------------------------------------------------------

class Assignment(NamedTuple):
    app: str | None   # None: nobody claims it (its program name decides)
    passes_on: bool   # its children without a claim of their own take it
    sealed: bool = False  # inside a container: every descendant takes it


@functools.lru_cache(maxsize=4)
def matcher_for(apps: tuple[App, ...]) -> Matcher:
    """One Matcher per configuration, kept across scrapes with what it has learnt of names."""
    return Matcher(apps)


def assign(processes: list[Proc], apps: tuple[App, ...], own_pid: int,
           bundle_ids: frozenset[str]) -> dict[int, Assignment]:
    matcher = matcher_for(apps)
    by_pid = {proc.pid: proc for proc in processes}
    kernel_parent = 2 if by_pid.get(2) is not None and by_pid[2].name == "kthreadd" else None
    # One Assignment per outcome, shared by the processes that have it.
    claimed = [Assignment(app.name, app.children) for app in apps]
    in_container = [Assignment(app.name, True, sealed=True) for app in apps]
    own_process, kernel, bundle, unclaimed = (Assignment(MONITORING, True), Assignment(SYSTEM, False),
                                              Assignment(MONITORING, True, sealed=True), Assignment(None, False))
    result: dict[int, Assignment] = {}

    def own(proc: Proc, parent: Assignment | None) -> Assignment:
        if parent is not None and parent.sealed:
            return parent
        if proc.pid == own_pid:
            return own_process
        if kernel_parent is not None and (proc.pid == kernel_parent or proc.ppid == kernel_parent):
            return kernel
        index = matcher.claim(proc.name, proc.cmdline)
        if proc.name.startswith(SHIM_PREFIX):
            text = proc.cmdline or ""
            if any(container_id in text for container_id in bundle_ids):
                return bundle
            if index is not None:
                return in_container[index]
        if index is not None:
            return claimed[index]
        if parent is not None and parent.passes_on and parent.app is not None:
            return parent  # (app, passes on, not sealed): what its children take
        return unclaimed

    for proc in processes:
        if proc.pid in result:
            continue
        above = result.get(proc.ppid)
        if above is not None:  # most often: the parent came first (a lower pid)
            result[proc.pid] = own(proc, above)
            continue
        chain: list[Proc] = []
        current: Proc | None = proc
        while current is not None:
            if current.pid in result:
                above = result[current.pid]
                break
            chain.append(current)
            if current.ppid == current.pid or len(chain) > len(by_pid):
                break
            current = by_pid.get(current.ppid)
        for member in reversed(chain):
            above = own(member, above)
            result[member.pid] = above
    return result


def breakdown(processes: list[Proc], assignments: dict[int, Assignment], apps: tuple[App, ...],
              kernel_bytes: int) -> tuple[dict[str, int], dict[str, int]]:
    """(memory, processes) by label: every configured app (0 when empty), the ten largest
    unclaimed programs, and `other`."""
    memory = {app.name: 0 for app in apps}
    count = {app.name: 0 for app in apps}
    programs_memory: dict[str, int] = {}
    programs_count: dict[str, int] = {}
    for proc in processes:
        app = assignments[proc.pid].app
        if app is not None:
            memory[app] += proc.memory
            count[app] += 1
        else:
            name = proc.name.encode("utf-8", "replace").decode("utf-8") or "unnamed"
            programs_memory[name] = programs_memory.get(name, 0) + proc.memory
            programs_count[name] = programs_count.get(name, 0) + 1
    memory[SYSTEM] = memory.get(SYSTEM, 0) + kernel_bytes
    count.setdefault(SYSTEM, 0)
    memory[OTHER], count[OTHER] = 0, 0
    candidates = sorted((name for name in programs_memory if name not in memory),
                        key=lambda name: (-programs_memory[name], name))
    top = set(candidates[:TOP_PROGRAMS])
    for name in programs_memory:
        label = name if name in top else OTHER
        memory[label] = memory.get(label, 0) + programs_memory[name]
        count[label] = count.get(label, 0) + programs_count[name]
    return memory, count


class AppsCollector(SourceCollector):
    name = "apps"

    def __init__(self, apps: tuple[App, ...] = DEFAULT_APPS, docker: DockerSection = DockerSection(),
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, source: str | None = None, platform: str | None = None,
                 cmdlines: bool | None = None):
        """`docker`: where the bundle's containers are asked for; `cmdlines`: whether the shared
        walk of /proc reads every command line (the Exporter passes whether any app or process
        group matches them); by default whether an app does."""
        super().__init__(timeout)
        self.apps, self.docker = apps, docker
        self.cmdlines = wants_cmdlines(apps) if cmdlines is None else cmdlines
        self.platform = platform or sys.platform
        chosen = source or os.environ.get(SOURCE_ENV) or (
            "procfs" if self.platform.startswith("linux") and os.path.isdir(f"{PROC}/self") else "psutil")
        if chosen not in SOURCES:
            raise ValueError(f"{SOURCE_ENV} must be one of {', '.join(SOURCES)}, not {chosen!r}")
        self.source = chosen
        self._engine = None
        self._shims: frozenset[str] | None = None  # the shims' command lines of the last answer
        self._bundle: frozenset[str] = frozenset()
        self._assigned: tuple[tuple, dict[int, Assignment]] | None = None  # the last inputs and their apps

    def read(self, deadline: Deadline | None = None) -> tuple[dict[str, int], dict[str, int], list[Proc], dict[int, Assignment]]:
        deadline = self.deadline(deadline)
        apps = self.apps
        wants_cmdline = any(app.cmdline is not None for app in apps)
        try:
            if self.source == "procfs":
                processes, footprints = SHARED_SCAN.procfs(deadline, self.cmdlines), False
            else:
                processes, footprints = scan_psutil(wants_cmdline, footprint=self.platform == "darwin")
            if self.platform == "darwin":
                kernel = kernel_memory_vm_stat(deadline, footprints)
            else:
                kernel = kernel_memory_procfs()
        except (psutil.Error, OSError, ValueError) as exc:
            raise CollectorError(f"cannot read the processes' memory: {exc}") from None
        # The bundle's containers, asked of the engine only when the containers' shims have
        # changed: a running container's labels cannot change.
        shims = frozenset(proc.cmdline or "" for proc in processes if proc.name.startswith(SHIM_PREFIX))
        if shims != self._shims:
            bundle = self._bundle_container_ids() if shims else frozenset()
            self._shims, self._bundle = (shims, bundle) if bundle is not None else (None, frozenset())
        # The same processes (pid, parent, name, command line) as the scrape before, under the
        # same configuration and bundle: the same apps (most scrapes, on a steady machine).
        inputs = ([(proc.pid, proc.ppid, proc.name, proc.cmdline) for proc in processes], apps, self._bundle)
        if self._assigned is not None and self._assigned[0] == inputs:
            assignments = self._assigned[1]
        else:
            assignments = assign(processes, apps, os.getpid(), self._bundle)
            self._assigned = (inputs, assignments)
        memory, count = breakdown(processes, assignments, apps, kernel)
        return memory, count, processes, assignments

    def collect(self, deadline: Deadline | None = None):
        memory, count, processes, assignments = self.read(deadline)
        memory_family = gauge("aitools_app_memory_bytes",
                              "Memory of the application's processes, each process in exactly one app.", ["app"])
        count_family = gauge("aitools_app_processes", "How many processes the application has now.", ["app"])
        for app in memory:
            memory_family.add_metric([app], float(memory[app]))
            count_family.add_metric([app], float(count[app]))
        info = gauge("aitools_app_budget_info", "1 for each app that the total budget counts.", ["app", "budget"])
        for budget, names in budget_apps(self.apps).items():
            for name in names:
                info.add_metric([name, budget], 1.0)
        in_vm = not any(proc.name.startswith(SHIM_PREFIX) for proc in processes) and any(
            proc.name.startswith(DOCKER_VM_PREFIXES) and assignments[proc.pid].app == "docker" for proc in processes)
        vm = gauge("aitools_app_docker_vm",
                   "1 when the containers run inside a VM counted in the docker app (Docker Desktop): the "
                   "rules then move the bundle's containers from docker to monitoring.")
        vm.add_metric([], 1.0 if in_vm else 0.0)
        yield memory_family
        yield count_family
        yield info
        yield vm

    def _bundle_container_ids(self) -> frozenset[str] | None:
        """The ids of the running containers of the monitoring bundle, from the engine; none
        when Docker is disabled, None when the engine does not answer (their processes then
        count as docker this scrape, and it is asked again at the next)."""
        if not self.docker.enabled:
            return frozenset()
        from exporter.collectors.docker import resolve_docker_host
        from exporter.collectors.docker_api import UnixSocketEngine

        try:
            if self._engine is None:
                host = self.docker.host or resolve_docker_host(os.environ, Path.home(), sys.platform)
                timeout = min(self.timeout, 1.0)
                if host.startswith("unix://"):
                    self._engine = UnixSocketEngine(host[len("unix://"):], timeout=timeout)
                else:  # tcp:// (the bundle's socket proxy on Linux), ssh://: the Docker SDK
                    import docker

                    self._engine = docker.APIClient(base_url=host, version="auto", timeout=timeout)
            listed = self._engine.containers(filters={"label": [BUNDLE_LABEL], "status": ["running"]})
            return frozenset(item["Id"] for item in listed if isinstance(item, dict) and isinstance(item.get("Id"), str))
        except Exception:  # noqa: BLE001 - any engine trouble: the bundle is not told apart this scrape
            if self._engine is not None:
                try:
                    self._engine.close()
                except Exception:  # noqa: BLE001
                    pass
                self._engine = None
            return None
