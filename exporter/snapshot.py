"""`aitools-exporter snapshot`: one collection, every reading beside its budget."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.app import build_registry
from exporter.budgets import Reading, Samples, readings
from exporter.config import Config


@dataclass
class Snapshot:
    readings: list[Reading]
    samples: Samples
    collector_errors: dict[str, str | None]


def take_snapshot(config: Config) -> Snapshot:
    registry, scraper = build_registry(config)
    samples = Samples(registry.collect())
    return Snapshot(readings(config, samples), samples, scraper.last_errors())


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


def render_table(config: Config, snapshot: Snapshot) -> str:
    header = ("AREA", "WHAT", "USED", "BUDGET", "OF BUDGET", "STATUS")
    rows = [header]
    for reading in snapshot.readings:
        budget = f"{human_bytes(reading.budget_bytes)} ({reading.budget})" if reading.budget else ""
        ratio = f"{reading.ratio:.0%}" if reading.ratio is not None else ""
        rows.append((reading.area, reading.subject, human_bytes(reading.used_bytes), budget, ratio, _status(reading)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"aitools-exporter snapshot, profile {config.profile}", ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    failed = {name: error for name, error in snapshot.collector_errors.items() if error}
    if failed:
        lines += ["", "Collectors that failed:"]
        lines += [f"  {name}: {error}" for name, error in sorted(failed.items())]
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
        "metrics": [
            {"name": name, "labels": labels, "value": value}
            for name, samples in sorted(snapshot.samples.by_name.items())
            for labels, value in samples
        ],
    }
