"""Process groups (swift-frontend by default): summed resident set and process count."""

from __future__ import annotations

import psutil

from exporter.collectors.base import CollectorError, SourceCollector, gauge
from exporter.config import ProcessGroup


def matches(group: ProcessGroup, name: str, cmdline: list[str] | None) -> bool:
    if name in group.names:
        return True
    if group.cmdline is not None and cmdline:
        return group.cmdline.search(" ".join(cmdline)) is not None
    return False


class ProcessCollector(SourceCollector):
    name = "process"

    def collect(self):
        groups = self.config.process_groups
        rss = {group.name: 0 for group in groups}
        count = {group.name: 0 for group in groups}
        wants_cmdline = any(group.cmdline is not None for group in groups)
        # Only name, cmdline and memory_info: on macOS memory_full_info()/USS can hang
        # on other users' processes. Processes that exit or deny access mid-scan are skipped.
        attrs = ["name", "memory_info"] + (["cmdline"] if wants_cmdline else [])
        try:
            processes = psutil.process_iter(attrs, ad_value=None)
            for process in processes:
                info = process.info
                memory = info.get("memory_info")
                for group in groups:
                    if matches(group, info.get("name") or "", info.get("cmdline")):
                        count[group.name] += 1
                        if memory is not None:
                            rss[group.name] += memory.rss
        except (psutil.Error, OSError) as exc:
            raise CollectorError(f"cannot list processes: {exc}") from None

        rss_family = gauge("aitools_process_group_rss_bytes", "Summed resident set of the group's processes.", ["group"])
        count_family = gauge("aitools_process_group_processes", "How many processes the group has now.", ["group"])
        for group in groups:
            rss_family.add_metric([group.name], float(rss[group.name]))
            count_family.add_metric([group.name], float(count[group.name]))
        yield rss_family
        yield count_family
