"""`aitools-exporter record` and `--replay` (exporter/collectors/machine.py, exporter/recording.py):
the recordings of Macs (tests/recordings/, each with its sources) run through every collector
here, with macOS's logic, and a recording made on this machine replays to the live figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.collectors.apps import AppsCollector
from exporter.collectors.machine import Live, Recorder, Replay, use
from exporter.config import Config, parse_config
from exporter.recording import REDACTED, load, save
from tests.parts.exporter_process import ExporterProcess

RECORDINGS = Path(__file__).parent / "recordings"
MACS = sorted(path.name for path in RECORDINGS.iterdir() if (path / "recording.json").is_file())


@pytest.fixture
def machine():
    """Whatever a test makes current, the live machine again afterwards."""
    yield use
    use(Live())


def snapshot_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "exporter", "snapshot", "--json", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", MACS)
def test_a_recorded_mac_replays_to_what_activity_monitor_showed(name):
    """The whole command on the recording, on this Linux machine, with no stand-in on PATH: the
    tree's root is Activity Monitor's Memory Used, its parts add up to it within 5 %, and the
    system and GPU figures are the recording's."""
    expected = load(RECORDINGS / name).expected
    result = snapshot_json("--replay", str(RECORDINGS / name))
    tree = result["tree"]
    used = expected["activity_monitor"]["memory_used"]
    assert tree["bytes"] == pytest.approx(used, rel=0.05)
    parts = sum(child["bytes"] or 0 for child in tree["children"])
    assert parts == pytest.approx(used, rel=0.05)
    metrics = {(m["name"], tuple(sorted(m["labels"].items()))): m["value"] for m in result["metrics"]}
    assert metrics[("aitools_collector_success", (("collector", "system"),))] == 1
    assert metrics[("aitools_collector_success", (("collector", "apps"),))] == 1
    assert metrics[("aitools_system_swap_used_bytes", ())] == pytest.approx(expected["activity_monitor"]["swap_used"],
                                                                             rel=0.01, abs=2**20)
    if "gpu" in expected:
        assert metrics[("aitools_gpu_memory_wired_bytes", ())] == expected["gpu"]["wired"]
        assert metrics[("aitools_gpu_memory_limit_bytes", ())] == expected["gpu"]["limit"]
    if "docker_vm_limit" in expected:
        assert metrics[("aitools_docker_vm_memory_limit_bytes", ())] == expected["docker_vm_limit"]
    # Every process has the app a Mac user would name.
    assert metrics[("aitools_app_memory_figure_processes", (("figure", "footprint"),))] > 0


@pytest.mark.parametrize("name", MACS)
def test_every_recorded_process_lands_in_the_app_a_mac_user_would_name(name, machine):
    recording = load(RECORDINGS / name)
    machine(Replay(recording))
    config = parse_config(recording.config_text) if recording.config_text else Config()
    _, _, processes, assignments, figures, _ = AppsCollector(config.apps, config.docker, config.timeout).read()
    assert len(processes) == len(recording.processes)
    for pid, app in recording.expected.get("apps", {}).items():
        assert assignments[int(pid)].app in (app, None), (pid, app, assignments[int(pid)])
        if assignments[int(pid)].app is None:  # a program of its own (the ten largest get a label)
            assert next(p.name for p in processes if p.pid == int(pid)) == app


def test_serve_replays_a_mac_on_its_page():
    name = "mac-64gb-workstation"
    expected = load(RECORDINGS / name).expected
    with ExporterProcess(args=("serve", "--replay", str(RECORDINGS / name))) as exporter:
        page = {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(exporter.scrape().text) for s in family.samples}
    assert page[("aitools_gpu_memory_wired_bytes", ())] == expected["gpu"]["wired"]
    assert page[("aitools_collector_success", (("collector", "gpu"),))] == 1
    assert page[("aitools_llm_server_up", (("server", "ollama"),))] == 1
    assert page[("aitools_docker_up", ())] == 1
    containers = [v for (n, labels), v in page.items() if n == "aitools_container_memory_usage_bytes"]
    assert len(containers) == 8 and sum(containers) > 3e9


def test_a_recording_made_here_replays_to_the_live_figures(tmp_path, machine, app_processes):
    """Record this machine once (the real /proc, /proc/meminfo), replay the recording: every
    figure of the sources is the same."""
    app_processes.start("swift-frontend", 30)
    config = parse_config("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"
                          "llamacpp: {url: null}\n")
    recorder = machine(Recorder())
    live = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in Exporter(config).registry.collect()
            for s in f.samples if not s.name.startswith("aitools_collector_duration")}
    save(recorder.recording, tmp_path)
    machine(Replay(load(tmp_path)))
    replayed = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in Exporter(config).registry.collect()
                for s in f.samples if not s.name.startswith("aitools_collector_duration")}
    assert replayed == live
    assert live[("aitools_process_group_processes", (("group", "swift-frontend"),))] >= 1
    assert any(name == "aitools_app_memory_bytes" and value > 0 for (name, _), value in live.items())


def test_a_token_in_an_argument_never_reaches_the_file(tmp_path, app_processes):
    """The command as a user runs it: a Python ML service started with secrets in its
    arguments; the recording keeps its program and what the python app's pattern needs."""
    config = tmp_path / "config.yml"
    config.write_text("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\nllamacpp: {url: null}\n"
                      "apps:\n  ml: {cmdline: 'serve_model'}\n")
    app_processes.start("python3", 5, tag="serve_model --api-key sk-live-9f8e7d6c5b4a392817060000 "
                                           "--token=hunter2hunter2")
    done = subprocess.run([sys.executable, "-m", "exporter", "record", str(tmp_path / "rec"), "--config.file",
                           str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "replay it with: aitools-exporter snapshot --replay" in done.stdout
    text = (tmp_path / "rec" / "recording.json").read_text()
    assert "sk-live-9f8e7d6c5b4a392817060000" not in text and "hunter2" not in text
    recording = load(tmp_path / "rec")
    ml = [p for p in recording.processes if p.cmdline and "serve_model" in p.cmdline]
    assert ml and REDACTED in ml[0].cmdline
    # Replayed, the process is in the app its pattern names, as it was live.
    replayed = snapshot_json("--replay", str(tmp_path / "rec"))
    apps = {m["labels"]["app"]: m["value"] for m in replayed["metrics"] if m["name"] == "aitools_app_processes"}
    assert apps.get("ml", 0) >= 1


@pytest.mark.parametrize("content, said", [
    ('{"format": 1, "platform": "darwin", "processes": [{"pid": "x"}]}', "processes[0].pid"),
    ("not json", "not JSON"),
    ('{"format": 1, "platform": "darwin", "config": "budgets: {docker: lots}"}', "budgets.docker"),
])
def test_a_bad_recording_is_refused_with_the_reason(tmp_path, content, said):
    (tmp_path / "recording.json").write_text(content)
    done = subprocess.run([sys.executable, "-m", "exporter", "snapshot", "--replay", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert said in done.stderr
