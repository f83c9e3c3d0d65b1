"""Process groups (swift-frontend by default): summed resident set and process count.

On Linux the groups are counted on the scrape's one walk of /proc, which the apps
collector makes too (apps.SHARED_SCAN over apps.ProcTable: name, resident set, and the
command line where a group or an app matches on command lines). Elsewhere psutil walks
the processes: their name, their command line only when a group matches on command
lines, and the resident set only of the processes in a group.
"""

from __future__ import annotations

import os
import sys

import psutil

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, gauge
from exporter.config import DEFAULT_PROCESS_GROUPS, DEFAULT_TIMEOUT_SECONDS, ProcessGroup

PROC = "/proc"
# The psutil path (macOS and every other system) is taken on Linux too when this is True:
# the tests set it so that the macOS code runs, and is checked, on every machine.
USE_PSUTIL = False


def matches(group: ProcessGroup, name: str, cmdline: list[str] | None) -> bool:
    if name in group.names:
        return True
    if group.cmdline is not None and cmdline:
        return group.cmdline.search(" ".join(cmdline))
    return False


# --- Linux: /proc straight -------------------------------------------------------------

def program_name(data: bytes) -> str:
    """The file name of the program in /proc/PID/cmdline: psutil's basename of cmdline()[0]."""
    text = data.decode("utf-8", "surrogateescape")
    if "\0" in text:  # arguments ended by NULs (the last may be cut off at CMDLINE_LIMIT)
        arguments = text.removesuffix("\0").split("\0")
        first = arguments[0] if len(arguments) > 1 else arguments[0].split(" ", 1)[0]
    else:
        first = text.split(" ", 1)[0]
    return os.path.basename(first)


def _count_procfs(groups: tuple[ProcessGroup, ...], processes, rss: dict[str, int], count: dict[str, int]) -> None:
    """The groups' members among the processes of the scrape's one walk of /proc
    (apps.SHARED_SCAN: name, full program name where the kernel cut it, command line
    where a pattern needs it, resident set)."""
    by_name: dict[str, list[ProcessGroup]] = {}
    for group in groups:
        for name in group.names:
            by_name.setdefault(name, []).append(group)
    by_cmdline = [group for group in groups if group.cmdline is not None]
    for proc in processes:
        members = by_name.get(proc.name, ())
        if by_cmdline and proc.cmdline:
            more = [group for group in by_cmdline if group not in members and group.cmdline.search(proc.cmdline)]
            if more:
                members = [*members, *more]
        for group in members:
            count[group.name] += 1
            rss[group.name] += proc.rss


# --- the collector -----------------------------------------------------------------------

class ProcessCollector(SourceCollector):
    name = "process"

    def __init__(self, groups: tuple[ProcessGroup, ...] = DEFAULT_PROCESS_GROUPS, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 source: str = "auto", cmdlines: bool | None = None):
        """`cmdlines`: whether the shared walk of /proc reads every command line (the Exporter
        passes whether any app or group matches them); by default whether a group does."""
        super().__init__(timeout)
        self.groups = groups
        self.cmdlines = any(group.cmdline is not None for group in groups) if cmdlines is None else cmdlines
        # auto: /proc where there is one (Linux), else psutil; "psutil" forces the macOS path
        # anywhere, so that the suite runs it on Linux too.
        self.source = source

    def collect(self, deadline: Deadline | None = None):  # a local scan: nothing in it waits on a backend
        groups = self.groups
        rss = {group.name: 0 for group in groups}
        count = {group.name: 0 for group in groups}
        wants_cmdline = any(group.cmdline is not None for group in groups)
        procfs = self.source == "procfs" or (
            self.source == "auto" and sys.platform.startswith("linux") and os.path.isdir(f"{PROC}/self"))
        try:
            if procfs and not USE_PSUTIL:
                from exporter.collectors.apps import SHARED_SCAN

                _count_procfs(groups, SHARED_SCAN.procfs(self.deadline(deadline), self.cmdlines), rss, count)
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
