"""The landing page at `/`: the snapshot as a web page, for a user who has no Grafana yet.

Plain HTML and CSS in one document: no script, no external asset, nothing fetched from
anywhere. It refreshes itself (meta refresh every REFRESH_SECONDS) and shows every budget
with a bar of its share, the breakdown tree and which installed models fit now: the same
figures as `aitools-exporter snapshot`, built by the same code (exporter/snapshot.py
`snapshot_of`) from one collection of the server's Exporter (exporter/app.py).

Cost: a page is one collection, shared with any /metrics scrape running at the same time
(the Scraper coalesces concurrent collections), and a page built less than
REUSE_SECONDS ago is served again, so that tabs left open and reloads do not multiply the
backends' load.

Every text that comes from outside (model, container, project and target names, collector
errors) is escaped: they are hostile input.
"""

from __future__ import annotations

import html
import threading
import time
import weakref

from exporter import __version__
from exporter.app import Exporter
from exporter.breakdown import Node
from exporter.fits import MEMORY_RESERVE_FRACTION
from exporter.snapshot import Snapshot, _status, human_bytes, snapshot_of

REFRESH_SECONDS = 30
REUSE_SECONDS = 5.0

_lock = threading.Lock()
_last: "weakref.WeakKeyDictionary[Exporter, tuple[float, bytes]]" = weakref.WeakKeyDictionary()

STYLE = """
body{font:14px/1.4 -apple-system,system-ui,"Segoe UI",sans-serif;margin:1.5em auto;max-width:64em;padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#666}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #eee;vertical-align:middle}
th{font-weight:600;color:#444}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{width:14em;height:.9em;background:#eee;border-radius:.45em;overflow:hidden;display:inline-block;vertical-align:middle}
.bar>span{display:block;height:100%;background:#34a853}.bar.near>span{background:#f9ab00}.bar.over>span{background:#d93025}
.status-OVER{color:#d93025;font-weight:600}.status-near{color:#b06000}.fits{color:#188038;font-weight:600}.nofit{color:#b06000}
.note{color:#777;font-size:.9em}td.note{white-space:nowrap}.error{color:#d93025}code{font-size:.95em}
"""


def page(exporter: Exporter) -> bytes:
    """The landing page of the exporter the server serves."""
    with _lock:
        now = time.monotonic()
        cached = _last.get(exporter)
        if cached is not None and now - cached[0] < REUSE_SECONDS:
            return cached[1]
        samples = exporter.collect()
        body = render(exporter.config, snapshot_of(exporter.config, samples, exporter.last_errors(),
                                                   exporter.estimates()))
        _last[exporter] = (time.monotonic(), body)
        return body


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _bar(share: float | None) -> str:
    if share is None:
        return ""
    width = max(0.0, min(share, 1.0)) * 100
    kind = " over" if share > 1 else " near" if share >= 0.9 else ""
    return f'<span class="bar{kind}" title="{share:.0%}"><span style="width:{width:.1f}%"></span></span>'


def _budget_rows(snapshot: Snapshot) -> list[str]:
    rows = []
    for reading in snapshot.readings:
        if reading.budget is None or reading.budget == "container limit":
            continue
        status = _status(reading)
        rows.append(
            f'<tr class="budget" data-budget="{_e(reading.budget)}" data-subject="{_e(reading.subject)}" '
            f'data-used-bytes="{_e(reading.used_bytes)}" data-budget-bytes="{_e(reading.budget_bytes)}">'
            f"<td>{_e(reading.budget)}</td><td>{_e(reading.subject)}</td>"
            f'<td class="num">{_e(human_bytes(reading.used_bytes))}</td>'
            f'<td class="num">{_e(human_bytes(reading.budget_bytes))}</td>{_share_cells(reading.ratio)}'
            f'<td class="status-{_e(status)}">{_e(status)}</td></tr>')
    return rows


def _share_cells(share: float | None) -> str:
    """The bar and the percentage of a row against its budget."""
    text = f"{share:.0%}" if share is not None else ""
    return f'<td>{_bar(share)}</td><td class="num">{_e(text)}</td>'


def _tree_rows(node: Node) -> list[str]:
    rows = []
    for depth, item in node.walk():
        budget = ""
        if item.budget is not None:
            counted = "" if item.counted_bytes is None or item.counted_bytes == item.bytes \
                else f"{human_bytes(item.counted_bytes)} of "
            budget = f"{counted}{human_bytes(item.budget_bytes)} {item.budget}"
        rows.append(
            f'<tr class="node" data-depth="{depth}" data-name="{_e(item.name)}" data-bytes="{_e(item.bytes)}">'
            f'<td style="padding-left:{0.6 + 1.5 * depth:.1f}em">{_e(item.name)}</td>'
            f'<td class="num">{_e(human_bytes(item.bytes))}</td><td>{_e(budget)}</td>{_share_cells(item.share)}'
            f'<td class="note">{_e(item.note or "")}</td></tr>')
    return rows


def _fit_rows(snapshot: Snapshot) -> list[str]:
    rows = []
    for fit in snapshot.fits:
        rows.append(
            f'<tr class="fit" data-server="{_e(fit.server)}" data-model="{_e(fit.model)}" '
            f'data-fits="{"1" if fit.fits else "0"}" data-size-bytes="{_e(fit.size_bytes)}" '
            f'data-outcome="{_e(fit.outcome)}" data-unload="{_e(" ".join(fit.unload_first))}">'
            f"<td>{_e(fit.server)}</td><td>{_e(fit.model)}</td>"
            f'<td class="num">{_e(human_bytes(fit.size_bytes))}{"" if fit.estimated else " (file)"}</td>'
            f'<td class="num">{_e(f"{fit.context_length:.0f}" if fit.context_length else "-")}</td>'
            f'<td class="{"fits" if fit.fits else "nofit"}">{_e(fit.verdict)}</td></tr>')
    return rows


def render(config, snapshot: Snapshot) -> bytes:
    failed = {name: error for name, error in snapshot.collector_errors.items() if error}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>aitools memory exporter</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Where the memory goes</h1>",
        f'<p class="meta">aitools memory exporter {_e(__version__)} &middot; profile <b>{_e(config.profile)}</b> '
        f'&middot; refreshes every {REFRESH_SECONDS} s &middot; <a href="metrics">Metrics</a> '
        f'&middot; <a href="healthz">Health</a></p>',
        '<h2 id="budgets">Budgets</h2>',
        "<table><tr><th>Budget</th><th>What counts</th><th>Used</th><th>Budget</th><th>Share</th><th></th><th></th></tr>",
        *_budget_rows(snapshot),
        "</table>",
        '<h2 id="breakdown">Breakdown</h2>',
        '<table><tr><th>What</th><th>Memory</th><th>Budget</th><th>Share</th><th></th><th></th></tr>',
        *_tree_rows(snapshot.tree),
        "</table>",
        '<h2 id="monitoring">This tool\'s own footprint</h2>',
        '<table><tr><th>What</th><th>Memory</th><th>Budget</th><th>Share</th><th></th><th></th></tr>',
        *_tree_rows(snapshot.monitoring),
        "</table>",
        '<h2 id="fits">Installed models: which fit now</h2>',
        f'<p class="note">A model that is installed and not loaded fits when its estimated loaded size (weights, '
        f"KV cache at the context its server would use, buffers; the file size where there is no estimate) is "
        f"within its server's budget less what that server has loaded, the available memory less "
        f"{MEMORY_RESERVE_FRACTION:.0%} of physical memory, and the GPU room where the machine has a GPU "
        f"ceiling. Otherwise: the loaded models to unload first, or why it never fits "
        f"(<code>aitools-exporter fit MODEL</code> tells more).</p>",
    ]
    if snapshot.fits:
        parts += ["<table><tr><th>Server</th><th>Model</th><th>Loaded size</th><th>Context</th><th>Now</th></tr>", *_fit_rows(snapshot),
                  "</table>"]
    else:
        parts.append('<p class="note">No installed model that is not loaded (or no memory figures).</p>')
    if failed:
        parts += ['<h2 id="failed">Collectors that failed</h2>', "<ul>"]
        parts += [f'<li><b>{_e(name)}</b>: <span class="error">{_e(error)}</span></li>'
                  for name, error in sorted(failed.items())]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def render_links_only() -> bytes:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>aitools memory exporter</title>"
            f"</head><body><h1>aitools memory exporter</h1><p>Version {_e(__version__)}.</p>"
            '<ul><li><a href="metrics">Metrics</a></li><li><a href="healthz">Health</a></li></ul>'
            "</body></html>\n").encode("utf-8")
