"""Property-based tests (hypothesis) of every parser of a backend's answer, with random and
adversarial input, and of the scrape's guarantees end to end.

tests/test_properties_system_config.py covers vm_stat, /proc/meminfo, sizes and whole
configuration documents; this file covers the Node answers (memoryUsage JSON,
prom-client text), the Ollama and LM Studio payloads, the Docker engine's answers and
then a hostile Ollama stand-in through the real Scraper and the exposition.

The properties: a parser returns a sane reading or raises its own documented error
(never anything else); no negative, NaN or infinite value is ever published; no label
value breaks the exposition; a hostile backend cannot create more than
MAX_SERIES_PER_FAMILY series per family, and what was dropped is counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics_text
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus_text

from exporter.collectors import llm
from exporter.collectors.docker import (
    ContainerMemory,
    MalformedAnswer,
    cgroup_memory,
    container_memory,
    image_family,
    memory_usage,
)
from exporter.collectors.llm import (
    MAX_BYTE_COUNT,
    ModelReading,
    OllamaCollector,
    Unreadable,
    error_detail,
    is_unknown_endpoint,
    loaded_in_lmstudio_v0,
    parse_json,
    parse_lmstudio_v1,
    parse_ollama_ps,
    parse_ollama_tags,
)
from exporter.collectors.node import (
    MAX_PLAUSIBLE_BYTES,
    HeapReading,
    TargetError,
    parse_http_answer,
    parse_memory_json,
    parse_metrics_text,
)
from exporter.config import Config, OllamaSection
from exporter.scrape import MAX_LABEL_VALUE_LENGTH, MAX_SERIES_PER_FAMILY, Scraper
from tests.parts.llm_standins import OllamaStandin

# --- building blocks ----------------------------------------------------------------

# Any text, lone surrogates included: JSON can carry them ("\ud800"), and so can a backend.
any_text = st.text(max_size=60)
hostile_text = st.one_of(
    any_text,
    st.sampled_from(["", " ", "\n", "\x00", "\ud800", "a\udfffb", '"}', "\\", "{", "# EOF", "é" * 300,
                     "x" * (MAX_LABEL_VALUE_LENGTH + 1), "model\nname", 'a"b', "NaN", "-1"]),
)
# Numbers as a JSON document can carry them, and the ones Python's json also reads.
hostile_numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1.5, 2**40, 2**40 + 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 1e308, -1, 4.9e9]),
)
json_scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text)
json_documents = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(hostile_text, children, max_size=5)),
    max_leaves=25,
)


def dumps(document) -> bytes:
    """JSON as a backend might send it: NaN/Infinity written as Python's json writes them."""
    return json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")


def sane_bytes(value: float | None, upper: float) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value) and 0 <= value <= upper)


def check_heap_reading(reading: HeapReading) -> None:
    assert isinstance(reading, HeapReading)
    assert reading.heap_used is not None and reading.heap_total is not None
    for value in (reading.heap_used, reading.heap_total, reading.heap_limit, reading.rss):
        assert sane_bytes(value, MAX_PLAUSIBLE_BYTES), reading


# --- Node: process.memoryUsage() JSON ---------------------------------------------------

memory_usage_objects = st.fixed_dictionaries(
    {"heapUsed": json_scalars, "heapTotal": json_scalars},
    optional={"rss": json_scalars, "external": json_scalars, "heap_size_limit": json_scalars,
              "heapSizeLimit": json_scalars},
)
# A memoryUsage()-shaped object somewhere in an otherwise random document.
documents_with_memory = st.recursive(
    memory_usage_objects,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(hostile_text, children, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_documents.map(dumps), documents_with_memory.map(dumps)))
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b'{"heapUsed": NaN, "heapTotal": 1}')
@example(b'{"heapUsed": -1, "heapTotal": 1}')
@example(b'{"heapUsed": 1e400, "heapTotal": 1}')
@example(b'{"heapUsed": 1, "heapTotal": 1, "rss": Infinity, "heap_size_limit": -5}')
@example(b'\xff\xfe{"heapUsed": 1}')
def test_memory_json_is_a_sane_reading_or_a_target_error(body):
    try:
        reading = parse_memory_json(body)
    except TargetError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    check_heap_reading(reading)


@settings(deadline=None)
@given(documents_with_memory)
def test_memory_json_reads_what_a_plausible_object_says(document):
    """Whenever the first memoryUsage-shaped object found holds plausible numbers, they are the reading."""
    try:
        reading = parse_memory_json(dumps(document))
    except TargetError:
        return
    check_heap_reading(reading)
    # the reading's figures came from the document, not from nowhere
    numbers = set()

    def collect(node):
        if isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            numbers.add(float(node))
    collect(document)
    assert reading.heap_used in numbers and reading.heap_total in numbers


# --- Node: prom-client text ---------------------------------------------------------------

metric_names = st.sampled_from([
    "nodejs_heap_size_used_bytes", "nodejs_heap_size_total_bytes", "process_resident_memory_bytes",
    "myapp_nodejs_heap_size_used_bytes", "nodejs_heap_space_size_total_bytes", "other", "9bad", "a b",
])
metric_values = st.one_of(
    hostile_numbers.map(lambda value: repr(value) if isinstance(value, float) else str(value)),
    st.sampled_from(["NaN", "+Inf", "-Inf", "nan", "1e999", "0x10", "", "--1", "1_000"]),
)
metric_lines = st.one_of(
    st.tuples(metric_names, metric_values).map(lambda pair: f"{pair[0]} {pair[1]}"),
    st.tuples(metric_names, hostile_text, metric_values).map(lambda t: f'{t[0]}{{space="{t[1]}"}} {t[2]}'),
    metric_names.map(lambda name: f"# TYPE {name} gauge"),
    metric_names.map(lambda name: f"# HELP {name} help text"),
    st.just("# EOF"),
    hostile_text,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(metric_lines, max_size=12).map("\n".join), st.booleans())
@example("nodejs_heap_size_used_bytes NaN\nnodejs_heap_size_total_bytes 1\n", False)
@example("nodejs_heap_size_used_bytes -1\nnodejs_heap_size_total_bytes 1\n", False)
@example("nodejs_heap_size_used_bytes 1\nnodejs_heap_size_total_bytes +Inf\n", False)
@example("nodejs_heap_size_used_bytes 1\nnodejs_heap_size_total_bytes 2\nprocess_resident_memory_bytes -7\n# EOF\n", True)
def test_metrics_text_is_a_sane_reading_or_a_target_error(text, openmetrics):
    try:
        reading = parse_metrics_text(text, openmetrics)
    except TargetError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    check_heap_reading(reading)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(["application/json", "text/plain; version=0.0.4", "application/openmetrics-text",
                                  "", "application/json; charset=utf-8", "TEXT/HTML", ";;;"]), any_text),
       st.one_of(st.binary(max_size=200), json_documents.map(dumps),
                 st.lists(metric_lines, max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))))
def test_any_http_answer_is_a_sane_reading_or_a_target_error(content_type, body):
    try:
        reading = parse_http_answer(content_type, body)
    except TargetError as exc:
        assert str(exc)
        return
    check_heap_reading(reading)


# --- Ollama and LM Studio payloads ---------------------------------------------------------

def check_model_reading(reading: ModelReading) -> None:
    assert isinstance(reading, ModelReading)
    assert reading.skipped_entries >= 0
    for sizes in (reading.loaded_bytes, reading.vram_bytes):
        for name, size in sizes.items():
            assert isinstance(name, str) and name.strip()
            assert isinstance(size, int) and not isinstance(size, bool) and size >= 0
            assert math.isfinite(float(size))
    assert set(reading.vram_bytes) <= set(reading.loaded_bytes)


ollama_entries = st.one_of(
    json_documents,
    st.fixed_dictionaries({}, optional={"name": json_scalars, "model": json_scalars, "size": json_scalars,
                                        "size_vram": json_scalars, "details": json_documents}),
)
lmstudio_entries = st.one_of(
    json_documents,
    st.fixed_dictionaries({}, optional={"key": json_scalars, "size_bytes": json_scalars,
                                        "loaded_instances": st.one_of(json_documents, st.lists(json_documents, max_size=4)),
                                        "type": json_scalars}),
)


def payloads(entries, key):
    return st.one_of(
        json_documents,
        st.builds(lambda items: {key: items}, st.lists(entries, max_size=12)),
        st.builds(lambda items, extra: {key: items, **extra}, st.lists(entries, max_size=6),
                  st.dictionaries(hostile_text, json_documents, max_size=3)),
    )


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), payloads(ollama_entries, "models").map(dumps)))
@example(b'{"models": [{"name": "m", "size": NaN}]}')
@example(b'{"models": [{"name": "m", "size": 1e400}]}')
@example(b'{"models": null}')
def test_ollama_body_is_a_sane_reading_or_unreadable(body):
    """Exactly what the collector does with a 200 answer of /api/ps."""
    try:
        reading = parse_ollama_ps(parse_json(body))
    except Unreadable as exc:
        assert exc.answered and exc.reason
        return
    check_model_reading(reading)
    for size in reading.vram_bytes.values():
        assert size < MAX_BYTE_COUNT * 10_000  # summed duplicates at most


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), payloads(ollama_entries, "models").map(dumps)))
@example(b'{"models": [{"name": "m", "size": 5, "remote_host": "https://ollama.com:443"}]}')
def test_ollama_tags_body_is_a_map_of_sizes_or_unreadable(body):
    """Exactly what the collector does with a 200 answer of /api/tags."""
    try:
        installed = parse_ollama_tags(parse_json(body))
    except Unreadable as exc:
        assert exc.answered and exc.reason
        return
    for name, size in installed.items():
        assert isinstance(name, str) and name.strip()
        assert isinstance(size, int) and 0 <= size < MAX_BYTE_COUNT


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), payloads(lmstudio_entries, "models").map(dumps)))
def test_lmstudio_v1_body_is_a_sane_reading_or_unreadable(body):
    try:
        payload = parse_json(body)
        is_unknown_endpoint(payload)
        reading = parse_lmstudio_v1(payload)
    except Unreadable as exc:
        assert exc.answered and exc.reason
        return
    check_model_reading(reading)
    assert reading.vram_bytes == {}
    for key, size in reading.installed_bytes.items():
        assert isinstance(key, str) and key.strip()
        assert isinstance(size, int) and 0 <= size < MAX_BYTE_COUNT


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), payloads(st.one_of(
    json_documents, st.fixed_dictionaries({}, optional={"id": json_scalars, "state": st.one_of(
        st.just("loaded"), st.just("not-loaded"), json_scalars)})), "data").map(dumps)))
def test_lmstudio_v0_body_is_a_list_of_names_or_unreadable(body):
    try:
        payload = parse_json(body)
        assert isinstance(is_unknown_endpoint(payload), bool)
        loaded = loaded_in_lmstudio_v0(payload)
    except Unreadable as exc:
        assert exc.answered and exc.reason
        return
    assert all(isinstance(name, str) and name.strip() for name in loaded)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_documents.map(dumps),
                 st.builds(lambda error: {"error": error}, st.one_of(json_documents, st.builds(
                     lambda message: {"message": message}, json_documents))).map(dumps)))
@example(json.dumps({"error": "line one\nline two\r\n" + "x" * 10_000}).encode())
def test_error_detail_is_one_short_line(body):
    detail = error_detail(body)
    assert isinstance(detail, str)
    assert len(detail) <= llm.MAX_ERROR_DETAIL_CHARS
    assert "\n" not in detail and "\r" not in detail


# --- Docker engine answers ---------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.one_of(hostile_text, st.text(alphabet="abcdef0123456789:/@.-_", max_size=80)))
@example("sha256:" + "ab" * 32)
@example("registry.example.com:5000/org/postgres:15@sha256:" + "0" * 64)
def test_image_family_is_a_bare_name(image):
    family = image_family(image)
    assert isinstance(family, str)
    assert "/" not in family and ":" not in family and "@" not in family
    assert len(family) <= len(image)


counts = st.one_of(st.integers(-(2**70), 2**70), json_scalars)
memory_stats_documents = st.one_of(
    json_documents,
    st.fixed_dictionaries({}, optional={
        "usage": counts, "limit": counts, "max_usage": counts,
        "stats": st.one_of(json_documents, st.fixed_dictionaries({}, optional={
            "total_inactive_file": counts, "inactive_file": counts, "cache": counts})),
    }),
)


@settings(max_examples=300, deadline=None)
@given(memory_stats_documents)
def test_memory_usage_is_a_byte_count_or_malformed(memory_stats):
    assume(isinstance(memory_stats, dict))  # container_memory checks that before it asks
    try:
        usage = memory_usage(memory_stats)
    except MalformedAnswer as exc:
        assert str(exc)
        return
    assert isinstance(usage, int) and not isinstance(usage, bool)
    assert 0 <= usage <= memory_stats["usage"]


# The summary of GET /containers/json with the documented types and hostile values, and
# sometimes the wrong types: a broken proxy, another engine, a future API.
container_summaries = st.fixed_dictionaries(
    {"Id": st.text(alphabet="0123456789abcdef", min_size=12, max_size=64)},
    optional={
        "Names": st.one_of(st.lists(hostile_text.map(lambda name: "/" + name), max_size=3), json_documents),
        "Image": st.one_of(hostile_text, json_scalars),
        "Labels": st.one_of(st.dictionaries(hostile_text, hostile_text, max_size=4),
                            st.dictionaries(st.sampled_from(["com.docker.compose.project", "com.docker.compose.service"]),
                                            json_scalars, max_size=2),
                            json_documents),
    },
)


@settings(max_examples=400, deadline=None)
@given(container_summaries, st.one_of(json_documents, st.builds(lambda stats: {"memory_stats": stats},
                                                                  memory_stats_documents)),
       st.integers(1, 2**45))
def test_container_reading_is_sane_or_malformed(summary, stats, host_memory):
    assume(isinstance(stats, dict))  # the collector checks that the stats answer is an object
    try:
        reading = container_memory(summary, stats, host_memory)
    except MalformedAnswer as exc:
        assert str(exc)
        return
    if reading is None:
        return  # no longer running
    assert isinstance(reading, ContainerMemory)
    assert all(isinstance(value, str) for value in reading.label_values), reading
    assert isinstance(reading.usage_bytes, int) and reading.usage_bytes >= 0
    assert reading.limit_bytes is None or 0 < reading.limit_bytes < host_memory


cgroup_numbers = st.one_of(st.integers(-(2**64), 2**64).map(str), st.sampled_from(["max", "", "12kB", "1e9", " 7\n"]),
                           st.text(max_size=12))
memory_stat_files = st.lists(st.one_of(
    st.tuples(st.sampled_from(["total_inactive_file", "inactive_file", "cache", "rss"]), cgroup_numbers)
    .map(" ".join), st.text(max_size=20)), max_size=6).map("\n".join)


@settings(max_examples=200, deadline=None)
@given(version=st.sampled_from(["v1", "v2"]), usage=cgroup_numbers, limit=cgroup_numbers, stat=memory_stat_files,
       missing=st.sets(st.sampled_from(["usage", "limit", "stat"]), max_size=2))
@example(version="v1", usage="100", limit="1000", stat="total_inactive_file abc", missing=set())
@example(version="v2", usage="100", limit="max", stat="inactive_file 12kB", missing=set())
@example(version="v1", usage="-100", limit="1000", stat="total_inactive_file 5", missing=set())
@example(version="v2", usage="100", limit="max", stat="", missing={"stat"})
def test_cgroup_files_are_a_sane_reading_none_or_malformed(tmp_path_factory, version, usage, limit, stat, missing):
    """The engine's own cgroup files, as the fast path reads them: whatever they hold, or
    when some are gone (the container exited mid-read), a sane reading, None (ask the
    API instead) or MalformedAnswer."""
    container_id = "ab" * 32
    root = tmp_path_factory.mktemp("cgroup")
    folder = root / "memory" / "docker" / container_id if version == "v1" else root / "docker" / container_id
    folder.mkdir(parents=True)
    names = {"v1": ("memory.usage_in_bytes", "memory.limit_in_bytes"), "v2": ("memory.current", "memory.max")}[version]
    for key, name, content in (("usage", names[0], usage), ("limit", names[1], limit), ("stat", "memory.stat", stat)):
        if key not in missing:
            (folder / name).write_text(content)
    try:
        figures = cgroup_memory(root, container_id)
    except MalformedAnswer:
        return
    if figures is None:
        return
    used, cap = figures
    assert isinstance(used, int) and used >= 0
    assert cap is None or (isinstance(cap, int) and cap > 0)


# --- a hostile Ollama through the real Scraper and the exposition ---------------------------

@st.composite
def hostile_ollama_payloads(draw):
    """/api/ps answers with up to 6,000 models: a bulk of generated ones (to test the
    series cap) and hand-drawn hostile entries (huge names, negative and non-finite
    sizes, wrong types, lone surrogates, duplicates)."""
    bulk = draw(st.sampled_from([0, 0, 10, 999, 1000, 1001, 5000, 6000]))
    prefix = draw(st.sampled_from(["model-", "x" * 300, "\ud800", "n\n\"{}", "é"]))
    bulk_size = draw(st.sampled_from([1, 4_900_000_000, -5, 2**63 - 1, 1.5, "big", None]))
    entries = [{"name": f"{prefix}{index}", "size": bulk_size, "size_vram": bulk_size} for index in range(bulk)]
    entries += draw(st.lists(ollama_entries, max_size=10))
    order = draw(st.sampled_from(["as drawn", "reversed"]))
    if order == "reversed":
        entries.reverse()
    return {"models": entries}


@pytest.fixture(scope="module")
def hostile_ollama():
    with OllamaStandin() as standin:
        yield standin


def expose(scraper: Scraper) -> tuple[bytes, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(scraper)
    return generate_latest(registry), generate_openmetrics(registry)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=hostile_ollama_payloads())
@example(payload={"models": [{"name": f"model-{index}", "size": 10**9 + index, "size_vram": index}
                             for index in range(5000)]})
@example(payload={"models": [{"name": "x" * 100_000 + str(index), "size": 1} for index in range(50)]})
@example(payload={"models": [{"name": "lone \ud800 surrogate", "size": 5}, {"name": "ok", "size": 1}]})
@example(payload={"models": [{"name": "neg", "size": -5}, {"name": "nan", "size": float("nan")}]})
@example(payload={"models": [{"name": "inf", "size": float("inf"), "size_vram": -1}, {"name": "ok", "size": 1}]})
def test_hostile_ollama_cannot_flood_or_poison_the_scrape(hostile_ollama, payload):
    body = dumps(payload)
    hostile_ollama.answer = (200, body)
    try:
        expected = parse_ollama_ps(parse_json(body))
        installed = parse_ollama_tags(parse_json(body))  # the stand-in answers /api/tags alike
    except Unreadable:
        expected = None
    scraper = Scraper([OllamaCollector(OllamaSection(url=hostile_ollama.url), timeout=5)], timeout=5)

    text, openmetrics = expose(scraper)  # the whole page encodes: no label value can break it

    families = {family.name: family for family in parse_prometheus_text(text.decode("utf-8"))}
    assert {family.name for family in parse_openmetrics_text(openmetrics.decode("utf-8"))} >= {
        "aitools_collector_success", "aitools_llm_server_up"}
    success = {s.labels["collector"]: s.value for s in families["aitools_collector_success"].samples}
    dropped = {s.labels["collector"]: s.value for s in families["aitools_collector_series_dropped"].samples}
    assert success == {"ollama": 1.0 if expected is not None else 0.0}
    for family in families.values():
        assert len(family.samples) <= MAX_SERIES_PER_FAMILY
        for sample in family.samples:
            assert math.isfinite(sample.value) and sample.value >= 0, sample
            assert all(len(value) <= MAX_LABEL_VALUE_LENGTH for value in sample.labels.values())
    if expected is None:
        return

    offered = 0
    for metric, sizes in (("aitools_llm_model_loaded_bytes", expected.loaded_bytes),
                          ("aitools_llm_model_vram_bytes", expected.vram_bytes),
                          ("aitools_llm_model_installed_bytes", installed)):
        published = {s.labels["model"]: s.value for s in families.get(metric, _empty).samples}
        offered += len(sizes)
        # Capped at the limit, and nothing beyond what the server offered.
        assert len(published) <= min(len(sizes), MAX_SERIES_PER_FAMILY)
        shown = Counter(_as_published(name)[:MAX_LABEL_VALUE_LENGTH] for name in sizes)
        if len(shown) >= MAX_SERIES_PER_FAMILY:
            assert len(published) == MAX_SERIES_PER_FAMILY
        for name, size in sizes.items():
            label = _as_published(name)[:MAX_LABEL_VALUE_LENGTH]
            if label in published and shown[label] == 1:  # the value is the model's own
                assert published[label] == pytest.approx(float(size))
    kept = sum(len(families[m].samples) for m in ("aitools_llm_model_loaded_bytes", "aitools_llm_model_vram_bytes",
                                                  "aitools_llm_model_installed_bytes")
               if m in families)
    # Every model the server offered is either published or counted as dropped.
    assert kept + dropped["ollama"] == offered


class _empty:
    samples: list = []


def _as_published(name: str) -> str:
    """A label value as it comes back from the exposition: valid UTF-8."""
    return name.encode("utf-8", "replace").decode("utf-8")


# --- whatever a collector yields, the page is written -----------------------------------------

label_values = st.one_of(hostile_text, st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(label_values, hostile_numbers), max_size=30))
def test_any_sample_a_collector_yields_is_published_sanely_or_dropped_and_counted(samples):
    """A collector bug or a backend's wrong types (a label value that is None, a list, a
    number; a value that is NaN or negative) costs that sample, never the page."""
    from exporter.collectors.base import SourceCollector, gauge

    class Yielding(SourceCollector):
        name = "yielding"

        def collect(self, deadline=None):
            family = gauge("test_yielded_bytes", "test", ["model"])
            for label, value in samples:
                family.add_metric([label], value)
            yield family

    text, openmetrics = expose(Scraper([Yielding(Config())], timeout=5))
    families = {family.name: family for family in parse_prometheus_text(text.decode("utf-8"))}
    list(parse_openmetrics_text(openmetrics.decode("utf-8")))
    published = families["test_yielded_bytes"].samples if "test_yielded_bytes" in families else []
    [dropped] = families["aitools_collector_series_dropped"].samples
    assert len(published) + dropped.value == len(samples)
    assert all(math.isfinite(s.value) and s.value >= 0 for s in published)
    assert [s.value for s in families["aitools_collector_success"].samples] == [1.0]


# --- a bad configuration file names the key and its line ------------------------------------

# (section, key under it, a good value, bad values): every key a user sets by hand.
CONFIG_LEAVES = [
    (None, "profile", "production", ["staging", "5", "[development]"]),
    (None, "timeout", "2s", ["forever", "0s", "61s", "-1s", "3h", "true"]),
    ("budgets", "docker", "4GB", ["plenty", "-5MB", "5XB", "1e9", "[1]", "true", "null"]),
    ("budgets", "node_heap", "200MiB", ["lots", "-1", "200 MB MB"]),
    ("budgets", "swift_build", "6000000000", ["six gigabytes", ".5GB"]),
    ("docker", "enabled", "true", ["maybe", "1", "'yes'"]),
    ("docker", "host", "unix:///var/run/docker.sock", ["/var/run/docker.sock", "localhost:2375", "5"]),
    ("ollama", "url", "http://127.0.0.1:11434", ["127.0.0.1:11434", "ftp://host", "5", "[a]"]),
    ("lmstudio", "url", "http://127.0.0.1:1234", ["localhost", "{a: 1}"]),
    ("system", "source", "procfs", ["sysctl", "VM_STAT", "1"]),
]


@st.composite
def config_with_one_bad_value(draw):
    """A configuration document laid out as people write them (sections in any order,
    comments and blank lines between), every value good but one. Returns (text, dotted
    key of the bad value, 1-based line where that key is written)."""
    leaves = draw(st.lists(st.sampled_from(CONFIG_LEAVES), min_size=1, max_size=len(CONFIG_LEAVES),
                           unique_by=lambda leaf: (leaf[0], leaf[1])))
    bad_index = draw(st.integers(0, len(leaves) - 1))
    bad_value = draw(st.sampled_from(leaves[bad_index][3]))
    filler = st.lists(st.sampled_from(["", "# a comment", "   # indented comment", "#"]), max_size=3)
    lines: list[str] = []
    bad_key, bad_line = None, None
    sections: dict[str | None, list] = {}
    for index, leaf in enumerate(leaves):
        sections.setdefault(leaf[0], []).append((index, leaf))
    for section, members in sections.items():
        lines += draw(filler)
        if section is not None:
            lines.append(f"{section}:")
        for index, (_, key, good, _) in members:
            lines += [("  " + line if line and section is not None else line) for line in draw(filler)]
            value = bad_value if index == bad_index else good
            lines.append(f"{'  ' if section else ''}{key}: {value}")
            if index == bad_index:
                bad_key, bad_line = (f"{section}.{key}" if section else key), len(lines)
    return "\n".join(lines) + "\n", bad_key, bad_line


@settings(max_examples=300, deadline=None)
@given(config_with_one_bad_value())
def test_a_bad_value_anywhere_is_refused_naming_its_key_and_line(document):
    from exporter.config import ConfigError, parse_config

    text, key, line = document
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yml")
    assert (caught.value.key, caught.value.line) == (key, line), text
    assert str(caught.value).startswith(f"config.yml:{line}: {key}: ")
    assert caught.value.reason and "\n" not in caught.value.reason


@pytest.mark.parametrize("text, key, line", [
    ("# workstation\nprofile: development\n\nbudgets:\n  docker: 4GB\n  # LLMs\n  ollama: plenty\n", "budgets.ollama", 7),
    ("ollama:\n  url: http://127.0.0.1:11434\nsystem:\n  source: sysctl\n", "system.source", 4),
    ("node:\n  targets:\n    - name: api\n      url: http://127.0.0.1:3000/memory\n    - name: web\n"
     "      url: localhost:3001\n", "node.targets[1].url", 6),
])
def test_the_command_refuses_a_bad_config_at_start_naming_key_and_line(tmp_path, text, key, line):
    import subprocess
    import sys

    from tests.parts.exporter_process import free_port

    path = tmp_path / "config.yml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(path),
                             "--web.listen-address", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"aitools-exporter: bad configuration: {path}:{line}: {key}: "), result.stderr
