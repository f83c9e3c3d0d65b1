"""Runs the source collectors of one scrape in parallel, within the timeout.

Modelled on node_exporter: each source reports `aitools_collector_success` and
`aitools_collector_duration_seconds`; one source failing, hanging or misbehaving
never costs the others their metrics or the scrape its answer.

One deadline: each scrape makes one `Deadline` (now + timeout) and passes it to every
collector, whose blocking calls all take their time from it. The scraper waits for the
collectors until that deadline (and SCRAPE_MARGIN_SECONDS for a collector that has just
timed out to hand over what it yielded before), never longer. The collectors run on a
fixed set of daemon threads kept across scrapes (exporter/workers.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, SourceNotRunning, gauge
from exporter.workers import Workers

log = logging.getLogger(__name__)

# A hostile or broken backend must not be able to create unbounded series.
MAX_SERIES_PER_FAMILY = 1000
MAX_LABEL_VALUE_LENGTH = 256
# What a scrape may take beyond the deadline: a collector's I/O ends at the deadline itself,
# this is only the hand-over of what it yielded (the up gauge of a backend that timed out).
SCRAPE_MARGIN_SECONDS = 0.1


@dataclass
class SourceResult:
    families: list[Metric] = field(default_factory=list)
    success: bool = False
    duration: float = 0.0
    error: str | None = None
    dropped: int = 0
    # False when the source is simply not running (SourceNotRunning: connection refused, no
    # socket), a normal state; a source that answered but could not be read, or hung, is running.
    running: bool = True


def _label_value(value: object) -> str | None:
    """A label value the exposition can always write: text, at most MAX_LABEL_VALUE_LENGTH
    characters, valid UTF-8 (a lone surrogate, which JSON can carry as "\\ud800", would make
    the whole page fail to encode); None when it is not text at all."""
    if not isinstance(value, str):
        return None
    value = value[:MAX_LABEL_VALUE_LENGTH]
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


def _sanitise(family: Metric) -> tuple[Metric, int]:
    """Drop non-finite or negative samples and cap the series; returns how many were dropped."""
    kept, dropped, seen = [], 0, set()
    for sample in family.samples:
        value = sample.value
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            dropped += 1
            continue
        labels = sample.labels
        # Most values are short ASCII text already, written as they are: a new sample only otherwise.
        if not all(isinstance(v, str) and len(v) <= MAX_LABEL_VALUE_LENGTH and v.isascii() for v in labels.values()):
            labels = {k: _label_value(v) for k, v in labels.items()}
            if None in labels.values():
                dropped += 1
                continue
            sample = sample._replace(labels=labels)
        key = (sample.name, tuple(sorted(labels.items())))
        if key in seen or len(kept) >= MAX_SERIES_PER_FAMILY:
            dropped += 1
            continue
        seen.add(key)
        kept.append(sample)
    family.samples = kept
    return family, dropped


def _merge(page: dict[str, Metric], families: list[Metric]) -> int:
    """Adds a collector's families to the page's, one family per name: both exposition
    formats allow a name's HELP and TYPE once, and two collectors may publish the same
    family (Ollama and LM Studio both publish aitools_llm_*). Returns how many samples were
    dropped: the same series as another collector's, or a family of another type."""
    dropped = 0
    for family in families:
        present = page.get(family.name)
        if present is None:
            page[family.name] = family
            continue
        if present.type != family.type:
            dropped += len(family.samples)
            continue
        seen = {(sample.name, tuple(sorted(sample.labels.items()))) for sample in present.samples}
        added = []
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            added.append(sample)
        present.samples = present.samples + added
    return dropped


def _run_source(source: SourceCollector, deadline: Deadline) -> SourceResult:
    start = time.perf_counter()
    result = SourceResult()
    try:
        for family in source.collect(deadline):
            family, dropped = _sanitise(family)
            result.families.append(family)
            result.dropped += dropped
        result.success = True
    except SourceNotRunning as exc:
        result.error, result.running = str(exc), False
    except CollectorError as exc:
        result.error = str(exc)
    except TimeoutError:  # Deadline.remaining() once the deadline has passed
        result.error = f"timed out after {deadline.seconds:g}s"
    except Exception as exc:  # a bug or an unforeseen backend answer must not end the scrape
        log.debug("collector %s raised", source.name, exc_info=True)
        result.error = f"unexpected {type(exc).__name__}: {exc}"
    result.duration = time.perf_counter() - start
    return result


class Scraper(Collector):
    """The one collector registered for the sources; runs them and adds the health gauges."""

    def __init__(self, sources: list[SourceCollector], timeout: float):
        self.sources = sources
        self.timeout = timeout
        self._workers = Workers(len(sources), "collector")
        self._running: dict[str, Future] = {}
        self._last_error: dict[str, str | None] = {}
        # Concurrent scrapes share one collection instead of each hitting every backend.
        self._flight_lock = threading.Lock()
        self._flight: tuple[threading.Event, list] | None = None

    def collect(self):
        yield from self.collect_once()

    def collect_once(self) -> list[Metric]:
        with self._flight_lock:
            leader = self._flight is None
            if leader:
                self._flight = (threading.Event(), [])
            done, holder = self._flight
        if not leader:
            done.wait(self.timeout + 2 * SCRAPE_MARGIN_SECONDS)
            return list(holder)
        try:
            holder.extend(self._collect_all())
        finally:
            with self._flight_lock:
                self._flight = None
            done.set()
        return list(holder)

    def _collect_all(self) -> list[Metric]:
        started = time.perf_counter()
        deadline = Deadline(self.timeout)
        futures: dict[str, Future] = {}
        busy: set[str] = set()
        for source in self.sources:
            previous = self._running.get(source.name)
            if previous is not None and not previous.done():
                busy.add(source.name)  # still stuck on an earlier scrape: don't pile up threads
                continue
            futures[source.name] = self._running[source.name] = self._workers.submit(_run_source, source, deadline)
        wait(futures.values(), timeout=deadline.left() + SCRAPE_MARGIN_SECONDS)

        page: dict[str, Metric] = {}
        success = gauge("aitools_collector_success", "1 when the collector's last run succeeded.", ["collector"])
        duration = gauge("aitools_collector_duration_seconds", "How long the collector took.", ["collector"])
        dropped = gauge("aitools_collector_series_dropped",
                        "Samples the collector dropped this scrape: not finite, negative, a label value that is not text, "
                        "duplicate or over the series cap.",
                        ["collector"])
        running = gauge("aitools_collector_source_running",
                        "0 when the collector's source is not running (connection refused, no socket: a normal "
                        "state), 1 when it is (then aitools_collector_success 0 means it answered but could not "
                        "be read, or hung).",
                        ["collector"])
        for source in self.sources:
            future = futures.get(source.name)
            if future is not None and future.done():
                result = future.result()
            elif source.name in busy:
                result = SourceResult(error=f"still busy with an earlier scrape (backend slower than the {self.timeout:g}s timeout)",
                                      duration=time.perf_counter() - started)
            else:
                result = SourceResult(error=f"timed out after {self.timeout:g}s",
                                      duration=time.perf_counter() - started)
            result.dropped += _merge(page, result.families)
            success.add_metric([source.name], 1.0 if result.success else 0.0)
            running.add_metric([source.name], 1.0 if result.running else 0.0)
            duration.add_metric([source.name], result.duration)
            dropped.add_metric([source.name], float(result.dropped))
            self._log_transition(source.name, result.error)
        return list(page.values()) + [success, running, duration, dropped]

    def _log_transition(self, name: str, error: str | None) -> None:
        """Say once when a collector starts failing (or fails differently), and once when it recovers."""
        previous = self._last_error.get(name)
        if error and error != previous:
            log.warning("collector %s failed: %s", name, error)
        elif not error and previous:
            log.info("collector %s recovered", name)
        self._last_error[name] = error

    def last_errors(self) -> dict[str, str | None]:
        return dict(self._last_error)
