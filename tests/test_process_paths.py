"""The process collector's two paths on the same real processes: /proc read straight (Linux)
and psutil (macOS and everything else), forced by the collector's `source` switch, so the
macOS path runs, and is held to values, on every machine. A name no other test or helper
uses keeps processes started elsewhere out of the counts."""

from __future__ import annotations

import re

import pytest

from exporter.collectors.process import ProcessCollector
from exporter.config import Config, ProcessGroup
from exporter.patterns import compile_pattern
from tests.parts.processes import NamedProcesses

NAME = "core13-member"  # under the kernel's 15 characters
MiB = 2**20


@pytest.fixture
def members():
    named = NamedProcesses(NAME)
    yield named
    named.close()


def readings(source: str, config: Config) -> dict:
    return {(sample.name, sample.labels["group"]): sample.value
            for family in ProcessCollector(config.process_groups, config.timeout, source=source).collect() for sample in family.samples}


@pytest.mark.parametrize("source", ["procfs", "psutil"])
def test_each_path_counts_the_members_and_sums_their_resident_set(members, source):
    first, second = members.start(hold_mb=30), members.start(hold_mb=60)
    config = Config(process_groups=(ProcessGroup("by-name", names=(NAME,)),
                                    ProcessGroup("by-cmdline", cmdline=compile_pattern(NAME + r" -c .*bytearray\(60 \* 2\*\*20\)")),
                                    ProcessGroup("nobody", names=("no-such-process",))))
    result = readings(source, config)
    expected = first.memory_info().rss + second.memory_info().rss
    assert result[("aitools_process_group_processes", "by-name")] == 2
    assert abs(result[("aitools_process_group_rss_bytes", "by-name")] - expected) < 4 * MiB
    assert result[("aitools_process_group_rss_bytes", "by-name")] > 90 * MiB
    assert result[("aitools_process_group_processes", "by-cmdline")] == 1
    assert abs(result[("aitools_process_group_rss_bytes", "by-cmdline")] - second.memory_info().rss) < 4 * MiB
    assert result[("aitools_process_group_processes", "nobody")] == 0
    assert result[("aitools_process_group_rss_bytes", "nobody")] == 0


def test_both_paths_agree(members):
    members.start(hold_mb=40)
    config = Config(process_groups=(ProcessGroup("by-name", names=(NAME,)),))
    procfs, by_psutil = readings("procfs", config), readings("psutil", config)
    assert procfs[("aitools_process_group_processes", "by-name")] == by_psutil[("aitools_process_group_processes", "by-name")] == 1
    assert abs(procfs[("aitools_process_group_rss_bytes", "by-name")]
               - by_psutil[("aitools_process_group_rss_bytes", "by-name")]) < 2 * MiB


def test_apps_and_process_collectors_share_one_walk_of_proc_per_scrape(monkeypatch, swift_frontend):
    """The two collectors that read every process walk /proc once per scrape between them,
    and still see the same processes: the swift-frontend group and the xcode app agree."""
    from exporter.collectors import apps as apps_module
    from exporter.scrape import Scraper
    from exporter.collectors.apps import AppsCollector

    swift_frontend.start(hold_mb=30)
    walks = []
    real_scan = apps_module.ProcTable.scan
    monkeypatch.setattr(apps_module.ProcTable, "scan", lambda table, wants: walks.append(wants) or real_scan(table, wants))
    config = Config()
    scraper = Scraper([ProcessCollector(config.process_groups, config.timeout), AppsCollector(config.apps, config.docker, config.timeout, source="procfs")], timeout=5)
    for _ in range(3):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in scraper.collect_once() for s in family.samples}
        assert samples[("aitools_collector_success", (("collector", "apps"),))] == 1
        assert samples[("aitools_collector_success", (("collector", "process"),))] == 1
    assert len(walks) == 3  # one walk a scrape, not two
    assert samples[("aitools_process_group_processes", (("group", "swift-frontend"),))] >= 1
    assert samples[("aitools_app_processes", (("app", "xcode"),))] >= samples[
        ("aitools_process_group_processes", (("group", "swift-frontend"),))]
