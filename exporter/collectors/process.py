"""Process groups (swift-frontend by default): summed resident set and process count.

A scrape walks every process of the machine, so it reads as little as it can: the
name of each process, its command line only when a group matches on command lines,
and the resident set only of the processes in a group. On Linux it reads /proc itself
(the files and the parsing psutil's name(), cmdline() and memory_info() use, without
the objects around them: a third of the CPU time); elsewhere psutil reads them.
"""

from __future__ import annotations

import os
import sys

import psutil

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, gauge, read_small_file
from exporter.config import ProcessGroup
from exporter.patterns import CMDLINE_LIMIT

PROC = "/proc"
# The psutil path (macOS and every other system) is taken on Linux too when this is True:
# the tests set it so that the macOS code runs, and is checked, on every machine.
USE_PSUTIL = False
# The kernel keeps at most this many bytes of a name in /proc/PID/stat (TASK_COMM_LEN - 1).
COMM_LENGTH = 15


def matches(group: ProcessGroup, name: str, cmdline: list[str] | None) -> bool:
    if name in group.names:
        return True
    if group.cmdline is not None and cmdline:
        return group.cmdline.search(" ".join(cmdline))
    return False


# --- Linux: /proc straight -------------------------------------------------------------

def _read(path: str, size: int = 4096) -> bytes:
    """A /proc file, at most CMDLINE_LIMIT bytes of it (a command line is matched no further)."""
    return read_small_file(path, size, CMDLINE_LIMIT)


def parse_cmdline(data: bytes) -> str:
    """/proc/PID/cmdline as psutil's cmdline() reads it, joined with spaces: arguments
    end with a NUL, or are separated by spaces in a process that rewrote its command
    line (setproctitle)."""
    text = data.decode("utf-8", "surrogateescape")
    if text.endswith("\0"):
        return text[:-1].replace("\0", " ")
    return text[:-1] if text.endswith(" ") else text


def program_name(data: bytes) -> str:
    """The file name of the program in /proc/PID/cmdline: psutil's basename of cmdline()[0]."""
    text = data.decode("utf-8", "surrogateescape")
    if "\0" in text:  # arguments ended by NULs (the last may be cut off at CMDLINE_LIMIT)
        arguments = text.removesuffix("\0").split("\0")
        first = arguments[0] if len(arguments) > 1 else arguments[0].split(" ", 1)[0]
    else:
        first = text.split(" ", 1)[0]
    return os.path.basename(first)


def _scan_procfs(groups: tuple[ProcessGroup, ...], rss: dict[str, int], count: dict[str, int]) -> None:
    by_name: dict[str, list[ProcessGroup]] = {}
    for group in groups:
        for name in group.names:
            by_name.setdefault(name, []).append(group)
    by_cmdline = [group for group in groups if group.cmdline is not None]
    # Names the kernel cuts short (at COMM_LENGTH): only for these is the full name worth a read.
    long_names = [name for name in by_name if len(name) >= COMM_LENGTH]
    page_size = os.sysconf("SC_PAGE_SIZE")
    with os.scandir(PROC) as entries:
        pids = [entry.name for entry in entries if entry.name.isdigit()]
    for pid in pids:
        folder = f"{PROC}/{pid}/"
        try:
            name = _read(folder + "comm", 64).decode("utf-8", "surrogateescape")[:-1]
        except OSError:
            continue  # ended since it was listed (or hidden from us): as psutil's process_iter skips it
        cmdline = None
        truncated = len(name) >= COMM_LENGTH
        if by_cmdline or (truncated and any(full.startswith(name) for full in long_names)):
            try:
                cmdline = _read(folder + "cmdline")
            except OSError:
                pass  # as psutil: no command line then, and the name as the kernel keeps it
            if truncated and cmdline:
                # Like psutil: the program's file name when it starts as the cut name does.
                full = program_name(cmdline)
                if full.startswith(name):
                    name = full
        members = by_name.get(name, ())
        if by_cmdline and cmdline:
            # The raw bytes, NULs read as spaces: what parse_cmdline() gives, cut at CMDLINE_LIMIT.
            more = [group for group in by_cmdline if group not in members and group.cmdline.search(cmdline)]
            if more:
                members = [*members, *more]
        if not members:
            continue
        try:
            resident = int(_read(folder + "statm", 256).split(b" ", 2)[1]) * page_size
        except PermissionError:
            resident = 0  # counted, but its memory is not ours to read
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        for group in members:
            count[group.name] += 1
            rss[group.name] += resident


# --- the collector -----------------------------------------------------------------------

class ProcessCollector(SourceCollector):
    name = "process"

    def __init__(self, config, source: str = "auto"):
        super().__init__(config)
        # auto: /proc where there is one (Linux), else psutil; "psutil" forces the macOS path
        # anywhere, so that the suite runs it on Linux too.
        self.source = source

    def collect(self, deadline: Deadline | None = None):  # a local scan: nothing in it waits on a backend
        groups = self.config.process_groups
        rss = {group.name: 0 for group in groups}
        count = {group.name: 0 for group in groups}
        wants_cmdline = any(group.cmdline is not None for group in groups)
        procfs = self.source == "procfs" or (
            self.source == "auto" and sys.platform.startswith("linux") and os.path.isdir(f"{PROC}/self"))
        try:
            if procfs and not USE_PSUTIL:
                _scan_procfs(groups, rss, count)
            else:
                self._scan_psutil(groups, wants_cmdline, rss, count)
        except (psutil.Error, OSError) as exc:
            raise CollectorError(f"cannot list processes: {exc}") from None

        rss_family = gauge("aitools_process_group_rss_bytes", "Summed resident set of the group's processes.", ["group"])
        count_family = gauge("aitools_process_group_processes", "How many processes the group has now.", ["group"])
        for group in groups:
            rss_family.add_metric([group.name], float(rss[group.name]))
            count_family.add_metric([group.name], float(count[group.name]))
        yield rss_family
        yield count_family

    @staticmethod
    def _scan_psutil(groups, wants_cmdline: bool, rss: dict, count: dict) -> None:
        # Only name, cmdline and memory_info: on macOS memory_full_info()/USS can hang
        # on other users' processes. Processes that exit or deny access mid-scan are skipped.
        for process in psutil.process_iter(["name", "cmdline"] if wants_cmdline else ["name"], ad_value=None):
            info = process.info
            member_of = [group for group in groups if matches(group, info.get("name") or "", info.get("cmdline"))]
            if not member_of:
                continue
            try:
                resident = process.memory_info().rss
            except (psutil.ZombieProcess, psutil.AccessDenied):
                resident = 0  # counted, but it has no memory we can read
            except psutil.NoSuchProcess:
                continue  # ended since it was listed
            for group in member_of:
                count[group.name] += 1
                rss[group.name] += resident
