"""What the /metrics page must be, for every format a scraper can ask for.

The page is written by prometheus_client (exporter/server.py `metrics_page`: the
library's `choose_encoder` and its encoder). Served by the real HTTP server, for each
Accept header the page has the content type the library chooses, parses back with the
parser of that format to every sample it was given (hostile label values and odd numbers
included), has only legacy metric and label names, and an OpenMetrics page ends with
`# EOF`.
"""

from __future__ import annotations

import math

import httpx
import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.app import Exporter
from exporter.config import parse_config
from exporter.server import metrics_page, start_server

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
ACCEPTS = [PROMETHEUS_ACCEPT, "", "text/plain", "*/*", "application/openmetrics-text",
           "application/openmetrics-text;version=1.0.0"]

HOSTILE_VALUES = ['plain', 'with "quotes"', "back\\slash", "new\nline", "ünïcödé ✓", "", "{}=,", "tab\there",
                  "\\n literally", "\"\\\n", "# EOF", "a} 1\nfake_metric 2"]
NUMBERS = [0.0, 1.0, 2.5, 1e21, 123456789.0, 1234567.0, 9.9e-05, float(2**63), 36.5 * 2**20, 3.0,
           float("inf"), float("nan")]


def hostile_families() -> list[Metric]:
    names = GaugeMetricFamily("aitools_test_bytes", 'Docs with "quotes", a back\\slash\nand a newline.',
                              labels=["name", "image"])
    for index, value in enumerate(HOSTILE_VALUES):
        names.add_metric([value, f"image-{index}"], float(index))
    numbers = GaugeMetricFamily("aitools_test_numbers", "Odd numbers.", labels=["index"])
    for index, number in enumerate(NUMBERS):
        numbers.add_metric([str(index)], number)
    counter = CounterMetricFamily("aitools_test_events", "Events.", labels=["kind"])
    counter.add_metric(["a"], 3)
    unlabelled = GaugeMetricFamily("aitools_test_up", "Up.", value=1)
    empty = GaugeMetricFamily("aitools_test_empty", "No samples.", labels=["x"])
    return [names, numbers, counter, unlabelled, empty]


class Fixed(Collector):
    def __init__(self, families):
        self.families = families

    def collect(self):
        return hostile_families()


@pytest.fixture(scope="module")
def page_server():
    """The real server of an Exporter (no backends) whose registry also holds the hostile families."""
    exporter = Exporter(parse_config("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"),
                        own_metrics=True)
    exporter.registry.register(Fixed(hostile_families()))
    server = start_server("127.0.0.1:0", exporter)
    host, port = server.server_address[:2]
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
        yield client
    server.shutdown()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_page_is_the_format_asked_for_and_parses_back_to_every_sample(page_server, accept):
    answer = page_server.get("/metrics", headers={"Accept": accept})
    assert answer.status_code == 200
    _, content_type = choose_encoder(accept)
    assert answer.headers["Content-Type"] == content_type
    openmetrics = content_type.startswith("application/openmetrics-text")
    text = answer.content.decode("utf-8")
    if openmetrics:
        assert text.endswith("\n# EOF\n") and text.splitlines().count("# EOF") == 1
    else:
        assert text.startswith("# HELP ") and "# EOF" not in text.splitlines()
    families = {family.name: family for family in (parse_openmetrics if openmetrics else parse_text)(text)}

    # Every hostile label value comes back exactly, on its own line: nothing was injected.
    names = families["aitools_test_bytes"]
    assert names.type == "gauge"
    assert names.documentation == 'Docs with "quotes", a back\\slash\nand a newline.'
    assert sorted((s.labels["name"], s.labels["image"], s.value) for s in names.samples) == sorted(
        (value, f"image-{index}", float(index)) for index, value in enumerate(HOSTILE_VALUES))
    assert "fake_metric" not in families

    numbers = {s.labels["index"]: s.value for s in families["aitools_test_numbers"].samples}
    assert len(numbers) == len(NUMBERS)
    for index, number in enumerate(NUMBERS):
        assert _same(numbers[str(index)], number), (index, numbers[str(index)], number)

    events = families["aitools_test_events"]
    assert events.type == "counter"
    assert [(s.name, s.labels, s.value) for s in events.samples] == [("aitools_test_events_total", {"kind": "a"}, 3.0)]
    assert [s.value for s in families["aitools_test_up"].samples] == [1.0]
    assert families["aitools_test_empty"].samples == []
    assert families["aitools_collector_success"].samples and families["process_resident_memory_bytes"].samples

    # Legacy names only: what Prometheus 2.x reads without any escaping scheme.
    for family in families.values():
        for sample in family.samples:
            assert sample.name.replace("_", "a").isalnum() and sample.name.isascii(), sample.name
            assert all(label.replace("_", "a").isalnum() and label.isascii() for label in sample.labels)


def test_metrics_page_is_the_library_encoder_for_the_accept_header():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(hostile_families()))
    for accept in ACCEPTS:
        encoder, content_type = choose_encoder(accept)
        assert metrics_page(registry, accept) == (encoder(registry), content_type)


def test_a_gzip_page_is_the_same_page(page_server):
    plain = page_server.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "identity"})
    zipped = page_server.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    # httpx decodes it; the exporter's own figures move between the two scrapes, the page's families do not.
    names = [[family.name for family in parse_openmetrics(answer.text)] for answer in (plain, zipped)]
    assert names[0] == names[1] and "aitools_test_bytes" in names[1]
