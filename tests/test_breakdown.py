"""`snapshot`'s breakdown tree (exporter/breakdown.py) against the samples it was built from.

One real collection (a real Docker engine's containers in compose projects, one of them
the monitoring bundle; real swift-frontend processes; Ollama and LM Studio stand-ins; the
real /proc) and every figure of the tree checked against that collection's samples. The
apps collector lands from another branch: its contract names (aitools_app_memory_bytes)
are added to a real collection here, and the tree must take its figures from them.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from prometheus_client.core import GaugeMetricFamily

from exporter.app import Exporter
from exporter.breakdown import Node, build_tree
from exporter.config import Config, DockerSection, LMStudioSection, OllamaSection
from exporter.readings import Samples
from exporter.snapshot import human_bytes, render_json, render_table, snapshot_of
from tests.test_cli_and_server import run_cli

GB = 10**9
MiB = 2**20


def find(node: Node, *path: str) -> Node:
    for name in path:
        node = next(child for child in node.children if child.name == name)
    return node


def llm_config(ollama_standin, lmstudio_standin, **extra) -> Config:
    ollama_standin.load("llama3.1:8b", size=4_920_000_000)
    ollama_standin.load("nomic-embed-text:latest", size=580_000_000)
    ollama_standin.install("mistral:7b", size_on_disk=4_113_301_824)
    lmstudio_standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000, instances=2)
    return Config(ollama=OllamaSection(url=ollama_standin.url), lmstudio=LMStudioSection(url=lmstudio_standin.url), **extra)


def test_tree_figures_are_the_collected_samples(docker_engine, swift_frontend, ollama_standin, lmstudio_standin):
    created = []
    try:
        for name, project, service, held in (("supabase-db", "supabase", "db", 24),
                                             ("supabase-studio", "supabase", "studio", 8),
                                             ("scratch", None, None, 4),
                                             ("aitools-prometheus", "aitools-monitoring", "prometheus", 12),
                                             ("aitools-grafana", "aitools-monitoring", "grafana", 6)):
            labels = {"com.docker.compose.project": project, "com.docker.compose.service": service} if project else {}
            if project == "aitools-monitoring":
                labels["dev.aitools.app"] = "monitoring"  # as compose.monitoring.yml labels the bundle
            created.append(docker_engine.run(name, hold_mb=held, labels=labels,
                                             memory_limit="64m" if name == "supabase-db" else None))
        swift_frontend.start(hold_mb=60)
        config = llm_config(ollama_standin, lmstudio_standin, docker=DockerSection(host=docker_engine.host))
        exporter = Exporter(config)
        # The tree from the sources alone (the apps collector's figures left out; the test
        # below gives the tree the apps).
        samples = Samples(family for family in exporter.registry.collect() if not family.name.startswith("aitools_app_"))
        snapshot = snapshot_of(config, samples, exporter.last_errors())
    finally:
        for container in created:
            docker_engine.client.api.remove_container(container, force=True)
    tree, monitoring = snapshot.tree, snapshot.monitoring
    usage = {labels["name"]: value for labels, value in samples.all("aitools_container_memory_usage_bytes")}
    assert {"supabase-db", "supabase-studio", "scratch", "aitools-prometheus", "aitools-grafana"} <= set(usage)

    # Docker -> compose projects -> containers; the monitoring bundle apart.
    docker = find(tree, "Docker")
    assert [child.name for child in docker.children] == ["(no compose project)", "supabase"]
    supabase = find(docker, "supabase")
    assert {c.name: c.bytes for c in supabase.children} == {n: usage[n] for n in ("supabase-db", "supabase-studio")}
    assert supabase.bytes == usage["supabase-db"] + usage["supabase-studio"]
    db = find(supabase, "supabase-db")
    assert (db.budget, db.budget_bytes) == ("container limit", 64 * MiB)
    assert docker.bytes == docker.counted_bytes == pytest.approx(supabase.bytes + usage["scratch"])
    assert docker.budget == "docker" and docker.budget_bytes == config.budgets["docker"]
    assert {c.name: c.bytes for c in monitoring.children} == {n: usage[n] for n in ("aitools-prometheus", "aitools-grafana")}
    assert monitoring.bytes == usage["aitools-prometheus"] + usage["aitools-grafana"]

    # Swift compilation: the swift-frontend group against swift_build.
    swift = find(tree, "Swift compilation (Xcode)")
    assert swift.bytes == samples.value("aitools_process_group_rss_bytes", group="swift-frontend") >= 60 * MiB
    assert swift.budget == "swift_build" and swift.share == swift.bytes / config.budgets["swift_build"]

    # LLM services -> Ollama / LM Studio -> models.
    llm = find(tree, "LLM services")
    assert {c.name: c.bytes for c in find(llm, "Ollama").children} == {
        "llama3.1:8b": 4_920_000_000, "nomic-embed-text:latest": 580_000_000}
    assert find(llm, "Ollama").bytes == 5_500_000_000 and find(llm, "Ollama").share == 5_500_000_000 / 8e9
    assert find(llm, "LM Studio", "qwen/qwen3-4b-2507").bytes == 5_000_000_000
    assert llm.bytes == 10_500_000_000

    # System/OS without the apps collector: the wired pages.
    wired = samples.value("aitools_system_memory_pages", state="wired") * samples.value("aitools_system_page_size_bytes")
    assert find(tree, "System/OS").bytes == wired
    used = samples.value("aitools_system_memory_total_bytes") - samples.value("aitools_system_memory_available_bytes")
    # The stand-ins' 10.5 GB of models are more than this machine uses: the root never shows
    # less than its parts, and says which figure it shows and what the used memory is.
    parts = sum(child.bytes for child in tree.children if child.bytes is not None)
    assert tree.bytes == max(used, parts) and tree.budget == "development_total"
    if parts > used:
        assert tree.note.startswith("shows its parts' sum; the used memory") and human_bytes(used) in tree.note
    assert all(node.bytes >= sum(c.bytes for c in node.children if c.bytes is not None)
               for _, node in tree.walk() if node.children)
    for name in ("IDE", "Python ML", "Other"):  # only the apps collector measures these
        assert find(tree, name).bytes is None

    # The table draws the tree; --json gives the same tree, beside the keys scripts read today.
    table = render_table(config, snapshot)
    assert "\n├─ Docker " in table and "\n│  └─ supabase " in table and "\n│     ├─ supabase-db " in table
    assert "\n│  ├─ (no compose project) " in table and "\n│  │  └─ scratch " in table
    assert "Monitoring (this tool)" in table and "└─ aitools-prometheus" in table
    data = json.loads(json.dumps(render_json(config, snapshot)))
    assert {"profile", "budgets", "readings", "collectors", "metrics", "tree", "monitoring", "llm_fits"} <= set(data)
    assert data["tree"] == json.loads(json.dumps(tree.as_dict()))
    assert [(f["model"], f["fits"]) for f in data["llm_fits"]] == [("mistral:7b", False)]  # 4.1 GB: the budget leaves 2.5


def with_apps(families, apps: dict[str, float]):
    """The collection with these app figures in place of the apps collector's own."""
    families = [family for family in families if family.name != "aitools_app_memory_bytes"]
    app = GaugeMetricFamily("aitools_app_memory_bytes", "Memory of each application.", labels=["app"])
    for name, value in apps.items():
        app.add_metric([name], value)
    return [*families, app]


APPS = {"docker": 9.1 * GB, "node": 0.8 * GB, "xcode": 5.5 * GB, "ide": 3.7 * GB, "ollama": 5.9 * GB,
        "lmstudio": 5.2 * GB, "python": 1.2 * GB, "system": 8.0 * GB, "other": 2.2 * GB,
        "monitoring": 0.6 * GB, "comfyui": 4.4 * GB}


def test_tree_takes_the_apps_figures_where_the_samples_have_them(swift_frontend, ollama_standin, lmstudio_standin):
    swift_frontend.start(hold_mb=40)
    config = llm_config(ollama_standin, lmstudio_standin, docker=DockerSection(enabled=False))
    lmstudio_standin.mode = "http500"  # running but unreadable: its app is measured, its loaded models are not
    exporter = Exporter(config)
    samples = Samples(with_apps(exporter.registry.collect(), APPS))

    tree, monitoring = build_tree(config, samples)

    assert [child.name for child in tree.children] == [
        "Docker", "Node.js servers", "Swift compilation (Xcode)", "IDE", "LLM services", "Python ML", "System/OS",
        "comfyui", "Other"]
    figures = {child.name: child.bytes for child in tree.children}
    assert figures == {"Docker": APPS["docker"], "Node.js servers": APPS["node"],
                       "Swift compilation (Xcode)": APPS["xcode"], "IDE": APPS["ide"],
                       "LLM services": APPS["ollama"] + APPS["lmstudio"], "Python ML": APPS["python"],
                       "System/OS": APPS["system"], "comfyui": APPS["comfyui"], "Other": APPS["other"]}
    assert monitoring.bytes == APPS["monitoring"]
    # The budgets still count what they count: the loaded models, the swift-frontend group.
    ollama = find(tree, "LLM services", "Ollama")
    assert (ollama.bytes, ollama.counted_bytes, ollama.budget) == (APPS["ollama"], 5_500_000_000, "ollama")
    lmstudio = find(tree, "LLM services", "LM Studio")
    assert (lmstudio.bytes, lmstudio.counted_bytes, lmstudio.share) == (APPS["lmstudio"], None, None)
    assert lmstudio.note.startswith("not read")
    swift = find(tree, "Swift compilation (Xcode)")
    group = samples.value("aitools_process_group_rss_bytes", group="swift-frontend")
    assert [(c.name, c.bytes, c.budget) for c in swift.children] == [
        (f"swift-frontend ({int(samples.value('aitools_process_group_processes', group='swift-frontend'))} processes)",
         group, "swift_build")]


def test_snapshot_command_prints_the_tree_and_json(tmp_path, swift_frontend):
    swift_frontend.start(hold_mb=30)
    config = tmp_path / "config.yml"
    config.write_text("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n")
    table = run_cli("snapshot", "--config.file", str(config))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[2] == "Where the memory goes:" and lines[3].startswith("Workstation (used memory)")
    swift = next(index for index, line in enumerate(lines) if line.startswith("├─ Swift compilation (Xcode)"))
    # The budget stands on the Swift node, or on its swift-frontend group where the apps
    # collector gives the node the whole xcode app.
    assert "swift_build" in lines[swift] or (lines[swift + 1].startswith("│  └─ swift-frontend")
                                             and "swift_build" in lines[swift + 1])
    data = json.loads(run_cli("snapshot", "--json", "--config.file", str(config)).stdout)
    assert data["tree"]["name"] == "Workstation (used memory)"
    assert [child["name"] for child in data["tree"]["children"]][:3] == [
        "Docker", "Node.js servers", "Swift compilation (Xcode)"]
    assert data["llm_fits"] == [] and data["readings"]
    # Which figure each process's memory is: on Linux resident less shared, for every process.
    counted = data["process_memory_figures"]
    assert set(counted) == {"resident_less_shared"} and counted["resident_less_shared"] > 10
    assert any(line.startswith("Process memory: resident set less shared pages for ") for line in lines)


def test_the_snapshot_says_which_figure_the_macos_reader_used(tmp_path):
    """The macOS reader on this machine (AITOOLS_PROCESS_SOURCE=macos, vm_stat a stand-in;
    no libproc here, so every process's figure is its resident set): the snapshot says so."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "vm_stat_apple_silicon.txt"
    (tmp_path / "vm_stat").write_text(f"#!/bin/sh\ncat '{data}'\n")
    (tmp_path / "vm_stat").chmod(0o755)
    config = tmp_path / "config.yml"
    config.write_text("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n")
    env = {"AITOOLS_PROCESS_SOURCE": "macos", "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    table = run_cli("snapshot", "--config.file", str(config), env=env)
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if line.startswith("Process memory: "))
    assert re.fullmatch(r"Process memory: resident set for \d+ processes", line), line
    counted = json.loads(run_cli("snapshot", "--json", "--config.file", str(config), env=env).stdout)
    assert set(counted["process_memory_figures"]) == {"resident"}


def test_names_from_outside_cannot_drive_the_terminal(ollama_standin, lmstudio_standin):
    """A model named with an escape sequence or a newline prints as text, one line each."""
    hostile = "evil\x1b[2J\x1b]0;pwned\x07\nsecond-line:7b"
    ollama_standin.load(hostile, size=10**9)
    ollama_standin.install("also\x1b[31mred:7b", size_on_disk=10**9)
    config = Config(ollama=OllamaSection(url=ollama_standin.url), lmstudio=LMStudioSection(url=None), docker=DockerSection(enabled=False))
    exporter = Exporter(config)
    table = render_table(config, snapshot_of(config, exporter.collect(), exporter.last_errors()))
    assert "\x1b" not in table and "\x07" not in table
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\nsecond-line:7b" in table
    assert "also\\x1b[31mred:7b  1.7 GB at context 4096: fits now" in table  # 1 GB file + KV cache + buffers
    assert not any(line.startswith("second-line") for line in table.splitlines())


def gauge_family(name: str, labels: list[str], rows: dict[tuple, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, name, labels=labels)
    for values, value in rows.items():
        family.add_metric(list(values), value)
    return family


def test_no_node_shows_less_than_its_children_and_says_which_figure_it_shows():
    """llama.cpp's server reports 428 MB for its model while its processes hold 120 MB (its
    weights not read in yet); the apps with a mapped model are more than the used memory
    (the model's file pages are page cache to the kernel)."""
    config = Config(ollama=OllamaSection(url=None), lmstudio=LMStudioSection(url=None), docker=DockerSection(enabled=False))
    samples = Samples([
        gauge_family("aitools_app_memory_bytes", ["app"], {("llamacpp",): 120e6, ("system",): 900e6,
                                                           ("other",): 300e6, ("monitoring",): 50e6}),
        gauge_family("aitools_llm_model_loaded_bytes", ["server", "model"], {("llamacpp", "tiny.gguf"): 428e6}),
        gauge_family("aitools_llm_server_up", ["server"], {("llamacpp",): 1}),
        gauge_family("aitools_collector_success", ["collector"], {("llamacpp",): 1, ("apps",): 1}),
        gauge_family("aitools_system_memory_total_bytes", [], {(): 8e9}),
        gauge_family("aitools_system_memory_available_bytes", [], {(): 8e9 - 1.2e9}),
    ])
    tree, _ = build_tree(config, samples)
    server = find(tree, "LLM services", "llama.cpp")
    assert [(c.name, c.bytes) for c in server.children] == [("tiny.gguf", 428e6)]
    assert server.bytes == 428e6 and server.figure == "its processes' memory"
    assert server.note.startswith("the models' size as llama.cpp reports it; its processes hold 120.0 MB")
    assert find(tree, "LLM services").bytes == 428e6
    # 428 + 900 + 300 MB of parts against 1.2 GB used: the root shows the parts and says why.
    assert tree.bytes == pytest.approx(1628e6)
    assert tree.note == ("shows its parts' sum; the used memory (macOS: Activity Monitor's Memory Used; elsewhere "
                         "physical less available; mapped model files are page cache to the kernel) is 1.2 GB")
    for _, node in tree.walk():
        assert node.bytes is None or node.bytes >= sum(c.bytes for c in node.children if c.bytes is not None)
    # Where the processes hold more than the server says (weights and cache resident), they are shown.
    samples.by_name["aitools_app_memory_bytes"] = [({"app": "llamacpp"}, 500e6)]
    server = find(build_tree(config, samples)[0], "LLM services", "llama.cpp")
    assert server.bytes == 500e6 and server.note is None


def gauges(**series) -> list:
    """Families from {metric: [(labels, value), ...]}."""
    families = []
    for name, samples in series.items():
        labels = sorted({key for item_labels, _ in samples for key in item_labels})
        family = GaugeMetricFamily(name, name, labels=labels)
        for item_labels, value in samples:
            family.add_metric([item_labels.get(key, "") for key in labels], value)
        families.append(family)
    return families


def test_on_a_mac_gpu_wired_memory_sits_under_the_servers_and_the_vm_beyond_its_containers():
    # A Mac (recordings/mac-64gb-workstation's shape): gemma3 on the GPU (size_vram = size),
    # the GPU holding it and 1.2 GB more wired, counted by the apps collector in system;
    # Docker Desktop's VM process with 1.5 GB of containers in it.
    model = 5_964_735_424
    apps = {"docker": 7.8 * GB, "ollama": 1.1 * GB, "lmstudio": 10.2 * GB, "llamacpp": 5.3 * GB,
            "system": 12.0 * GB, "other": 0.3 * GB, "monitoring": 0.1 * GB}
    samples = Samples(gauges(
        aitools_app_memory_bytes=[({"app": app}, value) for app, value in apps.items()],
        aitools_app_docker_vm=[({}, 1)],
        aitools_docker_vm_memory_limit_bytes=[({}, 8_217_473_024)],
        aitools_container_memory_usage_bytes=[({"name": "supabase_db_app", "compose_project": "supabase"}, 1.0 * GB),
                                              ({"name": "supabase_kong_app", "compose_project": "supabase"}, 0.5 * GB)],
        aitools_gpu_memory_wired_bytes=[({}, model + 1_200_357_376)],
        aitools_llm_model_loaded_bytes=[({"server": "ollama", "model": "gemma3:latest"}, model)],
        aitools_llm_model_vram_bytes=[({"server": "ollama", "model": "gemma3:latest"}, model)],
        aitools_collector_success=[({"collector": "ollama"}, 1), ({"collector": "lmstudio"}, 1)],
    ))
    tree, _ = build_tree(Config(), samples)

    ollama = find(tree, "LLM services", "Ollama")
    assert ollama.bytes == apps["ollama"] + model
    [gpu] = ollama.children
    assert (gpu.name, gpu.bytes, [child.name for child in gpu.children]) == ("GPU-wired memory", model,
                                                                            ["gemma3:latest"])
    assert find(tree, "System/OS").bytes == apps["system"] - model  # no longer inside System/OS
    assert find(tree, "LLM services", "llama.cpp").bytes == apps["llamacpp"]
    assert find(tree, "LLM services").bytes == apps["ollama"] + model + apps["lmstudio"] + apps["llamacpp"]
    vm = find(tree, "Docker", "VM beyond its containers")
    assert vm.bytes == pytest.approx(apps["docker"] - 1.5 * GB)
    assert vm.note == "Docker Desktop's VM, limit 7.7 GiB"
    # Every byte once: the top level adds up to the apps' sum, less monitoring (shown apart).
    assert sum(child.bytes for child in tree.children if child.bytes is not None) == pytest.approx(
        sum(apps.values()) - apps["monitoring"])
