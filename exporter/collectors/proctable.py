"""The process table: every process of the machine, walked once per scrape.

The apps collector (every process in one application) and the process collector (process
groups such as swift-frontend) both read it; the first of them to ask for a scrape walks,
the other takes the same list (the scrape's Deadline object names the scrape). A call with
a deadline of its own (snapshot, tests) walks afresh.

Its one input is a reader, which lists the processes as plain records (`Proc`: pid,
parent, name, command line, memory figures):

- `ProcfsReader` (Linux): /proc straight, from Python. Each process's `statm` (its
  memory) at every walk, through a descriptor kept open between walks; its `comm` (name)
  when it is new, when its memory moved and every few walks; its `stat` (parent, kernel
  thread or not) when it is new and again when its parent has ended. Its memory is its
  resident set less its shared pages.
- `MacReader` (macOS): psutil lists the processes (pid, parent, name, command line); each
  process's memory is its physical footprint from libproc (`proc_pid_rusage`, the figure
  Activity Monitor's Memory column shows), its resident set only where the footprint
  cannot be read (another user's process).

One switch: the reader follows the platform (/proc where there is one, else the macOS
reader); `AITOOLS_PROCESS_SOURCE=procfs|macos` overrides it (the suite runs the macOS
reader on Linux with it; libproc itself is there only on a Mac).

This module imports nothing of the collectors above it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import psutil

from exporter.collectors.base import CollectorError, Deadline, read_from_start, read_small_file
from exporter.collectors.machine import Replay, current
from exporter.config import App, ProcessGroup
from exporter.patterns import CMDLINE_LIMIT

log = logging.getLogger(__name__)

SOURCE_ENV = "AITOOLS_PROCESS_SOURCE"
SOURCES = ("procfs", "macos")
PROC = "/proc"
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread
COMM_LENGTH = 15  # the kernel keeps at most this many bytes of a name (TASK_COMM_LEN - 1)
SHIM_PREFIX = "containerd-shim"  # a container shim: its command line names the container

# What a process's `memory` is.
ANONYMOUS = "resident_less_shared"  # Linux: statm resident - shared
FOOTPRINT = "footprint"              # macOS: proc_pid_rusage ri_phys_footprint
RESIDENT = "resident"                # macOS where the footprint cannot be read


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    name: str
    memory: int          # what the apps count (bytes): see `figure`
    cmdline: str | None = None  # read where a claim needs it (and for shims and cut names)
    resident: int = 0    # the whole resident set (bytes)
    figure: str = ANONYMOUS  # what `memory` is: ANONYMOUS, FOOTPRINT or RESIDENT


@dataclass(slots=True)
class Scan:
    processes: list[Proc]
    platform: str  # "linux" or "darwin": whose rules apply (the kernel's memory, the groups' figure)
    cmdlines: bool  # every process's command line was read

    def figures(self) -> dict[str, int]:
        """How many processes' memory is which figure."""
        counts: dict[str, int] = {}
        for proc in self.processes:
            counts[proc.figure] = counts.get(proc.figure, 0) + 1
        return counts


def wants_cmdlines(apps: tuple[App, ...], groups: tuple[ProcessGroup, ...] = ()) -> bool:
    """Whether a walk must read every command line: an app or a process group matches them."""
    return any(app.cmdline is not None for app in apps) or any(group.cmdline is not None for group in groups)


def cmdline_text(data: bytes) -> str:
    text = data.decode("utf-8", "surrogateescape")
    return text.rstrip("\0").replace("\0", " ")


def program_name(data: bytes) -> str:
    """The file name of the program in /proc/PID/cmdline: psutil's basename of cmdline()[0]."""
    text = data.decode("utf-8", "surrogateescape")
    if "\0" in text:  # arguments ended by NULs (the last may be cut off at CMDLINE_LIMIT)
        arguments = text.removesuffix("\0").split("\0")
        first = arguments[0] if len(arguments) > 1 else arguments[0].split(" ", 1)[0]
    else:
        first = text.split(" ", 1)[0]
    return os.path.basename(first)


# --- Linux: /proc ---------------------------------------------------------------------------

def kept_files_allowed() -> int:
    """How many /proc files the reader may keep open: a quarter of the soft limit of open
    files (`serve` raises it at start within what the platform allows)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 0
    return 65536 if soft == resource.RLIM_INFINITY else max(0, min(65536, soft // 4))


def _parent(folder: str) -> tuple[int, bool]:
    """(parent pid, whether it is a kernel thread) from /proc/PID/stat."""
    stat = read_small_file(folder + "stat", 1024)
    fields = stat[stat.rindex(b")") + 2:].split(b" ", 7)  # state ppid pgrp session tty_nr tpgid flags ...
    return int(fields[1]), bool(int(fields[6]) & PF_KTHREAD)


class _Known:
    """What the reader keeps of one process between walks: its `statm` open (`fd`), what
    that read last, and what was read with it."""

    __slots__ = ("fd", "statm", "size", "resident", "anonymous", "name", "ppid", "kernel_thread")

    def __init__(self, fd: int, statm: bytes, name: str, ppid: int, kernel_thread: bool):
        self.fd, self.name, self.ppid, self.kernel_thread = fd, name, ppid, kernel_thread
        self.update(statm)

    def update(self, statm: bytes) -> None:
        """statm's pages: size resident shared ... (ValueError, IndexError if it is not that)."""
        size, resident, shared = statm.split(b" ", 3)[:3]
        self.statm, self.size, self.resident = statm, int(size), int(resident)
        self.anonymous = max(0, self.resident - int(shared))
        if self.kernel_thread:
            self.resident = self.anonymous = 0  # a kernel thread: no memory of its own


class ProcfsReader:
    """Linux: every process of /proc, from Python.

    Each walk reads each process's `statm` (its memory) through a descriptor kept open
    since the walk before and read again from offset 0 (the kernel writes the figures anew
    at every such read; an open, a read and a close cost the kernel five to six times one
    read). A descriptor of /proc/PID/... stays bound to its process: once the process has
    ended, reading it fails (ESRCH) instead of reading a newer process that got the same pid,
    and the pid is read as a new process. At most `kept_files_allowed()` descriptors are
    kept; beyond that, a process's files are opened, read and closed at each walk.

    A new process's `comm` (its name) and `stat` (its parent, whether it is a kernel
    thread) are read when it appears. Its name again when its `statm` has changed (an exec
    always does) and else once every REREAD_EVERY walks (a rename in place, prctl
    PR_SET_NAME, shows within that many walks); its parent again when the parent has ended
    or its parent's pid now names a newer process (a process's parent changes only when the
    parent ends: the child goes to a reaper).

    The command line where a claim needs it, or where the kernel cut the name at 15 bytes
    (the program's file name is then the name, as psutil gives it), or for a container
    shim: read when the process is new to the reader, when its name changed (an exec), and
    else once every REREAD_EVERY walks, at the walk that reads its name again (a program
    that rewrites its own command line, as postgres and nginx workers do, shows the new one
    within that many walks). Reading a command line costs the kernel a walk of the
    process's memory: at every walk it tripled the cost of a walk of 1,150 processes.
    """

    platform = "linux"
    REREAD_EVERY = 8

    def __init__(self, root: str = PROC) -> None:
        self.root = root
        self._known: dict[int, _Known] = {}  # the processes whose statm is kept open
        # pid -> (its name when its command line was read, the command line's text, its program's name)
        self._cmdlines: dict[int, tuple[str, str, str]] = {}
        self._walks = 0
        self.page = os.sysconf("SC_PAGE_SIZE")

    def kept(self) -> int:
        """How many descriptors the reader keeps open."""
        return len(self._known)

    def close(self) -> None:
        for known in self._known.values():
            os.close(known.fd)
        self._known.clear()

    @staticmethod
    def _first_read(folder: str, keep: bool) -> _Known:
        """A process the reader has no descriptor of: its statm (kept open when `keep`, else
        `fd` is -1), its name and its parent."""
        fd = os.open(folder + "statm", os.O_RDONLY)
        try:
            statm = read_from_start(fd, 256, 256)
            name = read_small_file(folder + "comm", 64)
            ppid, kernel_thread = _parent(folder)
        except BaseException:
            os.close(fd)
            raise
        if not keep:
            os.close(fd)
            fd = -1
        return _Known(fd, statm, _name(name), ppid, kernel_thread)

    def read(self, wants_cmdline: bool) -> list[Proc]:
        root, page, walk = self.root, self.page, self._walks + 1
        known_before, known_now = self._known, {}
        cap = kept_files_allowed()
        with os.scandir(root) as entries:
            pids = [entry.name for entry in entries if entry.name.isdigit()]
        found: list[Proc] = []
        new: set[int] = set()      # processes read for the first time (or not under this pid)
        ended: set[int] = set()    # zombies: ended, their children already given to a reaper
        for pid in pids:
            number = int(pid)
            known = known_before.pop(number, None)
            try:
                if known is not None:
                    try:
                        statm = read_from_start(known.fd, 256, 256)
                    except OSError:  # ESRCH: the process has ended (a new one may have its pid)
                        os.close(known.fd)
                        known = None
                    else:
                        changed = statm != known.statm
                        if changed:
                            known.update(statm)
                        if changed or (number + walk) % self.REREAD_EVERY == 0:
                            known.name = _name(read_small_file(f"{root}/{pid}/comm", 64))
                if known is None:
                    known = self._first_read(f"{root}/{pid}/", len(known_now) < cap)
                    new.add(number)
            except (OSError, ValueError, IndexError):
                if known is not None and known.fd >= 0:
                    os.close(known.fd)
                continue  # ended since it was listed, or not a process folder
            if known.fd >= 0:
                known_now[number] = known
            if known.size == 0 and not known.kernel_thread:
                ended.add(number)
            found.append(Proc(number, known.ppid, known.name, known.anonymous * page, None, known.resident * page))
        for known in known_before.values():  # ended since the walk before
            os.close(known.fd)
        self._known = known_now
        # Processes whose parent has ended since it was read went to a reaper: read their parent again.
        listed = {proc.pid for proc in found}
        for proc in found:
            if proc.ppid and proc.pid not in new and (proc.ppid in ended or proc.ppid in new or proc.ppid not in listed):
                try:
                    ppid, kernel_thread = _parent(f"{root}/{proc.pid}/")
                except (OSError, ValueError, IndexError):
                    continue
                proc.ppid = ppid
                if proc.pid in known_now:
                    known_now[proc.pid].ppid = ppid
        self._walks = walk
        self._read_cmdlines(found, new, wants_cmdline)
        return found

    def _read_cmdlines(self, found: list[Proc], new: set[int], wants_cmdline: bool) -> None:
        cached, cmdlines, walk = self._cmdlines, {}, self._walks
        for proc in found if wants_cmdline else [proc for proc in found if len(proc.name) >= COMM_LENGTH
                                                 or proc.name.startswith(SHIM_PREFIX)]:
            known = None if proc.pid in new else cached.get(proc.pid)
            if known is None or known[0] != proc.name or (proc.pid + walk) % self.REREAD_EVERY == 0:
                try:
                    raw = read_small_file(f"{self.root}/{proc.pid}/cmdline", 4096, CMDLINE_LIMIT)
                except OSError:
                    continue
                if not raw:  # none while a process execs or ends: read again at the next walk
                    continue
                known = (proc.name, cmdline_text(raw), program_name(raw))
            cmdlines[proc.pid] = known
            proc.cmdline = known[1]
            # Like psutil: the program's file name when it starts as the name the kernel cut does.
            if len(proc.name) >= COMM_LENGTH and known[2].startswith(proc.name):
                proc.name = known[2]
        self._cmdlines = cmdlines


def _name(comm: bytes) -> str:
    return (comm[:-1] if comm.endswith(b"\n") else comm).decode("utf-8", "surrogateescape")


# --- macOS: psutil and libproc ----------------------------------------------------------------

RUSAGE_INFO_V2 = 2  # bsd/sys/resource.h: the flavor of proc_pid_rusage()


class RusageInfoV2(ctypes.Structure):
    """struct rusage_info_v2 of XNU's bsd/sys/resource.h (apple-oss-distributions/xnu):
    a 16-byte UUID, then 18 uint64_t fields; ri_phys_footprint is the 9th field (offset 72),
    ri_resident_size the 8th (offset 64); 160 bytes in all."""

    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [(name, ctypes.c_uint64) for name in (
        "ri_user_time", "ri_system_time", "ri_pkg_idle_wkups", "ri_interrupt_wkups", "ri_pageins",
        "ri_wired_size", "ri_resident_size", "ri_phys_footprint", "ri_proc_start_abstime",
        "ri_proc_exit_abstime", "ri_child_user_time", "ri_child_system_time", "ri_child_pkg_idle_wkups",
        "ri_child_interrupt_wkups", "ri_child_pageins", "ri_child_elapsed_abstime", "ri_diskio_bytesread",
        "ri_diskio_byteswritten")]


# int proc_pid_rusage(int pid, int flavor, rusage_info_t *buffer) (libproc.h): the buffer is
# the structure itself; 0, or -1 with errno (EPERM: another user's process; ESRCH: ended).
RusageFunction = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(RusageInfoV2),
                                  use_errno=True)
LIBPROC = "/usr/lib/libproc.dylib"  # in the dyld shared cache: dlopen finds it by this path


def load_proc_pid_rusage() -> Callable | None:
    """libproc's proc_pid_rusage (libproc.dylib, else libSystem, which every process on macOS
    has loaded), or None where there is none (not a Mac)."""
    for path in (LIBPROC, None):
        try:
            return RusageFunction(("proc_pid_rusage", ctypes.CDLL(path, use_errno=True)))
        except (OSError, AttributeError):
            continue
    return None


def footprint_reader(function: Callable) -> Callable[[int], tuple[int, int] | None]:
    """pid -> (resident bytes, physical footprint bytes) through proc_pid_rusage, None where
    it may not be read (EPERM); ProcessLookupError when the process has ended."""
    def read(pid: int) -> tuple[int, int] | None:
        info = RusageInfoV2()
        if function(pid, RUSAGE_INFO_V2, ctypes.pointer(info)) != 0:
            if ctypes.get_errno() == errno.ESRCH:
                raise ProcessLookupError(pid)
            return None
        return info.ri_resident_size, info.ri_phys_footprint

    return read


class MacReader:
    """macOS: psutil lists the processes (name, parent, command line where needed); each
    process's memory is its physical footprint (libproc), else its resident set (psutil's
    memory_info(), the only psutil memory call made: memory_full_info() can hang on other
    users' processes), else 0 (not ours to read; the process is still counted)."""

    platform = "darwin"

    def __init__(self, footprint: Callable[[int], tuple[int, int] | None] | None = None) -> None:
        if footprint is None:
            function = load_proc_pid_rusage()
            footprint = footprint_reader(function) if function is not None else None
            if footprint is None:
                log.warning("libproc's proc_pid_rusage is not available here: process memory is the resident set")
        self.footprint = footprint
        self.told = False  # the figures used were logged (at the first walk)

    def close(self) -> None:
        pass

    def read(self, wants_cmdline: bool) -> list[Proc]:
        attrs = ["name", "ppid", "cmdline"] if wants_cmdline else ["name", "ppid"]
        footprint = self.footprint
        found = []
        for process in psutil.process_iter(attrs, ad_value=None):
            info = process.info
            name, ppid = info.get("name") or "", info.get("ppid") or 0
            try:
                figures = footprint(process.pid) if footprint is not None else None
                if figures is not None:
                    resident, memory, figure = figures[0], figures[1], FOOTPRINT
                else:
                    resident = memory = process.memory_info().rss
                    figure = RESIDENT
            except (psutil.AccessDenied, psutil.ZombieProcess):
                resident, memory, figure = 0, 0, RESIDENT  # counted, but its memory is not ours to read
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
            arguments = info.get("cmdline") if wants_cmdline else None
            if arguments is None and name.startswith(SHIM_PREFIX):
                try:
                    arguments = process.cmdline()
                except psutil.Error:
                    arguments = None
            found.append(Proc(process.pid, ppid, name, memory, " ".join(arguments) if arguments else None,
                              resident, figure))
        if not self.told:
            self.told = True
            footprints = sum(1 for proc in found if proc.figure == FOOTPRINT)
            log.info("process memory: physical footprint (proc_pid_rusage) for %d processes, resident set for %d "
                     "(where the footprint cannot be read: other users' processes)", footprints, len(found) - footprints)
        return found


class ReplayReader:
    """A recording's processes (exporter/recording.py), with its platform's figures: the
    footprint on macOS (the resident set where it was not read), resident less shared on
    Linux."""

    def __init__(self, machine: Replay) -> None:
        self.recording = machine.recording
        self.platform = machine.platform

    def close(self) -> None:
        pass

    def read(self, wants_cmdline: bool) -> list[Proc]:
        found = []
        for item in self.recording.processes:
            if self.platform == "darwin":
                memory, figure = ((item.footprint, FOOTPRINT) if item.footprint is not None else (item.rss, RESIDENT))
            else:
                memory, figure = (item.anonymous if item.anonymous is not None else item.rss), ANONYMOUS
            found.append(Proc(item.pid, item.ppid, item.name, memory,
                              " ".join(item.cmdline) if item.cmdline else None, item.rss, figure))
        return found


# --- the table ---------------------------------------------------------------------------------

class Reader(Protocol):
    """What the table reads from: ProcfsReader, MacReader, or anything else that lists the
    processes as Proc records (a recording, in a later release)."""

    platform: str  # "linux" or "darwin": whose rules the table's readers apply

    def read(self, wants_cmdline: bool) -> list[Proc]: ...

    def close(self) -> None: ...


class ProcessTable:
    """One walk of the reader's processes per scrape, shared by the collectors that ask."""

    def __init__(self, reader: Reader, source: str | None = None) -> None:
        self.reader = reader
        self.source = source
        self._lock = threading.Lock()
        self._deadline: Deadline | None = None
        self._scan: Scan | None = None

    def scan(self, deadline: Deadline, wants_cmdline: bool) -> Scan:
        with self._lock:
            last = self._scan
            if self._deadline is not deadline or last is None or (wants_cmdline and not last.cmdlines):
                try:
                    processes = self.reader.read(wants_cmdline)
                except (OSError, ValueError, psutil.Error) as exc:
                    raise CollectorError(f"cannot list processes: {exc}") from None
                last = self._scan = Scan(processes, self.reader.platform, wants_cmdline)
                self._deadline = deadline
                current().recorded_processes(processes)  # `aitools-exporter record` keeps them
            return last

    def close(self) -> None:
        with self._lock:
            self.reader.close()


def chosen_source(environ=os.environ, platform: str = sys.platform) -> str:
    """The reader's source: AITOOLS_PROCESS_SOURCE, else procfs where /proc is (Linux), else macos."""
    chosen = environ.get(SOURCE_ENV) or ("procfs" if platform.startswith("linux") and os.path.isdir(f"{PROC}/self")
                                         else "macos")
    if chosen not in SOURCES:
        raise ValueError(f"{SOURCE_ENV} must be one of {', '.join(SOURCES)}, not {chosen!r}")
    return chosen


def make_reader(source: str) -> Reader:
    if source.startswith("replay"):
        return ReplayReader(current())
    return ProcfsReader() if source == "procfs" else MacReader()


_table: ProcessTable | None = None
_table_lock = threading.Lock()


def process_table() -> ProcessTable:
    """The process's one table, over the reader the source names (made again when the
    environment names another: the tests switch it)."""
    global _table
    machine = current()
    try:
        source = f"replay {id(machine)}" if machine.replaying else chosen_source()
    except ValueError as exc:
        raise CollectorError(str(exc)) from None
    with _table_lock:
        if _table is None or _table.source != source:
            if _table is not None:
                _table.close()
            _table = ProcessTable(make_reader(source), source)
        return _table
