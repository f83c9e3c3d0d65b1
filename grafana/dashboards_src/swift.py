"""Swift builds: swift-frontend RSS and process count against the swift_build budget."""

from __future__ import annotations

from .lib import (
    BYTES,
    COUNT,
    INSTANCE,
    budget,
    finish,
    new_dashboard,
    query,
    ratio_bars,
    row,
    timeseries,
    value_stat,
)

UID = "aitools-swift"
# The process group of the exporter's default configuration (process_groups.swift-frontend).
GROUP = f'{INSTANCE}, group="swift-frontend"'


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: Swift builds",
        "Xcode's swift-frontend processes while building: their resident memory and count against the swift_build budget.",
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        ratio_bars(
            "swift-frontend against the swift_build budget",
            "Resident memory of all swift-frontend processes together as a share of the swift_build budget; 100 % is the budget.",
            [query(f'aitools:budget_usage:ratio{{{INSTANCE}, budget="swift_build"}}', "{{budget}}")],
            width=12,
            height=5,
        )
    ).with_panel(
        value_stat(
            "swift-frontend RSS now",
            "Resident memory of all swift-frontend processes together now.",
            [query(f"aitools_process_group_rss_bytes{{{GROUP}}}", "{{group}}")],
            width=6,
            height=5,
        )
    ).with_panel(
        value_stat(
            "swift-frontend processes now",
            "How many swift-frontend processes run now (one per file batch of a build; 0 when idle).",
            [query(f"aitools_process_group_processes{{{GROUP}}}", "{{group}}")],
            unit=COUNT,
            width=6,
            height=5,
        )
    )

    dashboard = dashboard.with_row(row("Builds over time")).with_panel(
        timeseries(
            "swift-frontend RSS against the budget",
            "Summed resident memory of the swift-frontend processes with the swift_build budget.",
            [
                query(f"aitools_process_group_rss_bytes{{{GROUP}}}", "{{group}} RSS"),
                budget("swift_build", "swift_build budget"),
            ],
            width=24,
            height=9,
        )
    ).with_panel(
        timeseries(
            "swift-frontend processes",
            "Number of swift-frontend processes; parallel compile jobs raise both the count and the summed memory.",
            [query(f"aitools_process_group_processes{{{GROUP}}}", "{{group}} processes")],
            unit=COUNT,
        )
    ).with_panel(
        timeseries(
            "RSS per swift-frontend process",
            "Average resident memory of one swift-frontend process (summed RSS divided by the process count).",
            [
                query(
                    f"aitools_process_group_rss_bytes{{{GROUP}}} / (aitools_process_group_processes{{{GROUP}}} > 0)",
                    "{{group}} per process",
                )
            ],
            unit=BYTES,
        )
    )
    return finish(dashboard)
