"""The recording rules generated from the budgets' definition (exporter/budgets.py USAGE):
`aitools:budget_usage_bytes` and the source states the score reads. `python prometheus/build.py`
writes them into prometheus/rules/; tests/test_rules.py checks the files are current."""

from __future__ import annotations

from exporter.budgets import HOLD, USAGE, BudgetUsage


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
