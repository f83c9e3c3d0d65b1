"""The exporter put together: one `Exporter` object holds the configuration, the source
collectors, the scraper that runs them and the registry the page is written from.

The server (/metrics and the landing page), `snapshot` and the receiver's actions are
all handed an Exporter; none of them builds collectors or looks inside the registry.
The collectors are imported and listed here, explicitly, in the order of the page; a
disabled source is left out.
"""

from __future__ import annotations


from prometheus_client.registry import CollectorRegistry

from exporter.collectors.apps import AppsCollector
from exporter.collectors.base import SourceCollector
from exporter.collectors.budgets import BudgetCollector
from exporter.collectors.docker import DockerCollector
from exporter.collectors.gpu import GPUCollector
from exporter.collectors.llamacpp import LlamaCppCollector
from exporter.collectors.llm import LLMServerCollector, LMStudioCollector, OllamaCollector
from exporter.collectors.node import NodeCollector
from exporter.collectors.process import ProcessCollector
from exporter.collectors.proctable import wants_cmdlines
from exporter.collectors.system import SystemCollector
from exporter.collectors.machine import current
from exporter.config import Config
from exporter.readings import Samples
from exporter.scrape import Scraper
from exporter.selfmetrics import register_own_metrics


def source_collectors(config: Config) -> list[SourceCollector]:
    """The source collectors the configuration enables, in the order of the page: each given
    its own section and the timeout."""
    timeout = config.timeout
    sources: list[SourceCollector] = [NodeCollector(config.node, timeout)]
    if config.docker.enabled:
        sources.append(DockerCollector(config.docker, timeout))
    if config.ollama.url:
        sources.append(OllamaCollector(config.ollama, timeout))
    if config.lmstudio.url:
        sources.append(LMStudioCollector(config.lmstudio, timeout))
    if config.llamacpp.url:
        sources.append(LlamaCppCollector(config.llamacpp, timeout))
    # The process groups and the apps share one walk of the process table per scrape
    # (collectors/proctable.py): it reads the command lines when either matches them.
    cmdlines = wants_cmdlines(config.apps, config.process_groups)
    sources += [ProcessCollector(config.process_groups, timeout, cmdlines=cmdlines),
                SystemCollector(config.system, timeout),
                AppsCollector(config.apps, config.docker, timeout, cmdlines=cmdlines)]
    # The Apple silicon GPU (ioreg, sysctl): on macOS only; the tests run it through stand-ins.
    if current().platform == "darwin":
        sources.append(GPUCollector(timeout))
    return sources


class Exporter:
    """The configuration, its collectors, the scraper and the registry.

    `own_metrics` (the server) adds the exporter's own footprint to the registry:
    process_* (resident memory, CPU, open files, threads), python_info and python_gc_*."""

    def __init__(self, config: Config, own_metrics: bool = False):
        self.config = config
        self.sources = {source.name: source for source in source_collectors(config)}
        self.scraper = Scraper(list(self.sources.values()), config.timeout)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.scraper)
        self.registry.register(BudgetCollector(config.budgets, config.profile))
        if own_metrics:
            register_own_metrics(self.registry)

    def collect(self) -> Samples:
        """One collection of everything the registry publishes (shared with a concurrent scrape)."""
        return Samples(self.registry.collect())

    def last_errors(self) -> dict[str, str | None]:
        """Each source's error of its last run (None when it succeeded)."""
        return self.scraper.last_errors()

    def enabled(self, source: str) -> bool:
        return source in self.sources

    def docker_host(self) -> str | None:
        """The Docker host the docker collector reached last (DOCKER_HOST, the context...),
        else the configured one."""
        docker = self.sources.get("docker")
        return (docker.host if isinstance(docker, DockerCollector) else None) or self.config.docker.host

    def llm_server(self, server: str) -> OllamaCollector | LMStudioCollector | LlamaCppCollector | None:
        """The collector of an enabled LLM server (`ollama`, `lmstudio` or `llamacpp`): its reads and its API's requests."""
        source = self.sources.get(server)
        return source if isinstance(source, (OllamaCollector, LMStudioCollector, LlamaCppCollector)) else None

    def estimates(self) -> dict:
        """The LLM servers' estimates of each model's loaded size (exporter/estimate.py) from
        their last collection, by (server, model): an Estimate, or why there is none."""
        return {(source.name, model): found for source in self.sources.values()
                if isinstance(source, LLMServerCollector) for model, found in source.last_estimates.items()}

    def read_first(self, models: tuple[str, ...]) -> None:
        """Models whose details Ollama is asked for before the others' (`fit MODEL` within the timeout)."""
        ollama = self.sources.get("ollama")
        if isinstance(ollama, OllamaCollector):
            ollama.first = models
