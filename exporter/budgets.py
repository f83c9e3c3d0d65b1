"""What counts against which budget, defined once.

USAGE says, for each budget, which series count against it. From it the recording rules
`aitools:budget_usage_bytes` (and the source states the score reads) are generated
(exporter/budget_rules.py, `python prometheus/build.py`, checked by tests/test_rules.py),
and `snapshot` and the landing page sum the same series from one collection
(exporter/readings.py `usage_now`). The budgets' sizes are the configuration's
(exporter/config.py DEFAULT_BUDGETS), published by exporter/collectors/budgets.py.
"""

from __future__ import annotations

from dataclasses import dataclass


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


SWIFT_BUILD_GROUP = "swift-frontend"
# The compose project of compose.monitoring.yml (COMPOSE_PROJECT_NAME in .env.example): the
# bundle's own containers are the `monitoring` app, never counted against the user's docker budget.
MONITORING_PROJECT = "aitools-monitoring"

# How long a failed read keeps the last figure: long enough for a pending or firing budget
# alert to survive a few failed scrapes, short enough not to show stale memory for long.
HOLD = "5m"

USAGE: tuple[BudgetUsage, ...] = (
    # heapUsed, per Node.js target
    BudgetUsage("node_heap", "aitools_node_heap_used_bytes", per="target"),
    # every running container together but the monitoring bundle's own
    BudgetUsage("docker", "aitools_container_memory_usage_bytes", (("compose_project", "!=", MONITORING_PROJECT),),
                collector="docker"),
    # the models loaded in Ollama
    BudgetUsage("ollama", "aitools_llm_model_loaded_bytes", (("server", "=", "ollama"),), collector="ollama"),
    # the models loaded in LM Studio
    BudgetUsage("lmstudio", "aitools_llm_model_loaded_bytes", (("server", "=", "lmstudio"),), collector="lmstudio"),
    # all swift-frontend processes together
    BudgetUsage("swift_build", "aitools_process_group_rss_bytes", (("group", "=", SWIFT_BUILD_GROUP),),
                collector="process"),
    # how much the post-GC heap baseline of a Node.js target grew in 30 minutes
    BudgetUsage("node_heap_growth", "aitools_node_heap_used_bytes", per="target",
                trend="clamp_min(aitools:node_heap_baseline_growth_bytes, 0)"),
)


def usage_by_budget() -> dict[str, BudgetUsage]:
    return {usage.budget: usage for usage in USAGE}
