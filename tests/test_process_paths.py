"""The process collector over the process table's two readers on the same real processes:
/proc read straight (Linux) and the macOS reader (psutil; libproc's footprint where it is
there, a Mac), chosen by AITOOLS_PROCESS_SOURCE, so the macOS path runs, and is held to
values, on every machine. A name no other test or helper uses keeps processes started
elsewhere out of the counts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from exporter.collectors import proctable
from exporter.collectors.process import ProcessCollector
from exporter.config import Config, ProcessGroup, SystemSection
from exporter.patterns import compile_pattern
from tests.parts.processes import NamedProcesses

NAME = "core13-member"  # under the kernel's 15 characters
MiB = 2**20


@pytest.fixture
def members():
    named = NamedProcesses(NAME)
    yield named
    named.close()


@pytest.fixture
def readings(monkeypatch):
    def read(source: str, config: Config) -> dict:
        monkeypatch.setenv(proctable.SOURCE_ENV, source)
        return {(sample.name, sample.labels["group"]): sample.value
                for family in ProcessCollector(config.process_groups, config.timeout).collect()
                for sample in family.samples}
    return read


@pytest.mark.parametrize("source", ["procfs", "macos"])
def test_each_path_counts_the_members_and_sums_their_resident_set(members, source, readings):
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


def test_both_paths_agree(members, readings):
    member = members.start(hold_mb=40)
    deadline = time.monotonic() + 10  # asleep: done loading, its memory no longer moves
    while member.status() != psutil.STATUS_SLEEPING and time.monotonic() < deadline:
        time.sleep(0.02)
    config = Config(process_groups=(ProcessGroup("by-name", names=(NAME,)),))
    procfs, by_psutil = readings("procfs", config), readings("macos", config)
    assert procfs[("aitools_process_group_processes", "by-name")] == by_psutil[("aitools_process_group_processes", "by-name")] == 1
    assert abs(procfs[("aitools_process_group_rss_bytes", "by-name")]
               - by_psutil[("aitools_process_group_rss_bytes", "by-name")]) < 2 * MiB


@pytest.mark.parametrize("source", ["procfs", "macos"])
def test_apps_and_process_collectors_share_one_walk_per_scrape(monkeypatch, swift_frontend, source, tmp_path):
    """The two collectors that read every process walk the process table once per scrape
    between them, and still see the same processes: the swift-frontend group and the xcode
    app agree. On macOS (a stand-in vm_stat here) vm_stat runs once per scrape too."""
    from exporter.app import Exporter
    from exporter.scrape import Scraper

    runs = tmp_path / "runs"
    data = Path(__file__).parent / "data" / "vm_stat_apple_silicon.txt"
    (tmp_path / "vm_stat").write_text(f"#!/bin/sh\necho run >> '{runs}'\ncat '{data}'\n")
    (tmp_path / "vm_stat").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(proctable.SOURCE_ENV, source)
    swift_frontend.start(hold_mb=30)
    reader = proctable.process_table().reader
    walks = []
    real_read = reader.read
    monkeypatch.setattr(reader, "read", lambda wants: walks.append(wants) or real_read(wants))
    config = Config(system=SystemSection(source="vm_stat" if source == "macos" else "procfs"))
    # The collectors as the Exporter makes them (both told whether the walk reads command lines).
    sources = Exporter(config).sources
    scraper = Scraper([sources["process"], sources["apps"], sources["system"]], timeout=5)
    for _ in range(3):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in scraper.collect_once() for s in family.samples}
        for name in ("apps", "process", "system"):
            assert samples[("aitools_collector_success", (("collector", name),))] == 1, name
    assert len(walks) == 3  # one walk a scrape, not two
    assert (runs.read_text().count("run") if runs.exists() else 0) == (3 if source == "macos" else 0)
    assert samples[("aitools_process_group_processes", (("group", "swift-frontend"),))] >= 1
    assert samples[("aitools_app_processes", (("app", "xcode"),))] >= samples[
        ("aitools_process_group_processes", (("group", "swift-frontend"),))]
