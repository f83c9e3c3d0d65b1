"""Process groups against real processes named swift-frontend."""

import psutil

from exporter.collectors.process import ProcessCollector
from exporter.config import Config, ProcessGroup
from exporter.patterns import compile_pattern


def readings(config):
    found = {}
    for family in ProcessCollector(config).collect():
        for sample in family.samples:
            found[(sample.name, sample.labels["group"])] = sample.value
    return found


def test_no_swift_frontend_is_zero_not_absent():
    result = readings(Config())
    assert result[("aitools_process_group_processes", "swift-frontend")] == 0
    assert result[("aitools_process_group_rss_bytes", "swift-frontend")] == 0


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
        ProcessGroup("holders", cmdline=compile_pattern(r"bytearray\(20 \* 2\*\*20\)")),
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
