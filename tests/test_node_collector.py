"""The node collector: pure parsers, then real Node processes (tests/parts/node_processes.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest

from exporter.collectors.base import CollectorError
from exporter.collectors.node import (
    MAX_JSON_DEPTH,
    MAX_PLAUSIBLE_BYTES,
    HeapReading,
    NodeCollector,
    TargetError,
    parse_http_answer,
    parse_memory_json,
    parse_metrics_text,
    plausible_bytes,
)
from exporter.config import Config, NodeSection, NodeTarget
from exporter.scrape import Scraper

MiB = 2**20
# What collect() may take beyond the timeout: a 0.05 s hand-over, with room for a busy machine.
COLLECT_MARGIN = 0.5
FAMILIES = ("aitools_node_heap_used_bytes", "aitools_node_heap_total_bytes", "aitools_node_heap_limit_bytes",
            "aitools_node_rss_bytes", "aitools_node_target_up", "aitools_node_target_running")


def run_collect(targets: list[NodeTarget], timeout: float = 3.0) -> tuple[dict[str, dict[str, float]], str | None, float]:
    """({family: {target: value}}, the CollectorError message or None, seconds taken)."""
    collector = NodeCollector(NodeSection(targets=tuple(targets)), timeout=timeout)
    families: dict[str, dict[str, float]] = {}
    error = None
    started = time.monotonic()
    try:
        for family in collector.collect():
            families[family.name] = {sample.labels["target"]: sample.value for sample in family.samples}
    except CollectorError as exc:
        error = str(exc)
    return families, error, time.monotonic() - started


def memory_json(**fields) -> bytes:
    memory = {"rss": 50 * MiB, "heapTotal": 20 * MiB, "heapUsed": 12 * MiB, "external": MiB, "arrayBuffers": 10_000}
    memory.update(fields)
    return json.dumps(memory).encode()


# --- pure parsers -------------------------------------------------------------------


class TestPlausibleBytes:
    @pytest.mark.parametrize("value", [0, 1, 12.5, MAX_PLAUSIBLE_BYTES])
    def test_accepts_byte_counts(self, value):
        assert plausible_bytes(value) == float(value)

    @pytest.mark.parametrize("value", [-1, math.nan, math.inf, -math.inf, True, False, "12", None, [1],
                                       MAX_PLAUSIBLE_BYTES + 1])
    def test_rejects_what_no_node_process_reports(self, value):
        assert plausible_bytes(value) is None


class TestParseMemoryJson:
    def test_top_level_memory_usage(self):
        assert parse_memory_json(memory_json()) == HeapReading(12 * MiB, 20 * MiB, None, 50 * MiB)

    def test_nested_memory_usage_with_heap_statistics_elsewhere(self):
        body = json.dumps({
            "status": "ok",
            "checks": [{"name": "db", "heapUsed": "12 MB", "heapTotal": "20 MB"}],  # not numbers: skipped
            "runtime": {"process": {"memory": {"heapUsed": 7, "heapTotal": 9, "rss": 30}}},
            "v8": {"heap_size_limit": 4144 * MiB, "used_heap_size": 123},
        }).encode()
        assert parse_memory_json(body) == HeapReading(7, 9, 4144 * MiB, 30)

    def test_camel_case_heap_size_limit(self):
        body = json.dumps([{"memory": json.loads(memory_json())}, {"heapSizeLimit": 2048 * MiB}]).encode()
        assert parse_memory_json(body).heap_limit == 2048 * MiB

    def test_first_memory_object_in_document_order_wins(self):
        body = json.dumps({"a": {"heapUsed": 1, "heapTotal": 2}, "b": {"heapUsed": 3, "heapTotal": 4}}).encode()
        assert (parse_memory_json(body).heap_used, parse_memory_json(body).heap_total) == (1, 2)

    def test_rss_only_from_the_same_object(self):
        body = json.dumps({"rss": 99, "memory": {"heapUsed": 1, "heapTotal": 2}}).encode()
        assert parse_memory_json(body).rss is None

    def test_implausible_optional_figures_are_left_out(self):
        body = json.dumps({"heapUsed": 1, "heapTotal": 2, "rss": -5, "heap_size_limit": True}).encode()
        assert parse_memory_json(body) == HeapReading(1, 2, None, None)

    @pytest.mark.parametrize("fields, reason", [
        ({"heapUsed": -1}, "heapUsed is not a plausible byte count"),
        ({"heapUsed": 1e999}, "heapUsed is not a plausible byte count"),  # json gives inf
        ({"heapTotal": MAX_PLAUSIBLE_BYTES * 2}, "heapTotal is not a plausible byte count"),
    ])
    def test_implausible_heap_figures_fail(self, fields, reason):
        with pytest.raises(TargetError, match=reason):
            parse_memory_json(memory_json(**fields))

    def test_nan_heap_figure_fails(self):
        with pytest.raises(TargetError, match="heapUsed is not a plausible byte count"):
            parse_memory_json(b'{"heapUsed": NaN, "heapTotal": 10}')

    @pytest.mark.parametrize("body", [
        b'{"status": "ok"}',
        b'{"heapUsed": 5}',
        b'{"heapUsed": true, "heapTotal": false}',
        b'{"heapUsed": "5", "heapTotal": "6"}',
        b'[1, 2, 3]',
        b'"heapUsed"',
    ])
    def test_no_numeric_heap_figures(self, body):
        with pytest.raises(TargetError, match=r"^no heapUsed/heapTotal in the JSON$"):
            parse_memory_json(body)

    def test_search_depth_is_bounded(self):
        shallow, deep = {"heapUsed": 1, "heapTotal": 2}, {"heapUsed": 1, "heapTotal": 2}
        for _ in range(MAX_JSON_DEPTH):
            shallow = {"x": shallow}
        for _ in range(MAX_JSON_DEPTH + 1):
            deep = {"x": deep}
        assert parse_memory_json(json.dumps(shallow).encode()).heap_used == 1
        with pytest.raises(TargetError, match="no heapUsed/heapTotal"):
            parse_memory_json(json.dumps(deep).encode())

    def test_hostile_nesting_is_a_clear_failure(self):
        with pytest.raises(TargetError, match="malformed JSON: nested too deeply"):
            parse_memory_json(b"[" * 200_000 + b"]" * 200_000)

    @pytest.mark.parametrize("body", [b'{"heapUsed": 1, "heapTotal": ', b"", b"\xff\xfe\x00garbage"])
    def test_malformed(self, body):
        with pytest.raises(TargetError, match="^malformed JSON"):
            parse_memory_json(body)


PROM_TEXT = """\
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes{app="api"} 61440000 1700000000000
# HELP nodejs_heap_size_total_bytes Process heap size from Node.js in bytes.
# TYPE nodejs_heap_size_total_bytes gauge
nodejs_heap_size_total_bytes{app="api"} 33554432 1700000000000
# HELP nodejs_heap_size_used_bytes Process heap size used from Node.js in bytes.
# TYPE nodejs_heap_size_used_bytes gauge
nodejs_heap_size_used_bytes{app="api"} 25165824 1700000000000
# HELP nodejs_heap_space_size_total_bytes Process heap space size total from Node.js in bytes.
# TYPE nodejs_heap_space_size_total_bytes gauge
nodejs_heap_space_size_total_bytes{space="old",app="api"} 20000000
nodejs_heap_space_size_total_bytes{space="new",app="api"} 1048576
# HELP nodejs_heap_space_size_available_bytes Process heap space size available from Node.js in bytes.
# TYPE nodejs_heap_space_size_available_bytes gauge
nodejs_heap_space_size_available_bytes{space="old",app="api"} 4000000000
"""


class TestParseMetricsText:
    def test_prom_client_text(self):
        # The heap space figures are no heap limit: none is published.
        assert parse_metrics_text(PROM_TEXT) == HeapReading(25165824, 33554432, None, 61440000)

    def test_openmetrics(self):
        text = ("# TYPE nodejs_heap_size_used_bytes gauge\n# UNIT nodejs_heap_size_used_bytes bytes\n"
                "nodejs_heap_size_used_bytes 100.0 1700000000.123\n"
                "# TYPE nodejs_heap_size_total_bytes gauge\nnodejs_heap_size_total_bytes 200\n# EOF\n")
        assert parse_metrics_text(text, openmetrics=True) == HeapReading(100, 200, None, None)

    def test_prefixed_names(self):
        text = "myapp_nodejs_heap_size_used_bytes 10\nmyapp_nodejs_heap_size_total_bytes 20\nmyapp_process_resident_memory_bytes 30\n"
        assert parse_metrics_text(text) == HeapReading(10, 20, None, 30)

    def test_missing_heap_metrics(self):
        with pytest.raises(TargetError, match="^no nodejs_heap_size_used_bytes/nodejs_heap_size_total_bytes in the metrics text$"):
            parse_metrics_text("process_resident_memory_bytes 30\n")

    @pytest.mark.parametrize("value", ["NaN", "+Inf", "-1"])
    def test_implausible_heap_value(self, value):
        with pytest.raises(TargetError, match="nodejs_heap_size_used_bytes is not a plausible byte count"):
            parse_metrics_text(f"nodejs_heap_size_used_bytes {value}\nnodejs_heap_size_total_bytes 20\n")

    def test_garbage(self):
        with pytest.raises(TargetError, match="^malformed metrics text"):
            parse_metrics_text("nodejs_heap_size_used_bytes{ 10\n")


class TestParseHttpAnswer:
    def test_json_by_content_type(self):
        assert parse_http_answer("application/json; charset=utf-8", memory_json()).heap_used == 12 * MiB

    def test_json_served_as_text_plain_is_sniffed(self):
        assert parse_http_answer("text/plain", b"  \n" + memory_json()).heap_used == 12 * MiB

    def test_prom_text_without_content_type(self):
        assert parse_http_answer("", PROM_TEXT.encode()).heap_used == 25165824

    def test_openmetrics_by_content_type(self):
        body = b"nodejs_heap_size_used_bytes 1\nnodejs_heap_size_total_bytes 2\n# EOF\n"
        assert parse_http_answer("application/openmetrics-text; version=1.0.0", body) == HeapReading(1, 2)

    def test_openmetrics_sniffed_by_eof(self):
        body = (b"# TYPE http_requests counter\nhttp_requests_total 5 # {trace_id=\"a\"} 1\n"
                b"nodejs_heap_size_used_bytes 1\nnodejs_heap_size_total_bytes 2\n# EOF\n")
        assert parse_http_answer("text/plain", body) == HeapReading(1, 2)

    def test_metrics_text_claimed_as_json_is_malformed_json(self):
        with pytest.raises(TargetError, match="^malformed JSON"):
            parse_http_answer("application/json", PROM_TEXT.encode())

    def test_binary(self):
        with pytest.raises(TargetError, match="neither JSON nor UTF-8 metrics text"):
            parse_http_answer("application/octet-stream", b"\xff\xfe\xfd")


# --- real Node processes ------------------------------------------------------------


def test_zero_targets_yield_empty_families_and_succeed():
    families, error, _ = run_collect([])
    assert error is None
    assert families == {name: {} for name in FAMILIES}


def test_json_target_publishes_what_the_process_served(node_steady):
    families, error, _ = run_collect([NodeTarget("api", url=node_steady.url("/memory"))])
    served = node_steady.get_json("/last-served")["memory"]

    assert error is None
    assert families["aitools_node_target_up"] == {"api": 1.0}
    assert families["aitools_node_heap_used_bytes"] == {"api": served["heapUsed"]}
    assert families["aitools_node_heap_total_bytes"] == {"api": served["heapTotal"]}
    assert families["aitools_node_rss_bytes"] == {"api": served["rss"]}
    assert families["aitools_node_heap_limit_bytes"] == {}  # memoryUsage() has no limit
    assert served["heapTotal"] >= served["heapUsed"] > 1 * MiB
    assert served["rss"] > served["heapUsed"]


def test_nested_json_target_with_heap_limit(node_steady):
    families, error, _ = run_collect([NodeTarget("web", url=node_steady.url("/nested"))])
    served = node_steady.get_json("/last-served")["nested"]

    assert error is None
    assert families["aitools_node_target_up"] == {"web": 1.0}
    assert families["aitools_node_heap_used_bytes"] == {"web": served["memory"]["heapUsed"]}
    assert families["aitools_node_heap_total_bytes"] == {"web": served["memory"]["heapTotal"]}
    assert families["aitools_node_rss_bytes"] == {"web": served["memory"]["rss"]}
    limit = families["aitools_node_heap_limit_bytes"]["web"]
    assert limit == served["heapStatistics"]["heap_size_limit"]
    # --max-old-space-size=3072 plus the young generation.
    assert 3072 * MiB < limit < (3072 + 256) * MiB


@pytest.mark.parametrize("path", ["/metrics", "/openmetrics"])
def test_prom_client_text_target(node_steady, path):
    families, error, _ = run_collect([NodeTarget("worker", url=node_steady.url(path))])
    served = node_steady.get_json("/last-served")[path.strip("/")]

    assert error is None
    assert families["aitools_node_target_up"] == {"worker": 1.0}
    assert families["aitools_node_heap_used_bytes"] == {"worker": served["heapUsed"]}
    assert families["aitools_node_heap_total_bytes"] == {"worker": served["heapTotal"]}
    assert families["aitools_node_rss_bytes"] == {"worker": served["rss"]}
    assert families["aitools_node_heap_limit_bytes"] == {}


def test_inspector_target(node_steady):
    before = node_steady.get_json("/memory")
    families, error, _ = run_collect([NodeTarget("debug", inspector=node_steady.inspector_address)])
    after = node_steady.get_json("/memory")
    heap_limit = node_steady.get_json("/last-served")["heapStatistics"]["heap_size_limit"]

    assert error is None
    assert families["aitools_node_target_up"] == {"debug": 1.0}
    used = families["aitools_node_heap_used_bytes"]["debug"]
    total = families["aitools_node_heap_total_bytes"]["debug"]
    rss = families["aitools_node_rss_bytes"]["debug"]
    # The heap moves between reads (each request allocates, GC frees): the inspector's
    # figures lie near what the process reported just before and just after.
    slack = 4 * MiB
    assert min(before["heapUsed"], after["heapUsed"]) - slack <= used <= max(before["heapUsed"], after["heapUsed"]) + slack
    assert min(before["heapTotal"], after["heapTotal"]) - slack <= total <= max(before["heapTotal"], after["heapTotal"]) + slack
    assert min(before["rss"], after["rss"]) - slack <= rss <= max(before["rss"], after["rss"]) + slack
    assert total >= used and rss > used
    assert families["aitools_node_heap_limit_bytes"] == {"debug": heap_limit}
    assert 3072 * MiB < heap_limit < (3072 + 256) * MiB


def test_inspector_can_be_read_again_and_again(node_steady):
    for _ in range(3):
        families, error, _ = run_collect([NodeTarget("debug", inspector=node_steady.inspector_address)])
        assert error is None and families["aitools_node_target_up"] == {"debug": 1.0}


def test_leaky_process_growth_is_seen_on_every_kind_of_target(node_leaky):
    targets = [NodeTarget("json", url=node_leaky.url("/nested")),
               NodeTarget("prom", url=node_leaky.url("/metrics")),
               NodeTarget("inspector", inspector=node_leaky.inspector_address)]
    first, error, _ = run_collect(targets)
    assert error is None
    time.sleep(2.0)  # 20 MiB a second retained
    second, error, _ = run_collect(targets)
    assert error is None

    for name in ("json", "prom", "inspector"):
        growth = second["aitools_node_heap_used_bytes"][name] - first["aitools_node_heap_used_bytes"][name]
        assert growth > 20 * MiB, name
    assert node_leaky.get_json("/leak")["retainedBytes"] >= 40 * MiB


FAILURES = [
    # (path on the node process, the reason the error must give)
    ("/fail/status500", "HTTP 500 Internal Server Error"),
    ("/fail/malformed", "malformed JSON: Expecting value"),
    ("/fail/truncated", "connection closed before the whole answer arrived"),
    ("/fail/no-heap", "no heapUsed/heapTotal in the JSON"),
    ("/fail/huge", "answer larger than 4 MiB"),
    ("/fail/slow?ms=10000", "no answer within 1s"),
    ("/no-such-page", "HTTP 404 Not Found"),
]


@pytest.mark.parametrize("path, reason", FAILURES, ids=[path for path, _ in FAILURES])
def test_a_failing_target_costs_only_its_own_figures(node_steady, path, reason):
    timeout = 1.0
    bad = NodeTarget("bad", url=node_steady.url(path))
    families, error, took = run_collect([NodeTarget("good", url=node_steady.url("/memory")), bad,
                                         NodeTarget("debug", inspector=node_steady.inspector_address)],
                                        timeout=timeout)
    served = node_steady.get_json("/last-served")["memory"]

    assert families["aitools_node_target_up"] == {"good": 1.0, "bad": 0.0, "debug": 1.0}
    assert families["aitools_node_heap_used_bytes"]["good"] == served["heapUsed"]
    assert set(families["aitools_node_heap_used_bytes"]) == {"good", "debug"}
    assert set(families["aitools_node_heap_total_bytes"]) == {"good", "debug"}
    assert error.startswith(f"target bad ({bad.url}): {reason}")
    assert "\n" not in error
    assert took < timeout + COLLECT_MARGIN


def test_connection_refused(node_steady, refused_url):
    families, error, took = run_collect([NodeTarget("api", url=refused_url),
                                         NodeTarget("good", url=node_steady.url("/memory"))])
    assert error == f"target api ({refused_url}): connection refused"
    assert families["aitools_node_target_up"] == {"api": 0.0, "good": 1.0}
    # Nothing listens at api's address: stopped, not failing (issue 10, case 7).
    assert families["aitools_node_target_running"] == {"api": 0.0, "good": 1.0}
    assert set(families["aitools_node_heap_used_bytes"]) == {"good"}
    assert took < 1.0


def test_targets_that_are_all_stopped_are_a_source_not_running_and_a_failing_one_is_not(node_steady, refused_url):
    """The orchestrator publishes aitools_collector_source_running 0 when every failing
    target is simply stopped (connection refused), and 1 once one answers but cannot be read."""
    refused_address = refused_url.split("/")[2]

    def scrape(targets):
        scraper = Scraper([NodeCollector(NodeSection(targets=tuple(targets)), timeout=2.0)], timeout=2.0)
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in scraper.collect_once() for sample in family.samples}

    stopped = scrape([NodeTarget("api", url=refused_url), NodeTarget("debug", inspector=refused_address),
                      NodeTarget("good", url=node_steady.url("/memory"))])
    assert stopped[("aitools_collector_success", (("collector", "node"),))] == 0.0
    assert stopped[("aitools_collector_source_running", (("collector", "node"),))] == 0.0
    assert stopped[("aitools_node_target_running", (("target", "api"),))] == 0.0
    assert stopped[("aitools_node_target_running", (("target", "debug"),))] == 0.0
    assert stopped[("aitools_node_target_running", (("target", "good"),))] == 1.0

    failing = scrape([NodeTarget("api", url=refused_url), NodeTarget("bad", url=node_steady.url("/fail/status500"))])
    assert failing[("aitools_collector_success", (("collector", "node"),))] == 0.0
    assert failing[("aitools_collector_source_running", (("collector", "node"),))] == 1.0
    assert failing[("aitools_node_target_running", (("target", "api"),))] == 0.0
    assert failing[("aitools_node_target_running", (("target", "bad"),))] == 1.0

    fine = scrape([NodeTarget("good", url=node_steady.url("/memory"))])
    assert fine[("aitools_collector_success", (("collector", "node"),))] == 1.0
    assert fine[("aitools_collector_source_running", (("collector", "node"),))] == 1.0


def test_heap_limit_from_the_config_where_the_source_does_not_tell_it(node_steady):
    """memoryUsage() JSON and prom-client text carry no heap limit: the target's
    `heap_limit` (the --max-old-space-size it runs with) stands in; a source that tells
    its own (the inspector, JSON with heap statistics) wins over the config."""
    limit = 4 * 2**30
    families, error, _ = run_collect([
        NodeTarget("plain", url=node_steady.url("/memory"), heap_limit=limit),
        NodeTarget("prom", url=node_steady.url("/metrics"), heap_limit=limit),
        NodeTarget("nested", url=node_steady.url("/nested"), heap_limit=limit),
        NodeTarget("debug", inspector=node_steady.inspector_address, heap_limit=limit),
        NodeTarget("none", url=node_steady.url("/memory")),
    ])
    told = node_steady.get_json("/last-served")["heapStatistics"]["heap_size_limit"]
    assert error is None
    assert families["aitools_node_heap_limit_bytes"]["plain"] == limit
    assert families["aitools_node_heap_limit_bytes"]["prom"] == limit
    assert families["aitools_node_heap_limit_bytes"]["nested"] == told != limit
    assert families["aitools_node_heap_limit_bytes"]["debug"] == told
    assert "none" not in families["aitools_node_heap_limit_bytes"]


def test_inspector_failures(node_steady, refused_url):
    refused_address = refused_url.split("/")[2]
    not_an_inspector = f"127.0.0.1:{node_steady.http_port}"
    families, error, _ = run_collect([NodeTarget("gone", inspector=refused_address),
                                      NodeTarget("wrong", inspector=not_an_inspector),
                                      NodeTarget("debug", inspector=node_steady.inspector_address)])
    assert error == (f"target gone (inspector {refused_address}): /json/list: connection refused; "
                     f"target wrong (inspector {not_an_inspector}): /json/list: HTTP 404 Not Found")
    assert families["aitools_node_target_up"] == {"gone": 0.0, "wrong": 0.0, "debug": 1.0}
    assert set(families["aitools_node_heap_used_bytes"]) == {"debug"}


def test_all_failures_together_are_named_and_bounded_by_the_timeout(node_steady, refused_url):
    timeout = 1.5
    failing = [NodeTarget(f"bad{index}", url=node_steady.url(path)) for index, (path, _) in enumerate(FAILURES)]
    failing.append(NodeTarget("refused", url=refused_url))
    families, error, took = run_collect([NodeTarget("good", url=node_steady.url("/metrics")), *failing],
                                        timeout=timeout)

    assert took < timeout + COLLECT_MARGIN
    assert families["aitools_node_target_up"] == {"good": 1.0, **{target.name: 0.0 for target in failing}}
    assert set(families["aitools_node_heap_used_bytes"]) == {"good"}
    for index, (path, reason) in enumerate(FAILURES):
        assert f"target bad{index} ({node_steady.url(path)}): {reason.replace('1s', '1.5s')}" in error
    assert f"target refused ({refused_url}): connection refused" in error


def test_a_stopped_process_times_out_within_the_timeout(start_node):
    """SIGSTOP: the kernel still accepts connections, but nothing answers them."""
    frozen = start_node(inspector=True)
    healthy = start_node()
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        timeout = 1.0
        families, error, took = run_collect([NodeTarget("frozen-http", url=frozen.url("/memory")),
                                             NodeTarget("frozen-inspector", inspector=frozen.inspector_address),
                                             NodeTarget("healthy", url=healthy.url("/memory"))], timeout=timeout)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)

    assert took < timeout + COLLECT_MARGIN
    assert families["aitools_node_target_up"] == {"frozen-http": 0.0, "frozen-inspector": 0.0, "healthy": 1.0}
    assert error == (f"target frozen-http ({frozen.url('/memory')}): no answer within 1s; "
                     f"target frozen-inspector (inspector {frozen.inspector_address}): /json/list: no answer within 1s")


def test_orchestrator_keeps_the_published_targets_and_marks_the_collector_failed(node_steady, refused_url):
    config = Config(node=NodeSection(targets=(NodeTarget("good", url=node_steady.url("/memory")),
                                  NodeTarget("api", url=refused_url))), timeout=2.0)
    scraper = Scraper([NodeCollector(config.node, config.timeout)], timeout=config.timeout)
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in scraper.collect_once() for sample in family.samples}

    assert samples[("aitools_node_target_up", (("target", "good"),))] == 1.0
    assert samples[("aitools_node_target_up", (("target", "api"),))] == 0.0
    assert samples[("aitools_node_heap_used_bytes", (("target", "good"),))] > 1 * MiB
    assert samples[("aitools_collector_success", (("collector", "node"),))] == 0.0
    assert scraper.last_errors()["node"] == f"target api ({refused_url}): connection refused"
