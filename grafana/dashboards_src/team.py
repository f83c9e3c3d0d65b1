"""A team: every workstation that forwards to the team's store (README, "A team").

On the store each workstation is (team, user, instance): the external labels its Prometheus
sends with (prometheus/team/) and the exporter's address. The variables are named `team` and
`user`, like those labels; the rules are the workstation rules, evaluated by the store
(prometheus/team/rules/).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.models import dashboard as dashboard_model

from .lib import (
    BYTES,
    DATASOURCE,
    RATIO,
    SCORE,
    STATE,
    Column,
    Query,
    bytes_bars,
    count_stat,
    datasource_variable,
    finish,
    new_dashboard,
    query,
    row,
    table,
    timeseries,
    value_stat,
)

UID = "aitools-team"
# The selector every query of this dashboard carries.
TEAM = 'team=~"$team", user=~"$user"'
WORKSTATION = "team, user, instance"
TOTAL_BUDGETS = "development_total|production_total"
TOP_APPS = 10
TOP_PER_WORKSTATION = 3


def _label_variable(name: str, label: str, query_text: str, description: str):
    return (
        dashboard_builder.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query_text)
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard_model.VariableOption(text="All", value="$__all", selected=True))
    )


def team_variables() -> list:
    return [
        datasource_variable("The team's store (a Prometheus with the remote-write receiver, Mimir, Thanos, VictoriaMetrics)."),
        _label_variable("team", "Team", "label_values(aitools_build_info, team)",
                        "The external label team of the workstations' Prometheus."),
        _label_variable("user", "User", 'label_values(aitools_build_info{team=~"$team"}, user)',
                        "The external label user of the workstations' Prometheus."),
    ]


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: team",
        "Every workstation of the team on its store: scores, tracked totals, the apps and models that take the memory, and who is over which budget.",
        all_variables=team_variables(),
        alerts_expr=f'ALERTS{{alertstate="firing", alertname=~"Aitools.+", {TEAM}}}',
    )

    dashboard = dashboard.with_row(row("Scores")).with_panel(
        table(
            "Every workstation's score",
            "The overall efficiency score of each workstation (0-100; 85 and more is excellent) and its worst component.",
            [
                query(f"aitools:efficiency_score:overall{{{TEAM}}}", "{{user}} {{instance}}"),
                query(f"min by ({WORKSTATION}) (aitools:efficiency_score{{{TEAM}}})", "{{user}} {{instance}}"),
            ],
            [
                Column("team", "Team"),
                Column("user", "User"),
                Column("instance", "Exporter"),
                Column("Value #A", "Overall score", SCORE),
                Column("Value #B", "Worst component", SCORE),
            ],
            unit=SCORE,
            sort_by="Overall score",
        )
    ).with_panel(
        timeseries(
            "Overall score per workstation",
            "The overall efficiency score of each workstation over time (0-100).",
            [query(f"aitools:efficiency_score:overall{{{TEAM}}}", "{{user}} {{instance}}")],
            unit=SCORE,
        )
    )

    dashboard = dashboard.with_row(row("Totals")).with_panel(
        value_stat(
            "Tracked memory of the team",
            "The active profile's tracked total of every selected workstation, added up.",
            [query(f'sum(aitools:budget_usage_bytes{{{TEAM}, budget=~"{TOTAL_BUDGETS}"}})', "team total")],
            width=6,
            height=8,
        )
    ).with_panel(
        count_stat(
            "Workstations over a budget",
            "How many selected workstations have at least one budget above 100 % now.",
            f"count(count by ({WORKSTATION}) (aitools:budget_usage:ratio{{{TEAM}}} > 1)) or vector(0)",
            "workstations",
            alarm_from=1,
            width=6,
            height=8,
        )
    ).with_panel(
        timeseries(
            "Tracked total per workstation",
            "Each workstation's tracked total (the active profile's: development_total or production_total) with its budget.",
            [
                query(f'aitools:budget_usage_bytes{{{TEAM}, budget=~"{TOTAL_BUDGETS}"}}', "{{user}} {{instance}}"),
                Query(
                    expr=f'aitools_budget_bytes{{{TEAM}, budget=~"{TOTAL_BUDGETS}"}}'
                    f' and on ({WORKSTATION}, budget) aitools:budget_usage_bytes{{{TEAM}, budget=~"{TOTAL_BUDGETS}"}}',
                    legend="{{user}} {{budget}} budget",
                    budget_line=True,
                ),
            ],
        )
    )

    dashboard = dashboard.with_row(row("Where the memory goes")).with_panel(
        bytes_bars(
            f"The {TOP_APPS} biggest apps across the team",
            "Each application's memory added up over the selected workstations (each byte counted once per workstation).",
            [query(f"topk({TOP_APPS}, sum by (app) (aitools:app_memory_bytes{{{TEAM}}}))", "{{app}}")],
        )
    ).with_panel(
        bytes_bars(
            "Loaded models across the team",
            "Each loaded model's memory added up over the selected workstations, by server.",
            [query(f"sort_desc(sum by (server, model) (aitools_llm_model_loaded_bytes{{{TEAM}}}))", "{{server}} / {{model}}")],
        )
    ).with_panel(
        table(
            f"The {TOP_PER_WORKSTATION} biggest apps of each workstation",
            "The applications that take the most memory on each selected workstation.",
            [query(f"topk by ({WORKSTATION}) ({TOP_PER_WORKSTATION}, aitools:app_memory_bytes{{{TEAM}}})",
                   "{{user}} {{app}}")],
            [Column("user", "User"), Column("instance", "Exporter"), Column("app", "App"), Column("Value", "Memory", BYTES)],
            sort_by="Memory",
        )
    ).with_panel(
        table(
            "Loaded models of each workstation",
            "Every model loaded now, on which workstation and server, and its size in memory.",
            [query(f"aitools_llm_model_loaded_bytes{{{TEAM}}}", "{{user}} {{model}}")],
            [Column("user", "User"), Column("instance", "Exporter"), Column("server", "Server"),
             Column("model", "Model"), Column("Value", "Memory", BYTES)],
            sort_by="Memory",
        )
    )

    dashboard = dashboard.with_row(row("Over budget")).with_panel(
        table(
            "Who is over which budget",
            "Every budget above 100 % now: which user, which workstation, which budget, and by how much.",
            [query(f"aitools:budget_usage:ratio{{{TEAM}}} > 1", "{{user}} {{budget}}")],
            [Column("team", "Team"), Column("user", "User"), Column("instance", "Exporter"), Column("budget", "Budget"),
             Column("target", "Node.js target"), Column("Value", "Used / budget", RATIO)],
            unit=RATIO,
            sort_by="Used / budget",
        )
    ).with_panel(
        table(
            "Firing alerts",
            "The aitools alerts firing now on the store, with the user and workstation they concern.",
            [query(f'ALERTS{{alertstate="firing", alertname=~"Aitools.+", {TEAM}}}', "{{user}} {{alertname}}")],
            [Column("user", "User"), Column("instance", "Exporter"), Column("alertname", "Alert"),
             Column("severity", "Severity"), Column("budget", "Budget"), Column("server", "Server")],
            unit=STATE,
        )
    )
    return finish(dashboard)
