"""The llama.cpp collector's states that a real server here cannot easily be put in.

The real llama-server (tests/test_llamacpp_server.py) gives the normal answers; these
stand-ins answer the shapes of llama.cpp's tools/server README ("API Endpoints": /health
while loading, /props with is_sleeping, a router's /models with each model's status) and
what another program on the default port 8080 answers (a dev server's 404, an HTML page).
"""

from __future__ import annotations

import json

import pytest

from exporter.collectors import llamacpp as llamacpp_module
from exporter.collectors.base import CollectorError, SourceNotRunning
from exporter.collectors.llamacpp import LlamaCppCollector, shown_name
from exporter.config import DEFAULT_LLAMACPP_URL, Config, LlamaCppSection, parse_config
from tests.parts.llm_standins import Standin


class Answers(Standin):
    """path -> (status, body); anything else 404 as a dev server says it."""

    def __init__(self, answers: dict[str, tuple[int, object]]):
        super().__init__()
        self.answers = answers

    def respond(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        status, body = self.answers.get(path, (404, "Cannot GET " + path))
        return status, body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else json.dumps(body).encode())


PROPS = {"default_generation_settings": {"n_ctx": 4096, "params": {}}, "total_slots": 2,
         "model_alias": "/models/qwen2.5-coder-7b-q4_k_m.gguf", "model_path": "/models/qwen2.5-coder-7b-q4_k_m.gguf",
         "endpoint_slots": True, "endpoint_metrics": False, "is_sleeping": False, "build_info": "b6000-abc"}
MODELS = {"object": "list", "data": [{"id": "/models/qwen2.5-coder-7b-q4_k_m.gguf", "object": "model",
                                      "owned_by": "llamacpp",
                                      "meta": {"n_ctx": 4096, "n_params": 7615616512, "size": 4677120000}}]}
SLOTS = [{"id": 0, "n_ctx": 4096, "is_processing": True}, {"id": 1, "n_ctx": 4096, "is_processing": False}]


def collect(collector: LlamaCppCollector):
    families, error = {}, None
    try:
        for family in collector.collect():
            families[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    except CollectorError as exc:
        error = exc
    return families, error


@pytest.fixture
def server():
    standin = Answers({"/props": (200, PROPS), "/v1/models": (200, MODELS), "/slots": (200, SLOTS)})
    with standin:
        yield standin


def test_a_server_with_its_model_and_slots(server):
    families, error = collect(LlamaCppCollector(LlamaCppSection(url=server.url)))
    assert error is None
    model = (("model", "qwen2.5-coder-7b-q4_k_m.gguf"), ("server", "llamacpp"))
    assert families["aitools_llm_server_up"] == {(("server", "llamacpp"),): 1.0}
    assert families["aitools_llm_model_loaded_bytes"] == {model: 4677120000.0}
    assert families["aitools_llm_model_installed_bytes"] == {model: 4677120000.0}
    assert families["aitools_llm_model_context_length"] == {model: 4096.0}
    assert families["aitools_llm_server_slots"] == {(("server", "llamacpp"),): 2.0}
    assert families["aitools_llm_server_slots_busy"] == {(("server", "llamacpp"),): 1.0}


def test_an_alias_is_the_models_name():
    assert shown_name("qwen-coder", "/models/q.gguf") == "qwen-coder"
    assert shown_name("/models/q.gguf", "/models/q.gguf") == "q.gguf"
    assert shown_name("ggml-org/gemma-3-4b-it-GGUF:Q4_K_M", None) == "ggml-org/gemma-3-4b-it-GGUF:Q4_K_M"


@pytest.mark.parametrize("answer", [(404, "Cannot GET /props"), (200, "<!doctype html><title>Vite</title>"),
                                    (200, {"status": "ok"}), (500, "Internal Server Error")])
def test_another_program_on_the_port_is_not_running_and_is_left_alone_a_while(answer, monkeypatch):
    with Answers({"/props": answer}) as other:
        collector = LlamaCppCollector(LlamaCppSection(url=other.url))
        families, error = collect(collector)
        assert isinstance(error, SourceNotRunning) and "not a llama.cpp server" in str(error)
        assert families["aitools_llm_server_up"] == {(("server", "llamacpp"),): 0.0}
        assert "aitools_llm_model_loaded_bytes" not in families
        asked = len(other.requests)
        families, error = collect(collector)  # within the reprobe time: not asked again
        assert isinstance(error, SourceNotRunning) and len(other.requests) == asked == 1
        monkeypatch.setattr(llamacpp_module, "FOREIGN_REPROBE_SECONDS", 0.0)
        collector._foreign = None
        collect(collector)
        assert len(other.requests) == 2


def test_loading_its_model_is_up_with_nothing_loaded_yet():
    loading = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    with Answers({"/props": (503, loading), "/health": (503, loading)}) as server:
        families, error = collect(LlamaCppCollector(LlamaCppSection(url=server.url)))
    assert error is None
    assert families["aitools_llm_server_up"] == {(("server", "llamacpp"),): 1.0}
    assert families["aitools_llm_model_loaded_bytes"] == {}


def test_asleep_its_model_is_unloaded(server):
    server.answers["/props"] = (200, dict(PROPS, is_sleeping=True))
    families, error = collect(LlamaCppCollector(LlamaCppSection(url=server.url)))
    assert error is None and families["aitools_llm_model_loaded_bytes"] == {}
    assert families["aitools_llm_server_slots"] == {(("server", "llamacpp"),): 2.0}


def test_a_router_counts_its_loaded_models_only():
    router_props = {"role": "router", "model_alias": "llama-server", "model_path": "none",
                    "default_generation_settings": {"params": {}, "n_ctx": 0}}
    listed = {"object": "list", "data": [
        {"id": "ggml-org/gemma-3-4b-it-GGUF:Q4_K_M", "status": {"value": "loaded", "args": ["llama-server"]},
         "meta": {"n_ctx": 8192, "size": 2489757856}},
        {"id": "qwen", "status": {"value": "unloaded"}},
        {"id": "asleep", "status": {"value": "sleeping"}, "meta": {"size": 10**9}}]}
    with Answers({"/props": (200, router_props), "/models": (200, listed)}) as router:
        families, error = collect(LlamaCppCollector(LlamaCppSection(url=router.url)))
    assert error is None
    assert families["aitools_llm_model_loaded_bytes"] == {
        (("model", "ggml-org/gemma-3-4b-it-GGUF:Q4_K_M"), ("server", "llamacpp")): 2489757856.0}
    assert families["aitools_llm_server_slots"] == {}


def test_an_api_key_is_named_as_the_reason(server):
    server.answers["/props"] = (401, {"error": {"code": 401, "message": "Invalid API Key",
                                                "type": "authentication_error"}})
    families, error = collect(LlamaCppCollector(LlamaCppSection(url=server.url)))
    assert isinstance(error, CollectorError) and not isinstance(error, SourceNotRunning)
    assert "Invalid API Key" in str(error) and "--api-key" in str(error)
    assert families["aitools_llm_server_up"] == {(("server", "llamacpp"),): 1.0}


def test_slots_turned_off_reads_busy_slots_from_metrics(server):
    server.answers["/props"] = (200, dict(PROPS, endpoint_slots=False, endpoint_metrics=True))
    server.answers["/metrics"] = (200, "# HELP llamacpp:requests_processing Number of requests processing.\n"
                                       "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n")
    families, error = collect(LlamaCppCollector(LlamaCppSection(url=server.url)))
    assert error is None and families["aitools_llm_server_slots_busy"] == {(("server", "llamacpp"),): 2.0}
    assert "/slots" not in [path for path, _ in server.requests]


def test_bad_model_entries_are_skipped_not_published(server):
    server.answers["/v1/models"] = (200, {"data": [{"id": "x", "meta": {"size": -1}}, {"id": 5}, "junk"]})
    collector = LlamaCppCollector(LlamaCppSection(url=server.url))
    families, error = collect(collector)
    assert error is None and families["aitools_llm_model_loaded_bytes"] == {} and collector.skipped_entries == 3


def test_config_url_default_and_null():
    assert Config().llamacpp.url == DEFAULT_LLAMACPP_URL == "http://127.0.0.1:8080"
    assert parse_config("llamacpp: {url: null}\n").llamacpp.url is None
    assert parse_config("llamacpp: {url: 'http://127.0.0.1:8081'}\n").llamacpp.url == "http://127.0.0.1:8081"
    from exporter.app import Exporter
    assert not Exporter(parse_config("llamacpp: {url: null}\n")).enabled("llamacpp")


def test_a_loaded_llamacpp_model_is_in_the_fit_plans():
    """An Ollama model within its budget but not within the machine's room: unloading
    Ollama's own model is not enough, llama.cpp's loaded model makes the room."""
    from prometheus_client.core import GaugeMetricFamily

    from exporter.readings import Samples
    from exporter.fits import model_fits

    def family(name, labels, rows):
        found = GaugeMetricFamily(name, name, labels=labels)
        for values, value in rows.items():
            found.add_metric(list(values), value)
        return found

    GB = 10**9
    samples = Samples([
        family("aitools_llm_server_up", ["server"], {("ollama",): 1, ("llamacpp",): 1}),
        family("aitools_budget_bytes", ["budget"], {("ollama",): 8 * GB}),
        family("aitools_llm_model_loaded_bytes", ["server", "model"],
               {("ollama", "llama3.2:3b"): 2 * GB, ("llamacpp", "qwen2.5-coder-7b-q4_k_m.gguf"): 4.7 * GB}),
        family("aitools_llm_model_installed_bytes", ["server", "model"], {("ollama", "mistral:7b"): 4.1 * GB}),
        family("aitools_system_memory_total_bytes", [], {(): 16 * GB}),
        family("aitools_system_memory_available_bytes", [], {(): 1.6 * GB + 1.0 * GB}),
    ])
    [fit] = model_fits(samples)
    # 1.0 GB of room; Ollama's budget has 6 GB left: llama.cpp's 4.7 GB model alone makes room
    # (5.7 GB), the smallest set; Ollama's own 2 GB one would not (3.0 GB).
    assert (fit.model, fit.fits) == ("mistral:7b", False)
    assert fit.unload_first == ["llamacpp/qwen2.5-coder-7b-q4_k_m.gguf"]
    assert fit.verdict == "fits once llamacpp/qwen2.5-coder-7b-q4_k_m.gguf unloaded"
