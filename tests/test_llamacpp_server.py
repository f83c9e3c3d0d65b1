"""A real llama.cpp server holding a model the test writes (issue 25).

llama-server (built once per machine by tests/install-llama-server.sh) loads a ~390 MB
GGUF of random weights with a llama architecture's metadata, mapped from its file as
llama.cpp does by default. Checked against the process's own figures (/proc/PID/status)
and the server's own answers:
- the llamacpp app holds its anonymous memory and its mapped weights: within 10 % of VmRSS;
- the collector publishes the model with the size the server reports, its slots and context;
- the tree shows the model under llama.cpp with that size, and no node below its children.
"""

from __future__ import annotations

import pytest

from exporter.app import Exporter
from exporter.breakdown import build_tree
from exporter.collectors.apps import AppsCollector
from exporter.collectors.llamacpp import LlamaCppCollector
from exporter.config import Config, DockerSection, LlamaCppSection, LMStudioSection, OllamaSection
from exporter.snapshot import render_table, snapshot_of
from tests.conftest import missing_realpart
from tests.parts.llama_cpp import (FEW_HUNDRED_MB, LlamaRouter, LlamaServer, llama_server_binary, process_status,
                                   write_gguf)

pytestmark = pytest.mark.realpart("llama.cpp")

MiB = 2**20
CTX, SLOTS = 2048, 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = llama_server_binary()
    if binary is None:
        missing_realpart("llama-server is not built (tests/install-llama-server.sh)")
    pytest.importorskip("gguf")
    model = write_gguf(tmp_path_factory.mktemp("llamacpp") / "aitools-few-hundred-mb.gguf", FEW_HUNDRED_MB)
    with LlamaServer(binary, model, ctx=CTX, parallel=SLOTS) as running:
        yield running


def config_for(server: LlamaServer) -> Config:
    return Config(llamacpp=LlamaCppSection(url=server.url), ollama=OllamaSection(url=None), lmstudio=LMStudioSection(url=None),
                  docker=DockerSection(enabled=False))


def test_the_llm_app_holds_the_servers_mapped_weights_and_anonymous_memory(server):
    pid = server.process.pid
    reported = server.get_json("/v1/models")["data"][0]["meta"]["size"]
    memory, count, processes, assignments, _, models = AppsCollector(config_for(server).apps).read()
    status = process_status(pid)
    ours = next(proc for proc in processes if proc.pid == pid)
    assert assignments[pid].app == "llamacpp"
    app, mapped = models.files[str(server.model)]
    assert app == "llamacpp"
    # The weights are resident: the file's pages, as the server reports its model's size.
    assert mapped == pytest.approx(reported, rel=0.05) and mapped >= 350 * MiB
    # Its anonymous memory and its mapped weights: the process's own resident set, within 10 %
    # (what is left is the program's own code and libraries: file pages of no model).
    held = ours.memory + mapped
    print(f"llama-server: VmRSS {status['VmRSS'] / MiB:.1f} MiB (RssAnon {status['RssAnon'] / MiB:.1f}, "
          f"RssFile {status['RssFile'] / MiB:.1f}); counted {held / MiB:.1f} MiB "
          f"(anonymous {ours.memory / MiB:.1f} + model {mapped / MiB:.1f})")
    assert held == pytest.approx(status["VmRSS"], rel=0.10)
    assert ours.memory == pytest.approx(status["RssAnon"], abs=4 * MiB)
    # The app: this server's figures and those of any other llama-server running here.
    assert memory["llamacpp"] >= held - 4 * MiB
    assert models.by_app["llamacpp"] >= mapped


def test_the_collector_reports_the_model_as_the_server_does(server):
    listed = server.get_json("/v1/models")["data"][0]
    props = server.get_json("/props")
    families = {family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
                for family in LlamaCppCollector(config_for(server).llamacpp).collect()}
    model = (("model", server.model.name), ("server", "llamacpp"))
    assert families["aitools_llm_server_up"] == {(("server", "llamacpp"),): 1.0}
    assert families["aitools_llm_model_loaded_bytes"] == {model: float(listed["meta"]["size"])}
    # The size the server reports is its tensors' bytes: the file less its header and vocabulary.
    assert listed["meta"]["size"] == pytest.approx(server.model.stat().st_size, rel=0.01)
    assert families["aitools_llm_model_context_length"] == {model: float(CTX // SLOTS)}
    assert props["default_generation_settings"]["n_ctx"] == CTX // SLOTS
    assert families["aitools_llm_server_slots"] == {(("server", "llamacpp"),): float(SLOTS)}
    assert families["aitools_llm_server_slots_busy"] == {(("server", "llamacpp"),): 0.0}


def test_the_tree_shows_the_model_under_its_server_and_no_node_below_its_children(server):
    config = config_for(server)
    exporter = Exporter(config)
    samples = exporter.collect()
    reported = server.get_json("/v1/models")["data"][0]["meta"]["size"]
    tree, monitoring = build_tree(config, samples)
    llm = next(child for child in tree.children if child.name == "LLM services")
    node = next(child for child in llm.children if child.name == "llama.cpp")
    assert [(child.name, child.bytes) for child in node.children] == [(server.model.name, reported)]
    assert node.bytes >= reported and node.bytes == max(samples.value("aitools_app_memory_bytes", app="llamacpp"),
                                                        reported)
    for root in (tree, monitoring):
        for _, item in root.walk():
            parts = sum(child.bytes for child in item.children if child.bytes is not None)
            assert item.bytes is None and not parts or item.bytes >= parts, item.name
    # The table a person reads.
    table = render_table(config, snapshot_of(config, samples, exporter.last_errors()))
    assert "llama.cpp" in table and server.model.name in table



def meminfo(key: str) -> int:
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))


def test_a_second_server_on_the_same_model_adds_its_own_memory_not_the_model_again(server):
    """Two servers on one model file: the file's pages are in memory once (page cache), so
    they count once; the second server adds its own anonymous memory. And the mapped model
    files are never more than the kernel's own count of mapped file pages: what the sum
    check of tests/test_apps_collector.py takes out of the apps before it compares them
    with the used memory, which leaves page cache out."""
    def ours(pids):
        memory, count, processes, assignments, _, models = AppsCollector(config_for(server).apps).read()
        anonymous = sum(proc.memory for proc in processes if proc.pid in pids)
        return anonymous, models.files[str(server.model)][1], models.by_app["llamacpp"]

    anonymous, model, mapped = ours({server.process.pid})
    assert 350 * MiB <= mapped <= meminfo("Mapped")
    with LlamaServer(server.binary, server.model, ctx=CTX, parallel=SLOTS) as second:
        anonymous2, model2, mapped2 = ours({server.process.pid, second.process.pid})
        added = process_status(second.process.pid)["RssAnon"]
    print(f"one server: anonymous {anonymous / MiB:.1f} MiB + model {model / MiB:.1f}; two: anonymous "
          f"{anonymous2 / MiB:.1f} + model {model2 / MiB:.1f}; the second's RssAnon {added / MiB:.1f} MiB")
    assert model2 == pytest.approx(model, abs=8 * MiB)  # the same file: once, not twice
    assert anonymous2 - anonymous == pytest.approx(added, abs=8 * MiB)
    assert mapped2 <= meminfo("Mapped")


def test_a_router_counts_the_model_it_loaded_and_its_childs_mapped_weights(server, tmp_path):
    """llama-server started without a model (router mode) loads one on demand in a child
    llama-server: the collector lists it from the router's /models, its weights count in
    the llamacpp app."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tiny.gguf").symlink_to(server.model)
    with LlamaRouter(server.binary, folder) as router:
        families = {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
                    for f in LlamaCppCollector(config_for(router).llamacpp).collect()}
        assert families["aitools_llm_model_loaded_bytes"] == {}  # listed, not loaded
        entry = router.load("tiny")
        families = {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
                    for f in LlamaCppCollector(config_for(router).llamacpp).collect()}
        assert families["aitools_llm_model_loaded_bytes"] == {
            (("model", "tiny"), ("server", "llamacpp")): float(entry["meta"]["size"])}
        memory, count, processes, assignments, _, models = AppsCollector(config_for(router).apps).read()
        children = [proc for proc in processes if proc.ppid == router.process.pid]
        assert children and {assignments[proc.pid].app for proc in children} == {"llamacpp"}
        # The model file is the one the module's server maps too: counted once, the larger share.
        assert models.files[str(server.model)][1] >= 350 * MiB
