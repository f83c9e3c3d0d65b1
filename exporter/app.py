"""Puts the collectors for a configuration together in one registry."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry

from exporter.budgets import BudgetCollector
from exporter.collectors.base import SourceCollector
from exporter.config import Config
from exporter.scrape import Scraper


def build_sources(config: Config) -> list[SourceCollector]:
    # Imported here so that a disabled source costs neither its import nor its memory.
    from exporter.collectors.apps import AppsCollector
    from exporter.collectors.node import NodeCollector
    from exporter.collectors.process import ProcessCollector
    from exporter.collectors.system import SystemCollector

    sources: list[SourceCollector] = [NodeCollector(config)]
    if config.docker_enabled:
        from exporter.collectors.docker import DockerCollector
        sources.append(DockerCollector(config))
    if config.ollama_url or config.lmstudio_url:
        from exporter.collectors.llm import LMStudioCollector, OllamaCollector
        if config.ollama_url:
            sources.append(OllamaCollector(config))
        if config.lmstudio_url:
            sources.append(LMStudioCollector(config))
    sources += [ProcessCollector(config), SystemCollector(config), AppsCollector(config)]
    return sources


def build_registry(config: Config) -> tuple[CollectorRegistry, Scraper]:
    registry = CollectorRegistry(auto_describe=False)
    scraper = Scraper(build_sources(config), config.timeout)
    registry.register(scraper)
    registry.register(BudgetCollector(config))
    return registry, scraper
