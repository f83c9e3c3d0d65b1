"""Containers: each container and each compose project against the docker budget, own limits, duplicates."""

from __future__ import annotations

from .lib import (
    BYTES,
    INSTANCE,
    RATIO,
    Column,
    budget,
    count_stat,
    finish,
    label_variable,
    new_dashboard,
    query,
    ratio_bars,
    row,
    score_gauge,
    table,
    timeseries,
    up_stat,
)

UID = "aitools-containers"
USAGE = "aitools_container_memory_usage_bytes"
LIMIT = "aitools_container_memory_limit_bytes"
SELECTED = f'{INSTANCE}, compose_project=~"$project"'
# Families that run as more than one service: in two compose projects, or outside any
# project beside another (replicas and siblings of one project are one service). The
# same recording rule as AitoolsDuplicateService reads.
DUPLICATED_FAMILIES = f"aitools:container_family_services{{{INSTANCE}}} > 1"
# "Memory per container" draws the biggest ones and the rest as one series (with 50
# containers, 50 stacked series and a 50-row legend say nothing); the table below lists all.
TOP_CONTAINERS = 10
CONTAINER_COLUMNS = [
    Column("name", "Container"),
    Column("compose_project", "Compose project"),
    Column("compose_service", "Service"),
    Column("family", "Family"),
    Column("image", "Image"),
]


def build():
    dashboard = new_dashboard(
        UID,
        "AI tools memory: containers",
        "Docker containers and compose projects (such as the Supabase stack) against the docker budget and their own limits, and duplicated services.",
        [
            label_variable(
                "project",
                "Compose project",
                USAGE,
                "compose_project",
                "Compose projects of the running containers (com.docker.compose.project); All includes containers outside any project.",
            )
        ],
    )

    dashboard = dashboard.with_row(row("Now")).with_panel(
        score_gauge(
            "Containers score",
            "The docker component of the efficiency score (0-100): containers against budget and limits, duplicates.",
            f'aitools:efficiency_score{{{INSTANCE}, component="docker"}}',
            "{{component}}",
            width=6,
            height=6,
        )
    ).with_panel(
        ratio_bars(
            "Docker budget used",
            "Memory of all running containers together as a share of the docker budget; 100 % is the budget.",
            [query(f'aitools:budget_usage:ratio{{{INSTANCE}, budget="docker"}}', "{{budget}}")],
            width=8,
            height=6,
        )
    ).with_panel(
        count_stat(
            "Duplicated services",
            "How many image families run as more than one service: in two compose projects, or outside any project beside another (a stray postgres beside Supabase's). Replicas of one project do not count.",
            f"count({DUPLICATED_FAMILIES}) or vector(0)",
            "families with duplicates",
            alarm_from=1,
            width=5,
            height=6,
        )
    ).with_panel(
        up_stat(
            "Docker engine",
            "Whether the Docker engine answered the exporter at the last scrape.",
            f"aitools_docker_up{{{INSTANCE}}}",
            "docker engine",
            width=5,
            height=6,
        )
    )

    dashboard = dashboard.with_row(row("Memory")).with_panel(
        timeseries(
            "All containers against the docker budget",
            "Memory of all running containers together (as docker stats counts it) with the docker budget.",
            [
                query(f'aitools:budget_usage_bytes{{{INSTANCE}, budget="docker"}}', "all containers"),
                budget("docker", "docker budget"),
            ],
        )
    ).with_panel(
        timeseries(
            "Memory per compose project",
            "Memory of each compose project's containers together (for example the Supabase stack); (none) is outside any project.",
            [
                query(
                    "sum by (compose_project) ("
                    f'label_replace({USAGE}{{{SELECTED}}}, "compose_project", "(none)", "compose_project", ""))',
                    "{{compose_project}}",
                )
            ],
            stacked=True,
        )
    ).with_panel(
        timeseries(
            f"Memory per container: the {TOP_CONTAINERS} biggest and the rest",
            f"Memory of the {TOP_CONTAINERS} biggest running containers (usage less inactive file cache, as docker stats shows it) "
            "and of all others together as other; the table Containers now lists every one.",
            [
                query(f"topk({TOP_CONTAINERS}, {USAGE}{{{SELECTED}}})", "{{name}}"),
                query(
                    f"sum by (instance) ({USAGE}{{{SELECTED}}}) - sum by (instance) (topk({TOP_CONTAINERS}, {USAGE}{{{SELECTED}}}))",
                    "other",
                ),
            ],
            stacked=True,
            width=24,
            height=10,
        )
    )

    dashboard = dashboard.with_row(row("Limits")).with_panel(
        ratio_bars(
            "Usage against each container's own limit",
            "Each container's memory as a share of its own memory limit; containers without a limit are not shown.",
            [query(f"{USAGE}{{{SELECTED}}} / {LIMIT}{{{SELECTED}}}", "{{name}}")],
            height=10,
        )
    ).with_panel(
        table(
            "Containers now",
            "Every running container with its compose project, image family, memory, own limit and the share of it used.",
            [
                query(f"{USAGE}{{{SELECTED}}}", "{{name}}"),
                query(f"{LIMIT}{{{SELECTED}}}", "{{name}}"),
                query(f"{USAGE}{{{SELECTED}}} / {LIMIT}{{{SELECTED}}}", "{{name}}"),
            ],
            [
                *CONTAINER_COLUMNS,
                Column("Value #A", "Memory", BYTES),
                Column("Value #B", "Limit", BYTES),
                Column("Value #C", "Used / limit", RATIO),
            ],
            sort_by="Memory",
            height=10,
        )
    )

    dashboard = dashboard.with_row(row("Docker Desktop's VM")).with_panel(
        timeseries(
            "The VM beyond its containers",
            "Docker Desktop (macOS): the memory its VM process holds beyond the containers' usage "
            "(aitools:docker_vm_overhead_bytes: the docker app less the containers). The VM grows towards its limit "
            "and keeps memory after containers stop; quit Docker Desktop or lower its memory limit to give it back. "
            "Empty where the containers are processes of this machine (Linux).",
            [query(f"aitools:docker_vm_overhead_bytes{{{INSTANCE}}}", "VM beyond its containers")],
            width=12,
        )
    ).with_panel(
        timeseries(
            "Containers against the engine's machine",
            "All running containers' usage, against the memory of the machine the engine runs them on "
            "(Docker Desktop: its VM's limit, /info MemTotal).",
            [
                query(f"sum by (instance) ({USAGE}{{{INSTANCE}}})", "containers"),
                query(f"aitools_docker_vm_memory_limit_bytes{{{INSTANCE}}}", "the engine's machine", budget_line=True),
            ],
            width=12,
        )
    )

    dashboard = dashboard.with_row(row("Duplicates")).with_panel(
        table(
            "Containers of a service that runs twice",
            "Running containers whose image family also runs in another compose project, or outside any project beside another: two postgres or two ollama usually mean a forgotten stack.",
            [query(f"{USAGE}{{{INSTANCE}}} and on (instance, family) ({DUPLICATED_FAMILIES})", "{{family}} {{name}}")],
            [Column("family", "Family"), *[c for c in CONTAINER_COLUMNS if c.source != "family"], Column("Value", "Memory", BYTES)],
            sort_by="Memory",
            width=24,
        )
    )
    return finish(dashboard)
