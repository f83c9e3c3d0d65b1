"""Puts the collectors for a configuration together in one registry.

A registry of collectors, as node_exporter's: each source collector is registered once,
by name, with the class that reads it (imported only when it is enabled, so that a
disabled source costs neither its import nor its memory) and the test of the
configuration that enables it. The order of registration is the order on the page.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.registry import CollectorRegistry

from exporter.budgets import BudgetCollector
from exporter.collectors.base import SourceCollector
from exporter.collectors.machine import current
from exporter.config import Config
from exporter.scrape import Scraper
from exporter.selfmetrics import register_own_metrics


@dataclass(frozen=True)
class Registration:
    name: str
    factory: str  # "module:Class", a SourceCollector taking the Config
    enabled: Callable[[Config], bool]

    def build(self, config: Config) -> SourceCollector:
        module, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module), attribute)(config)


COLLECTORS: dict[str, Registration] = {}


def register(name: str, factory: str, enabled: Callable[[Config], bool] = lambda config: True) -> None:
    COLLECTORS[name] = Registration(name, factory, enabled)


register("node", "exporter.collectors.node:NodeCollector")
register("docker", "exporter.collectors.docker:DockerCollector", lambda config: config.docker_enabled)
register("ollama", "exporter.collectors.llm:OllamaCollector", lambda config: bool(config.ollama_url))
register("lmstudio", "exporter.collectors.llm:LMStudioCollector", lambda config: bool(config.lmstudio_url))
register("llamacpp", "exporter.collectors.llamacpp:LlamaCppCollector", lambda config: bool(config.llamacpp_url))
register("process", "exporter.collectors.process:ProcessCollector")
register("system", "exporter.collectors.system:SystemCollector")
register("apps", "exporter.collectors.apps:AppsCollector")
# The Apple silicon GPU (ioreg, sysctl): on macOS only; the tests run it through stand-ins.
register("gpu", "exporter.collectors.gpu:GPUCollector", lambda config: current().platform == "darwin")


def build_sources(config: Config) -> list[SourceCollector]:
    return [registration.build(config) for registration in COLLECTORS.values() if registration.enabled(config)]


def build_registry(config: Config, own_metrics: bool = False) -> tuple[CollectorRegistry, Scraper]:
    """The sources' registry; with `own_metrics` (the server) also the exporter's own footprint:
    process_* (resident memory, CPU, open files, threads), python_info and python_gc_*."""
    registry = CollectorRegistry(auto_describe=False)
    scraper = Scraper(build_sources(config), config.timeout)
    registry.register(scraper)
    registry.register(BudgetCollector(config))
    if own_metrics:
        register_own_metrics(registry)
    return registry, scraper
