"""Local LLMs: each loaded model with its size and GPU part, each server against its budget,
the installed models and which of them would fit now (aitools:llm_model_fits)."""

from __future__ import annotations

from .lib import (
    BYTES,
    INSTANCE,
    RATIO,
    Column,
    budget,
    bytes_bars,
    finish,
    new_dashboard,
    query,
    ratio_bars,
    row,
    score_gauge,
    table,
    timeseries,
    up_stat,
)

UID = "aitools-llm"
LOADED = "aitools_llm_model_loaded_bytes"
VRAM = "aitools_llm_model_vram_bytes"
INSTALLED = "aitools_llm_model_installed_bytes"
FITS = "aitools:llm_model_fits"
# server label value -> (budget name, display name); the budget is named after the server.
SERVERS = (("ollama", "Ollama"), ("lmstudio", "LM Studio"))


def server_against_budget(server: str, display: str):
    """One server's loaded models over time, stacked, with its budget line."""
    return timeseries(
        f"{display} against its budget",
        f"Models loaded in {display}, stacked, with the {server} budget (what counts is the rule aitools:budget_usage_bytes).",
        [
            query(f'{LOADED}{{{INSTANCE}, server="{server}"}}', "{{model}}"),
            budget(server, f"{server} budget"),
        ],
        stacked=True,
    )


def installed_that(verdict: str) -> str:
    """Installed models whose aitools:llm_model_fits is `verdict` (1 fits now, 0 does not), with their size."""
    return (f"sort_desc({INSTALLED}{{{INSTANCE}}} and on (instance, server, model) "
            f"({FITS}{{{INSTANCE}}} == {verdict}))")


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: local LLMs",
        "Models loaded in Ollama and LM Studio: size, the part in GPU memory, and each server against its budget.",
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        score_gauge(
            "Local LLMs score",
            "The llm component of the efficiency score (0-100): loaded models against the server budgets.",
            f'aitools:efficiency_score{{{INSTANCE}, component="llm"}}',
            "{{component}}",
            width=6,
            height=6,
        )
    ).with_panel(
        ratio_bars(
            "Servers against their budgets",
            "Loaded models of each server as a share of its budget (ollama, lmstudio); 100 % is the budget.",
            [query(f'aitools:budget_usage:ratio{{{INSTANCE}, budget=~"ollama|lmstudio"}}', "{{budget}}")],
            width=10,
            height=6,
        )
    ).with_panel(
        up_stat(
            "Servers answering",
            "Whether each LLM server answered the exporter at the last scrape (a server that is not running shows down).",
            f"aitools_llm_server_up{{{INSTANCE}}}",
            "{{server}}",
            width=8,
            height=6,
        )
    )

    dashboard = dashboard.with_row(row("Loaded models")).with_panel(
        table(
            "Loaded models",
            "Each loaded model with its size as its server reports it, the part in GPU memory and the GPU share.",
            [
                query(f"{LOADED}{{{INSTANCE}}}", "{{server}} {{model}}"),
                query(f"{VRAM}{{{INSTANCE}}}", "{{server}} {{model}}"),
                query(f"{VRAM}{{{INSTANCE}}} / {LOADED}{{{INSTANCE}}}", "{{server}} {{model}}"),
            ],
            [
                Column("server", "Server"),
                Column("model", "Model"),
                Column("Value #A", "Size", BYTES),
                Column("Value #B", "In GPU memory", BYTES),
                Column("Value #C", "GPU share", RATIO),
            ],
            sort_by="Size",
        )
    ).with_panel(
        bytes_bars(
            "Model sizes now",
            "Each loaded model's size, largest first, as Ollama (/api/ps) or LM Studio (/api/v1/models) reports it.",
            [query(f"sort_desc({LOADED}{{{INSTANCE}}})", "{{server}} / {{model}}")],
        )
    )

    dashboard = dashboard.with_row(row("Installed models: which fit now")).with_panel(
        bytes_bars(
            "Fit now",
            "Installed models that are not loaded and would fit now: within their server's budget less what it has "
            "loaded, and within the available memory less 10 % of physical memory (rule aitools:llm_model_fits).",
            [query(installed_that("1"), "{{server}} / {{model}}")],
            width=8,
        )
    ).with_panel(
        bytes_bars(
            "Need another model unloaded first",
            "Installed models that are not loaded and would not fit now: unload a model of the same server "
            "(or free memory) first.",
            [query(installed_that("0"), "{{server}} / {{model}}")],
            width=8,
        )
    ).with_panel(
        timeseries(
            "Room for another model",
            "The largest model each server could load now: its budget less what it has loaded, or the available "
            "memory less the reserve, whichever is smaller (rule aitools:llm_room_bytes).",
            [query(f"aitools:llm_room_bytes{{{INSTANCE}}}", "{{server}}")],
            width=8,
            min_zero=False,  # negative when a server is over its budget
        )
    ).with_panel(
        table(
            "Installed models",
            "Every model installed in each server with its size (Ollama /api/tags, LM Studio /api/v1/models), "
            "and its size in memory when it is loaded.",
            [
                query(f"{INSTALLED}{{{INSTANCE}}}", "{{server}} {{model}}"),
                query(f"{LOADED}{{{INSTANCE}}}", "{{server}} {{model}}"),
            ],
            [
                Column("server", "Server"),
                Column("model", "Model"),
                Column("Value #A", "Installed size", BYTES),
                Column("Value #B", "Loaded now", BYTES),
            ],
            sort_by="Installed size",
            width=24,
        )
    )

    dashboard = dashboard.with_row(row("Servers against budgets"))
    for server, display in SERVERS:
        dashboard = dashboard.with_panel(server_against_budget(server, display))

    dashboard = dashboard.with_row(row("GPU")).with_panel(
        timeseries(
            "GPU part of each model",
            "The part of each loaded model in GPU memory, where the server tells it (Ollama size_vram).",
            [query(f"{VRAM}{{{INSTANCE}}}", "{{server}} / {{model}} in GPU")],
            stacked=True,
        )
    ).with_panel(
        timeseries(
            "GPU share of each model",
            "The share of each loaded model held in GPU memory; below 100 % part of the model runs on the CPU.",
            [query(f"{VRAM}{{{INSTANCE}}} / {LOADED}{{{INSTANCE}}}", "{{server}} / {{model}}")],
            unit=RATIO,
        )
    )
    return finish(dashboard)
