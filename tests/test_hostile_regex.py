"""Process-group regexes against hostile command lines: linear time (RE2), a capped match.

Before RE2, the README's own `python.*(uvicorn|torch)` against one process with a 140 KB
command line made a scrape take 17.9 s and /healthz stall as long (Python's `re`
backtracks and holds the interpreter lock), and `(a+)+$` froze it on a crafted one.
"""

import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from exporter.config import ConfigError, parse_config
from exporter.patterns import CMDLINE_LIMIT, compile_pattern, matches
from tests.parts.exporter_process import ExporterProcess

README_PATTERN = "python.*(uvicorn|torch)"
NESTED_PATTERN = "(a+)+$"
SLEEP = "import time; time.sleep(120)"
# 140,000 bytes: every "python" starts a scan to the end in a backtracking engine. In ten
# arguments: Linux takes at most 128 KiB in one.
LONG = ["python " * 2_000] * 10

CONFIG = f"""\
docker: {{host: "unix:///nonexistent/docker.sock"}}
ollama: {{url: "http://127.0.0.1:9"}}
lmstudio: {{url: "http://127.0.0.1:9"}}
process_groups:
  python-ml: {{cmdline: "{README_PATTERN}"}}
  nested: {{cmdline: "{NESTED_PATTERN}"}}
"""


@pytest.fixture
def hostile_processes():
    commands = {
        "long": [sys.executable, "-c", SLEEP, *LONG],                               # 140 KB, no match
        "long-uvicorn": [sys.executable, "-c", SLEEP, "uvicorn", *LONG],         # match early in the line
        "torch-past-cap": [sys.executable, "-c", SLEEP, *LONG, "torch"],         # match only past the 16 KiB cap
        "crafted": [sys.executable, "-c", SLEEP, "a" * 40 + "!"],               # (a+)+$: 2^40 steps in re
        "plain-a": [sys.executable, "-c", SLEEP, "aaaa"],                       # (a+)+$ matches
    }
    started = {name: subprocess.Popen(argv) for name, argv in commands.items()}
    time.sleep(0.3)
    yield {name: psutil.Process(process.pid) for name, process in started.items()}
    for process in started.values():
        process.kill()
        process.wait(10)


def expected_counts(patterns):
    """The processes of the machine whose command line each pattern matches (psutil's view)."""
    counts = dict.fromkeys(patterns, 0)
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"]
        for name, pattern in patterns.items():
            if cmdline and matches(pattern, " ".join(cmdline)):
                counts[name] += 1
    return counts


def test_hostile_command_lines_do_not_stall_scrapes_or_healthz(hostile_processes):
    assert len(" ".join(hostile_processes["long"].cmdline()).encode()) > 140_000
    patterns = {"python-ml": compile_pattern(README_PATTERN), "nested": compile_pattern(NESTED_PATTERN)}
    cmdline = {name: " ".join(process.cmdline()) for name, process in hostile_processes.items()}
    assert [name for name in cmdline if matches(patterns["python-ml"], cmdline[name])] == ["long-uvicorn"]
    assert [name for name in cmdline if matches(patterns["nested"], cmdline[name])] == ["plain-a"]

    with ExporterProcess(CONFIG) as exporter:
        healthz_seconds = []
        scrape = {}

        def timed_scrape():
            started = time.monotonic()
            scrape["response"] = exporter.scrape(timeout=60)
            scrape["seconds"] = time.monotonic() - started

        for _ in range(3):
            expected = expected_counts(patterns)
            worker = threading.Thread(target=timed_scrape)
            worker.start()
            while worker.is_alive():
                started = time.monotonic()
                assert httpx.get(exporter.url + "/healthz", timeout=30).status_code == 200
                healthz_seconds.append(time.monotonic() - started)
                time.sleep(0.01)
            worker.join()
            assert scrape["response"].status_code == 200
            assert scrape["seconds"] < 2, f"scrape took {scrape['seconds']:.2f}s"
            lines = scrape["response"].text.splitlines()
            for group in patterns:
                line = next(line for line in lines if line.startswith(f'aitools_process_group_processes{{group="{group}"}}'))
                assert float(line.split()[-1]) == expected[group], line
        print(f"figures: last scrape {scrape['seconds']:.3f}s, /healthz at most {max(healthz_seconds):.3f}s")
        assert healthz_seconds and max(healthz_seconds) < 1, f"/healthz took up to {max(healthz_seconds):.2f}s"


def test_matching_cost_is_linear_and_capped():
    nested = compile_pattern(NESTED_PATTERN)
    readme = compile_pattern(README_PATTERN)
    started = time.monotonic()
    assert not matches(nested, "x " + "a" * 10_000 + "!")  # 2^10000 steps for a backtracking engine
    assert not matches(readme, "".join(LONG) * 10)  # 1.4 MB of "python ": only the first 16 KiB are read
    assert matches(readme, "python -m uvicorn app:main")
    assert time.monotonic() - started < 1
    assert matches(readme, "python " + "x" * (CMDLINE_LIMIT - 20) + "torch")
    assert not matches(readme, "python " + "x" * CMDLINE_LIMIT + "torch")
    # The raw bytes of /proc/PID/cmdline: NULs read as spaces, the last one dropped.
    assert matches(compile_pattern("^python -m torch.distributed$"), b"python\0-m\0torch.distributed\0")


@pytest.mark.parametrize("pattern, reason", [
    (r"(python)\1", "invalid escape sequence"),
    (r"python(?=.*torch)", "invalid perl operator"),
    (r"(?<!/usr/bin/)python", "invalid perl operator"),
    (r"(?!x)python", "invalid perl operator"),
])
def test_patterns_re2_cannot_run_in_linear_time_are_refused(pattern, reason):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"process_groups:\n  ml:\n    cmdline: '{pattern}'\n", "c.yml")
    assert caught.value.key == "process_groups.ml.cmdline" and caught.value.line == 3
    assert reason in caught.value.reason and "RE2" in caught.value.reason


def test_a_long_program_name_is_still_found_when_its_command_line_is_cut(tmp_path):
    """The kernel cuts names at 15 bytes; the full one comes from the command line, of which
    only the first CMDLINE_LIMIT bytes are read."""
    import os
    import shutil

    from exporter.collectors.process import ProcessCollector
    from exporter.config import Config, ProcessGroup

    name = "hostile-long-program-name"
    binary = tmp_path / name
    shutil.copy2(os.path.realpath(sys.executable), binary)
    process = subprocess.Popen([str(binary), "-c", SLEEP, *LONG], env=dict(os.environ, PYTHONHOME=sys.base_prefix))
    try:
        time.sleep(0.3)
        config = Config(process_groups=(ProcessGroup("long", names=(name,)),
                                        ProcessGroup("cut", cmdline=compile_pattern(f"{name} -c import time"))))
        found = {(s.name, s.labels["group"]): s.value for f in ProcessCollector(config.process_groups, config.timeout).collect() for s in f.samples}
        assert found[("aitools_process_group_processes", "long")] == 1
        assert found[("aitools_process_group_processes", "cut")] == 1
        assert found[("aitools_process_group_rss_bytes", "long")] == pytest.approx(
            psutil.Process(process.pid).memory_info().rss, abs=4 * 2**20)
    finally:
        process.kill()
        process.wait(10)
