"""What every source collector shares.

A source collector is a prometheus_client custom Collector: `collect()` builds fresh
metric families from its backend at every call and raises `CollectorError` (with a
one-line reason a person can act on) when the backend cannot be read. It honours
`config.timeout` for each backend call. The scrape orchestrator (exporter/scrape.py)
runs all of them in parallel, turns an exception into `aitools_collector_success 0`
and never waits longer than the timeout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import Config


class CollectorError(Exception):
    """The source could not be read; the message says why, in one line."""


class SourceNotRunning(CollectorError):
    """The source is simply not running (connection refused, no socket): a normal state on a
    workstation (Ollama not started, Docker Desktop quit, the dev server stopped), not a failure."""


class SourceCollector(Collector):
    name: ClassVar[str]

    def __init__(self, config: Config):
        self.config = config

    def collect(self) -> Iterable[Metric]:  # pragma: no cover - abstract
        raise NotImplementedError


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))
