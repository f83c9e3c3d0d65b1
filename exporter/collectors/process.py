"""Process groups (swift-frontend by default): summed memory and process count.

The groups are counted on the scrape's one walk of the process table
(collectors/proctable.py), which the apps collector reads too: each process's name (the
full program name where the kernel cut it), its command line where a group or an app
matches on command lines, and its memory. A group's figure is its processes' resident
sets summed on Linux; on macOS their physical footprints (resident sets only where a
footprint cannot be read), the figure Activity Monitor shows.
"""

from __future__ import annotations

from exporter.collectors.base import Deadline, SourceCollector, gauge
from exporter.collectors.proctable import Proc, process_table, wants_cmdlines
from exporter.config import DEFAULT_PROCESS_GROUPS, DEFAULT_TIMEOUT_SECONDS, ProcessGroup


def count_groups(groups: tuple[ProcessGroup, ...], processes: list[Proc], footprints: bool
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes, processes) of each group: a process is in a group by exact name or by the
    group's pattern on its command line. footprints: sum each process's `memory` (macOS),
    else its resident set."""
    memory = {group.name: 0 for group in groups}
    count = {group.name: 0 for group in groups}
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
            memory[group.name] += proc.memory if footprints else proc.resident
    return memory, count


class ProcessCollector(SourceCollector):
    name = "process"

    def __init__(self, groups: tuple[ProcessGroup, ...] = DEFAULT_PROCESS_GROUPS, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 cmdlines: bool | None = None):
        """`cmdlines`: whether the process table reads every command line (the Exporter
        passes whether any app or group matches them); by default whether a group does."""
        super().__init__(timeout)
        self.groups = groups
        self.cmdlines = wants_cmdlines((), groups) if cmdlines is None else cmdlines

    def collect(self, deadline: Deadline | None = None):
        groups = self.groups
        scan = process_table().scan(self.deadline(deadline), self.cmdlines)
        memory, count = count_groups(groups, scan.processes, footprints=scan.platform == "darwin")

        rss_family = gauge("aitools_process_group_rss_bytes",
                           "Summed memory of the group's processes: resident sets (Linux), physical footprints "
                           "(macOS).", ["group"])
        count_family = gauge("aitools_process_group_processes", "How many processes the group has now.", ["group"])
        for group in groups:
            rss_family.add_metric([group.name], float(memory[group.name]))
            count_family.add_metric([group.name], float(count[group.name]))
        yield rss_family
        yield count_family
