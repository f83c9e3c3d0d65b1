"""`aitools-exporter snapshot`: one collection, every reading beside its budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.app import Exporter
from exporter.breakdown import Node, build_tree, human_bytes
from exporter.config import Config
from exporter.fits import MEMORY_RESERVE_FRACTION, ModelFit, model_fit, model_fits
from exporter.readings import Reading, Samples, readings


@dataclass
class Snapshot:
    readings: list[Reading]
    samples: Samples
    collector_errors: dict[str, str | None]
    tree: Node | None = None         # the user's workstation (exporter/breakdown.py)
    monitoring: Node | None = None   # the monitoring bundle's own footprint
    fits: list[ModelFit] = field(default_factory=list)
    # (server, model) -> its Estimate, or the reason it has none (exporter/estimate.py)
    estimates: dict = field(default_factory=dict)


def snapshot_of(config: Config, samples: Samples, collector_errors: dict[str, str | None],
                estimates: dict | None = None) -> Snapshot:
    """Everything the snapshot and the landing page show, from the samples of one collection."""
    tree, monitoring = build_tree(config, samples)
    return Snapshot(readings(config, samples), samples, collector_errors, tree, monitoring,
                    model_fits(samples, estimates), dict(estimates or {}))


def take_snapshot(exporter: Exporter, first: tuple[str, ...] = ()) -> Snapshot:
    """One collection; `first`: models whose estimate is read before the others'."""
    exporter.read_first(first)
    return snapshot_of(exporter.config, exporter.collect(), exporter.last_errors(), exporter.estimates())


# `aitools-exporter fit` exit codes (../shared/CONTRACT.md)
FIT_EXIT = {"fits": 0, "loaded": 0, "after_plan": 1, "never": 2, "unknown": 3}


def find_fit(snapshot: Snapshot, name: str, server: str | None = None) -> dict:
    """The `fit` command's answer for model `name`: {"outcome", "server", "model", "message", "fit"}."""
    samples = snapshot.samples
    servers = [server] if server else ["ollama", "lmstudio"]
    for where in servers:
        installed = {labels["model"] for labels, _ in samples.all("aitools_llm_model_installed_bytes", server=where)}
        model = name if name in installed else f"{name}:latest" if f"{name}:latest" in installed else None
        if model is None:
            continue
        answer = {"server": where, "model": model, "fit": None,
                  "estimate": snapshot.estimates.get((where, model))}
        loaded = samples.value("aitools_llm_model_loaded_bytes", server=where, model=model)
        if loaded is not None:
            return {**answer, "outcome": "loaded", "message": f"{model} is loaded in {where} now ({human_bytes(loaded)})"}
        fit = model_fit(samples, where, model, snapshot.estimates)
        if fit is None:
            return {**answer, "outcome": "unknown",
                    "message": f"{model}: no memory figures or no {where} budget to weigh it against"}
        if fit.fits and not fit.estimated:  # the file size is only a lower bound: no verdict
            return {**answer, "outcome": "unknown", "fit": fit,
                    "message": f"{model} ({where}): its file fits, but its loaded size has no estimate"}
        return {**answer, "outcome": fit.outcome, "fit": fit, "message": f"{model} ({where}): {fit.verdict}"}
    answered = [w for w in servers if samples.value("aitools_llm_server_up", server=w) == 1]
    why = f"not installed in {' or '.join(answered)}" if answered else f"{' and '.join(servers)} did not answer"
    return {"server": server, "model": name, "fit": None, "estimate": None, "outcome": "unknown",
            "message": f"{name}: {why}"}


def render_fit(answer: dict) -> str:
    lines = [printable(answer["message"])]
    found, fit = answer.get("estimate"), answer.get("fit")
    if fit is not None:
        lines.append(f"  estimated loaded size {human_bytes(fit.size_bytes)}"
                     + ("" if fit.estimated else " (the file size: no estimate)")
                     + (f" at context {fit.context_length:.0f}" if fit.context_length else ""))
        rooms = [f"{fit.server} budget room {human_bytes(fit.server_room_bytes)}",
                 f"memory room {human_bytes(fit.memory_room_bytes)} (available less {MEMORY_RESERVE_FRACTION:.0%})"]
        if fit.gpu_room_bytes is not None:
            rooms.append(f"GPU room {human_bytes(fit.gpu_room_bytes)}")
        lines.append("  rooms now: " + ", ".join(rooms))
        for model in fit.plan or []:
            command = f"ollama stop {model.model}" if model.server == "ollama" else f"lms unload {model.model}"
            lines.append(f"  unload {printable(model.name)} ({human_bytes(model.bytes)}): {printable(command)}")
    if found is not None and not isinstance(found, str):
        lines.append(f"  weights {human_bytes(found.weights_bytes)}, KV cache {human_bytes(found.kv_bytes)}, "
                     f"buffers {human_bytes(found.compute_bytes)}")
        lines += [f"  assumed: {printable(note)}" for note in found.assumed]
    elif isinstance(found, str):
        lines.append(f"  no estimate: {printable(found)}")
    return "\n".join(lines)


def fit_json(answer: dict) -> dict:
    found = answer.get("estimate")
    return {"model": answer["model"], "server": answer["server"], "outcome": answer["outcome"],
            "exit_code": FIT_EXIT[answer["outcome"]], "message": answer["message"],
            "fit": answer["fit"].as_dict() if answer.get("fit") is not None else None,
            "estimate": found.as_dict() if found is not None and not isinstance(found, str) else None,
            "no_estimate_reason": found if isinstance(found, str) else None}


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
    return [f"  {fit.server:<9} {printable(fit.model)}  {human_bytes(fit.size_bytes)}"
            + (f" at context {fit.context_length:.0f}" if fit.context_length else "")
            + ("" if fit.estimated else " (file size, no estimate)") + f": {printable(fit.verdict)}"
            for fit in fits]


# aitools_app_memory_figure_processes{figure}: what each process's memory is (collectors/proctable.py).
MEMORY_FIGURES = (("footprint", "physical footprint"), ("resident", "resident set"),
                  ("resident_less_shared", "resident set less shared pages"))


def memory_figures(samples: Samples) -> dict[str, int]:
    """figure -> how many processes' memory the apps counted as that figure."""
    return {labels.get("figure", ""): int(value) for labels, value in samples.all("aitools_app_memory_figure_processes")}


def memory_figures_text(samples: Samples) -> str | None:
    """'Process memory: physical footprint for 612 processes, resident set for 95', or None."""
    counts = memory_figures(samples)
    parts = [f"{words} for {counts[figure]} processes" for figure, words in MEMORY_FIGURES if counts.get(figure)]
    return "Process memory: " + ", ".join(parts) if parts else None


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
        figures = memory_figures_text(snapshot.samples)
        if figures is not None:
            lines += [figures, ""]
        lines += [f"Installed models that are not loaded, at their estimated loaded size (fit: within the server's "
                  f"budget less what it has loaded, the available memory less {MEMORY_RESERVE_FRACTION:.0%} of "
                  f"physical memory, and the GPU room where there is a GPU ceiling):"]
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
        "process_memory_figures": memory_figures(snapshot.samples),
        "monitoring": snapshot.monitoring.as_dict() if snapshot.monitoring is not None else None,
        "memory_reserve_fraction": MEMORY_RESERVE_FRACTION,
        "llm_fits": [f.as_dict() for f in snapshot.fits],
        "metrics": [
            {"name": name, "labels": labels, "value": value}
            for name, samples in sorted(snapshot.samples.by_name.items())
            for labels, value in samples
        ],
    }
