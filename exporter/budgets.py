"""The budgets: published as gauges for the rules, and set beside the readings for `snapshot`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.collectors.base import gauge
from exporter.config import Config

SWIFT_BUILD_GROUP = "swift-frontend"


class BudgetCollector(Collector):
    """aitools_budget_bytes, aitools_profile_info and aitools_build_info, straight from the config."""

    def __init__(self, config: Config):
        self.config = config

    def collect(self):
        budgets = gauge("aitools_budget_bytes", "Each configured memory budget.", ["budget"])
        for name, size in self.config.budgets.items():
            budgets.add_metric([name], float(size))
        profile = gauge("aitools_profile_info", "1 for the active profile.", ["profile"])
        profile.add_metric([self.config.profile], 1.0)
        build = gauge("aitools_build_info", "The exporter's version.", ["version"])
        build.add_metric([__version__], 1.0)
        return [budgets, profile, build]


@dataclass
class Reading:
    """One figure of the snapshot, beside the budget it counts against (if any)."""

    area: str
    subject: str
    used_bytes: float | None
    budget: str | None = None
    budget_bytes: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.used_bytes is None or not self.budget_bytes:
            return None
        return self.used_bytes / self.budget_bytes


class Samples:
    """The samples of one collection, looked up by metric name and labels."""

    def __init__(self, families: Iterable[Metric]):
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in families:
            for sample in family.samples:
                self.by_name[sample.name].append((sample.labels, sample.value))

    # The metric name is positional-only: `name` is also a label (of the container metrics).
    def all(self, metric: str, /, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(l, v) for l, v in self.by_name.get(metric, []) if all(l.get(k) == val for k, val in labels.items())]

    def value(self, metric: str, /, **labels: str) -> float | None:
        found = self.all(metric, **labels)
        return found[0][1] if found else None

    def total(self, metric: str, /, **labels: str) -> float:
        return sum(v for _, v in self.all(metric, **labels))


def node_tracked_bytes(samples: Samples, target: str) -> float | None:
    """What a Node target counts in the total: its RSS where known, else heapUsed."""
    rss = samples.value("aitools_node_rss_bytes", target=target)
    return rss if rss is not None else samples.value("aitools_node_heap_used_bytes", target=target)


def readings(config: Config, samples: Samples) -> list[Reading]:
    budgets = config.budgets
    rows: list[Reading] = []

    for labels, used in samples.all("aitools_node_heap_used_bytes"):
        rows.append(Reading("node", f"{labels['target']} heapUsed", used, "node_heap", budgets["node_heap"]))
    for labels, up in samples.all("aitools_node_target_up"):
        if up == 0:
            rows.append(Reading("node", f"{labels['target']} (down)", None, "node_heap", budgets["node_heap"]))

    docker_read = samples.value("aitools_collector_success", collector="docker") == 1
    for labels, used in samples.all("aitools_container_memory_usage_bytes"):
        limit = samples.value("aitools_container_memory_limit_bytes", name=labels["name"])
        rows.append(Reading("docker", f"container {labels['name']}", used,
                            "container limit" if limit is not None else None, limit))
    if config.docker_enabled:
        rows.append(Reading("docker", "all containers",
                            samples.total("aitools_container_memory_usage_bytes") if docker_read else None,
                            "docker", budgets["docker"]))

    for server, url in (("ollama", config.ollama_url), ("lmstudio", config.lmstudio_url)):
        if url is None:
            continue
        for labels, used in samples.all("aitools_llm_model_loaded_bytes", server=server):
            rows.append(Reading("llm", f"{server} model {labels['model']}", used))
        read = samples.value("aitools_collector_success", collector=server) == 1
        rows.append(Reading("llm", f"{server} loaded models",
                            samples.total("aitools_llm_model_loaded_bytes", server=server) if read else None,
                            server, budgets[server]))

    for labels, used in samples.all("aitools_process_group_rss_bytes"):
        group = labels["group"]
        count = samples.value("aitools_process_group_processes", group=group)
        subject = f"{group} ({int(count or 0)} processes)"
        if group == SWIFT_BUILD_GROUP:
            rows.append(Reading("process", subject, used, "swift_build", budgets["swift_build"]))
        else:
            rows.append(Reading("process", subject, used))

    total = sum(node_tracked_bytes(samples, labels["target"]) or 0 for labels, _ in samples.all("aitools_node_target_up"))
    total += samples.total("aitools_container_memory_usage_bytes")
    total += samples.total("aitools_llm_model_loaded_bytes")
    total += samples.total("aitools_process_group_rss_bytes")
    rows.append(Reading("total", f"everything tracked ({config.profile})", total,
                        config.total_budget_name, budgets[config.total_budget_name]))

    for name, subject in (("aitools_system_memory_total_bytes", "physical memory"),
                          ("aitools_system_memory_available_bytes", "available"),
                          ("aitools_system_swap_used_bytes", "swap used")):
        value = samples.value(name)
        if value is not None:
            rows.append(Reading("system", subject, value))
    return rows
