"""`aitools-exporter snapshot`: one collection, every reading beside its budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.app import Exporter
from exporter.breakdown import Node, build_tree
from exporter.config import Config
from exporter.fits import MEMORY_RESERVE_FRACTION, ModelFit, model_fits
from exporter.readings import Reading, Samples, readings


@dataclass
class Snapshot:
    readings: list[Reading]
    samples: Samples
    collector_errors: dict[str, str | None]
    tree: Node | None = None         # the user's workstation (exporter/breakdown.py)
    monitoring: Node | None = None   # the monitoring bundle's own footprint
    fits: list[ModelFit] = field(default_factory=list)


def snapshot_of(config: Config, samples: Samples, collector_errors: dict[str, str | None]) -> Snapshot:
    """Everything the snapshot and the landing page show, from the samples of one collection."""
    tree, monitoring = build_tree(config, samples)
    return Snapshot(readings(config, samples), samples, collector_errors, tree, monitoring, model_fits(samples))


def take_snapshot(exporter: Exporter) -> Snapshot:
    return snapshot_of(exporter.config, exporter.collect(), exporter.last_errors())


def human_bytes(value: float | None) -> str:
    """Decimal units, as the budgets are written (200MB = 200 * 10^6 bytes)."""
    if value is None:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _status(reading: Reading) -> str:
    ratio = reading.ratio
    if ratio is None:
        return "" if reading.used_bytes is not None or reading.budget is None else "no reading"
    if ratio > 1:
        return "OVER"
    return "near" if ratio >= 0.9 else "ok"


def share_text(node: Node) -> str:
    """'4.1 GB of 5.0 GB docker, 82%' or ''."""
    if node.budget is None:
        return ""
    counted = "" if node.counted_bytes is None or node.counted_bytes == node.bytes else f"{human_bytes(node.counted_bytes)} of "
    share = f", {node.share:.0%}" if node.share is not None else ""
    return f"{counted}{human_bytes(node.budget_bytes)} {node.budget}{share}"


def printable(text: str) -> str:
    """A name from outside, safe on a terminal: control characters (escape sequences,
    newlines) shown as Python escapes instead of acting."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _tree_labels(node: Node, lead: str = "", branch: str = ""):
    """(drawn label, node) for the node and its descendants, drawn as `tree` does."""
    yield lead + branch + printable(node.name), node
    below = lead + ("" if not branch else "│  " if branch == "├─ " else "   ")
    for index, child in enumerate(node.children):
        yield from _tree_labels(child, below, "└─ " if index == len(node.children) - 1 else "├─ ")


def render_tree(node: Node) -> list[str]:
    rows = [(label, human_bytes(item.bytes), share_text(item), item.note or "") for label, item in _tree_labels(node)]
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    return ["  ".join((row[0].ljust(width[0]), row[1].rjust(width[1]), row[2].ljust(width[2]), row[3])).rstrip()
            for row in rows]


def render_fits(fits: list[ModelFit]) -> list[str]:
    if not fits:
        return ["  (no installed model that is not loaded, or no memory figures)"]
    return [f"  {fit.server:<9} {printable(fit.model)}  {human_bytes(fit.size_bytes)}: {printable(fit.verdict)}"
            for fit in fits]


def render_table(config: Config, snapshot: Snapshot) -> str:
    header = ("AREA", "WHAT", "USED", "BUDGET", "OF BUDGET", "STATUS")
    rows = [header]
    for reading in snapshot.readings:
        budget = f"{human_bytes(reading.budget_bytes)} ({reading.budget})" if reading.budget else ""
        ratio = f"{reading.ratio:.0%}" if reading.ratio is not None else ""
        rows.append((reading.area, printable(reading.subject), human_bytes(reading.used_bytes), budget, ratio,
                     _status(reading)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"aitools-exporter snapshot, profile {config.profile}", ""]
    if snapshot.tree is not None:
        lines += ["Where the memory goes:"] + render_tree(snapshot.tree) + [""]
        lines += render_tree(snapshot.monitoring) + [""]
        lines += [f"Installed models that are not loaded (fit: within the server's budget less what it has loaded, "
                  f"and the available memory less {MEMORY_RESERVE_FRACTION:.0%} of physical memory):"]
        lines += render_fits(snapshot.fits) + ["", "Readings:"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    failed = {name: error for name, error in snapshot.collector_errors.items() if error}
    if failed:
        lines += ["", "Collectors that failed:"]
        lines += [f"  {name}: {printable(error)}" for name, error in sorted(failed.items())]
    return "\n".join(lines)


def render_json(config: Config, snapshot: Snapshot) -> dict:
    return {
        "profile": config.profile,
        "budgets": dict(config.budgets),
        "readings": [
            {"area": r.area, "subject": r.subject, "used_bytes": r.used_bytes, "budget": r.budget,
             "budget_bytes": r.budget_bytes, "ratio": r.ratio, "status": _status(r) or None}
            for r in snapshot.readings
        ],
        "collectors": {
            name: {"success": not error, "error": error}
            for name, error in sorted(snapshot.collector_errors.items())
        },
        "tree": snapshot.tree.as_dict() if snapshot.tree is not None else None,
        "monitoring": snapshot.monitoring.as_dict() if snapshot.monitoring is not None else None,
        "memory_reserve_fraction": MEMORY_RESERVE_FRACTION,
        "llm_fits": [
            {"server": f.server, "model": f.model, "size_bytes": f.size_bytes, "fits": f.fits,
             "room_bytes": f.room_bytes, "server_room_bytes": f.server_room_bytes,
             "memory_room_bytes": f.memory_room_bytes, "unload_first": f.unload_first, "verdict": f.verdict}
            for f in snapshot.fits
        ],
        "metrics": [
            {"name": name, "labels": labels, "value": value}
            for name, samples in sorted(snapshot.samples.by_name.items())
            for labels, value in samples
        ],
    }
