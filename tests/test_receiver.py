"""`aitools-exporter receive`: the webhook side, the notifications the user reads, its limits.

The notifiers are stand-ins on PATH that record their argv (tests/parts/recorders.py); the
assertions are on the text the user would read. The receiver runs in this process (a real
HTTP server on a free port) except where the CLI and a real Alertmanager are tested
(tests/test_receiver_alertmanager.py).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme

from exporter.config import parse_config
from exporter.notify import Notification, Notifier, applescript_string
from exporter.receiver import MAX_BODY_BYTES, Receiver, compose_notification, parse_payload, start_receiver
from tests.parts.recorders import Recorders

TOKEN = "s3cret-token-for-tests"
QUIET = "docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"


def payload(alerts: list[dict], status: str | None = None, group: str = '{}:{alertname="AitoolsDuplicateService"}',
            **extra) -> dict:
    """An Alertmanager webhook payload, version 4 (notify/webhook/webhook.go Message)."""
    status = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    common = {k: v for k, v in alerts[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts)}
    document = {
        "receiver": "webhook", "status": status, "alerts": alerts,
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"], "instance": alerts[0]["labels"].get("instance", "")},
        "commonLabels": common, "commonAnnotations": {} if len(alerts) > 1 else dict(alerts[0]["annotations"]),
        "externalURL": "http://127.0.0.1:9093", "version": "4", "groupKey": group, "truncatedAlerts": 0,
    }
    document.update(extra)
    return document


def alert(alertname: str, status: str = "firing", summary: str = "", description: str = "", action: str = "",
          **labels: str) -> dict:
    return {
        "status": status,
        "labels": {"alertname": alertname, "instance": "mac:8730", "severity": "warning", **labels},
        "annotations": {"summary": summary or f"{alertname} summary", "description": description or "uses 5.3GB",
                        "action": action or "`docker stop x`"},
        "startsAt": "2026-11-28T01:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-28T01:10:00.000Z",
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": "1a30ba71cca2921f",
    }


DUPLICATE = alert("AitoolsDuplicateService", family="postgres", component="docker",
                  summary="2 postgres containers run at once",
                  description="2 containers of the image family postgres run on mac:8730: supabase_db (postgres, "
                              "project supabase) 1.2GB, universal-ai-tools-postgres (postgres) 300MB.",
                  action="Keep the one your app uses and stop the other: `docker stop universal-ai-tools-postgres`")


class Running:
    def __init__(self, receiver: Receiver, server):
        self.receiver, self.server = receiver, server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(self, body, token: str | None = TOKEN, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + "/", content=data, headers={**headers, "Content-Type": "application/json"},
                          timeout=15, **kwargs)

    def settle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.receiver.idle():
            assert time.monotonic() < deadline, "the receiver did not finish its work"
            time.sleep(0.02)

    def metric(self, name: str, **labels: str) -> float:
        value = self.receiver.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def recorders(tmp_path) -> Recorders:
    return Recorders(tmp_path / "bin", ("osascript", "terminal-notifier", "notify-send"))


def start(tmp_path: Path, notifier: Notifier, config_text: str = QUIET, token: str | None = TOKEN) -> Running:
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        config_text += f"receiver: {{token_file: {tmp_path / 'token'}}}\n"
    receiver = Receiver(parse_config(config_text), tmp_path / "audit.jsonl", notifier=notifier)
    return Running(receiver, start_receiver("127.0.0.1:0", receiver))


@pytest.fixture
def linux_desktop(tmp_path, recorders):
    """A receiver on a Linux desktop session, notify-send stood in."""
    only_notify_send = tmp_path / "linux-bin"
    only_notify_send.mkdir()
    (only_notify_send / "notify-send").symlink_to(recorders.folder / "notify-send")
    env = {"PATH": str(only_notify_send), "DISPLAY": ":0", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}
    running = start(tmp_path, Notifier("linux", env))
    yield running
    running.server.shutdown()
    running.server.server_close()


# ------------------------------------------------------------------ notifications

def test_linux_notification_for_firing_and_resolved_says_summary_figure_and_command(linux_desktop, recorders):
    assert linux_desktop.post(payload([DUPLICATE])).status_code == 200
    linux_desktop.settle()
    resolved = dict(DUPLICATE, status="resolved")
    assert linux_desktop.post(payload([resolved])).status_code == 200
    linux_desktop.settle()

    firing_call, resolved_call = recorders.calls("notify-send")
    assert firing_call == [
        "--app-name=aitools", "--urgency=normal", "--",
        "Firing: AitoolsDuplicateService: 2 postgres containers run at once",
        "2 containers of the image family postgres run on mac:8730: supabase_db (postgres, project supabase) 1.2GB, "
        "universal-ai-tools-postgres (postgres) 300MB.\n"
        "Fix: Keep the one your app uses and stop the other: `docker stop universal-ai-tools-postgres`",
    ]
    assert resolved_call[:4] == ["--app-name=aitools", "--urgency=normal", "--",
                                 "Resolved: AitoolsDuplicateService: 2 postgres containers run at once"]
    assert "Fix:" not in resolved_call[4]  # nothing to do any more
    assert linux_desktop.metric("aitools_receiver_notifications_total", result="ok") == 2
    assert linux_desktop.metric("aitools_receiver_requests_total", code="200") == 2


def test_critical_alerts_are_urgent_and_markup_is_escaped(linux_desktop, recorders):
    critical = alert("AitoolsTotalOverBudget", severity="critical", summary="Everything tracked uses more <b>",
                     description="Node.js & containers use 21GB > 20GB", action="`docker stop big`")
    linux_desktop.post(payload([critical]))
    linux_desktop.settle()
    (call,) = recorders.calls("notify-send")
    assert call[1] == "--urgency=critical"
    assert call[3] == "Firing: AitoolsTotalOverBudget: Everything tracked uses more <b>"
    assert call[4] == "Node.js &amp; containers use 21GB &gt; 20GB\nFix: `docker stop big`"


def test_a_group_of_several_alerts_is_one_notification(linux_desktop, recorders):
    redis = alert("AitoolsDuplicateService", family="redis", component="docker", summary="2 redis containers run at once")
    linux_desktop.post(payload([DUPLICATE, redis]))
    linux_desktop.settle()
    (call,) = recorders.calls("notify-send")
    assert call[3] == "Firing: AitoolsDuplicateService (2): 2 postgres containers run at once (and 1 more)"


def test_macos_osascript_gets_the_text_as_applescript_string_literals(tmp_path, recorders):
    only_osascript = tmp_path / "mac-bin"
    only_osascript.mkdir()
    (only_osascript / "osascript").symlink_to(recorders.folder / "osascript")
    running = start(tmp_path, Notifier("darwin", {"PATH": str(only_osascript)}))
    try:
        hostile = alert("AitoolsLLMOverBudget", server="ollama",
                        summary='Models "loaded" \\ in Ollama" & do shell script "touch /tmp/pwned" & "',
                        description="Ollama holds 9.1GB of loaded models, over the ollama budget of 8GB",
                        action="Unload the biggest: `ollama stop llama3.1:8b`")
        running.post(payload([hostile]))
        running.settle()
    finally:
        running.server.shutdown()
    (call,) = recorders.calls("osascript")
    assert call[0] == "-e" and len(call) == 2
    script = call[1]
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', script)
    assert len(literals) == 3  # the quotes of the payload never end a literal
    unescape = lambda text: re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)
    body, title, subtitle = (unescape(literal) for literal in literals)
    assert body == ("Ollama holds 9.1GB of loaded models, over the ollama budget of 8GB\n"
                    "Fix: Unload the biggest: `ollama stop llama3.1:8b`")
    assert title == "Firing: AitoolsLLMOverBudget"
    assert subtitle == hostile["annotations"]["summary"]
    assert script == (f"display notification {applescript_string(body)} with title {applescript_string(title)} "
                      f"subtitle {applescript_string(subtitle)}")
    assert not Path("/tmp/pwned").exists()


def test_applescript_string_escaping():
    assert applescript_string('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


def test_macos_uses_terminal_notifier_when_installed(tmp_path, recorders):
    notifier = Notifier("darwin", {"PATH": str(recorders.folder)})  # osascript and terminal-notifier both there
    assert notifier.show(Notification("Firing: AitoolsSwiftBuildMemoryHigh", "-swift-frontend uses 7GB",
                                      "3 processes\nFix: defaults write ...")) == "ok"
    (call,) = recorders.calls("terminal-notifier")
    assert call == ["-title", "Firing: AitoolsSwiftBuildMemoryHigh", "-subtitle", "\u2011swift-frontend uses 7GB",
                    "-message", "3 processes · Fix: defaults write ...", "-group", "aitools-Firing: AitoolsSwiftBuildMemoryHigh"]
    assert recorders.calls("osascript") == []


def test_no_desktop_logs_instead_and_says_so_once(tmp_path, recorders, caplog):
    running = start(tmp_path, Notifier("linux", {"PATH": str(recorders.folder)}))  # no DISPLAY, no D-Bus
    try:
        with caplog.at_level(logging.INFO, logger="exporter.notify"):
            running.post(payload([DUPLICATE]))
            running.post(payload([dict(DUPLICATE, status="resolved")]))
            running.settle()
    finally:
        running.server.shutdown()
    assert recorders.calls("notify-send") == []
    said = [r.getMessage() for r in caplog.records if "not the desktop" in r.getMessage()]
    assert said == ["notifications go to this log, not the desktop: no desktop session "
                    "(no DISPLAY/WAYLAND_DISPLAY and D-Bus session bus)"]
    shown = [r.getMessage() for r in caplog.records if r.getMessage().startswith("notification: ")]
    assert shown[0].startswith("notification: Firing: AitoolsDuplicateService | 2 postgres containers run at once | 2 containers")
    assert shown[1].startswith("notification: Resolved: AitoolsDuplicateService")
    assert running.metric("aitools_receiver_notifications_total", result="logged") == 2


def test_a_failing_notifier_is_counted_as_error(linux_desktop, recorders):
    recorders.fail("notify-send", 1)
    linux_desktop.post(payload([DUPLICATE]))
    linux_desktop.settle()
    assert linux_desktop.metric("aitools_receiver_notifications_total", result="error") == 1


# ------------------------------------------------------------------ refused requests

@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", TOKEN[:-1], "Bearer"])
def test_no_token_or_a_wrong_token_is_refused_and_nothing_done(linux_desktop, recorders, token):
    answer = linux_desktop.post(payload([DUPLICATE]), token=token)
    assert answer.status_code == 401
    linux_desktop.settle()
    assert recorders.calls("notify-send") == []
    assert linux_desktop.metric("aitools_receiver_requests_total", code="401") == 1
    assert linux_desktop.metric("aitools_receiver_notifications_total", result="ok") == 0


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps(dict(payload([DUPLICATE]), version="3")).encode(), "payload version '3'"),
    (json.dumps(dict(payload([DUPLICATE]), status="exploded")).encode(), "status must be"),
    (json.dumps(dict(payload([DUPLICATE]), alerts=[{"status": "firing", "labels": {"a": 1}}])).encode(), "labels must be"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_malformed_payloads_are_answered_400_and_logged(linux_desktop, recorders, caplog, body, reason):
    with caplog.at_level(logging.WARNING, logger="exporter.receiver"):
        answer = linux_desktop.post(body)
    assert answer.status_code == 400 and reason in answer.text
    assert any(reason in r.getMessage() for r in caplog.records)
    linux_desktop.settle()
    assert recorders.calls("notify-send") == []
    assert httpx.get(linux_desktop.url + "/healthz", timeout=5).text == "ok\n"  # still serving


def test_ten_megabytes_are_refused_413_without_being_read(linux_desktop, recorders):
    """The 10 MB body is declared, the first 64 KiB sent: the answer comes before the rest."""
    host, port = linux_desktop.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {10 * 10**6}\r\n\r\n".encode()
                     + b'{"alerts": [' + b" " * 65536)
        answer = b""
        while b"refused" not in answer:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413 "), answer
    assert "payload over 1 MiB refused" in answer
    assert MAX_BODY_BYTES == 2**20
    # Sent in full by a client that does not wait for an answer: refused the same way.
    try:
        status = linux_desktop.post(b"[" + b" " * (10 * 10**6) + b"]").status_code
    except httpx.TransportError:
        status = 413  # the server closed before the client finished sending: also refused
    assert status == 413
    assert recorders.calls("notify-send") == []
    assert linux_desktop.metric("aitools_receiver_requests_total", code="413") >= 1


def test_a_body_without_content_length_is_refused(linux_desktop):
    def chunks():
        yield json.dumps(payload([DUPLICATE])).encode()
    answer = httpx.post(linux_desktop.url + "/", content=chunks(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 411


def test_receiver_metrics_page_names_every_action_and_result(linux_desktop):
    page = httpx.get(linux_desktop.url + "/metrics", timeout=5).text
    for action in ("unload_idle_model", "stop_duplicate_container", "node_heap_snapshot"):
        for result in ("done", "dry_run", "refused", "error"):
            assert f'aitools_receiver_actions_total{{action="{action}",result="{result}"}} 0.0' in page
    assert 'aitools_receiver_notifications_total{result="ok"} 0.0' in page


def test_parse_payload_keeps_what_the_receiver_reads():
    parsed = parse_payload(json.dumps(payload([DUPLICATE])).encode())
    assert parsed["groupKey"] == '{}:{alertname="AitoolsDuplicateService"}'
    assert parsed["alerts"][0]["labels"]["family"] == "postgres"
    note = compose_notification(parsed, [])
    assert note.title == "Firing: AitoolsDuplicateService" and note.urgent is False


def test_token_file_is_required_when_an_action_is_enabled():
    from exporter.config import ConfigError

    with pytest.raises(ConfigError, match="receiver.token_file is required"):
        parse_config("actions: {enabled: [stop_duplicate_container]}\n")
    with pytest.raises(ConfigError, match="unknown action 'rm_everything'"):
        parse_config("receiver: {token_file: /t}\nactions: {enabled: [rm_everything]}\n")
    config = parse_config("receiver: {token_file: /t}\nactions: {enabled: [node_heap_snapshot], dry_run: false, "
                          "keep_projects: [supabase]}\n")
    assert config.actions.enabled == ("node_heap_snapshot",) and config.actions.dry_run is False
    assert config.actions.keep_projects == ("supabase",)
    assert parse_config("").actions.dry_run is True and parse_config("").actions.enabled == ()


def test_node_target_heapsnapshot_keys():
    from exporter.config import ConfigError

    config = parse_config("node: {targets: [{name: api, url: 'http://127.0.0.1:1/m', heapsnapshot_signal: SIGUSR2, "
                          "pidfile: /run/api.pid}]}\n")
    assert config.node.targets[0].heapsnapshot_signal == "SIGUSR2" and config.node.targets[0].pidfile == "/run/api.pid"
    for bad, reason in (("heapsnapshot_signal: SIGKILL, pid: 5", "must be one of SIGUSR2"),
                        ("heapsnapshot_signal: SIGUSR2", "needs the target's pid or pidfile"),
                        ("pid: 5", "pid and pidfile are for heapsnapshot_signal"),
                        ("heapsnapshot_signal: SIGUSR2, pid: 1", "a number above 1"),
                        ("heapsnapshot_signal: SIGUSR2, pid: 5, pidfile: /p", "not both")):
        with pytest.raises(ConfigError, match=re.escape(reason)):
            parse_config(f"node: {{targets: [{{name: api, url: 'http://127.0.0.1:1/m', {bad}}}]}}\n")


def test_connections_are_bounded_in_number_and_time(linux_desktop):
    """MAX_CONNECTIONS waiting at once: one more pushes the oldest out at once; a client that
    dribbles its headers is cut off after the server's header timeout (answered 408); the
    receiver serves again afterwards. Waiting connections hold no thread."""
    import threading

    import exporter.receiver as receiver_module

    server = linux_desktop.server
    server.header_timeout = 2.0
    host, port = server.server_address[:2]
    threads = threading.active_count()
    held = []
    for _ in range(receiver_module.MAX_CONNECTIONS):
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        held.append(sock)
    time.sleep(0.5)
    assert threading.active_count() == threads
    extra = socket.create_connection((host, port), timeout=10)
    extra.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert held[0].recv(100) == b""  # the oldest closed at once: no room left
    assert time.monotonic() - started < 1
    assert held[1].recv(100).startswith(b"HTTP/1.1 408 ")  # cut off, not held for ever
    assert time.monotonic() - started < 5
    for sock in held + [extra]:
        sock.close()
    time.sleep(0.3)
    assert httpx.get(linux_desktop.url + "/healthz", timeout=5).status_code == 200


def test_two_webhooks_on_one_kept_connection(linux_desktop, recorders):
    """Alertmanager keeps its connection: each POST's body is read whole, and the next
    request on the connection starts right after it."""
    with httpx.Client(timeout=15) as client:
        for status in ("firing", "resolved"):
            answer = client.post(linux_desktop.url + "/", json=payload([alert("AitoolsDuplicateService", status)]),
                                 headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200 and answer.text == "ok\n"
    linux_desktop.settle()
    assert len(recorders.calls("notify-send")) == 2
    assert linux_desktop.metric("aitools_receiver_requests_total", code="200") == 2


def test_a_body_that_does_not_arrive_in_time_is_answered_408(linux_desktop, monkeypatch):
    import exporter.receiver as receiver_module

    monkeypatch.setattr(receiver_module, "REQUEST_SECONDS", 1.0)
    host, port = linux_desktop.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
                     .encode() + b'{"version": "4"')
        started = time.monotonic()
        assert httpx.get(linux_desktop.url + "/healthz", timeout=5).text == "ok\n"  # serving meanwhile
        answer = sock.recv(4096)
        took = time.monotonic() - started
        while b"the body did not arrive in time" not in answer and (more := sock.recv(4096)):
            answer += more  # the head and the body may come in two segments
    assert answer.startswith(b"HTTP/1.1 408 ") and b"the body did not arrive in time" in answer
    assert 0.8 < took < 5  # the 1 s limit; room for a busy machine
    assert linux_desktop.metric("aitools_receiver_requests_total", code="408") == 1


def test_the_receiver_serves_tls_from_the_web_config(tmp_path, recorders):
    """--web.config.file gives the receiver TLS as it gives serve; its basic_auth_users do not
    apply (the receiver checks its bearer token) and are refused."""
    from exporter.webconfig import load_web_config

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n")
    (tmp_path / "token").write_text(TOKEN)
    receiver = Receiver(parse_config(QUIET + f"receiver: {{token_file: {tmp_path / 'token'}}}\n"),
                        tmp_path / "audit.jsonl", notifier=Notifier("linux", {"PATH": str(recorders.folder)}))
    server = start_receiver("127.0.0.1:0", receiver, load_web_config(tmp_path / "web.yml"))
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        with httpx.Client(verify=trusting, timeout=15) as client:
            answer = client.post(url + "/", json=payload([DUPLICATE]), headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200
            assert client.post(url + "/", json=payload([DUPLICATE])).status_code == 401
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)  # no plain HTTP there
    finally:
        server.shutdown()
    (tmp_path / "users.yml").write_text("basic_auth_users:\n  prometheus: '$2y$04$abcdefghijklmnopqrstuu'\n")
    with pytest.raises(ValueError, match="basic_auth_users of --web.config.file are for serve"):
        start_receiver("127.0.0.1:0", receiver, load_web_config(tmp_path / "users.yml"))
