"""Process groups against real processes named swift-frontend."""

import re
import time

import psutil
import pytest

from exporter.collectors import proctable
from exporter.collectors.process import ProcessCollector
from exporter.config import Config, ProcessGroup
from exporter.patterns import compile_pattern


def readings(config):
    found = {}
    for family in ProcessCollector(config.process_groups, config.timeout).collect():
        for sample in family.samples:
            found[(sample.name, sample.labels["group"])] = sample.value
    return found


def test_a_group_with_no_process_is_zero_not_absent():
    """(Not swift-frontend itself: other test runs on the machine start processes of that name.)"""
    absent = ProcessGroup("absent", names=("aitools-no-such-program",))
    result = readings(Config(process_groups=(*Config().process_groups, absent)))
    assert result[("aitools_process_group_processes", "absent")] == 0
    assert result[("aitools_process_group_rss_bytes", "absent")] == 0
    assert ("aitools_process_group_processes", "swift-frontend") in result


def test_group_rss_is_the_sum_psutil_sees(swift_frontend):
    first = swift_frontend.start(hold_mb=50)
    second = swift_frontend.start(hold_mb=80)
    result = readings(Config())
    expected = first.memory_info().rss + second.memory_info().rss
    assert result[("aitools_process_group_processes", "swift-frontend")] == 2
    assert abs(result[("aitools_process_group_rss_bytes", "swift-frontend")] - expected) < 4 * 2**20
    assert result[("aitools_process_group_rss_bytes", "swift-frontend")] > 130 * 2**20

    swift_frontend.stop(swift_frontend.processes[0])
    result = readings(Config())
    assert result[("aitools_process_group_processes", "swift-frontend")] == 1
    assert abs(result[("aitools_process_group_rss_bytes", "swift-frontend")] - second.memory_info().rss) < 4 * 2**20


def test_cmdline_regex_groups(swift_frontend):
    process = swift_frontend.start(hold_mb=20)
    config = Config(process_groups=(
        # This run's copies only (their folder), not other runs' on the machine.
        ProcessGroup("holders", cmdline=compile_pattern(re.escape(str(swift_frontend.folder)) + r".*bytearray\(20 \* 2\*\*20\)")),
        ProcessGroup("nobody", names=("no-such-process-name",)),
    ))
    result = readings(config)
    assert result[("aitools_process_group_processes", "holders")] == 1
    assert abs(result[("aitools_process_group_rss_bytes", "holders")] - process.memory_info().rss) < 4 * 2**20
    assert result[("aitools_process_group_processes", "nobody")] == 0


def test_processes_exiting_during_the_scan_are_skipped(swift_frontend):
    # Many short-lived processes come and go while the collector walks /proc.
    import subprocess, sys
    churn = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(20)]
    result = readings(Config(process_groups=(ProcessGroup("py", names=(psutil.Process().name(),)),)))
    for process in churn:
        process.wait()
    assert result[("aitools_process_group_processes", "py")] >= 1


@pytest.fixture
def psutil_path(monkeypatch):
    """The macOS reader (psutil's name, cmdline and memory_info; libproc is not here, so each
    process's figure is its resident set) on this Linux machine."""
    monkeypatch.setenv(proctable.SOURCE_ENV, "macos")
    yield
    assert isinstance(proctable.process_table().reader, proctable.MacReader)


def test_psutil_path_sums_the_group_and_matches_command_lines(psutil_path, swift_frontend):
    first = swift_frontend.start(hold_mb=40)
    second = swift_frontend.start(hold_mb=70)
    # Other test runs on the machine may have swift-frontend processes too: the folder of
    # this run's copies, in their command lines, picks out these two exactly.
    mine = re.escape(str(swift_frontend.folder))
    config = Config(process_groups=(
        ProcessGroup("swift-frontend", names=("swift-frontend",)),
        ProcessGroup("mine", cmdline=compile_pattern(mine)),
        ProcessGroup("holders", cmdline=compile_pattern(mine + r".*bytearray\(70 \* 2\*\*20\)")),
        ProcessGroup("nobody", names=("no-such-process-name",), cmdline=compile_pattern("no-such-(command|line)")),
    ))
    result = readings(config)
    expected = first.memory_info().rss + second.memory_info().rss
    assert result[("aitools_process_group_processes", "mine")] == 2
    assert abs(result[("aitools_process_group_rss_bytes", "mine")] - expected) < 4 * 2**20
    assert result[("aitools_process_group_rss_bytes", "mine")] > 110 * 2**20
    assert result[("aitools_process_group_processes", "swift-frontend")] >= 2
    assert result[("aitools_process_group_rss_bytes", "swift-frontend")] >= expected - 4 * 2**20
    assert result[("aitools_process_group_processes", "holders")] == 1
    assert abs(result[("aitools_process_group_rss_bytes", "holders")] - second.memory_info().rss) < 4 * 2**20
    assert result[("aitools_process_group_processes", "nobody")] == 0
    assert result[("aitools_process_group_rss_bytes", "nobody")] == 0


def test_psutil_and_procfs_paths_agree(swift_frontend, monkeypatch):
    held = swift_frontend.start(hold_mb=30)
    deadline = time.monotonic() + 10  # done loading: its resident set no longer moves between the two reads
    while held.status() != psutil.STATUS_SLEEPING and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    mine = re.escape(str(swift_frontend.folder))
    config = Config(process_groups=(ProcessGroup("mine", cmdline=compile_pattern(mine)),
                                    ProcessGroup("held", cmdline=compile_pattern(mine + r".*bytearray\(30 "))))
    monkeypatch.setenv(proctable.SOURCE_ENV, "procfs")
    procfs = readings(config)
    monkeypatch.setenv(proctable.SOURCE_ENV, "macos")
    by_psutil = readings(config)
    assert by_psutil.keys() == procfs.keys()
    for key, value in procfs.items():
        tolerance = 0 if key[0].endswith("_processes") else 4 * 2**20
        assert abs(by_psutil[key] - value) <= tolerance, key
    assert procfs[("aitools_process_group_processes", "held")] == 1
    assert procfs[("aitools_process_group_rss_bytes", "held")] > 30 * 2**20


def test_on_macos_a_group_sums_its_footprints(psutil_path, swift_frontend, monkeypatch):
    """On macOS a group's figure is its processes' physical footprints (libproc; a stand-in
    with the real function's C signature here), as the apps count them."""
    from tests.test_proc_table import stand_in_libproc

    first, second = swift_frontend.start(hold_mb=20), swift_frontend.start(hold_mb=30)
    figures = {first.pid: (first.memory_info().rss, 300 * 2**20), second.pid: (second.memory_info().rss, 500 * 2**20)}
    function, _ = stand_in_libproc(figures, denied=set())
    monkeypatch.setattr(proctable.process_table(), "reader", proctable.MacReader(proctable.footprint_reader(function)))
    mine = re.escape(str(swift_frontend.folder))
    result = readings(Config(process_groups=(ProcessGroup("mine", cmdline=compile_pattern(mine)),)))
    assert result[("aitools_process_group_processes", "mine")] == 2
    assert result[("aitools_process_group_rss_bytes", "mine")] == 800 * 2**20
