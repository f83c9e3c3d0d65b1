"""The macOS paths on recordings of real Macs (tests/recordings, README there): the system and
GPU collectors through stand-in vm_stat, sysctl and ioreg on PATH, and the apps matcher on
the recorded process tables."""

from __future__ import annotations

import os

import pytest

from exporter.collectors.apps import assign, breakdown
from exporter.collectors.base import CollectorError, SourceNotRunning
from exporter.collectors.gpu import GPUCollector, default_gpu_limit, parse_in_use
from exporter.collectors.macos import parse_swapusage
from exporter.collectors.system import SystemCollector, activity_monitor, parse_vm_stat_counts
from exporter.config import Config, DockerSection, LMStudioSection, OllamaSection, SystemSection
from tests.parts import recorded_mac

GiB, MiB = 2**30, 2**20
RECORDINGS = recorded_mac.names()


def samples(collector) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in collector.collect() for sample in family.samples}


@pytest.fixture(params=RECORDINGS)
def mac(request, tmp_path, monkeypatch):
    recording = recorded_mac.load(request.param)
    folder = recorded_mac.install(recording, tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return recording


def test_there_are_a_64_gb_workstation_and_a_16_gb_mac_under_pressure():
    assert {"mac-64gb-workstation", "mac-16gb-pressure", "mac-16gb-m1-after-swap"} <= set(RECORDINGS)
    for name in RECORDINGS:
        recording = recorded_mac.load(name)
        assert recording["format"] == 1 and recording["platform"] == "darwin"
        assert (recorded_mac.RECORDINGS / name / "README.md").is_file()


def test_activity_monitors_figures_from_the_recorded_vm_stat(mac):
    page_size, pages, _ = parse_vm_stat_counts(mac["commands"]["vm_stat"]["stdout"])
    figures = activity_monitor(page_size, pages)
    expected = mac["expected"]["activity_monitor"]
    for name in ("memory_used", "app_memory", "wired", "compressed", "cached_files"):
        assert figures[name] == pytest.approx(expected[name], rel=0.05), name
    # Memory Used is App Memory + Wired Memory + Compressed, as Activity Monitor adds them.
    assert figures["memory_used"] == figures["app_memory"] + figures["wired"] + figures["compressed"]
    # Available: free + cached files; Memory Used + available + the pages in no queue = physical memory.
    total = int(mac["commands"]["sysctl -n hw.memsize"]["stdout"])
    assert figures["available"] == (pages["free"] + pages["file_backed"] + pages["purgeable"]) * page_size
    # The rest are pages in no queue (the kernel's reserve): 4.6 % of memory on the real M1 of
    # ollama/ollama#7255 (48,554 of 1,048,576 pages).
    assert 0 < total - figures["memory_used"] - figures["available"] < 0.05 * total


def test_the_system_collector_on_the_recorded_mac(mac):
    result = samples(SystemCollector(SystemSection(source="vm_stat")))
    commands = mac["commands"]
    page_size, pages, counters = parse_vm_stat_counts(commands["vm_stat"]["stdout"])
    swap = parse_swapusage(commands["sysctl -n vm.swapusage"]["stdout"])
    assert result[("aitools_system_page_size_bytes", ())] == 16384
    assert result[("aitools_system_memory_total_bytes", ())] == int(commands["sysctl -n hw.memsize"]["stdout"])
    assert result[("aitools_system_memory_available_bytes", ())] == activity_monitor(page_size, pages)["available"]
    assert result[("aitools_system_swap_used_bytes", ())] == swap["used"] == pytest.approx(
        mac["expected"]["activity_monitor"]["swap_used"], abs=MiB)
    assert result[("aitools_system_swap_total_bytes", ())] == swap["total"]
    assert result[("aitools_system_memory_pressure_level", ())] == int(
        commands["sysctl -n kern.memorystatus_vm_pressure_level"]["stdout"])
    assert result[("aitools_system_memory_free_ratio", ())] == int(
        commands["sysctl -n kern.memorystatus_level"]["stdout"]) / 100
    assert result[("aitools_system_pageouts_total", ())] == counters["pageouts"]
    assert result[("aitools_system_swapouts_total", ())] == counters["swapouts"]
    by_state = {dict(labels)["state"]: value for (name, labels), value in result.items()
                if name == "aitools_system_memory_pages"}
    assert by_state == pages
    assert by_state["stored_in_compressor"] > by_state["compressed"]  # data held compressed > the pages it takes


def test_the_kernels_free_share_is_its_available_pages_over_memory(mac):
    # XNU (osfmk/vm/vm_page.h, macOS): memorystatus_level = (active + inactive + free + speculative)
    # * 100 / total pages; the recordings hold the level the kernel would print for their counts.
    page_size, pages, _ = parse_vm_stat_counts(mac["commands"]["vm_stat"]["stdout"])
    total_pages = int(mac["commands"]["sysctl -n hw.memsize"]["stdout"]) // page_size
    level = sum(pages[state] for state in ("active", "inactive", "free", "speculative")) * 100 // total_pages
    assert int(mac["commands"]["sysctl -n kern.memorystatus_level"]["stdout"]) == level


def test_a_key_the_mac_lacks_leaves_out_only_its_figure(mac, tmp_path, monkeypatch):
    lacking = {**mac, "commands": {key: value for key, value in mac["commands"].items()
                                   if key not in ("sysctl -n kern.memorystatus_level", "sysctl -n vm.swapusage")}}
    folder = recorded_mac.install(lacking, tmp_path / "lacking")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    result = samples(SystemCollector(SystemSection(source="vm_stat")))
    assert ("aitools_system_memory_free_ratio", ()) not in result
    assert result[("aitools_system_memory_pressure_level", ())] in (1, 2, 4)
    assert result[("aitools_system_memory_total_bytes", ())] == int(mac["commands"]["sysctl -n hw.memsize"]["stdout"])
    # Swap falls back to what psutil reads (on a Mac the same kernel figure; here this machine's).
    assert ("aitools_system_swap_used_bytes", ()) in result


def test_the_gpu_collector_on_the_recorded_mac(mac):
    result = samples(GPUCollector())
    assert result[("aitools_gpu_memory_wired_bytes", ())] == mac["expected"]["gpu"]["wired"]
    assert result[("aitools_gpu_memory_limit_bytes", ())] == mac["expected"]["gpu"]["limit"]


def test_a_set_wired_limit_is_the_ceiling(mac, tmp_path, monkeypatch):
    raised = {**mac, "commands": {**mac["commands"], "sysctl -n iogpu.wired_limit_mb": {"stdout": "57344\n",
                                                                                        "returncode": 0}}}
    folder = recorded_mac.install(raised, tmp_path / "raised")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    assert samples(GPUCollector())[("aitools_gpu_memory_limit_bytes", ())] == 57344 * MiB


def test_a_mac_without_the_iogpu_key_gets_the_default_ceiling(mac, tmp_path, monkeypatch):
    older = {**mac, "commands": {key: value for key, value in mac["commands"].items()
                                 if key not in ("sysctl -n iogpu.wired_limit_mb",)}}
    folder = recorded_mac.install(older, tmp_path / "older")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    result = samples(GPUCollector())
    # iogpu.* unknown: the default for the machine's memory stands.
    assert result[("aitools_gpu_memory_limit_bytes", ())] == mac["expected"]["gpu"]["limit"]


def test_no_ioreg_is_no_gpu_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SourceNotRunning, match="ioreg not found"):
        list(GPUCollector().collect())


@pytest.mark.parametrize("output, expected", [
    (b'"PerformanceStatistics" = {"In use system memory (driver)"=0,"In use system memory"=1200357376}', 1200357376),
    (b'"PerformanceStatistics" = {"In use system memory (driver)"=77}', None),
    (b'{"In use system memory"=5}\n{"In use system memory"=7}', 12),
    (b"garbage", None),
])
def test_in_use_system_memory_not_the_driver_variant(output, expected):
    assert parse_in_use(output) == expected


@pytest.mark.parametrize("memory_gib, limit_mib", [(16, 10922.67), (32, 21845.34), (64, 49152.0), (96, 73728.0)])
def test_metals_default_working_set_as_llama_cpp_logged_it(memory_gib, limit_mib):
    assert default_gpu_limit(memory_gib * GiB) / MiB == pytest.approx(limit_mib, abs=0.01)


def test_every_recorded_process_lands_in_the_app_a_mac_user_would_name(mac):
    processes = recorded_mac.processes(mac)
    assignments = assign(processes, Config().apps, own_pid=-1, bundle_ids=frozenset())
    landed = {str(proc.pid): assignments[proc.pid].app or proc.name for proc in processes}
    assert landed == mac["expected"]["apps"]


def test_the_breakdown_adds_up_to_activity_monitors_memory_used(mac):
    # Footprints (which hold each process's compressed pages) plus the kernel's wired pages in
    # system: Activity Monitor's Memory Used (App Memory + Wired Memory + Compressed) within 5 %.
    processes = recorded_mac.processes(mac)
    apps = Config().apps
    assignments = assign(processes, apps, own_pid=-1, bundle_ids=frozenset())
    page_size, pages, _ = parse_vm_stat_counts(mac["commands"]["vm_stat"]["stdout"])
    memory, _ = breakdown(processes, assignments, apps, pages["wired"] * page_size)
    assert sum(memory.values()) == pytest.approx(mac["expected"]["activity_monitor"]["memory_used"], rel=0.05)


@pytest.mark.parametrize("key, answer, absent", [
    ("sysctl -n kern.memorystatus_level", "9" * 4000 + "\n", "aitools_system_memory_free_ratio"),
    ("sysctl -n kern.memorystatus_level", "250\n", "aitools_system_memory_free_ratio"),
    ("sysctl -n kern.memorystatus_vm_pressure_level", "3\n", "aitools_system_memory_pressure_level"),
    ("sysctl -n kern.memorystatus_vm_pressure_level", "warn\n", "aitools_system_memory_pressure_level"),
])
def test_a_value_that_is_not_the_keys_leaves_out_its_figure(mac, tmp_path, monkeypatch, key, answer, absent):
    odd = {**mac, "commands": {**mac["commands"], key: {"stdout": answer, "returncode": 0}}}
    folder = recorded_mac.install(odd, tmp_path / "odd")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    result = samples(SystemCollector(SystemSection(source="vm_stat")))
    assert (absent, ()) not in result
    assert result[("aitools_system_memory_total_bytes", ())] == int(mac["commands"]["sysctl -n hw.memsize"]["stdout"])


@pytest.mark.parametrize("text", ["", "total = 1" + "0" * 400 + "M  used = 1M", "used = 1.00M", "garbage"])
def test_swapusage_that_is_not_sysctls_format_is_refused(text):
    with pytest.raises(ValueError):
        parse_swapusage(text)


def test_swapusage_in_any_unit():
    assert parse_swapusage("total = 2.00G  used = 512.50M  free = 1535.50M  (encrypted)") == {
        "total": 2 * GiB, "used": round(512.5 * MiB), "free": round(1535.5 * MiB)}


def test_the_whole_recorded_mac_adds_up_with_the_gpu_under_ollama(mac, ollama_standin):
    # The recorded Mac's sources together: vm_stat, sysctl and ioreg through the stand-ins,
    # Ollama's recorded /api/ps and /api/tags from a stand-in server, Docker's /info from a
    # stand-in engine, the apps from the recorded process table. The tree's figures add up
    # to Activity Monitor's Memory Used within 5 %, and the model on the GPU sits under
    # Ollama, out of System/OS.
    from prometheus_client.core import GaugeMetricFamily

    from exporter.breakdown import build_tree
    from exporter.readings import Samples
    from exporter.collectors.docker import DockerCollector
    from exporter.collectors.llm import OllamaCollector
    from tests.test_docker_collector import StandInEngine

    docker = "docker GET /info" in mac["http"]  # Docker Desktop was running
    engine = StandInEngine()
    try:
        if docker:
            engine.answers["/info"] = (200, mac["http"]["docker GET /info"]["body"])
            engine.answers["/containers/json"] = (200, mac["http"]["docker GET /containers/json"]["body"])
        for model in mac["http"]["ollama GET /api/ps"]["body"]["models"]:
            ollama_standin.running[model["name"]] = model
        for model in mac["http"]["ollama GET /api/tags"]["body"]["models"]:
            ollama_standin.installed[model["name"]] = model
        config = Config(system=SystemSection(source="vm_stat"), docker=DockerSection(enabled=docker, host=engine.host),
                        ollama=OllamaSection(url=ollama_standin.url), lmstudio=LMStudioSection(url=None))
        collectors = (SystemCollector(config.system, config.timeout), GPUCollector(config.timeout),
                      OllamaCollector(config.ollama, config.timeout),
                      *((DockerCollector(config.docker, config.timeout),) if docker else ()))
        families = [family for collector in collectors for family in collector.collect()]
    finally:
        engine.close()
    processes = recorded_mac.processes(mac)
    assignments = assign(processes, config.apps, own_pid=-1, bundle_ids=frozenset())
    page_size, pages, _ = parse_vm_stat_counts(mac["commands"]["vm_stat"]["stdout"])
    memory, _ = breakdown(processes, assignments, config.apps, pages["wired"] * page_size)
    apps = GaugeMetricFamily("aitools_app_memory_bytes", "apps", labels=["app"])
    for app, value in memory.items():
        apps.add_metric([app], value)
    in_vm = GaugeMetricFamily("aitools_app_docker_vm", "vm")
    in_vm.add_metric([], 1)
    success = GaugeMetricFamily("aitools_collector_success", "success", labels=["collector"])
    success.add_metric(["ollama"], 1)
    samples = Samples([*families, apps, in_vm, success])

    assert samples.value("aitools_docker_vm_memory_limit_bytes") == mac["expected"].get("docker_vm_limit")
    tree, monitoring = build_tree(config, samples)
    figures = {child.name: child.bytes for child in tree.children}
    expected = mac["expected"]["activity_monitor"]
    assert tree.bytes == pytest.approx(expected["memory_used"], rel=0.001)  # the root: Activity Monitor's figure
    assert sum(value for value in figures.values() if value is not None) + (monitoring.bytes or 0) == pytest.approx(
        expected["memory_used"], rel=0.05)
    on_gpu = sum(model["size_vram"] for model in mac["http"]["ollama GET /api/ps"]["body"]["models"])
    ollama = next(child for child in tree.children if child.name == "LLM services").children[0]
    assert ollama.name == "Ollama" and ollama.bytes == memory["ollama"] + on_gpu
    assert [(child.name, child.bytes) for child in ollama.children] == (
        [("GPU-wired memory", on_gpu)] if on_gpu else [])
    assert figures["System/OS"] == memory["system"] - on_gpu
    if docker:  # the VM beyond its containers (no stats recorded: no container's usage is known)
        node = next(child for child in tree.children if child.name == "Docker")
        assert node.children[-1].name == "VM beyond its containers" and node.children[-1].bytes == memory["docker"]


@pytest.mark.parametrize("answer, error, reason", [
    ({"stdout": '+-o IntelAccelerator  <class IntelAccelerator>\n  {\n    "IOClass" = "IntelAccelerator"\n  }\n',
      "returncode": 0}, SourceNotRunning, "no IOAccelerator with"),
    ({"stdout": "", "returncode": 1}, CollectorError, "ioreg failed: exit status 1"),
])
def test_an_accelerator_without_the_figure_is_no_gpu_and_a_failing_ioreg_fails(mac, tmp_path, monkeypatch, answer,
                                                                                  error, reason):
    other = {**mac, "commands": {**mac["commands"], "ioreg -r -d 1 -w 0 -c IOAccelerator": answer}}
    folder = recorded_mac.install(other, tmp_path / "other")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(error, match=reason):
        list(GPUCollector().collect())
