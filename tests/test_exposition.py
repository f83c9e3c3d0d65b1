"""exporter/exposition.py writes the OpenMetrics page byte for byte as prometheus_client
does (the library's encoder for what Prometheus negotiates, escaping=underscores), and
hands the library every page it does not know how to write."""

from __future__ import annotations

import pytest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Exemplar, Sample

from exporter.exposition import openmetrics_page


class Page:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return list(self.families)


def library(registry) -> bytes:
    return openmetrics.generate_latest(registry, escaping=openmetrics.UNDERSCORES, version="1.0.0")


HOSTILE_VALUES = ['plain', 'with "quotes"', "back\\slash", "new\nline", "ünïcödé ✓", "", "{}=,", "tab\there",
                  "\\n literally", "\"\\\n"]
NUMBERS = [0.0, -0.0, 1.0, 2.5, 1e21, 123456789.0, 1234567.0, 9.9e-05, float("inf"), float("-inf"), float("nan"),
           2**63, 36.5 * 2**20, 3]


def hostile_families() -> list[Metric]:
    gauge = GaugeMetricFamily("aitools_test_bytes", 'Docs with "quotes", a back\\slash\nand a newline.',
                              labels=["name", "image"])
    for index, value in enumerate(HOSTILE_VALUES):
        gauge.add_metric([value, f"image-{index}"], NUMBERS[index % len(NUMBERS)])
    numbers = GaugeMetricFamily("aitools_test_numbers", "", labels=["index"])
    for index, number in enumerate(NUMBERS):
        numbers.add_metric([str(index)], number)
    counter = CounterMetricFamily("aitools_test_events", "Events.", labels=["kind"], created=1700000000.5)
    counter.add_metric(["a"], 3, created=1700000000.25)
    unlabelled = GaugeMetricFamily("aitools_test_up", "Up.", value=1)
    empty = GaugeMetricFamily("aitools_test_empty", "No samples.", labels=["x"])
    with_unit = GaugeMetricFamily("aitools_test_seconds", "A unit.", unit="seconds", value=0.25)
    many_labels = GaugeMetricFamily("aitools_test_sorted", "Labels in any order.", labels=["z", "a", "m", "_b"])
    many_labels.add_metric(["1", "2", "3", "4"], 5)
    info = InfoMetricFamily("aitools_test_build", "Build.", value={"version": "1.0", "revision": "abc\"d"})
    return [gauge, numbers, counter, unlabelled, empty, with_unit, many_labels, info]


def test_a_hostile_page_is_written_as_the_library_writes_it():
    families = hostile_families()
    ours = openmetrics_page(Page(families), library=lambda registry: pytest.fail("handed to the library"))
    assert ours == library(Page(families))
    assert ours.endswith(b"# EOF\n") and b'name="new\\nline"' in ours


@pytest.mark.parametrize("odd", ["colon", "utf8_name", "utf8_label", "timestamp", "exemplar", "no_value"])
def test_what_it_does_not_write_goes_to_the_library(odd):
    family = GaugeMetricFamily("aitools_test_odd", "Odd.", labels=["x"])
    family.add_metric(["1"], 1.0)
    if odd == "colon":
        family = GaugeMetricFamily("aitools:test_odd", "A colon, which underscores escaping rewrites.", value=1)
    elif odd == "utf8_name":
        family = GaugeMetricFamily("aitools_tëst", "Not a legacy name.", value=1)
    elif odd == "utf8_label":
        family.samples.append(Sample("aitools_test_odd", {"lä": "1"}, 2.0))
    elif odd == "timestamp":
        family.samples.append(Sample("aitools_test_odd", {"x": "2"}, 2.0, timestamp=1700000000))
    elif odd == "exemplar":
        family = CounterMetricFamily("aitools_test_odd", "Exemplar.", labels=["x"])
        family.samples.append(Sample("aitools_test_odd_total", {"x": "1"}, 1.0,
                                     exemplar=Exemplar({"trace_id": "abc"}, 1.0, 1700000000)))
    elif odd == "no_value":
        family.samples.append(Sample("aitools_test_odd", {"x": "3"}, None))
    families = hostile_families() + [family]
    handed = []

    def spy(registry):
        handed.append(list(registry.collect()))
        return library(registry)

    assert openmetrics_page(Page(families), library=spy) == library(Page(families))
    assert handed and len(handed[0]) == len(families)  # the whole collection, collected once


def test_the_registry_is_collected_once():
    calls = []

    class Counting(Page):
        def collect(self):
            calls.append(1)
            return super().collect()

    openmetrics_page(Counting(hostile_families()), library=library)
    assert len(calls) == 1
