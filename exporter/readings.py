"""The readings of one collection: its samples looked up by name and labels, each budget's
usage as the rules compute it, and the rows `snapshot` and the landing page show beside
their budgets."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from exporter.budgets import MONITORING_PROJECT, SWIFT_BUILD_GROUP, BudgetUsage, usage_by_budget
from exporter.config import Config


def _matches(labels: dict[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    for label, op, value in matchers:
        actual = labels.get(label, "")
        ok = {"=": actual == value, "!=": actual != value}.get(op)
        if ok is None:
            ok = re.fullmatch(value, actual) is not None
            ok = ok if op == "=~" else not ok
        if not ok:
            return False
    return True


def usage_now(usage: BudgetUsage, samples: "Samples") -> dict[str, float | None]:
    """The usage of one collection, as the rules compute it from fresh samples: {per value
    (or ""): bytes}; None where the source was read but failed (missing, never 0)."""
    if usage.trend:
        return {}
    found = [(labels, v) for labels, v in samples.all(usage.metric) if _matches(labels, usage.matchers)]
    if usage.per:
        out: dict[str, float | None] = {}
        for labels, v in found:
            key = labels.get(usage.per, "")
            out[key] = max(out.get(key) or 0.0, v)
        return out
    if found:
        return {"": sum(v for _, v in found)}
    success = samples.value("aitools_collector_success", collector=usage.collector)
    running = samples.value("aitools_collector_source_running", collector=usage.collector)
    return {"": 0.0 if success == 1 or running == 0 else None}


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
        return share_of(self.used_bytes, self.budget_bytes)


def share_of(used: float | None, budget: float | None) -> float | None:
    """What is used of a budget (1.0 = all of it); None without both figures."""
    return None if used is None or not budget else used / budget


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


def app_memory(samples: Samples) -> dict[str, float]:
    """Each app's memory as the totals count it: aitools:app_memory_bytes of
    prometheus/rules/aitools-apps.rules.yml, computed on one collection. Where the containers
    run inside a VM counted in the docker app (Docker Desktop: aitools_app_docker_vm 1), the
    bundle's own containers (compose project MONITORING_PROJECT) move from docker to
    monitoring. Empty when the apps collector gave nothing."""
    apps = {labels["app"]: value for labels, value in samples.all("aitools_app_memory_bytes")}
    if apps and samples.value("aitools_app_docker_vm") == 1:
        bundle = samples.total("aitools_container_memory_usage_bytes", compose_project=MONITORING_PROJECT)
        if "docker" in apps:
            apps["docker"] = max(apps["docker"] - bundle, 0.0)
        if "monitoring" in apps:
            apps["monitoring"] += bundle
    # GPU-wired memory moves from system to the LLM servers whose models explain it.
    explained = gpu_explained(samples, apps)
    if explained and "system" in apps:
        apps["system"] = max(apps["system"] - sum(explained.values()), 0.0)
        for server, part in explained.items():
            apps[server] += part
    return apps


def gpu_explained(samples: Samples, apps: dict[str, float]) -> dict[str, float]:
    """server -> the GPU-wired memory its loaded models explain: aitools:gpu_memory_explained_bytes
    of prometheus/rules/aitools-apps.rules.yml on one collection. Each server's models in GPU
    memory (aitools_llm_model_vram_bytes), scaled down when together they exceed what the GPU
    holds wired now (aitools_gpu_memory_wired_bytes); only servers that are an app of `apps`."""
    wired = samples.value("aitools_gpu_memory_wired_bytes")
    if wired is None:
        return {}
    vram: dict[str, float] = {}
    for labels, size in samples.all("aitools_llm_model_vram_bytes"):
        if size > 0:
            vram[labels["server"]] = vram.get(labels["server"], 0.0) + size
    total = sum(vram.values())
    if not total:
        return {}
    scale = min(1.0, max(0.0, wired / total))
    return {server: size * scale for server, size in vram.items() if server in apps}


def readings(config: Config, samples: Samples) -> list[Reading]:
    budgets = config.budgets
    rows: list[Reading] = []
    usage = usage_by_budget()

    for target, used in usage_now(usage["node_heap"], samples).items():
        rows.append(Reading("node", f"{target} heapUsed", used, "node_heap", budgets["node_heap"]))
    for labels, up in samples.all("aitools_node_target_up"):
        if up == 0:
            rows.append(Reading("node", f"{labels['target']} (down)", None, "node_heap", budgets["node_heap"]))

    for labels, used in samples.all("aitools_container_memory_usage_bytes"):
        limit = samples.value("aitools_container_memory_limit_bytes", name=labels["name"])
        rows.append(Reading("docker", f"container {labels['name']}", used,
                            "container limit" if limit is not None else None, limit))
    if config.docker.enabled:
        rows.append(Reading("docker", "all containers", usage_now(usage["docker"], samples)[""],
                            "docker", budgets["docker"]))

    for server, url in (("ollama", config.ollama.url), ("lmstudio", config.lmstudio.url)):
        if url is None:
            continue
        for labels, used in samples.all("aitools_llm_model_loaded_bytes", server=server):
            rows.append(Reading("llm", f"{server} model {labels['model']}", used))
        rows.append(Reading("llm", f"{server} loaded models", usage_now(usage[server], samples)[""],
                            server, budgets[server]))
    if config.llamacpp.url is not None:  # llama.cpp's server: no budget of its own; the totals count its app
        for labels, used in samples.all("aitools_llm_model_loaded_bytes", server="llamacpp"):
            rows.append(Reading("llm", f"llamacpp model {labels['model']}", used))

    swift = usage_now(usage["swift_build"], samples)[""]
    for labels, used in samples.all("aitools_process_group_rss_bytes"):
        group = labels["group"]
        count = samples.value("aitools_process_group_processes", group=group)
        subject = f"{group} ({int(count or 0)} processes)"
        if group == SWIFT_BUILD_GROUP:
            rows.append(Reading("process", subject, swift, "swift_build", budgets["swift_build"]))
        else:
            rows.append(Reading("process", subject, used))

    apps = app_memory(samples)
    counted = {labels["app"] for labels, v in samples.all("aitools_app_budget_info", budget=config.total_budget_name)
               if v == 1}
    total = sum(value for app, value in apps.items() if app in counted) if apps else None
    rows.append(Reading("total", f"the apps it counts ({config.profile}: {', '.join(sorted(counted)) or 'none'})",
                        total, config.total_budget_name, budgets[config.total_budget_name]))

    for name, subject in (("aitools_system_memory_total_bytes", "physical memory"),
                          ("aitools_system_memory_available_bytes", "available"),
                          ("aitools_system_swap_used_bytes", "swap used")):
        value = samples.value(name)
        if value is not None:
            rows.append(Reading("system", subject, value))
    return rows
