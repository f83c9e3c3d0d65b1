"""`snapshot`'s breakdown tree (exporter/breakdown.py) against the samples it was built from.

One real collection (a real Docker engine's containers in compose projects, one of them
the monitoring bundle; real swift-frontend processes; Ollama and LM Studio stand-ins; the
real /proc) and every figure of the tree checked against that collection's samples. The
apps collector lands from another branch: its contract names (aitools_app_memory_bytes)
are added to a real collection here, and the tree must take its figures from them.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client.core import GaugeMetricFamily

from exporter.app import Exporter
from exporter.breakdown import Node, build_tree
from exporter.readings import Samples
from exporter.config import Config, DockerSection, LMStudioSection, OllamaSection
from exporter.snapshot import render_json, render_table, snapshot_of
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
    assert tree.bytes == used and tree.budget == "development_total"
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
    assert "also\\x1b[31mred:7b  1.0 GB: fits now" in table
    assert not any(line.startswith("second-line") for line in table.splitlines())
