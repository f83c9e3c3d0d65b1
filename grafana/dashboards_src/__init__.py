"""Grafana dashboards as code, built with grafana-foundation-sdk.

Regenerate the committed JSON under grafana/dashboards/ from the repository root with

    python -m grafana.dashboards_src          # or: python grafana/build.py
    python -m grafana.dashboards_src --check  # exit 1 when the committed JSON differs
"""

from __future__ import annotations

from pathlib import Path

from . import containers, k8s, llm, node, overview, swift, system, team

# file name under grafana/dashboards/ -> the module whose build() makes that dashboard
DASHBOARDS = {
    "overview.json": overview,
    "node.json": node,
    "containers.json": containers,
    "llm.json": llm,
    "swift.json": swift,
    "system.json": system,
}

# Beyond one workstation (README, "Production on Kubernetes", "A team"): on a cluster's
# Prometheus or a team's store, with variables of their own instead of `instance`.
BEYOND_ONE_MACHINE = {
    "k8s-namespace.json": k8s,
    "team.json": team,
}

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "dashboards"


def build_all() -> dict[str, str]:
    """Every dashboard as its committed JSON text, by file name."""
    from .lib import to_json

    return {name: to_json(module.build()) for name, module in {**DASHBOARDS, **BEYOND_ONE_MACHINE}.items()}
