"""The Ollama and LM Studio collectors against stand-ins that answer the documented shapes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
import pytest

from exporter.collectors import llm
from exporter.collectors.base import CollectorError
from exporter.collectors.llm import LMStudioCollector, OllamaCollector
from exporter.config import Config, LMStudioSection, OllamaSection
from exporter.scrape import SCRAPE_MARGIN_SECONDS, Scraper
from tests.parts.llm_standins import OllamaStandin

TIMEOUT = 1.0
GB = 10**9

LOADED = "aitools_llm_model_loaded_bytes"
VRAM = "aitools_llm_model_vram_bytes"
UP = "aitools_llm_server_up"


@dataclass
class Collected:
    values: dict[tuple[str, str | None], float]  # (metric, model label or None) -> value
    error: str | None
    seconds: float

    @property
    def up(self) -> float:
        return self.values[(UP, None)]

    def models(self, metric: str) -> dict[str, float]:
        return {model: value for (name, model), value in self.values.items() if name == metric}


def collect(collector) -> Collected:
    values, error = {}, None
    started = time.monotonic()
    try:
        for family in collector.collect():
            for sample in family.samples:
                assert sample.labels["server"] == collector.name
                values[(sample.name, sample.labels.get("model"))] = sample.value
    except CollectorError as exc:
        error = str(exc)
    return Collected(values, error, time.monotonic() - started)


def ollama(standin) -> OllamaCollector:
    return OllamaCollector(OllamaSection(url=standin.url), timeout=TIMEOUT)


def lmstudio(standin) -> LMStudioCollector:
    return LMStudioCollector(LMStudioSection(url=standin.url), timeout=TIMEOUT)


@pytest.fixture(autouse=True)
def no_lm_api_token(monkeypatch):
    monkeypatch.delenv("LM_API_TOKEN", raising=False)


# --- Ollama ---------------------------------------------------------------------------

def test_ollama_reports_each_loaded_model_with_its_vram(ollama_standin):
    ollama_standin.load("llama3.1:8b", size=4_900_000_000)  # all of it on the GPU
    ollama_standin.load("qwen2.5:0.5b", size=1_100_000_000, size_vram=0, family="qwen2")  # on the CPU
    ollama_standin.load("mistral:7b", size=5_137_025_024, size_vram=3_000_000_000)

    result = collect(ollama(ollama_standin))

    assert result.error is None
    assert result.up == 1
    assert result.models(LOADED) == {"llama3.1:8b": 4_900_000_000, "qwen2.5:0.5b": 1_100_000_000,
                                     "mistral:7b": 5_137_025_024}
    assert result.models(VRAM) == {"llama3.1:8b": 4_900_000_000, "qwen2.5:0.5b": 0, "mistral:7b": 3_000_000_000}
    # Then each model's /api/show, once (cached by digest), for its estimate.
    assert [path for path, _ in ollama_standin.requests] == ["/api/ps", "/api/tags"] + ["/api/show"] * 3


def test_ollama_follows_models_loaded_and_unloaded_between_scrapes(ollama_standin):
    collector = ollama(ollama_standin)
    assert collect(collector).models(LOADED) == {}

    ollama_standin.load("llama3.1:8b", size=4_900_000_000)
    assert collect(collector).models(LOADED) == {"llama3.1:8b": 4_900_000_000}

    ollama_standin.unload("llama3.1:8b")
    result = collect(collector)
    assert (result.up, result.error, result.models(LOADED)) == (1, None, {})


def test_ollama_standin_answers_tags_and_version_as_documented(ollama_standin):
    ollama_standin.load("llama3.1:8b", size=4_900_000_000)
    ollama_standin.install("nomic-embed-text:latest", size_on_disk=274_302_450, family="nomic-bert")
    tags = httpx.get(ollama_standin.url + "/api/tags").json()
    ps = httpx.get(ollama_standin.url + "/api/ps").json()

    assert httpx.get(ollama_standin.url + "/api/version").json() == {"version": OllamaStandin.version}
    assert [model["name"] for model in tags["models"]] == ["llama3.1:8b", "nomic-embed-text:latest"]
    assert set(tags["models"][0]) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert set(ps["models"][0]) == {"name", "model", "size", "digest", "details", "expires_at", "size_vram",
                                    "context_length"}
    assert set(ps["models"][0]["details"]) == {"parent_model", "format", "family", "families", "parameter_size",
                                               "quantization_level"}


def test_ollama_skips_and_counts_entries_without_a_usable_name_or_size(ollama_standin):
    good = {"name": "llama3.1:8b", "model": "llama3.1:8b", "size": 4_900_000_000, "size_vram": 4_900_000_000}
    entries = [
        good,
        {"model": "phi3:mini", "size": 2.0e9},                        # no name: model serves; integral float is fine
        {"name": "gemma3", "size": 3_000_000_000, "size_vram": -1},   # bad vram: size kept, vram left out
        {"name": "neg", "size": -5},
        {"name": "half", "size": 1.5},
        {"name": "text", "size": "4GB"},
        {"name": "bool", "size": True},
        {"name": "huge", "size": 2**64},
        {"name": "", "size": 10},
        {"size": 10},
        "not an object",
    ]
    ollama_standin.answer = (200, json.dumps({"models": entries}).encode())
    collector = ollama(ollama_standin)

    result = collect(collector)

    assert (result.up, result.error) == (1, None)
    assert result.models(LOADED) == {"llama3.1:8b": 4_900_000_000, "phi3:mini": 2_000_000_000,
                                     "gemma3": 3_000_000_000}
    assert result.models(VRAM) == {"llama3.1:8b": 4_900_000_000}
    assert collector.skipped_entries == 8


@pytest.mark.parametrize("body, reason", [
    (b'{"models": "llama3.1:8b"}', 'unexpected answer from /api/ps: no "models" list'),
    (b'[]', 'unexpected answer from /api/ps: no "models" list'),
    (b'{}', 'unexpected answer from /api/ps: no "models" list'),
    (b'{"models": [{"name": "llama3.1:8b", "size": NaN}]}', "body is not valid JSON (truncated?)"),
    (b'{"models": [{"name": "llama3.1:8b", "size": Infinity}]}', "body is not valid JSON (truncated?)"),
    (b'\xff\xfe not text', "body is not valid JSON (truncated?)"),
    (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON (truncated?)"),
])
def test_ollama_wrong_shapes_fail_with_up_1(ollama_standin, body, reason):
    ollama_standin.answer = (200, body)

    result = collect(ollama(ollama_standin))

    assert result.up == 1
    assert result.error == f"ollama at {ollama_standin.url}: {reason}"
    assert result.models(LOADED) == {}


def test_ollama_null_models_list_is_nothing_loaded(ollama_standin):
    ollama_standin.answer = (200, b'{"models": null}')
    result = collect(ollama(ollama_standin))
    assert (result.up, result.error, result.models(LOADED)) == (1, None, {})


# --- failure modes, both servers -------------------------------------------------------

@pytest.fixture(params=["ollama", "lmstudio"])
def server(request):
    """(stand-in with one model loaded, collector pointed at it)"""
    if request.param == "ollama":
        standin = request.getfixturevalue("ollama_standin")
        standin.load("llama3.1:8b", size=4_900_000_000)
        return standin, ollama(standin)
    standin = request.getfixturevalue("lmstudio_standin")
    standin.load("meta-llama-3.1-8b-instruct", size_bytes=4_920_000_000)
    return standin, lmstudio(standin)


FIRST_PATH = {"ollama": "/api/ps", "lmstudio": "/api/v1/models"}


@pytest.mark.parametrize("mode, up, reason", [
    ("refused", 0, "connection refused"),
    ("slow", 0, f"timed out after {TIMEOUT:g}s"),
    ("hangup", 0, "closed the connection without answering"),
    ("stall", 1, f"timed out after {TIMEOUT:g}s while reading the body"),
    ("drip", 1, f"timed out after {TIMEOUT:g}s while reading the body"),
    ("http500", 1, "answered HTTP 500 for {path}: llama runner process has terminated: exit status 2"),
    ("truncated", 1, "connection closed before the whole body arrived (truncated)"),
    ("malformed", 1, "body is not valid JSON (truncated?)"),
])
def test_failure_modes(server, mode, up, reason):
    standin, collector = server
    assert collect(collector).error is None  # healthy first
    standin.mode = mode

    result = collect(collector)

    assert result.up == up
    assert result.error == f"{collector.name} at {standin.url}: " + reason.format(path=FIRST_PATH[collector.name])
    assert result.models(LOADED) == {}
    assert result.seconds < TIMEOUT + SCRAPE_MARGIN_SECONDS

    standin.mode = None  # and it recovers
    recovered = collect(collector)
    assert (recovered.up, recovered.error) == (1, None)
    assert len(recovered.models(LOADED)) == 1


def test_one_deadline_covers_slow_headers_and_a_stalled_body(server):
    """Each of the two waits stays under the timeout; together they must not exceed it."""
    standin, collector = server
    standin.header_delay = 0.7 * TIMEOUT
    standin.mode = "stall"

    result = collect(collector)

    assert result.error.endswith(f"timed out after {TIMEOUT:g}s while reading the body")
    assert result.up == 1
    assert TIMEOUT - 0.1 < result.seconds < TIMEOUT + SCRAPE_MARGIN_SECONDS


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_larger_than_8_mib_is_refused(server, chunked):
    standin, collector = server
    standin.chunked = chunked
    standin.answer = (200, b'{"models": [' + b" " * (9 * 2**20) + b"]}")

    result = collect(collector)

    assert result.up == 1
    assert result.error == f"{collector.name} at {standin.url}: body of {FIRST_PATH[collector.name]} is larger than 8 MiB"


def test_chunked_answers_are_read(server):
    standin, collector = server
    standin.chunked = True
    result = collect(collector)
    assert (result.up, result.error, len(result.models(LOADED))) == (1, None, 1)


def test_unusable_url_is_down_with_a_reason():
    collector = OllamaCollector(OllamaSection(url="http://[::1"), timeout=TIMEOUT)
    result = collect(collector)
    assert (result.up, result.error) == (0, "ollama at http://[::1: not a usable URL: Invalid IPv6 URL")


def test_unresolvable_host_is_down_with_a_reason():
    collector = OllamaCollector(OllamaSection(url="http://no-such-host.invalid:11434"), timeout=TIMEOUT)
    result = collect(collector)
    assert result.up == 0
    assert result.error.startswith("ollama at http://no-such-host.invalid:11434: ")
    assert result.seconds < TIMEOUT + SCRAPE_MARGIN_SECONDS


# --- LM Studio --------------------------------------------------------------------------

def test_lmstudio_v1_reports_loaded_models_once_per_instance(lmstudio_standin):
    lmstudio_standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    lmstudio_standin.load("google/gemma-3-12b", size_bytes=8_100_000_000, instances=2)
    lmstudio_standin.load("text-embedding-nomic-embed-text-v1.5", size_bytes=84_110_000, type="embedding")
    lmstudio_standin.download("mistral-7b-instruct-v0.3", size_bytes=4_080_000_000)  # not loaded

    result = collect(lmstudio(lmstudio_standin))

    assert (result.up, result.error) == (1, None)
    assert result.models(LOADED) == {"qwen/qwen3-4b-2507": 2_500_000_000,
                                     "google/gemma-3-12b": 2 * 8_100_000_000,
                                     "text-embedding-nomic-embed-text-v1.5": 84_110_000}
    assert result.models(VRAM) == {}  # LM Studio does not say
    assert [path for path, _ in lmstudio_standin.requests] == ["/api/v1/models"]


def test_lmstudio_reads_the_documented_example_response(lmstudio_standin):
    """The response example of lmstudio.ai/docs/developer/rest/list, verbatim."""
    documented = {"models": [
        {"type": "llm", "publisher": "lmstudio-community", "key": "gemma-3-270m-it-qat",
         "display_name": "Gemma 3 270m Instruct Qat", "architecture": "gemma3",
         "quantization": {"name": "Q4_0", "bits_per_weight": 4}, "size_bytes": 241410208, "params_string": "270M",
         "loaded_instances": [{"id": "gemma-3-270m-it-qat", "config": {"context_length": 4096}}],
         "max_context_length": 32768, "format": "gguf",
         "capabilities": {"vision": False, "trained_for_tool_use": False}, "description": None},
        {"type": "embedding", "publisher": "gaianet", "key": "text-embedding-nomic-embed-text-v1.5-embedding",
         "display_name": "Nomic Embed Text v1.5", "quantization": {"name": "F16", "bits_per_weight": 16},
         "size_bytes": 274290560, "params_string": None, "loaded_instances": [], "max_context_length": 2048,
         "format": "gguf"},
    ]}
    lmstudio_standin.answer = (200, json.dumps(documented).encode())

    result = collect(lmstudio(lmstudio_standin))

    assert (result.up, result.error) == (1, None)
    assert result.models(LOADED) == {"gemma-3-270m-it-qat": 241410208}


def test_lmstudio_skips_and_counts_loaded_entries_without_key_or_size(lmstudio_standin):
    entries = [
        {"key": "good", "size_bytes": 1000, "loaded_instances": [{"id": "good"}]},
        {"key": "idle", "size_bytes": "oops", "loaded_instances": []},  # not loaded: not read at all
        {"key": "no-size", "loaded_instances": [{"id": "no-size"}]},
        {"key": "negative", "size_bytes": -1, "loaded_instances": [{"id": "negative"}]},
        {"size_bytes": 1000, "loaded_instances": [{"id": "nameless"}]},
        {"key": "no-instances-list", "size_bytes": 1000},
    ]
    lmstudio_standin.answer = (200, json.dumps({"models": entries}).encode())
    collector = lmstudio(lmstudio_standin)

    result = collect(collector)

    assert (result.up, result.error, result.models(LOADED)) == (1, None, {"good": 1000})
    assert collector.skipped_entries == 4


@pytest.mark.parametrize("unknown_endpoint_status", [200, 404])
def test_lmstudio_before_0_4_falls_back_to_v0_and_remembers_it(lmstudio_standin, unknown_endpoint_status):
    """LM Studio answers an unknown path with 200 and an "Unexpected endpoint" error; a 404 counts too."""
    lmstudio_standin.api_version = "v0"
    lmstudio_standin.unknown_endpoint_status = unknown_endpoint_status
    lmstudio_standin.download("meta-llama-3.1-8b-instruct", size_bytes=4_920_000_000)  # downloaded, none loaded
    collector = lmstudio(lmstudio_standin)

    first, second = collect(collector), collect(collector)

    assert (first.up, first.error, first.models(LOADED)) == (1, None, {})
    assert (second.up, second.error) == (1, None)
    assert [path for path, _ in lmstudio_standin.requests] == ["/api/v1/models", "/api/v0/models", "/api/v0/models"]


def test_lmstudio_v0_with_loaded_models_fails_rather_than_report_zero_bytes(lmstudio_standin):
    lmstudio_standin.api_version = "v0"
    for key in ("meta-llama-3.1-8b-instruct", "qwen2-vl-7b-instruct", "granite-3.0-2b-instruct", "phi-4"):
        lmstudio_standin.load(key, size_bytes=4 * GB)
    collector = lmstudio(lmstudio_standin)

    result = collect(collector)

    assert result.up == 1
    assert result.models(LOADED) == {}
    assert result.error == (
        f"lmstudio at {lmstudio_standin.url}: /api/v0/models (LM Studio before 0.4) lists 4 loaded model(s) "
        "(meta-llama-3.1-8b-instruct, qwen2-vl-7b-instruct, granite-3.0-2b-instruct and 1 more) but not their "
        "sizes; update LM Studio to 0.4 or later for /api/v1/models")
    collect(collector)  # the answer was read: v0 stays remembered
    assert [path for path, _ in lmstudio_standin.requests] == ["/api/v1/models", "/api/v0/models", "/api/v0/models"]


def test_lmstudio_probes_v1_again_after_a_while_and_after_a_v0_failure(lmstudio_standin, monkeypatch):
    monkeypatch.setattr(llm, "LMSTUDIO_V1_REPROBE_SECONDS", 0.3)
    lmstudio_standin.api_version = "v0"
    collector = lmstudio(lmstudio_standin)
    collect(collector)                       # v1 (unknown), v0
    collect(collector)                       # v0
    time.sleep(0.4)
    collect(collector)                       # v1 (unknown), v0
    lmstudio_standin.mode = "http500"
    assert collect(collector).error.endswith("answered HTTP 500 for /api/v0/models: "
                                             "llama runner process has terminated: exit status 2")
    lmstudio_standin.mode = None
    lmstudio_standin.api_version = "v1"      # updated meanwhile
    lmstudio_standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)

    result = collect(collector)

    assert result.models(LOADED) == {"qwen/qwen3-4b-2507": 2_500_000_000}
    assert [path for path, _ in lmstudio_standin.requests] == [
        "/api/v1/models", "/api/v0/models",
        "/api/v0/models",
        "/api/v1/models", "/api/v0/models",
        "/api/v0/models",
        "/api/v1/models",
    ]


def test_lmstudio_without_any_rest_api_says_so(lmstudio_standin):
    lmstudio_standin.api_version = "none"
    result = collect(lmstudio(lmstudio_standin))
    assert result.up == 1
    assert result.error == (f"lmstudio at {lmstudio_standin.url}: knows neither /api/v1/models nor /api/v0/models "
                            "(LM Studio before 0.3.6?); update LM Studio to 0.4 or later")


def authorization_headers(standin) -> list[str | None]:
    return [headers.get("Authorization") for _, headers in standin.requests]


def test_lmstudio_sends_the_bearer_token_when_lm_api_token_is_set(lmstudio_standin, monkeypatch):
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-s3cret")
    lmstudio_standin.required_token = "sk-lm-s3cret"
    lmstudio_standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    collector = lmstudio(lmstudio_standin)

    result = collect(collector)
    lmstudio_standin.api_version = "v0"  # the token goes to /api/v0 as well
    lmstudio_standin.unload("qwen/qwen3-4b-2507")
    fallback = collect(collector)

    assert (result.error, result.models(LOADED)) == (None, {"qwen/qwen3-4b-2507": 2_500_000_000})
    assert fallback.error is None
    assert authorization_headers(lmstudio_standin) == ["Bearer sk-lm-s3cret"] * 3


@pytest.mark.parametrize("token", [None, ""])
def test_lmstudio_sends_no_authorization_without_a_token(lmstudio_standin, monkeypatch, token):
    if token is not None:
        monkeypatch.setenv("LM_API_TOKEN", token)
    collect(lmstudio(lmstudio_standin))
    assert authorization_headers(lmstudio_standin) == [None]


def test_lmstudio_requiring_a_token_that_is_not_set(lmstudio_standin):
    lmstudio_standin.required_token = "sk-lm-s3cret"

    result = collect(lmstudio(lmstudio_standin))

    assert result.up == 1
    assert result.error == (f"lmstudio at {lmstudio_standin.url}: answered HTTP 401 for /api/v1/models: Unauthorized: "
                            "a valid API token is required (LM Studio requires an API token: set lmstudio.token_file "
                            "(or LM_API_TOKEN))")


def test_lmstudio_refusing_the_token_never_shows_it(lmstudio_standin, monkeypatch, caplog):
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-wr0ng")
    lmstudio_standin.required_token = "sk-lm-s3cret"
    collector = lmstudio(lmstudio_standin)

    refused = collect(collector)
    # A server that echoes the token in its error text must not get it into ours either.
    lmstudio_standin.answer = (401, json.dumps({"error": {"message": "invalid token sk-lm-wr0ng"}}).encode())
    echoed = collect(collector)

    assert refused.error == (f"lmstudio at {lmstudio_standin.url}: answered HTTP 401 for /api/v1/models: Unauthorized: "
                             "a valid API token is required (LM Studio refused the token in LM_API_TOKEN)")
    assert echoed.error == (f"lmstudio at {lmstudio_standin.url}: answered HTTP 401 for /api/v1/models: "
                            "invalid token [redacted] (LM Studio refused the token in LM_API_TOKEN)")
    assert (refused.up, echoed.up) == (1, 1)
    assert "sk-lm-wr0ng" not in caplog.text
    assert authorization_headers(lmstudio_standin) == ["Bearer sk-lm-wr0ng"] * 2


# --- through the scrape orchestrator -----------------------------------------------------

def scrape(scraper: Scraper) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in scraper.collect_once() for sample in family.samples}


def test_scraper_marks_each_llm_collector_succeeded_or_failed(ollama_standin, lmstudio_standin):
    ollama_standin.load("llama3.1:8b", size=4_900_000_000)
    lmstudio_standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    config = Config(ollama=OllamaSection(url=ollama_standin.url), lmstudio=LMStudioSection(url=lmstudio_standin.url), timeout=TIMEOUT)
    scraper = Scraper([OllamaCollector(config.ollama, config.timeout), LMStudioCollector(config.lmstudio, config.timeout)], TIMEOUT)

    healthy = scrape(scraper)
    ollama_standin.mode = "refused"
    lmstudio_standin.mode = "http500"
    failing = scrape(scraper)

    assert healthy[("aitools_collector_success", (("collector", "ollama"),))] == 1
    assert healthy[("aitools_collector_success", (("collector", "lmstudio"),))] == 1
    assert healthy[(LOADED, (("model", "llama3.1:8b"), ("server", "ollama")))] == 4_900_000_000
    assert healthy[(VRAM, (("model", "llama3.1:8b"), ("server", "ollama")))] == 4_900_000_000
    assert healthy[(LOADED, (("model", "qwen/qwen3-4b-2507"), ("server", "lmstudio")))] == 2_500_000_000

    assert failing[("aitools_collector_success", (("collector", "ollama"),))] == 0
    assert failing[("aitools_collector_success", (("collector", "lmstudio"),))] == 0
    assert failing[(UP, (("server", "ollama"),))] == 0       # kept although the collector failed
    assert failing[(UP, (("server", "lmstudio"),))] == 1
    # Refused: Ollama is not started, a normal state; HTTP 500: LM Studio runs and fails.
    assert healthy[("aitools_collector_source_running", (("collector", "ollama"),))] == 1
    assert failing[("aitools_collector_source_running", (("collector", "ollama"),))] == 0
    assert failing[("aitools_collector_source_running", (("collector", "lmstudio"),))] == 1
    assert not [key for key in failing if key[0] == LOADED]
    assert scraper.last_errors() == {
        "ollama": f"ollama at {ollama_standin.url}: connection refused",
        "lmstudio": f"lmstudio at {lmstudio_standin.url}: answered HTTP 500 for /api/v1/models: "
                    "llama runner process has terminated: exit status 2",
    }


def test_scraper_keeps_the_up_gauge_of_a_server_slower_than_the_timeout(ollama_standin):
    ollama_standin.mode = "slow"
    scraper = Scraper([ollama(ollama_standin)], TIMEOUT)

    started = time.monotonic()
    values = scrape(scraper)

    assert time.monotonic() - started < TIMEOUT + SCRAPE_MARGIN_SECONDS
    assert values[("aitools_collector_success", (("collector", "ollama"),))] == 0
    assert values[(UP, (("server", "ollama"),))] == 0
    assert scraper.last_errors()["ollama"] == f"ollama at {ollama_standin.url}: timed out after {TIMEOUT:g}s"


# --- installed models (aitools_llm_model_installed_bytes) -----------------------------

INSTALLED = "aitools_llm_model_installed_bytes"


def test_ollama_reports_every_installed_model_loaded_or_not(ollama_standin):
    ollama_standin.install("llama3.1:8b", size_on_disk=4_920_753_328)
    ollama_standin.install("qwen2.5-coder:32b", size_on_disk=19_851_349_856, family="qwen2")
    ollama_standin.install("nomic-embed-text:latest", size_on_disk=274_302_450, family="nomic-bert")
    ollama_standin.load("llama3.1:8b", size=6_654_289_920)  # in memory: weights and context

    result = collect(ollama(ollama_standin))

    assert (result.up, result.error) == (1, None)
    assert result.models(INSTALLED) == {"llama3.1:8b": 4_920_753_328, "qwen2.5-coder:32b": 19_851_349_856,
                                        "nomic-embed-text:latest": 274_302_450}
    assert result.models(LOADED) == {"llama3.1:8b": 6_654_289_920}
    assert [path for path, _ in ollama_standin.requests] == ["/api/ps", "/api/tags"] + ["/api/show"] * 3


def test_ollama_reads_the_documented_tags_example_and_leaves_out_cloud_and_unusable_entries(ollama_standin):
    """The response example of docs.ollama.com/api/tags, with a cloud model (Ollama 0.12+:
    remote_host/remote_model, runs elsewhere) and entries without a usable name or size."""
    documented = {"name": "gemma3", "model": "gemma3", "modified_at": "2025-10-03T23:34:03.409490317-07:00",
                  "size": 3338801804,
                  "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
                  "details": {"format": "gguf", "family": "gemma", "families": ["gemma"],
                              "parameter_size": "4.3B", "quantization_level": "Q4_K_M"}}
    cloud = {"name": "gpt-oss:120b-cloud", "model": "gpt-oss:120b-cloud", "size": 384,
             "remote_model": "gpt-oss:120b", "remote_host": "https://ollama.com:443"}
    tags = {"models": [documented, cloud, {"model": "phi3:mini", "size": 2.0e9}, {"name": "bad", "size": -1},
                       {"name": "", "size": 5}, "not an object"]}
    ollama_standin.installed = dict(enumerate(tags["models"]))  # served as list(installed.values())

    result = collect(ollama(ollama_standin))

    assert (result.up, result.error) == (1, None)
    assert result.models(INSTALLED) == {"gemma3": 3338801804, "phi3:mini": 2_000_000_000}


@pytest.mark.parametrize("mode", ["http500", "malformed", "truncated", "hangup", "stall"])
def test_ollama_tags_failing_costs_only_the_installed_models(ollama_standin, mode, caplog):
    ollama_standin.load("llama3.1:8b", size=4_900_000_000)
    collector = ollama(ollama_standin)
    ollama_standin.path_modes = {"/api/tags": mode}

    with caplog.at_level("WARNING", logger="exporter.collectors.llm"):
        first, second = collect(collector), collect(collector)

    for result in (first, second):
        assert (result.up, result.error) == (1, None)  # the budgets' figures are all there
        assert result.models(LOADED) == {"llama3.1:8b": 4_900_000_000}
        assert result.models(INSTALLED) == {}
        assert result.seconds < TIMEOUT + SCRAPE_MARGIN_SECONDS
    warnings = [r.getMessage() for r in caplog.records if "installed models unknown" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not at every scrape
    assert warnings[0].startswith(f"ollama at {ollama_standin.url}: installed models unknown: ")

    ollama_standin.path_modes = {}
    assert collect(collector).models(INSTALLED) == {"llama3.1:8b": int(4_900_000_000 * 0.9)}


def test_ollama_tags_with_a_wrong_shape_costs_only_the_installed_models(ollama_standin):
    ollama_standin.load("llama3.1:8b", size=4_900_000_000)
    ollama_standin.installed = None  # serves {"models": null}: nothing installed (Go's nil slice)
    result = collect(ollama(ollama_standin))
    assert (result.error, result.models(LOADED), result.models(INSTALLED)) == (None, {"llama3.1:8b": 4_900_000_000}, {})


def test_lmstudio_reports_every_downloaded_model_once_loaded_or_not(lmstudio_standin):
    lmstudio_standin.load("google/gemma-3-12b", size_bytes=8_100_000_000, instances=2)
    lmstudio_standin.download("mistral-7b-instruct-v0.3", size_bytes=4_080_000_000)
    lmstudio_standin.download("text-embedding-nomic-embed-text-v1.5", size_bytes=84_110_000, type="embedding")

    result = collect(lmstudio(lmstudio_standin))

    assert (result.up, result.error) == (1, None)
    assert result.models(INSTALLED) == {"google/gemma-3-12b": 8_100_000_000,  # once, whatever the instances
                                        "mistral-7b-instruct-v0.3": 4_080_000_000,
                                        "text-embedding-nomic-embed-text-v1.5": 84_110_000}
    assert result.models(LOADED) == {"google/gemma-3-12b": 2 * 8_100_000_000}
    assert [path for path, _ in lmstudio_standin.requests] == ["/api/v1/models"]  # no extra request


def test_lmstudio_v0_publishes_no_installed_sizes(lmstudio_standin):
    lmstudio_standin.api_version = "v0"
    lmstudio_standin.download("meta-llama-3.1-8b-instruct", size_bytes=4_920_000_000)
    result = collect(lmstudio(lmstudio_standin))
    assert (result.up, result.error, result.models(INSTALLED)) == (1, None, {})
