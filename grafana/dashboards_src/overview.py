"""Overview: the efficiency scores, every budget against its limit, the tracked total, where the memory
goes (by application), alerts and top consumers."""

from __future__ import annotations

from .lib import (
    BYTES,
    COUNT,
    INSTANCE,
    RATIO,
    STATE,
    Column,
    budget,
    bytes_bars,
    finish,
    label_stat,
    new_dashboard,
    query,
    ratio_bars,
    row,
    score_gauge,
    table,
    timeseries,
    up_stat,
)

UID = "aitools-overview"
TOTAL_BUDGETS = "development_total|production_total"

COMPONENTS = (
    ("node", "Node.js", "Node.js heaps against the node_heap budget, leaks and V8 limits (0-100)."),
    ("docker", "Containers", "Containers against the docker budget, their own limits and duplicates (0-100)."),
    ("llm", "Local LLMs", "Loaded models of Ollama and LM Studio against their budgets (0-100)."),
    ("system", "System", "Available memory, swap and memory pressure of the machine (0-100)."),
)

# Everything that holds memory right now, one series per consumer, named in `consumer`.
# A Node target counts with its RSS where the source tells it, else with heapUsed.
TOP_CONSUMERS = (
    "topk(10, "
    f'label_replace(aitools_container_memory_usage_bytes{{{INSTANCE}}}, "consumer", "container $1", "name", "(.+)")'
    f' or label_join(aitools_llm_model_loaded_bytes{{{INSTANCE}}}, "consumer", " / ", "server", "model")'
    f' or label_replace(max by (instance, target) (aitools_node_rss_bytes{{{INSTANCE}}} or aitools_node_heap_used_bytes{{{INSTANCE}}}),'
    ' "consumer", "node $1", "target", "(.+)")'
    f' or label_replace(aitools_process_group_rss_bytes{{{INSTANCE}}} > 0, "consumer", "processes $1", "group", "(.+)")'
    ")"
)


# The machine's used memory, which the apps stack up to (physical memory less what is available).
USED_MEMORY = (
    f"max by (instance) (aitools_system_memory_total_bytes{{{INSTANCE}}})"
    f" - max by (instance) (aitools_system_memory_available_bytes{{{INSTANCE}}})"
)


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: overview",
        "This workstation against its memory budgets: efficiency scores, budgets, tracked total, alerts and top consumers.",
    )

    dashboard = dashboard.with_row(row("Efficiency")).with_panel(
        score_gauge(
            "Overall efficiency",
            "The weighted efficiency score of this workstation (0-100; 85 and more is excellent).",
            f"aitools:efficiency_score:overall{{{INSTANCE}}}",
            "overall",
            width=8,
        )
    )
    for component, title, description in COMPONENTS:
        dashboard = dashboard.with_panel(
            score_gauge(
                f"{title} score",
                description,
                f'aitools:efficiency_score{{{INSTANCE}, component="{component}"}}',
                "{{component}}",
            )
        )

    dashboard = dashboard.with_row(row("Budgets")).with_panel(
        ratio_bars(
            "Budgets used",
            "Each budget's usage as a share of the budget (the recording rule aitools:budget_usage:ratio); 100 % is the budget.",
            [query(f"aitools:budget_usage:ratio{{{INSTANCE}}}", "{{budget}} {{target}}")],
            height=10,
        )
    ).with_panel(
        table(
            "Budgets: used against limit",
            "Bytes counted against each budget now, the budget from the exporter, and the share; node_heap shows the largest target.",
            [
                query(f"max by (budget) (aitools:budget_usage_bytes{{{INSTANCE}}})", "{{budget}}"),
                query(
                    f"max by (budget) (aitools_budget_bytes{{{INSTANCE}}}"
                    f" and on (instance, budget) aitools:budget_usage_bytes{{{INSTANCE}}})",
                    "{{budget}}",
                ),
                query(f"max by (budget) (aitools:budget_usage:ratio{{{INSTANCE}}})", "{{budget}}"),
            ],
            [
                Column("budget", "Budget"),
                Column("Value #A", "Used", BYTES),
                Column("Value #B", "Budget size", BYTES),
                Column("Value #C", "Used / budget", RATIO),
            ],
            sort_by="Used / budget",
            height=10,
        )
    )

    dashboard = dashboard.with_row(row("Tracked total")).with_panel(
        timeseries(
            "Tracked total against the profile's budget",
            "Everything the exporter tracks, against the total budget of the active profile (development_total or production_total).",
            [
                query(f'aitools:budget_usage_bytes{{{INSTANCE}, budget=~"{TOTAL_BUDGETS}"}}', "tracked total ({{budget}})"),
                query(
                    f"aitools_budget_bytes{{{INSTANCE}}}"
                    f' and on (instance, budget) aitools:budget_usage_bytes{{{INSTANCE}, budget=~"{TOTAL_BUDGETS}"}}',
                    "{{budget}} budget",
                    budget_line=True,
                ),
            ],
            width=16,
            height=9,
        )
    ).with_panel(
        label_stat(
            "Active profile",
            "The profile whose total budget applies (profile in the exporter's configuration).",
            f"aitools_profile_info{{{INSTANCE}}} == 1",
            "{{profile}}",
            width=4,
            height=9,
        )
    ).with_panel(
        up_stat(
            "Exporter",
            "Whether Prometheus can scrape the aitools exporter of this workstation (up of the aitools job).",
            f'up{{job="aitools", {INSTANCE}}}',
            "exporter",
            width=4,
            height=9,
        )
    )

    dashboard = dashboard.with_row(row("Where the memory goes")).with_panel(
        timeseries(
            "Memory by application",
            "Every process of the machine in one application (aitools:app_memory_bytes), stacked; the dashed line is the "
            "machine's used memory (physical less available), which the apps add up to within the tolerance in the README.",
            [
                query(f"sort_desc(aitools:app_memory_bytes{{{INSTANCE}}})", "{{app}}"),
                query(USED_MEMORY, "used memory (physical - available)", budget_line=True),
            ],
            stacked=True,
            width=14,
            height=10,
        )
    ).with_panel(
        table(
            "Applications now",
            "Each application's memory now (aitools:app_memory_bytes), its processes, and its share of the machine's used memory.",
            [
                query(f"max by (app) (aitools:app_memory_bytes{{{INSTANCE}}})", "{{app}}"),
                query(f"max by (app) (aitools_app_processes{{{INSTANCE}}})", "{{app}}"),
                query(
                    f"max by (app) (aitools:app_memory_bytes{{{INSTANCE}}} / on (instance) group_left () ({USED_MEMORY}))",
                    "{{app}}",
                ),
            ],
            [
                Column("app", "Application"),
                Column("Value #A", "Memory", BYTES),
                Column("Value #B", "Processes", COUNT),
                Column("Value #C", "Share of used memory", RATIO),
            ],
            sort_by="Memory",
            width=10,
            height=10,
        )
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        table(
            "Alerts firing now",
            "The aitools alerts firing for this workstation (Prometheus ALERTS series); the action annotation is in Alertmanager.",
            [query(f'ALERTS{{alertstate="firing", alertname=~"Aitools.+", {INSTANCE}}}', "{{alertname}}")],
            [
                Column("alertname", "Alert"),
                Column("severity", "Severity"),
                Column("component", "Component"),
                Column("budget", "Budget"),
                Column("target", "Target"),
                Column("name", "Container"),
                Column("family", "Family"),
                Column("server", "Server"),
                Column("collector", "Collector"),
            ],
            unit=STATE,
            height=10,
        )
    ).with_panel(
        bytes_bars(
            "Top consumers now",
            "The ten largest memory holders now: containers, loaded models, Node.js processes and process groups.",
            [query(TOP_CONSUMERS, "{{consumer}}")],
            height=10,
        )
    )
    return finish(dashboard)
