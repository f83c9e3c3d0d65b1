"""The scrape orchestrator: failures stay with their collector, nothing waits past the timeout."""

import logging
import threading
import time

from exporter.collectors.base import CollectorError, SourceCollector, gauge
from exporter.config import Config
from exporter.scrape import MAX_SERIES_PER_FAMILY, SCRAPE_MARGIN_SECONDS, Scraper


class Source(SourceCollector):
    def __init__(self, name, behaviour):
        super().__init__(Config())
        self.name = name
        self.behaviour = behaviour
        self.calls = 0

    def collect(self, deadline=None):
        self.calls += 1
        yield from self.behaviour(self)


def good(value=1.0):
    def behaviour(source):
        family = gauge(f"test_{source.name}_value", "test", ["k"])
        family.add_metric(["a"], value)
        yield family
    return behaviour


def failing(message):
    def behaviour(source):
        family = gauge(f"test_{source.name}_up", "test")
        family.add_metric([], 0.0)
        yield family
        raise CollectorError(message)
    return behaviour


def hanging(event):
    def behaviour(source):
        event.wait(30)
        yield from good()(source)
    return behaviour


def samples(families):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_failing_collector_fails_alone_and_keeps_what_it_yielded(caplog):
    scraper = Scraper([Source("one", good(5)), Source("two", failing("backend said no"))], timeout=1)
    result = samples(scraper.collect())
    assert result[("test_one_value", (("k", "a"),))] == 5
    assert result[("test_two_up", ())] == 0
    assert result[("aitools_collector_success", (("collector", "one"),))] == 1
    assert result[("aitools_collector_success", (("collector", "two"),))] == 0
    assert scraper.last_errors() == {"one": None, "two": "backend said no"}


def test_an_unexpected_exception_is_a_failed_collector_not_a_failed_scrape():
    def broken(source):
        yield from ()
        raise KeyError("surprise")
    result = samples(Scraper([Source("bug", broken), Source("ok", good())], timeout=1).collect())
    assert result[("aitools_collector_success", (("collector", "bug"),))] == 0
    assert result[("aitools_collector_success", (("collector", "ok"),))] == 1


def test_a_hanging_collector_costs_at_most_the_timeout_and_does_not_pile_up():
    release = threading.Event()
    hung = Source("slow", hanging(release))
    scraper = Scraper([hung, Source("fast", good())], timeout=0.3)
    try:
        for _ in range(3):
            started = time.monotonic()
            result = samples(scraper.collect())
            assert time.monotonic() - started < 0.3 + SCRAPE_MARGIN_SECONDS + 0.2
            assert result[("aitools_collector_success", (("collector", "slow"),))] == 0
            assert result[("aitools_collector_success", (("collector", "fast"),))] == 1
        assert hung.calls == 1  # later scrapes saw it still busy and did not start another
        assert "still busy" in scraper.last_errors()["slow"]
    finally:
        release.set()
    time.sleep(0.1)
    result = samples(scraper.collect())
    assert result[("aitools_collector_success", (("collector", "slow"),))] == 1  # recovers by itself


def test_bad_values_and_runaway_series_are_dropped_and_counted():
    def hostile(source):
        family = gauge("test_hostile_bytes", "test", ["model"])
        family.add_metric(["nan"], float("nan"))
        family.add_metric(["inf"], float("inf"))
        family.add_metric(["negative"], -5.0)
        for index in range(MAX_SERIES_PER_FAMILY + 50):
            family.add_metric([f"m{index}"], 1.0)
        family.add_metric(["x" * 10_000], 2.0)
        yield family
    result = samples(Scraper([Source("hostile", hostile)], timeout=1).collect())
    published = [key for key in result if key[0] == "test_hostile_bytes"]
    assert len(published) == MAX_SERIES_PER_FAMILY
    assert all(value >= 0 for key, value in result.items())
    assert result[("aitools_collector_series_dropped", (("collector", "hostile"),))] == 3 + 50 + 1


def test_failures_are_logged_once_and_recovery_once(caplog):
    state = {"fail": True}

    def flaky(source):
        if state["fail"]:
            raise CollectorError("connection refused")
        yield from good()(source)

    scraper = Scraper([Source("flaky", flaky)], timeout=1)
    with caplog.at_level(logging.INFO, logger="exporter.scrape"):
        for _ in range(5):
            list(scraper.collect())
        state["fail"] = False
        for _ in range(3):
            list(scraper.collect())
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["collector flaky failed: connection refused", "collector flaky recovered"]


def test_concurrent_scrapes_share_one_collection():
    gate = threading.Event()

    def slowish(source):
        gate.wait(2)
        yield from good()(source)

    source = Source("shared", slowish)
    scraper = Scraper([source], timeout=3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(samples(scraper.collect()))) for _ in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(results) == 10
    assert all(r[("aitools_collector_success", (("collector", "shared"),))] == 1 for r in results)
    assert source.calls == 1
