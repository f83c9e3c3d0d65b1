"""`aitools-exporter receive`: an Alertmanager webhook receiver (payload version 4).

POST / (any path) takes Alertmanager's JSON; GET /metrics serves the receiver's own
counters, /healthz "ok". Each notification (one alert group) becomes one desktop
notification (exporter/notify.py) and, where the config enables it, the alert's fix
(exporter/actions.py).

It runs on the exporter's own HTTP server (exporter/server.py), with its limits: heads
capped and required within the server's header timeout, read by one thread without
blocking; at most MAX_CONNECTIONS connections waiting (the oldest goes first) and
MAX_REQUESTS requests served at once (more are answered 503); TLS from --web.config.file.
Here: a request body over MAX_BODY_BYTES is refused (413) from its Content-Length without
being read, a body must arrive within REQUEST_SECONDS, the bearer token is compared in
constant time, and the work after a request is queued (at most QUEUE_SIZE notifications
waiting; more are answered 503, so Alertmanager retries them) and done by one worker
thread, so a burst of alerts never runs fixes in parallel.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter

from exporter import __version__
from exporter.actions import RESULTS, Actions, Decision
from exporter.app import Exporter
from exporter.config import ACTIONS, Config
from exporter.notify import Notification, Notifier
from exporter.server import ExporterServer, Handler, start_server
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

DEFAULT_RECEIVER_ADDRESS = "127.0.0.1:8731"
MAX_BODY_BYTES = 1 * 2**20
MAX_CONNECTIONS = 16   # connections waiting at once (the oldest goes first)
MAX_REQUESTS = 4       # requests served at once (and the server's few more for /metrics and /healthz)
REQUEST_SECONDS = 10.0  # a body must arrive within this
QUEUE_SIZE = 32
MAX_ALERTS = 1000
MAX_TOKEN_BYTES = 4096
NOTIFICATION_RESULTS = ("ok", "error", "logged")


class PayloadError(ValueError):
    """The body is no Alertmanager webhook payload (version 4)."""


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PayloadError(f"{what} must be an object of strings")
    return value


def parse_payload(body: bytes) -> dict:
    """The checked payload: version "4", status, groupKey, and alerts with status, labels, annotations."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError("the payload must be a JSON object")
    if document.get("version") != "4":
        raise PayloadError(f"payload version {document.get('version')!r}: this receiver reads version \"4\"")
    if document.get("status") not in ("firing", "resolved"):
        raise PayloadError("status must be \"firing\" or \"resolved\"")
    alerts = document.get("alerts")
    if not isinstance(alerts, list) or len(alerts) > MAX_ALERTS:
        raise PayloadError(f"alerts must be a list of at most {MAX_ALERTS}")
    checked = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict) or alert.get("status") not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{index}] needs a status of \"firing\" or \"resolved\"")
        checked.append({"status": alert["status"], "labels": _string_map(alert.get("labels"), f"alerts[{index}].labels"),
                        "annotations": _string_map(alert.get("annotations"), f"alerts[{index}].annotations")})
    group_key = document.get("groupKey", "")
    if not isinstance(group_key, str):
        raise PayloadError("groupKey must be a string")
    return {"status": document["status"], "groupKey": group_key, "alerts": checked,
            "groupLabels": _string_map(document.get("groupLabels"), "groupLabels"),
            "commonLabels": _string_map(document.get("commonLabels"), "commonLabels"),
            "commonAnnotations": _string_map(document.get("commonAnnotations"), "commonAnnotations")}


def compose_notification(payload: dict, decisions: list[Decision]) -> Notification:
    """What the user reads: which alert, its summary, its figure, and the command (done or to run)."""
    alerts = payload["alerts"]
    firing = [a for a in alerts if a["status"] == "firing"]
    shown = firing or alerts
    first = shown[0] if shown else {"labels": {}, "annotations": {}}
    alertname = (payload["groupLabels"].get("alertname") or payload["commonLabels"].get("alertname")
                 or first["labels"].get("alertname") or "alert")
    resolved = payload["status"] == "resolved"
    title = f"{'Resolved' if resolved else 'Firing'}: {alertname}" + (f" ({len(shown)})" if len(shown) > 1 else "")
    summary = payload["commonAnnotations"].get("summary") or first["annotations"].get("summary", "")
    if len(shown) > 1 and not payload["commonAnnotations"].get("summary"):
        summary += f" (and {len(shown) - 1} more)"
    lines = []
    description = first["annotations"].get("description", "")
    if description:
        lines.append(description)
    if not resolved:
        if decisions:
            lines += [decision.sentence() for decision in decisions]
        elif first["annotations"].get("action"):
            lines.append(f"Fix: {first['annotations']['action']}")
    severity = payload["commonLabels"].get("severity") or first["labels"].get("severity", "")
    return Notification(title=title, subtitle=summary, body="\n".join(lines),
                        urgent=severity == "critical" and not resolved)


class Receiver:
    """Counters, the notifier, the actions and the worker thread; the HTTP side is ReceiverHandler on the exporter's server."""

    def __init__(self, config: Config, audit_path: Path | None, notifier: Notifier | None = None):
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        self.notifications = Counter("aitools_receiver_notifications", "Desktop notifications shown (ok), "
                                     "failed (error) or written to the log where there is no desktop (logged).",
                                     ["result"], registry=self.registry)
        self.actions_total = Counter("aitools_receiver_actions", "Fixes decided: done, dry_run, refused "
                                     "(the current state does not confirm the alert), error.",
                                     ["action", "result"], registry=self.registry)
        self.requests = Counter("aitools_receiver_requests", "Webhook requests by HTTP status answered.",
                                ["code"], registry=self.registry)
        for result in NOTIFICATION_RESULTS:
            self.notifications.labels(result)
        for action in ACTIONS:
            for result in RESULTS:
                self.actions_total.labels(action, result)
        self.token = read_token(config.receiver.token_file)
        self.notifier = notifier or Notifier()
        # The exporter's own collectors re-read the state before a fix; not built when no fix is enabled.
        exporter = Exporter(config) if config.actions.enabled else None
        self.actions = Actions(exporter, config, audit_path,
                               counters=lambda a, r: self.actions_total.labels(a, r).inc())
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.pending = 0
        self._pending_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="receiver-worker", daemon=True)
        self._worker.start()

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode("utf-8", "replace"), self.token)

    def submit(self, payload: dict) -> bool:
        with self._pending_lock:
            try:
                self.queue.put_nowait(payload)
            except queue.Full:
                return False
            self.pending += 1
        return True

    def idle(self) -> bool:
        with self._pending_lock:
            return self.pending == 0

    def _work(self) -> None:
        while True:
            payload = self.queue.get()
            try:
                self.process(payload)
            except Exception:  # one bad notification must not stop the worker
                log.exception("handling a notification failed")
            finally:
                with self._pending_lock:
                    self.pending -= 1

    def process(self, payload: dict) -> None:
        decisions = []
        if payload["status"] == "firing" and self.config.actions.enabled:
            decisions = self.actions.handle(payload["groupKey"], payload["alerts"])
        result = self.notifier.show(compose_notification(payload, decisions))
        self.notifications.labels(result).inc()


def read_token(path: str | None) -> bytes | None:
    """The bearer token from receiver.token_file (surrounding whitespace is not part of it)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as token_file:
            token = token_file.read(MAX_TOKEN_BYTES + 1).strip()
    except OSError as exc:
        raise ValueError(f"cannot read receiver.token_file {path}: {exc.strerror or exc}") from None
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"receiver.token_file {path} holds no token (or one over {MAX_TOKEN_BYTES} bytes)")
    return token


class ReceiverHandler(Handler):
    """The receiver's pages on the exporter's HTTP server (exporter/server.py): POST (any path)
    an Alertmanager webhook with the bearer token; GET /metrics, /healthz."""

    server_version = f"aitools-receiver/{__version__}"

    @property
    def receiver(self) -> Receiver:
        return self.server.app

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self.send_metrics(self.receiver.registry)
        elif path == "/healthz":
            self.send_page(200, b"ok\n")
        else:
            self.send_page(404, b"not found: POST Alertmanager webhooks to /, metrics at /metrics\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if not self.receiver.authorized(self.headers.get("Authorization")):
            self.close_connection = True  # the body is never read
            self._answer(401, "unauthorized: send the token of receiver.token_file as a bearer token\n",
                         {"WWW-Authenticate": 'Bearer realm="aitools-receiver"'})
            return
        length = self.headers.get("Content-Length", "")
        if self.headers.get("Transfer-Encoding") or not length.isdigit():
            self.close_connection = True
            self._answer(411, "a Content-Length is required\n")
            return
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the body is never read
            self._answer(413, f"payload over {MAX_BODY_BYTES // 2**20} MiB refused\n")
            return
        try:
            body = self.read_body(int(length), REQUEST_SECONDS)
        except OSError:  # TimeoutError, ConnectionError: not in time, or the client left
            self.close_connection = True
            log.warning("a webhook body from %s did not arrive in %gs", self.client_address[0], REQUEST_SECONDS)
            try:
                self._answer(408, "the body did not arrive in time\n")
            except OSError:
                pass
            return
        try:
            payload = parse_payload(body)
        except PayloadError as exc:
            log.warning("refused a webhook from %s: %s", self.client_address[0], exc)
            self._answer(400, f"bad payload: {exc}\n")
            return
        if not self.receiver.submit(payload):
            log.warning("too many notifications waiting; asked Alertmanager to retry")
            self._answer(503, "busy: retry later\n")
            return
        self._answer(200, "ok\n")

    def _answer(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self.receiver.requests.labels(str(status)).inc()
        self.send_page(status, text.encode(), headers=headers)


def start_receiver(address: str, receiver: Receiver, web_config: WebConfig | None = None) -> ExporterServer:
    """The receiver on the exporter's hardened HTTP server: TLS from the web config (its
    basic_auth_users are for serve: the receiver checks its bearer token), at most
    MAX_CONNECTIONS connections waiting and MAX_REQUESTS requests served at once."""
    if web_config is not None and web_config.users:
        raise ValueError("basic_auth_users of --web.config.file are for serve: the receiver checks the bearer "
                         "token of receiver.token_file")
    return start_server(address, receiver, web_config, MAX_REQUESTS, ReceiverHandler, MAX_CONNECTIONS,
                        name="receiver-http")
