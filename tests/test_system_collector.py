"""System collector: the real /proc, and the macOS path with a stand-in vm_stat on PATH."""

import os
import stat
import time
from pathlib import Path

import psutil
import pytest

from exporter.collectors.base import CollectorError
from exporter.collectors.system import SystemCollector, meminfo_pages, parse_meminfo, parse_vm_stat
from exporter.config import Config, SystemSection

DATA = Path(__file__).parent / "data"


def values(collector):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.collect() for s in f.samples}


def pages(result):
    return {dict(labels)["state"]: v for (name, labels), v in result.items() if name == "aitools_system_memory_pages"}


def test_procfs_against_meminfo_and_psutil():
    result = values(SystemCollector(SystemSection(source="procfs")))
    memory = psutil.virtual_memory()
    page_size = os.sysconf("SC_PAGE_SIZE")
    assert result[("aitools_system_page_size_bytes", ())] == page_size
    assert result[("aitools_system_memory_total_bytes", ())] == memory.total
    # available moves a little between the two reads
    assert abs(result[("aitools_system_memory_available_bytes", ())] - memory.available) < 64 * 2**20
    assert result[("aitools_system_swap_used_bytes", ())] == pytest.approx(psutil.swap_memory().used, abs=16 * 2**20)
    by_state = pages(result)
    assert {"free", "active", "inactive", "wired", "file_backed", "anonymous"} <= set(by_state)
    assert abs(by_state["free"] * page_size - memory.free) < 64 * 2**20
    assert sum(by_state[s] for s in ("free", "active", "inactive")) * page_size <= memory.total


def test_auto_on_linux_is_procfs():
    auto = values(SystemCollector())
    procfs = values(SystemCollector(SystemSection(source="procfs")))
    assert auto.keys() == procfs.keys()
    assert ("aitools_system_memory_pressure_level", ()) not in auto  # a macOS reading only
    for key, value in procfs.items():
        if key[0] in ("aitools_system_page_size_bytes", "aitools_system_memory_total_bytes"):
            assert auto[key] == value, key
        else:  # the same /proc/meminfo read twice: only what moved in between differs
            assert auto[key] == pytest.approx(value, abs=64 * 2**20 / (4096 if "pages" in key[0] else 1)), key


def test_meminfo_parser_maps_states():
    text = "MemTotal: 1000 kB\nMemFree: 400 kB\nMemAvailable: 600 kB\nActive: 300 kB\nInactive: 200 kB\n" \
           "Active(file): 120 kB\nInactive(file): 80 kB\nAnonPages: 250 kB\nUnevictable: 8 kB\n" \
           "SUnreclaim: 16 kB\nKernelStack: 4 kB\nPageTables: 4 kB\nSwapTotal: 100 kB\nSwapFree: 40 kB\nHugePages_Total: 0\n"
    fields = parse_meminfo(text)
    assert fields["MemTotal"] == 1000 * 1024 and fields["HugePages_Total"] == 0
    assert meminfo_pages(fields, 1024) == {"free": 400, "active": 300, "inactive": 200, "wired": 32,
                                           "file_backed": 200, "anonymous": 250}


def install_vm_stat(folder: Path, script: str) -> None:
    path = folder / "vm_stat"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


RECORDED_PAGES = {
    "vm_stat_apple_silicon.txt": {"free": 6062, "active": 829498, "inactive": 817204, "speculative": 12447,
                                  "wired": 309858, "purgeable": 25870, "compressed": 653227,
                                  "file_backed": 575370, "anonymous": 1083779,
                                  "stored_in_compressor": 1951870},
    "vm_stat_intel.txt": {"free": 21417, "active": 924521, "inactive": 900876, "speculative": 19018,
                          "wired": 604291, "purgeable": 80473, "compressed": 623436,
                          "file_backed": 591738, "anonymous": 1252677, "stored_in_compressor": 1473925},
}


@pytest.mark.parametrize("recording, page_size", [("vm_stat_apple_silicon.txt", 16384), ("vm_stat_intel.txt", 4096)])
def test_vm_stat_source_reads_the_recorded_output(fake_path, recording, page_size):
    install_vm_stat(fake_path, f"cat '{DATA / recording}'\n")
    result = values(SystemCollector(SystemSection(source="vm_stat")))
    assert result[("aitools_system_page_size_bytes", ())] == page_size
    # The numbers as the recording prints them (compressed: "Pages occupied by compressor").
    assert pages(result) == RECORDED_PAGES[recording]
    assert parse_vm_stat((DATA / recording).read_text()) == (page_size, RECORDED_PAGES[recording])
    # total, available and swap still come from the platform
    assert result[("aitools_system_memory_total_bytes", ())] == psutil.virtual_memory().total


@pytest.mark.parametrize("answer, level", [("1", 1), ("2", 2), ("4", 4), ("3", None), ("warn", None), ("", None)])
def test_memory_pressure_from_sysctl_where_it_answers(fake_path, answer, level):
    install_vm_stat(fake_path, f"cat '{DATA / 'vm_stat_apple_silicon.txt'}'\n")
    sysctl = fake_path / "sysctl"
    # Answers only the exact argv the collector must use: `sysctl -n kern.memorystatus_vm_pressure_level`.
    sysctl.write_text(f'#!/bin/sh\n[ "$1 $2 $#" = "-n kern.memorystatus_vm_pressure_level 2" ] && echo {answer}\n')
    sysctl.chmod(0o755)
    result = values(SystemCollector(SystemSection(source="vm_stat")))
    assert result.get(("aitools_system_memory_pressure_level", ())) == level
    assert pages(result) == RECORDED_PAGES["vm_stat_apple_silicon.txt"]


@pytest.mark.parametrize("script, reason", [
    ("echo 'Segmentation fault'\n", "unexpected: no 'page size"),
    ("echo 'Mach Virtual Memory Statistics: (page size of 16384 bytes)'\necho 'nothing: here'\n", "no page counts"),
    ("echo 'Mach Virtual Memory Statistics: (page size of 12345 bytes)'\n", "implausible page size"),
    ("exit 3\n", "vm_stat failed"),
    ("sleep 5\n", "did not finish within 0.5s"),
])
def test_vm_stat_failures_are_clear(fake_path, script, reason):
    install_vm_stat(fake_path, script)
    started = time.monotonic()
    with pytest.raises(CollectorError, match=reason):
        list(SystemCollector(SystemSection(source="vm_stat"), timeout=0.5).collect())
    assert time.monotonic() - started < 2


def test_vm_stat_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CollectorError, match="vm_stat not found on PATH"):
        list(SystemCollector(SystemSection(source="vm_stat")).collect())
