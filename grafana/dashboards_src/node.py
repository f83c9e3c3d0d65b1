"""Node.js heap: heapUsed, heapTotal, V8 limit, the post-GC baseline and its growth, RSS."""

from __future__ import annotations

from .lib import (
    BYTES,
    INSTANCE,
    RATIO,
    budget,
    finish,
    label_variable,
    new_dashboard,
    query,
    ratio_bars,
    row,
    score_gauge,
    timeseries,
    up_stat,
)

UID = "aitools-node"
TARGETS = f'{INSTANCE}, target=~"$target"'


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: Node.js heap",
        "V8 heap of each Node.js target against the node_heap budget and its V8 limit, leak detection on the post-GC baseline, and RSS.",
        [
            label_variable(
                "target",
                "Target",
                "aitools_node_heap_used_bytes",
                "target",
                "Node.js targets of the exporter's configuration (node.targets).",
            )
        ],
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        score_gauge(
            "Node.js score",
            "The node component of the efficiency score (0-100): heaps against budget, leaks and V8 limits.",
            f'aitools:efficiency_score{{{INSTANCE}, component="node"}}',
            "{{component}}",
            width=6,
            height=6,
        )
    ).with_panel(
        ratio_bars(
            "heapUsed against the node_heap budget",
            "Each target's heapUsed as a share of the node_heap budget (aitools:budget_usage:ratio); 100 % is the budget.",
            [query(f'aitools:budget_usage:ratio{{{TARGETS}, budget="node_heap"}}', "{{target}}")],
            width=10,
            height=6,
        )
    ).with_panel(
        up_stat(
            "Targets answering",
            "Whether each Node.js target answered with heap figures at the last scrape.",
            f"aitools_node_target_up{{{TARGETS}}}",
            "{{target}}",
            width=8,
            height=6,
        )
    )

    dashboard = dashboard.with_row(row("Heap")).with_panel(
        timeseries(
            "heapUsed against the budget",
            "V8 heapUsed of each target, with the node_heap budget that each target's heapUsed is held to.",
            [
                query(f"aitools_node_heap_used_bytes{{{TARGETS}}}", "{{target}} heapUsed"),
                budget("node_heap", "node_heap budget"),
            ],
        )
    ).with_panel(
        timeseries(
            "heapUsed / heapTotal",
            "How full the heap V8 has reserved is (heapUsed divided by heapTotal) for each target.",
            [
                query(
                    f"aitools_node_heap_used_bytes{{{TARGETS}}} / aitools_node_heap_total_bytes{{{TARGETS}}}",
                    "{{target}} used / total",
                )
            ],
            unit=RATIO,
        )
    ).with_panel(
        timeseries(
            "heapUsed, heapTotal and the V8 limit",
            "heapUsed and heapTotal of each target against its V8 heap size limit, where the source tells the limit.",
            [
                query(f"aitools_node_heap_used_bytes{{{TARGETS}}}", "{{target}} heapUsed"),
                query(f"aitools_node_heap_total_bytes{{{TARGETS}}}", "{{target}} heapTotal"),
                query(f"aitools_node_heap_limit_bytes{{{TARGETS}}}", "{{target}} V8 limit", budget_line=True),
            ],
        )
    ).with_panel(
        timeseries(
            "heapUsed / V8 limit",
            "How close each target's heapUsed is to its V8 heap limit; at 100 % V8 crashes with out-of-memory.",
            [
                query(
                    f"aitools_node_heap_used_bytes{{{TARGETS}}} / aitools_node_heap_limit_bytes{{{TARGETS}}}",
                    "{{target}} used / limit",
                )
            ],
            unit=RATIO,
        )
    )

    dashboard = dashboard.with_row(row("Leak detection")).with_panel(
        timeseries(
            "Post-GC baseline",
            "The heapUsed floor after garbage collections (aitools:node_heap_baseline_bytes) beside heapUsed itself.",
            [
                query(f"aitools:node_heap_baseline_bytes{{{TARGETS}}}", "{{target}} post-GC baseline"),
                query(f"aitools_node_heap_used_bytes{{{TARGETS}}}", "{{target}} heapUsed"),
            ],
        )
    ).with_panel(
        timeseries(
            "Baseline growth in 30 minutes against the leak threshold",
            "Growth of the post-GC baseline over 30 minutes; above the node_heap_growth threshold a leak is suspected.",
            [
                query(
                    f"aitools:node_heap_baseline_growth_bytes{{{TARGETS}}}",
                    "{{target}} baseline growth (30 min)",
                ),
                budget("node_heap_growth", "leak threshold (node_heap_growth)"),
            ],
            min_zero=False,
        )
    )

    dashboard = dashboard.with_row(row("Process")).with_panel(
        timeseries(
            "Resident set (RSS)",
            "Resident memory of each Node.js process (heap, code, buffers and native memory), where the source tells it.",
            [query(f"aitools_node_rss_bytes{{{TARGETS}}}", "{{target}} RSS")],
            unit=BYTES,
            width=24,
        )
    )
    return finish(dashboard)
