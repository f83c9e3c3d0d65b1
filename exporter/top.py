"""`aitools-exporter top`: a live view of where the memory goes, in the terminal.

The view is a Textual app over one *feed*: the same collectors and budget logic as
`serve` and `snapshot` on this machine (LocalFeed), or the page of a running exporter
(RemoteFeed, `--url`, so it works over SSH and on a team's machines). Every refresh runs
on a worker thread: the view never waits on a source; a failed refresh keeps the last good
figures on screen with their age and says why.

    header   the profile's total against its budget, memory pressure, swap, GPU-wired memory
    tree     the workstation's tree (exporter/breakdown.py) with a bar against each budget and
             a trend of each row over the view's own samples
    models   loaded and installed models with their fit verdict (exporter/fits.py)
    alerts   the alerts firing now, from Alertmanager or Prometheus (`--alerts`, or found on
             their default addresses)

The fixes (`x`) are the receiver's (exporter/actions.py), with the same checks and the same
audit log: the view first asks for a dry run to show exactly what would be done, and runs
the fix only after the user confirms it. They act on this machine, so only in the local view.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, OptionList, Static

from exporter.actions import Actions, Decision, containers_from, duplicates_to_stop
from exporter.app import Exporter
from exporter.breakdown import Node
from exporter.collectors.base import CollectorError, Deadline
from exporter.config import Config
from exporter.collectors.httpclient import Client
from exporter.readings import Samples
from exporter.snapshot import Snapshot, human_bytes, printable, snapshot_of, take_snapshot

log = logging.getLogger(__name__)

MAX_PAGE_BYTES = 16 * 2**20        # a /metrics page of a workstation is ~50 KB
MAX_ALERTS_BYTES = 4 * 2**20
TREND_POINTS = 60                   # the samples kept per row: 2 minutes at the default 2 s
SPARK = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 10
DEFAULT_ALERT_URLS = ("http://127.0.0.1:9093", "http://127.0.0.1:9090")
PRESSURE = {1: "normal", 2: "warn", 4: "critical"}


# --------------------------------------------------------------------------- feeds

class LocalFeed:
    """This machine: the exporter's own collectors, kept across refreshes (their connections too)."""

    local = True

    def __init__(self, config: Config):
        self.config = config
        self.exporter = Exporter(config)

    def read(self) -> Snapshot:
        return take_snapshot(self.exporter)


def config_from_samples(samples: Samples, base: Config) -> Config:
    """The served exporter's budgets, profile and enabled sources, as its page publishes them."""
    budgets = dict(base.budgets)
    for labels, value in samples.all("aitools_budget_bytes"):
        if labels.get("budget") in budgets:
            budgets[labels["budget"]] = int(value)
    profiles = [labels.get("profile") for labels, value in samples.all("aitools_profile_info") if value == 1]
    servers = {labels.get("server") for labels, _ in samples.all("aitools_llm_server_up")}
    return dataclasses.replace(
        base, budgets=budgets,
        profile=profiles[0] if profiles and profiles[0] in ("development", "production") else base.profile,
        docker=dataclasses.replace(base.docker, enabled=samples.value("aitools_docker_up") is not None),
        ollama=dataclasses.replace(base.ollama, url=base.ollama.url if "ollama" in servers else None),
        lmstudio=dataclasses.replace(base.lmstudio, url=base.lmstudio.url if "lmstudio" in servers else None))


def _basic_auth(username: str | None, password: str | None) -> dict[str, str]:
    if username is None:
        return {}
    token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class RemoteFeed:
    """A running exporter's /metrics page (basic auth and TLS as its --web.config.file asks)."""

    local = False

    def __init__(self, url: str, config: Config, username: str | None = None, password: str | None = None,
                 tls=None):
        self.url = url.rstrip("/")
        self.config = config
        self.http = Client(_basic_auth(username, password), tls)

    def read(self) -> Snapshot:
        answer = self.http.get(self.url + "/metrics", Deadline(self.config.timeout), MAX_PAGE_BYTES,
                               {"Accept": "text/plain; version=0.0.4"})
        if answer.status != 200:
            raise CollectorError(f"{self.url}/metrics answered {answer.status} {answer.reason}")
        try:
            families = list(text_string_to_metric_families(answer.body.decode("utf-8")))
        except (UnicodeDecodeError, ValueError, TypeError, IndexError) as exc:
            raise CollectorError(f"{self.url}/metrics is not a Prometheus page: {exc}") from None
        samples = Samples(families)
        if samples.value("aitools_build_info") is None and not samples.all("aitools_build_info"):
            raise CollectorError(f"{self.url}/metrics is not an aitools-exporter page (no aitools_build_info)")
        errors = {labels["collector"]: (None if value == 1 else "failed (its reason is in that exporter's log)")
                  for labels, value in samples.all("aitools_collector_success") if "collector" in labels}
        return snapshot_of(config_from_samples(samples, self.config), samples, errors)


@dataclass
class Alert:
    name: str
    severity: str
    summary: str


def parse_alerts(payload: object) -> list[Alert]:
    """Firing alerts from Alertmanager's /api/v2/alerts (a list) or Prometheus's /api/v1/alerts."""
    if isinstance(payload, dict):  # Prometheus: {"status": "success", "data": {"alerts": [...]}}
        data = payload.get("data")
        items = data.get("alerts") if isinstance(data, dict) else None
        items = [item for item in items if isinstance(item, dict) and item.get("state") == "firing"] \
            if isinstance(items, list) else None
    else:
        items = payload if isinstance(payload, list) else None
    if items is None:
        raise ValueError("neither an Alertmanager nor a Prometheus alerts answer")
    found = []
    for item in items:
        if not isinstance(item, dict):
            continue
        labels = item.get("labels") if isinstance(item.get("labels"), dict) else {}
        notes = item.get("annotations") if isinstance(item.get("annotations"), dict) else {}
        status = item.get("status")
        if isinstance(status, dict) and status.get("state") not in (None, "active"):
            continue  # Alertmanager: suppressed (silenced or inhibited)
        found.append(Alert(str(labels.get("alertname", "?")), str(labels.get("severity", "")),
                           str(notes.get("summary", ""))))
    return sorted(found, key=lambda a: ({"critical": 0, "warning": 1}.get(a.severity, 2), a.name))


class AlertFeed:
    """The firing alerts, from the first of the addresses that answers."""

    def __init__(self, urls: tuple[str, ...], timeout: float):
        self.urls = tuple(url.rstrip("/") for url in urls)
        self.timeout = timeout
        self.http = Client()
        self.source: str | None = None

    def read(self) -> list[Alert]:
        problems = []
        for url in ([self.source] if self.source else self.urls):
            for path in ("/api/v2/alerts?active=true&silenced=false&inhibited=false", "/api/v1/alerts"):
                try:
                    answer = self.http.get(url + path, Deadline(self.timeout), MAX_ALERTS_BYTES,
                                           {"Accept": "application/json"})
                    if answer.status != 200:
                        continue
                    alerts = parse_alerts(json.loads(answer.body))
                except (CollectorError, ValueError) as exc:
                    problems.append(f"{url}: {exc}")
                    break
                self.source = url
                return alerts
        self.source = None
        raise CollectorError("; ".join(problems) or "no Alertmanager or Prometheus alerts API answered")


# --------------------------------------------------------------------------- the figures

@dataclass
class Frame:
    """The latest figures and the state of the refreshes."""
    snapshot: Snapshot | None = None
    good_at: float | None = None      # time.time() of the last good refresh
    error: str | None = None          # why the last refresh failed, None when it did not
    alerts: list[Alert] | None = None
    alerts_error: str | None = None
    trends: dict[str, deque] = field(default_factory=dict)

    def keep(self, snapshot: Snapshot, now: float) -> None:
        self.snapshot, self.good_at, self.error = snapshot, now, None
        if snapshot.tree is not None:
            for child in snapshot.tree.children:
                self.trends.setdefault(child.name, deque(maxlen=TREND_POINTS)).append(child.bytes or 0.0)
            self.trends.setdefault(snapshot.tree.name, deque(maxlen=TREND_POINTS)).append(snapshot.tree.bytes or 0.0)


def sparkline(values, width: int = 10) -> str:
    """The last `width` values as block characters, scaled between their minimum and maximum."""
    values = list(values)[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((value - low) / (high - low) * (len(SPARK) - 1) + 0.5))]
                   for value in values)


def bar(share: float | None, width: int = BAR_WIDTH) -> str:
    """A bar with the state in words beside it, for terminals without colour."""
    if share is None:
        return ""
    filled = min(width, max(0, round(share * width)))
    return "█" * filled + "░" * (width - filled)


def state_word(share: float | None) -> str:
    if share is None:
        return ""
    return "OVER" if share > 1 else "near" if share >= 0.9 else "ok"


def header_lines(frame: Frame, now: float) -> list[str]:
    """The top lines: the total against the profile's budget, pressure, swap, GPU, and freshness."""
    snapshot = frame.snapshot
    lines = []
    if snapshot is not None:
        samples = snapshot.samples
        total = next((r for r in snapshot.readings if r.area == "total"), None)
        if total is not None:
            share = total.ratio
            lines.append(f"Total {human_bytes(total.used_bytes)} of {human_bytes(total.budget_bytes)} "
                         f"{total.budget}  {bar(share)} {f'{share:.0%}' if share is not None else ''} "
                         f"{state_word(share)}".rstrip())
        parts = []
        memory, available = (samples.value("aitools_system_memory_total_bytes"),
                             samples.value("aitools_system_memory_available_bytes"))
        if memory:
            parts.append(f"RAM {human_bytes(memory)}, available {human_bytes(available)}")
        pressure = samples.value("aitools_system_memory_pressure_level")
        if pressure is not None:
            parts.append(f"pressure {PRESSURE.get(int(pressure), int(pressure))}")
        swap = samples.value("aitools_system_swap_used_bytes")
        if swap is not None:
            parts.append(f"swap {human_bytes(swap)}")
        gpu_limit, gpu_wired = (samples.value("aitools_gpu_memory_limit_bytes"),
                                samples.value("aitools_gpu_memory_wired_bytes"))
        if gpu_limit:
            share = (gpu_wired or 0) / gpu_limit
            parts.append(f"GPU {human_bytes(gpu_wired)} of {human_bytes(gpu_limit)} {bar(share, 6)} {state_word(share)}")
        if parts:
            lines.append("  ".join(parts))
    if frame.error is not None:
        age = f", figures from {int(now - frame.good_at)} s ago" if frame.good_at is not None else ""
        lines.append(f"! refresh failed: {printable(frame.error)}{age}")
    elif frame.good_at is None:
        lines.append("reading the sources...")
    return lines or [""]


@dataclass
class Row:
    key: str          # the path of names from the root: stable across refreshes
    depth: int
    node: Node
    expandable: bool


def visible_rows(root: Node, expanded: set[str], sort: str, query: str) -> list[Row]:
    """The tree's rows to show: children of expanded nodes, sorted; with a query, the rows
    whose name holds it and their ancestors, whatever is expanded."""
    query = query.lower()

    def order(children: list[Node]) -> list[Node]:
        if sort == "size":
            return sorted(children, key=lambda n: -(n.bytes or 0))
        if sort == "name":
            return sorted(children, key=lambda n: n.name.lower())
        return children

    def matches(node: Node) -> bool:
        return query in node.name.lower() or any(matches(child) for child in node.children)

    rows: list[Row] = []

    def visit(node: Node, key: str, depth: int) -> None:
        if query and not matches(node):
            return
        rows.append(Row(key, depth, node, bool(node.children)))
        if node.children and (key in expanded or query):
            for child in order(node.children):
                visit(child, f"{key}/{child.name}", depth + 1)

    visit(root, root.name, 0)
    return rows


# --------------------------------------------------------------------------- the fixes

@dataclass
class Fix:
    action: str
    target: str
    alert: dict        # the alert the receiver's code decides on, built from the current state
    title: str


def _alert(name: str, **labels: str) -> dict:
    return {"status": "firing", "labels": {"alertname": name, **labels}, "annotations": {}}


def available_fixes(config: Config, snapshot: Snapshot | None) -> list[Fix]:
    """The fixes the configuration enables whose condition the current figures show."""
    if snapshot is None:
        return []
    enabled, samples = config.actions.enabled, snapshot.samples
    fixes: list[Fix] = []
    if "unload_idle_model" in enabled:
        for reading in snapshot.readings:
            if reading.area == "llm" and reading.budget in ("ollama", "lmstudio") and (reading.ratio or 0) > 1:
                fixes.append(Fix("unload_idle_model", reading.budget,
                                 _alert("AitoolsLLMOverBudget", server=reading.budget, budget=reading.budget),
                                 f"unload the least recently used idle model of {reading.budget} (over its budget)"))
            if reading.area == "total" and (reading.ratio or 0) > 1:
                fixes.append(Fix("unload_idle_model", "total",
                                 _alert("AitoolsTotalOverBudget", budget=reading.budget or ""),
                                 "unload the least recently used idle model (the total is over its budget)"))
    if "stop_duplicate_container" in enabled:
        families: dict[str, list] = {}
        for container in containers_from(samples):
            if container.family:
                families.setdefault(container.family, []).append(container)
        for family, copies in sorted(families.items()):
            if duplicates_to_stop(copies, config.actions.keep_projects)[0]:
                fixes.append(Fix("stop_duplicate_container", family, _alert("AitoolsDuplicateService", family=family),
                                 f"stop the duplicate {family} container"))
    if "node_heap_snapshot" in enabled:
        for target in config.node.targets:
            if target.heapsnapshot_signal and samples.value("aitools_node_target_up", target=target.name) == 1:
                fixes.append(Fix("node_heap_snapshot", target.name,
                                 _alert("AitoolsNodeHeapLeakSuspected", target=target.name),
                                 f"take a heap snapshot of Node target {target.name}"))
    return fixes


class Fixer:
    """The receiver's fixes for the view: a dry run to show what would be done, then the fix."""

    def __init__(self, config: Config, audit_path: Path | None):
        self.config = config
        exporter = Exporter(config)  # the collectors both re-read the state with
        self.actions = Actions(exporter, config, audit_path)
        dry_run = dataclasses.replace(config, actions=dataclasses.replace(config.actions, dry_run=True))
        self.preview_actions = Actions(exporter, dry_run, None)

    def preview(self, fix: Fix) -> Decision:
        decisions = self.preview_actions.handle(f"top-preview:{time.monotonic()}", [fix.alert])
        return decisions[0] if decisions else Decision(fix.alert["labels"]["alertname"], fix.action, fix.target,
                                                       "refused", "not enabled in the configuration")

    def run(self, fix: Fix) -> Decision:
        decisions = self.actions.handle(f"top:{fix.action}:{fix.target}", [fix.alert])
        return decisions[0] if decisions else Decision(fix.alert["labels"]["alertname"], fix.action, fix.target,
                                                       "refused", "not enabled in the configuration")


# --------------------------------------------------------------------------- the view

HELP = """\
aitools-exporter top: where the memory goes, live

  up/down   move              enter  expand or collapse a row
  s         sort: tree order, size, name
  /         filter the rows by name (esc clears)
  x         fixes the configuration enables (a confirmation shows what will be done)
  r         refresh now       ?      this help        q  quit

Bars compare each row with its budget; the word beside a bar says ok, near (90 %) or OVER.
Trend: the row's memory over the last refreshes of this view.
A failed refresh keeps the last figures on screen with their age and the reason.

Press any key to close this help."""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,enter", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self, event) -> None:
        self.dismiss()


class FixScreen(ModalScreen):
    """Pick a fix; then confirm what the dry run says it would do."""

    BINDINGS = [Binding("escape", "dismiss", "cancel")]

    def __init__(self, fixes: list[Fix]):
        super().__init__()
        self.fixes = fixes

    def compose(self) -> ComposeResult:
        with Vertical(id="fixes"):
            if self.fixes:
                yield Static("Fixes (enter to see what it would do, esc to cancel):")
                yield OptionList(*[fix.title for fix in self.fixes], id="fix-list")
            else:
                yield Static("No fix applies now: the configuration enables none (actions.enabled), or nothing "
                             "it fixes is happening. Press esc.")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.fixes[event.option_index])


class ConfirmScreen(ModalScreen):
    BINDINGS = [Binding("y", "confirm", "yes"), Binding("n,escape", "dismiss", "no")]

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(self.text + "\n\nRun it? y / n", id="confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)


class FilterScreen(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss", "cancel")]

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter rows by name, enter to apply", id="filter")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class TopApp(App):
    CSS = """
    #header { height: auto; padding: 0 1; }
    #tree { height: 1fr; }
    #models, #alerts { height: auto; max-height: 8; padding: 0 1; }
    #message { height: auto; padding: 0 1; }
    HelpScreen, FixScreen, ConfirmScreen, FilterScreen { align: center middle; }
    #help, #confirm, #fixes { width: 90%; max-width: 100; height: auto; border: round $accent; padding: 0 1;
                              background: $surface; }
    #filter { width: 60; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"), Binding("question_mark", "help", "help"), Binding("s", "sort", "sort"),
        Binding("slash", "filter", "filter"), Binding("escape", "clear_filter", "clear filter", show=False),
        Binding("x", "fixes", "fixes"), Binding("r", "refresh_now", "refresh"),
    ]
    SORTS = ("tree", "size", "name")

    def __init__(self, feed, interval: float = 2.0, alerts: AlertFeed | None = None, fixer: Fixer | None = None,
                 clock=time.time):
        super().__init__()
        self.feed, self.interval, self.alert_feed, self.fixer, self.clock = feed, interval, alerts, fixer, clock
        self.frame = Frame()
        self.expanded: set[str] = set()
        self.sort, self.query = "tree", ""
        self._busy = False
        self._row_keys: list[str] = []
        self.message = ""

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield DataTable(id="tree", cursor_type="row", zebra_stripes=False)
        yield Static(id="models")
        yield Static(id="alerts")
        yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#tree", DataTable)
        table.add_columns("What", "Memory", "Budget", "Of budget", "Trend")
        self.title = "aitools-exporter top"
        self.refresh_data()
        self.set_interval(self.interval, self.refresh_data)
        self.set_interval(1.0, self.show_header)

    # -- refreshing, on a worker thread

    def refresh_data(self) -> None:
        if self._busy:
            return  # the previous refresh is still waiting on a source: never pile up
        self._busy = True
        self.run_worker(self._read, thread=True, exclusive=False, group="refresh")

    def _read(self) -> None:
        snapshot, error, alerts, alerts_error = None, None, None, None
        try:
            snapshot = self.feed.read()
        except Exception as exc:  # any failure of a source is shown, never raised into the view
            error = str(exc) or type(exc).__name__
        if self.alert_feed is not None:
            try:
                alerts = self.alert_feed.read()
            except Exception as exc:
                alerts_error = str(exc) or type(exc).__name__
        self.call_from_thread(self.apply, snapshot, error, alerts, alerts_error)

    def apply(self, snapshot: Snapshot | None, error: str | None, alerts, alerts_error) -> None:
        self._busy = False
        if snapshot is not None:
            self.frame.keep(snapshot, self.clock())
            if not self.expanded and snapshot.tree is not None:
                self.expanded.add(snapshot.tree.name)
        else:
            self.frame.error = error
        self.frame.alerts, self.frame.alerts_error = alerts, alerts_error
        self.show()

    # -- drawing

    def show_header(self) -> None:
        self.query_one("#header", Static).update("\n".join(header_lines(self.frame, self.clock())))

    def show(self) -> None:
        self.show_header()
        snapshot = self.frame.snapshot
        table = self.query_one("#tree", DataTable)
        cursor_key = self._row_keys[table.cursor_row] if self._row_keys and 0 <= table.cursor_row < len(self._row_keys) else None
        table.clear()
        self._row_keys = []
        if snapshot is not None and snapshot.tree is not None:
            for row in visible_rows(snapshot.tree, self.expanded, self.sort, self.query):
                node = row.node
                mark = ("▾ " if row.key in self.expanded or self.query else "▸ ") if row.expandable else "  "
                share = node.share
                budget = (f"{bar(share)} {state_word(share)}" if share is not None else
                          (human_bytes(node.budget_bytes) if node.budget_bytes else ""))
                trend = sparkline(self.frame.trends.get(node.name, ())) if row.depth <= 1 else ""
                table.add_row("  " * row.depth + mark + printable(node.name), human_bytes(node.bytes), budget,
                              f"{share:.0%}" if share is not None else "", trend)
                self._row_keys.append(row.key)
            if cursor_key in self._row_keys:
                table.move_cursor(row=self._row_keys.index(cursor_key))
        self.query_one("#models", Static).update("\n".join(self.model_lines()))
        self.query_one("#alerts", Static).update("\n".join(self.alert_lines()))
        self.query_one("#message", Static).update(self.message)

    def model_lines(self) -> list[str]:
        snapshot = self.frame.snapshot
        if snapshot is None:
            return []
        lines = []
        for labels, size in snapshot.samples.all("aitools_llm_model_loaded_bytes"):
            lines.append(f"  loaded     {labels.get('server', '')}: {printable(labels.get('model', ''))} "
                         f"{human_bytes(size)}")
        for fit in snapshot.fits:
            size = f"{human_bytes(fit.size_bytes)} {'loaded (estimate)' if fit.estimated else 'file (no estimate)'}"
            lines.append(f"  installed  {fit.server}: {printable(fit.model)} {size}: {printable(fit.verdict)}")
        return (["Models:"] + lines) if lines else []

    def alert_lines(self) -> list[str]:
        if self.frame.alerts_error is not None:
            return [f"Alerts: cannot read them: {printable(self.frame.alerts_error)}"]
        if self.frame.alerts is None:
            return []
        if not self.frame.alerts:
            return ["Alerts: none firing"]
        return ["Alerts firing:"] + [f"  [{a.severity or '-'}] {printable(a.name)}: {printable(a.summary)}"
                                     for a in self.frame.alerts]

    # -- keys

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self._row_keys):
            key = self._row_keys[event.cursor_row]
            self.expanded.symmetric_difference_update({key})
            self.show()

    def action_sort(self) -> None:
        self.sort = self.SORTS[(self.SORTS.index(self.sort) + 1) % len(self.SORTS)]
        self.message = f"sorted by {self.sort}"
        self.show()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        def apply(value: str | None) -> None:
            if value is not None:
                self.query = value.strip()
                self.message = f"filter: {self.query}" if self.query else ""
                self.show()
        self.push_screen(FilterScreen(), apply)

    def action_clear_filter(self) -> None:
        if self.query:
            self.query, self.message = "", ""
            self.show()

    def action_refresh_now(self) -> None:
        self.refresh_data()

    def action_fixes(self) -> None:
        if self.fixer is None:
            self.message = "fixes act on this machine: run `aitools-exporter top` there (not with --url)"
            self.show()
            return
        self.push_screen(FixScreen(available_fixes(self.fixer.config, self.frame.snapshot)), self._chosen)

    def _chosen(self, fix: Fix | None) -> None:
        if fix is None:
            return
        self.message = f"asking what {fix.action} would do..."
        self.show()
        self.run_worker(lambda: self.call_from_thread(self._confirm, fix, self.fixer.preview(fix)),
                        thread=True, group="fix")

    def _confirm(self, fix: Fix, preview: Decision) -> None:
        if preview.result != "dry_run":
            self.message = f"{fix.action}: {preview.sentence()}"
            self.show()
            return
        dry = self.fixer.config.actions.dry_run
        text = (f"{fix.title}\n\nWhat will be done: {preview.command or preview.target}\nWhy: {preview.reason}\n"
                + ("\nThe configuration says dry run (actions.dry_run): it will be logged, not done." if dry else ""))

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.message = f"running {fix.action}..."
                self.show()
                self.run_worker(lambda: self.call_from_thread(self._done, fix, self.fixer.run(fix)),
                                thread=True, group="fix")
        self.push_screen(ConfirmScreen(text), confirmed)

    def _done(self, fix: Fix, decision: Decision) -> None:
        self.message = f"{fix.action}: {decision.sentence()}"
        self.refresh_data()
        self.show()
