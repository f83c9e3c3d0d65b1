"""The budgets: published as gauges for the rules, and set beside the readings for `snapshot`.

What counts against which budget is defined once, in USAGE below: the recording rules
`aitools:budget_usage_bytes` (and the source states the score reads) are generated from it
(`python prometheus/build.py`, checked by tests/test_rules.py), and `snapshot` sums the same
series from one collection (`usage_now`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.collectors.base import gauge
from exporter.config import Config


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


# ------------------------------------------------------------ what counts, defined once

@dataclass(frozen=True)
class BudgetUsage:
    """What counts against one budget: the samples of `metric` whose labels match `matchers`,
    summed (or, with `per`, kept apart by that label and taken one by one)."""

    budget: str
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, op, value); op is one of = != =~ !~
    per: str | None = None         # a label kept apart: one usage per value (node_heap: per target)
    # The collector whose clean read with none of these samples (or that is not running) is usage 0.
    collector: str | None = None
    # Where the usage is a trend over time (node_heap_growth), the PromQL that gives it; no
    # single collection can give it, so `snapshot` shows none.
    trend: str | None = None
    meaning: str = ""


SWIFT_BUILD_GROUP = "swift-frontend"
# The compose project of compose.monitoring.yml (COMPOSE_PROJECT_NAME in .env.example): the
# bundle's own containers are the `monitoring` app, never counted against the user's docker budget.
MONITORING_PROJECT = "aitools-monitoring"

# How long a failed read keeps the last figure: long enough for a pending or firing budget
# alert to survive a few failed scrapes, short enough not to show stale memory for long.
HOLD = "5m"

USAGE: tuple[BudgetUsage, ...] = (
    BudgetUsage("node_heap", "aitools_node_heap_used_bytes", per="target",
                meaning="heapUsed, per Node.js target"),
    BudgetUsage("docker", "aitools_container_memory_usage_bytes", (("compose_project", "!=", MONITORING_PROJECT),),
                collector="docker", meaning="every running container together but the monitoring bundle's own"),
    BudgetUsage("ollama", "aitools_llm_model_loaded_bytes", (("server", "=", "ollama"),), collector="ollama",
                meaning="the models loaded in Ollama"),
    BudgetUsage("lmstudio", "aitools_llm_model_loaded_bytes", (("server", "=", "lmstudio"),), collector="lmstudio",
                meaning="the models loaded in LM Studio"),
    BudgetUsage("swift_build", "aitools_process_group_rss_bytes", (("group", "=", SWIFT_BUILD_GROUP),),
                collector="process", meaning="all swift-frontend processes together"),
    BudgetUsage("node_heap_growth", "aitools_node_heap_used_bytes", per="target",
                trend="clamp_min(aitools:node_heap_baseline_growth_bytes, 0)",
                meaning="how much the post-GC heap baseline of a Node.js target grew in 30 minutes"),
)


def _selector(usage: BudgetUsage) -> str:
    matchers = ", ".join(f'{label}{op}"{value}"' for label, op, value in usage.matchers)
    return f"{usage.metric}{{{matchers}}}" if matchers else usage.metric


def _keep(usage: BudgetUsage) -> str:
    return f"instance, {usage.per}" if usage.per else "instance"


def usage_expr(usage: BudgetUsage) -> str:
    """The PromQL of `aitools:budget_usage_bytes{budget=...}`.

    Fresh samples first; else 0 where the collector read its source cleanly and found none
    (or the source is not running: nothing of it is in memory); else, for at most HOLD, the
    last figure read (a failed read keeps pending alerts pending); else nothing: missing
    data stays missing, never 0.
    """
    if usage.trend:
        return usage.trend + "\n"
    aggregate = "max" if usage.per else "sum"
    selector = _selector(usage)
    lines = [f"{aggregate} by ({_keep(usage)}) ({selector})"]
    if usage.collector:
        c = usage.collector
        lines.append(f'  or 0 * max by (instance) (aitools_collector_success{{collector="{c}"}} == 1'
                     f' or aitools_collector_source_running{{collector="{c}"}} == 0)')
    hold = f"  or {aggregate} by ({_keep(usage)}) (last_over_time({selector}[{HOLD}]))"
    if usage.per == "target":  # a stopped server is absent at once
        hold += f"\n    unless on (instance, target) (aitools_node_target_running == 0)"
    lines.append(hold)
    return "\n".join(lines) + "\n"


def failing_expr(usage: BudgetUsage) -> str | None:
    """The sources of a budget that are running but could not be read (or whose state is unknown)."""
    if usage.per == "target":
        return ("max by (instance, target) (\n  aitools_node_target_up == 0\n"
                "    unless on (instance, target) (aitools_node_target_running == 0)\n)\n")
    if usage.collector:
        c = usage.collector
        return (f'max by (instance) (\n  aitools_collector_success{{collector="{c}"}} == 0\n'
                f"    unless on (instance, collector) (aitools_collector_source_running == 0)\n)\n")
    return None


def not_running_expr(usage: BudgetUsage) -> str | None:
    """The sources of a budget that are simply not running (connection refused, no socket)."""
    if usage.per == "target":
        return "max by (instance, target) (aitools_node_target_running == 0)\n"
    if usage.collector:
        return f'max by (instance) (aitools_collector_source_running{{collector="{usage.collector}"}} == 0)\n'
    return None


def generated_rules() -> list[dict]:
    """The recording rules generated from USAGE, in order: usage, then the source states."""
    rules: list[dict] = []
    for usage in USAGE:
        rules.append({"record": "aitools:budget_usage_bytes", "expr": usage_expr(usage),
                      "labels": {"budget": usage.budget}})
    for name, make in (("aitools:budget_source_failing", failing_expr),
                       ("aitools:budget_source_not_running", not_running_expr)):
        for usage in USAGE:
            if usage.trend is None and (expr := make(usage)) is not None:
                rules.append({"record": name, "expr": expr, "labels": {"budget": usage.budget}})
    return rules


def _matches(labels: dict[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    import re

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


def usage_by_budget() -> dict[str, BudgetUsage]:
    return {usage.budget: usage for usage in USAGE}


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
    if config.docker_enabled:
        rows.append(Reading("docker", "all containers", usage_now(usage["docker"], samples)[""],
                            "docker", budgets["docker"]))

    for server, url in (("ollama", config.ollama_url), ("lmstudio", config.lmstudio_url)):
        if url is None:
            continue
        for labels, used in samples.all("aitools_llm_model_loaded_bytes", server=server):
            rows.append(Reading("llm", f"{server} model {labels['model']}", used))
        rows.append(Reading("llm", f"{server} loaded models", usage_now(usage[server], samples)[""],
                            server, budgets[server]))
    if config.llamacpp_url is not None:  # llama.cpp's server: no budget of its own; the totals count its app
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
