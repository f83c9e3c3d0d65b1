"""System: pages by state, available memory, swap, and the exporter's own collectors."""

from __future__ import annotations

from .lib import (
    BYTES,
    COUNT,
    INSTANCE,
    RATIO,
    SECONDS,
    finish,
    new_dashboard,
    query,
    row,
    score_gauge,
    state_stat,
    timeseries,
    up_stat,
    value_stat,
)

UID = "aitools-system"
PAGES_AS_BYTES = (
    f"aitools_system_memory_pages{{{INSTANCE}}} * on (instance) group_left () aitools_system_page_size_bytes{{{INSTANCE}}}"
)
COMPRESSOR_AS_BYTES = (
    f'aitools_system_memory_pages{{{INSTANCE}, state=~"stored_in_compressor|compressed"}}'
    f" * on (instance) group_left () aitools_system_page_size_bytes{{{INSTANCE}}}"
)


def _pages(states: str) -> str:
    """The named page states of each instance, summed, in bytes."""
    return (f'sum by (instance) (aitools_system_memory_pages{{{INSTANCE}, state=~"{states}"}})'
            f" * on (instance) group_left () max by (instance) (aitools_system_page_size_bytes{{{INSTANCE}}})")


# Activity Monitor's Memory tab from vm_stat's counts (exporter/collectors/system.py activity_monitor()).
APP_MEMORY = f'clamp_min({_pages("anonymous")} - {_pages("purgeable")}, 0)'
ACTIVITY_MONITOR = (
    ("App Memory", APP_MEMORY),
    ("Wired Memory", _pages("wired")),
    ("Compressed", _pages("compressed")),
)
CACHED_FILES = _pages("file_backed|purgeable")
# A collector's state: 1 ok, 0 failing (its source answers but cannot be read, or hangs),
# 2 not running (connection refused, no socket: a normal state, not red). An exporter
# without aitools_collector_source_running shows ok or failing only.
COLLECTOR_STATE = (
    f"aitools_collector_success{{{INSTANCE}}} + 2 * (1 - aitools_collector_source_running{{{INSTANCE}}})"
    f" or aitools_collector_success{{{INSTANCE}}}"
)
AVAILABLE_SHARE = f"aitools_system_memory_available_bytes{{{INSTANCE}}} / aitools_system_memory_total_bytes{{{INSTANCE}}}"


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: system",
        "The machine's memory: pages by state (vm_stat or /proc/meminfo), available memory, swap, and the exporter's collectors.",
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        score_gauge(
            "System score",
            "The system component of the efficiency score (0-100): physical memory (on macOS the kernel's memory pressure level), the swift_build budget and the profile's total.",
            f'aitools:efficiency_score{{{INSTANCE}, component="system"}}',
            "{{component}}",
            width=6,
            height=5,
        )
    ).with_panel(
        value_stat(
            "Available memory",
            "Memory available without swapping now.",
            [query(f"aitools_system_memory_available_bytes{{{INSTANCE}}}", "available")],
            width=6,
            height=5,
        )
    ).with_panel(
        value_stat(
            "Available share",
            "Available memory as a share of physical memory now (red towards 0 %, green towards 100 %).",
            [query(AVAILABLE_SHARE, "available / total")],
            unit=RATIO,
            continuous_ratio=True,
            width=5,
            height=5,
        )
    ).with_panel(
        value_stat(
            "Swap used",
            "Swap in use now; on macOS growing swap means memory pressure.",
            [query(f"aitools_system_swap_used_bytes{{{INSTANCE}}}", "swap used")],
            width=4,
            height=5,
        )
    ).with_panel(
        state_stat(
            "Memory pressure (macOS)",
            "The macOS kernel's memory pressure level (kern.memorystatus_vm_pressure_level): normal, warn or critical. "
            "On macOS it drives AitoolsSystemMemoryLow and the system score; other systems have none.",
            f"aitools_system_memory_pressure_level{{{INSTANCE}}}",
            "pressure",
            {1: ("normal", "green"), 2: ("warn", "orange"), 4: ("critical", "red")},
            no_value="not macOS",
            width=3,
            height=5,
        )
    )

    dashboard = dashboard.with_row(row("Memory")).with_panel(
        timeseries(
            "Memory by page state",
            "Page counts by state times the page size (macOS vm_stat: free, active, inactive, wired, compressed...); states overlap, so not stacked.",
            [query(PAGES_AS_BYTES, "{{state}}")],
        )
    ).with_panel(
        timeseries(
            "Available memory against physical memory",
            "Memory available without swapping, with the machine's physical memory as the ceiling.",
            [
                query(f"aitools_system_memory_available_bytes{{{INSTANCE}}}", "available"),
                query(f"aitools_system_memory_total_bytes{{{INSTANCE}}}", "physical memory", budget_line=True),
            ],
        )
    ).with_panel(
        timeseries(
            "Swap used",
            "Swap in use over time.",
            [query(f"aitools_system_swap_used_bytes{{{INSTANCE}}}", "swap used")],
        )
    ).with_panel(
        timeseries(
            "Available share",
            "Available memory as a share of physical memory over time.",
            [query(AVAILABLE_SHARE, "available / total")],
            unit=RATIO,
        )
    )

    dashboard = dashboard.with_row(row("macOS: compression, swap and the GPU")).with_panel(
        timeseries(
            "Activity Monitor's Memory (macOS)",
            "Memory Used as Activity Monitor adds it: App Memory (anonymous - purgeable pages), Wired Memory and "
            "Compressed (pages the compressor occupies), stacked; Cached Files (file-backed + purgeable) apart. "
            "The GPU's wired memory (the models on it) is inside Wired Memory.",
            [query(expr, legend) for legend, expr in ACTIVITY_MONITOR],
            stacked=True,
        )
    ).with_panel(
        timeseries(
            "Cached Files (macOS)",
            "File-backed and purgeable pages: memory the kernel hands back on demand (it counts as available).",
            [query(CACHED_FILES, "cached files")],
        )
    ).with_panel(
        timeseries(
            "Compressor",
            "macOS: the data held compressed (pages stored in compressor) and the memory it takes (pages occupied by "
            "compressor, Activity Monitor's Compressed).",
            [
                query(COMPRESSOR_AS_BYTES, "{{state}}"),
            ],
        )
    ).with_panel(
        timeseries(
            "Swap used against swap in existence",
            "Swap in use, with the swap space there is now (macOS grows it on demand, so a growing total means pressure).",
            [
                query(f"aitools_system_swap_used_bytes{{{INSTANCE}}}", "swap used"),
                query(f"aitools_system_swap_total_bytes{{{INSTANCE}}}", "swap in existence"),
            ],
        )
    ).with_panel(
        timeseries(
            "Page-outs and swap-outs",
            "macOS: pages written out by the pager and to swap, per second (vm_stat's Pageouts and Swapouts).",
            [
                query(f"rate(aitools_system_pageouts_total{{{INSTANCE}}}[5m])", "page-outs"),
                query(f"rate(aitools_system_swapouts_total{{{INSTANCE}}}[5m])", "swap-outs"),
            ],
            unit=COUNT,
        )
    ).with_panel(
        timeseries(
            "The kernel's free share (macOS)",
            "kern.memorystatus_level / 100: the share of memory the macOS kernel counts as available (not wired, not "
            "compressed), the figure its pressure levels follow.",
            [query(f"aitools_system_memory_free_ratio{{{INSTANCE}}}", "free share")],
            unit=RATIO,
        )
    ).with_panel(
        timeseries(
            "GPU memory (Apple silicon)",
            "The memory the GPU holds wired now (IOAccelerator's In use system memory: the models on the GPU among it), "
            "against Metal's working-set ceiling (iogpu.wired_limit_mb, else the system default, about 3/4 of memory); "
            "AitoolsGPUMemoryNearLimit at 90 %.",
            [
                query(f"aitools_gpu_memory_wired_bytes{{{INSTANCE}}}", "wired by the GPU"),
                query(f"aitools_gpu_memory_limit_bytes{{{INSTANCE}}}", "ceiling", budget_line=True),
            ],
        )
    ).with_panel(
        timeseries(
            "GPU room",
            "How much more the GPU may wire (aitools:gpu_memory_room_bytes): a model larger than this runs partly on the CPU.",
            [query(f"aitools:gpu_memory_room_bytes{{{INSTANCE}}}", "room")],
        )
    )

    dashboard = dashboard.with_row(row("Exporter")).with_panel(
        state_stat(
            "Collectors",
            "Each collector's last run: ok; not running (its source is not started: Ollama not started, Docker Desktop quit, "
            "the dev server stopped; a normal state); failing (the source answers but cannot be read, or hangs: "
            "AitoolsCollectorFailing).",
            COLLECTOR_STATE,
            "{{collector}}",
            {0: ("failing", "red"), 1: ("ok", "green"), 2: ("not running", "blue")},
            width=12,
            height=5,
        )
    ).with_panel(
        up_stat(
            "Exporter scraped",
            "Whether Prometheus can scrape the aitools exporter of this workstation (up of the aitools job).",
            f'up{{job="aitools", {INSTANCE}}}',
            "exporter",
            width=12,
            height=5,
        )
    ).with_panel(
        timeseries(
            "Collector duration",
            "How long each collector took at each scrape; a slow backend shows here before it times out.",
            [query(f"aitools_collector_duration_seconds{{{INSTANCE}}}", "{{collector}}")],
            unit=SECONDS,
        )
    ).with_panel(
        timeseries(
            "Series dropped by collectors",
            "Samples a collector dropped at the last scrape: not finite, negative, duplicate or over the series cap.",
            [query(f"aitools_collector_series_dropped{{{INSTANCE}}}", "{{collector}}")],
            unit=COUNT,
        )
    )
    return finish(dashboard)
