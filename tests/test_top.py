"""`aitools-exporter top`, driven headless by Textual's own test driver (App.run_test) at
80x24 and 200x50, and once in a real pseudo-terminal rendered by pyte.

The figures come from real parts: the exporter's own collectors on this machine (the
process table, /proc/meminfo), the stand-in Ollama server answering its documented API
(with the documented unload request), and a served exporter (a real `aitools-exporter`
process) for --url. Screenshots (SVG) are kept in tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import fcntl
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from exporter.config import parse_config
from exporter.top import (ConfirmScreen, FixScreen, HelpScreen, LocalFeed, RemoteFeed, TopApp, Fixer, bar,
                          parse_alerts, sparkline, visible_rows)
from exporter.breakdown import Node
from tests.parts.exporter_process import ExporterProcess
from tests.parts.llm_unload import OllamaWithUnload

GB = 10**9
ARTIFACTS = Path(__file__).parent / "artifacts"


def run_view(app: TopApp, size: tuple[int, int], script) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await script(pilot)
    asyncio.run(main())


async def until(pilot, predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the view did not reach the expected state in time")
        await pilot.pause(0.05)


def text(app: TopApp, selector: str) -> str:
    return str(app.query_one(selector).content)


def rows(app: TopApp) -> list[list[str]]:
    table = app.query_one("#tree")
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def names(app: TopApp) -> list[str]:
    return [row[0].strip(" ▸▾") for row in rows(app)]


def screenshot(app: TopApp, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return Path(app.save_screenshot(filename=f"{name}.svg", path=str(ARTIFACTS)))


@pytest.fixture
def ollama():
    with OllamaWithUnload() as standin:
        standin.load("llama3.1:8b", size=5 * GB, size_vram=5 * GB)
        standin.install("llama3.1:8b", 4_900_000_000)
        standin.install("qwen2.5-coder:1.5b", 986_000_000)
        yield standin


def config_text(ollama, actions: str = "", budgets: str = "{ollama: 4GB}") -> str:
    receiver = "receiver: {token_file: /dev/null}\n" if actions else ""  # required beside any action
    return (f"docker: {{enabled: false}}\nollama: {{url: {ollama.url}}}\nlmstudio: {{url: null}}\n"
            f"budgets: {budgets}\n{actions}{receiver}")


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_local_view_shows_the_tree_budgets_models_and_trends(ollama, size):
    config = parse_config(config_text(ollama))
    app = TopApp(LocalFeed(config), interval=0.3)

    async def script(pilot):
        await until(pilot, lambda: len(app.frame.trends.get("LLM services", ())) >= 3)
        header = text(app, "#header")
        assert header.startswith("Total ") and "development_total" in header
        assert "RAM " in header and "available" in header
        shown = names(app)
        assert shown[0] == "Workstation (used memory)"
        assert "LLM services" in shown and "System/OS" in shown
        llm = next(row for row in rows(app) if row[0].strip(" ▸▾") == "LLM services")
        assert len(llm[4]) >= 3 and set(llm[4]) <= set("▁▂▃▄▅▆▇█")  # its trend, one block per refresh
        models = text(app, "#models")
        assert "loaded     ollama: llama3.1:8b 5.0 GB" in models
        # The installed model at its estimated loaded size, with the fit's plan (exporter/fits.py).
        assert "installed  ollama: qwen2.5-coder:1.5b 1.7 GB loaded (estimate): fits once ollama/llama3.1:8b unloaded" in models
        # Expand LLM services, then Ollama: the loaded model under its server, with the ollama
        # budget's bar and its state in words (5 GB of 4 GB: OVER).
        table = app.query_one("#tree")
        table.move_cursor(row=names(app).index("LLM services"))
        await pilot.press("enter")
        table.move_cursor(row=names(app).index("Ollama"))
        await pilot.press("enter")
        ollama_row = next(row for row in rows(app) if row[0].strip(" ▸▾") == "Ollama")
        assert ollama_row[2] == "██████████ OVER" and ollama_row[3] == "125%"
        assert "llama3.1:8b" in names(app)
        assert screenshot(app, f"top-{size[0]}x{size[1]}").stat().st_size > 1000
        await pilot.press("q")

    run_view(app, size, script)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_keys_sort_collapse_filter_and_help(ollama, size):
    config = parse_config(config_text(ollama))
    app = TopApp(LocalFeed(config), interval=60)

    async def script(pilot):
        await until(pilot, lambda: app.frame.snapshot is not None)
        top_level = names(app)[1:]
        assert len(top_level) >= 4
        await pilot.press("s")  # by size
        assert app.sort == "size"
        sizes = [node.bytes or 0 for node in sorted(app.frame.snapshot.tree.children, key=lambda n: -(n.bytes or 0))]
        assert names(app)[1:] == [n.name for n in sorted(app.frame.snapshot.tree.children, key=lambda n: -(n.bytes or 0))]
        assert sizes == sorted(sizes, reverse=True)
        await pilot.press("s")  # by name
        assert names(app)[1:] == sorted(names(app)[1:], key=str.lower)
        await pilot.press("s")  # back to the tree's order
        assert names(app)[1:] == top_level
        # Collapse the root: one row left; expand again.
        app.query_one("#tree").move_cursor(row=0)
        await pilot.press("enter")
        assert names(app) == ["Workstation (used memory)"]
        await pilot.press("enter")
        assert names(app)[1:] == top_level
        # Filter: the rows whose name holds the text, and their ancestors.
        await pilot.press("slash")
        for key in "llama3":
            await pilot.press(key)
        await pilot.press("enter")
        assert names(app) == ["Workstation (used memory)", "LLM services", "Ollama", "llama3.1:8b"]
        assert "filter: llama3" in text(app, "#message")
        await pilot.press("escape")
        assert names(app)[1:] == top_level
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("z")
        assert not isinstance(app.screen, HelpScreen)
        screenshot(app, f"top-keys-{size[0]}x{size[1]}")
        await pilot.press("q")

    run_view(app, size, script)
    assert app.return_code == 0


def audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("dry_run, size", [(False, (80, 24)), (True, (200, 50))])
def test_fix_unloads_a_model_after_a_confirmation_that_shows_the_command(ollama, tmp_path, dry_run, size):
    # Its last request ended two minutes ago: idle (exporter/actions.py, IDLE_WINDOW_SECONDS).
    ollama.set_expiry("llama3.1:8b", datetime.now(timezone.utc) + timedelta(minutes=3))
    config = parse_config(config_text(ollama, f"actions: {{enabled: [unload_idle_model], dry_run: {str(dry_run).lower()}}}\n"))
    audit_path = tmp_path / "audit.jsonl"
    app = TopApp(LocalFeed(config), interval=60, fixer=Fixer(config, audit_path))

    async def script(pilot):
        await until(pilot, lambda: app.frame.snapshot is not None)
        await pilot.press("x")
        assert isinstance(app.screen, FixScreen)
        assert app.screen.fixes[0].title == "unload the least recently used idle model of ollama (over its budget)"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        confirm = str(app.screen.query_one("#confirm").content)
        assert "What will be done: ollama stop llama3.1:8b" in confirm
        assert ("it will be logged, not done" in confirm) == dry_run
        assert ollama.posts == []  # nothing done before the answer
        screenshot(app, f"top-confirm-{size[0]}x{size[1]}")
        await pilot.press("y")
        await until(pilot, lambda: "unload_idle_model:" in text(app, "#message"))
        await pilot.press("q")

    run_view(app, size, script)
    (entry,) = audit(audit_path)
    if dry_run:
        assert ollama.posts == [] and entry["result"] == "dry_run"
        assert "Dry run, would run: ollama stop llama3.1:8b" in str(app.message)
    else:
        assert [(p, b) for p, b, _ in ollama.posts] == [("/api/generate", {"model": "llama3.1:8b", "keep_alive": 0})]
        assert entry["result"] == "done" and entry["command"] == "ollama stop llama3.1:8b"
        assert str(app.message) == "unload_idle_model: Done: ollama stop llama3.1:8b"


def test_fix_refused_by_the_receivers_checks_is_not_offered_and_declining_does_nothing(ollama, tmp_path):
    # Within budget: nothing to fix. Over budget but answered "n": nothing done or logged.
    config = parse_config(config_text(ollama, "actions: {enabled: [unload_idle_model], dry_run: false}\n",
                                      budgets="{ollama: 8GB}"))
    app = TopApp(LocalFeed(config), interval=60, fixer=Fixer(config, tmp_path / "audit.jsonl"))

    async def script(pilot):
        await until(pilot, lambda: app.frame.snapshot is not None)
        await pilot.press("x")
        assert isinstance(app.screen, FixScreen) and app.screen.fixes == []
        await pilot.press("escape")
        await pilot.press("q")

    run_view(app, (80, 24), script)
    assert ollama.posts == [] and audit(tmp_path / "audit.jsonl") == []


def test_remote_view_reads_a_served_exporter_and_keeps_its_figures_when_it_goes_away(ollama):
    local = parse_config("docker: {enabled: false}\n")  # the viewer's own config: default budgets
    with ExporterProcess(config_text(ollama, budgets="{ollama: 4GB, development_total: 30GB}")) as exporter:
        app = TopApp(RemoteFeed(exporter.url, local), interval=0.3)

        async def script(pilot):
            await until(pilot, lambda: app.frame.snapshot is not None)
            # The served exporter's budgets, not the viewer's defaults.
            assert "of 30.0 GB development_total" in text(app, "#header")
            assert "LLM services" in names(app)
            assert "loaded     ollama: llama3.1:8b 5.0 GB" in text(app, "#models")
            await pilot.press("x")
            assert "fixes act on this machine" in text(app, "#message")
            exporter.stop()
            await until(pilot, lambda: app.frame.error is not None)
            await pilot.pause(1.2)
            header = text(app, "#header")
            assert "! refresh failed:" in header and "figures from" in header
            assert "LLM services" in names(app)  # the last good figures stay
            screenshot(app, "top-remote-gone")
            await pilot.press("q")

        run_view(app, (100, 30), script)


def test_garbage_and_stalling_exporters_show_the_reason_and_never_block_the_keys(tmp_path):
    import http.server
    import threading

    stall = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.server.mode == "stall":
                stall.wait(10)
            body = b"\x00\x01 not a page {" if self.server.mode == "garbage" else b"# HELP x y\nx 1\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.mode = "garbage"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = parse_config("timeout: 1s\n")
        app = TopApp(RemoteFeed(f"http://127.0.0.1:{server.server_address[1]}", config), interval=0.2)

        async def script(pilot):
            await until(pilot, lambda: app.frame.error is not None)
            assert "not a Prometheus page" in text(app, "#header") or "not an aitools-exporter page" in text(app, "#header")
            server.mode = "other"
            await until(pilot, lambda: "not an aitools-exporter page" in text(app, "#header"))
            server.mode = "stall"
            await pilot.pause(0.5)
            started = time.monotonic()
            await pilot.press("s")  # answered while a refresh waits on the stalled page
            assert app.sort == "size" and time.monotonic() - started < 0.5
            await until(pilot, lambda: "timed out" in text(app, "#header"), timeout=5)
            await pilot.press("q")

        run_view(app, (80, 24), script)
    finally:
        stall.set()
        server.shutdown()


def test_parse_alerts_of_alertmanager_and_prometheus_and_garbage():
    alertmanager = [{"labels": {"alertname": "AitoolsLLMOverBudget", "severity": "warning"},
                     "annotations": {"summary": "Ollama over budget"}, "status": {"state": "active"}},
                    {"labels": {"alertname": "Silenced", "severity": "critical"}, "status": {"state": "suppressed"}},
                    {"labels": {"alertname": "AitoolsTotalOverBudget", "severity": "critical"}, "annotations": {}}]
    assert [(a.name, a.severity) for a in parse_alerts(alertmanager)] == [
        ("AitoolsTotalOverBudget", "critical"), ("AitoolsLLMOverBudget", "warning")]
    prometheus = {"status": "success", "data": {"alerts": [
        {"labels": {"alertname": "AitoolsExporterDown", "severity": "critical"}, "state": "firing",
         "annotations": {"summary": "down"}},
        {"labels": {"alertname": "Pending"}, "state": "pending"}]}}
    assert [a.name for a in parse_alerts(prometheus)] == ["AitoolsExporterDown"]
    for garbage in ({"data": 3}, "text", None, 5):
        with pytest.raises(ValueError):
            parse_alerts(garbage)
    assert parse_alerts([1, "x", {"labels": "no"}])[0].name == "?"


def test_alerts_from_a_real_alertmanager_show_in_the_view(ollama, tmp_path):
    from exporter.top import AlertFeed
    from tests.parts.monitoring import Alertmanager  # a real Alertmanager process

    config_path = tmp_path / "alertmanager.yml"
    config_path.write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
    alertmanager = Alertmanager(config_path, tmp_path / "am")
    try:
        alertmanager.post([{"labels": {"alertname": "AitoolsLLMOverBudget", "severity": "warning"},
                            "annotations": {"summary": "Ollama's models use 5.0 GB of 4.0 GB"}}])
        config = parse_config(config_text(ollama))
        app = TopApp(LocalFeed(config), interval=0.5, alerts=AlertFeed((alertmanager.url,), 2.0))

        async def script(pilot):
            await until(pilot, lambda: app.frame.alerts)
            assert "[warning] AitoolsLLMOverBudget: Ollama's models use 5.0 GB of 4.0 GB" in text(app, "#alerts")
            await pilot.press("q")

        run_view(app, (120, 40), script)
    finally:
        alertmanager.stop()


def test_helpers_draw_states_in_words_and_blocks():
    assert bar(0.5) == "█████░░░░░" and bar(1.7) == "██████████" and bar(None) == ""
    assert sparkline([1, 2, 3, 4]) == "▁▃▆█" and sparkline([5, 5, 5]) == "▁▁▁" and sparkline([]) == ""
    tree = Node("root", 10, children=[Node("a", 1), Node("b", 5, children=[Node("bb", 5)])])
    assert [r.key for r in visible_rows(tree, {"root"}, "size", "")] == ["root", "root/b", "root/a"]
    assert [r.key for r in visible_rows(tree, set(), "tree", "bb")] == ["root", "root/b", "root/b/bb"]


def test_top_refuses_a_stdout_that_is_not_a_terminal():
    done = subprocess.run([sys.executable, "-m", "exporter", "top"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "top needs a terminal" in done.stderr and "aitools-exporter snapshot" in done.stderr


def test_top_in_a_real_terminal_of_80x24_with_no_color(ollama, tmp_path):
    """The command as a user runs it: in a pseudo-terminal, its output rendered by pyte."""
    import pyte

    config = tmp_path / "config.yml"
    config.write_text(config_text(ollama))
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command
        os.environ.update(NO_COLOR="1", TERM="xterm-256color", COLUMNS="80", LINES="24")
        os.execv(sys.executable, [sys.executable, "-m", "exporter", "top", "--config.file", str(config),
                                  "--alerts", "http://127.0.0.1:9"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)

    def read_for(seconds: float, *until_texts: str) -> str:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    stream.feed(os.read(fd, 65536))
                except OSError:
                    break
            shown = "\n".join(screen.display)
            if until_texts and all(wanted in shown for wanted in until_texts):
                return shown
        return "\n".join(screen.display)

    try:
        shown = read_for(30, "loaded     ollama", "q quit")  # the first refresh drawn whole
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "top-pty-80x24.txt").write_text(shown)
        assert "Workstation (used memory)" in shown and "LLM services" in shown, shown
        assert "Total " in shown and "Models:" in shown and "q quit" in shown
        assert all(len(line) <= 80 for line in screen.display)
        # NO_COLOR: Textual draws in monochrome: every colour on the screen is a grey (r = g = b).
        colours = {char.fg for line in screen.buffer.values() for char in line.values()} | {
            char.bg for line in screen.buffer.values() for char in line.values()}
        hues = {c for c in colours if len(c) == 6 and not (c[0:2] == c[2:4] == c[4:6])}
        assert hues == set() and colours - {"default"}, colours
        os.write(fd, b"q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            read_for(0.2)
        else:
            raise AssertionError("top did not quit on q")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
