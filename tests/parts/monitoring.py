"""Debian's Prometheus and Alertmanager running the bundled files, and a webhook receiver.

The documented test override (README, "Tests"): the bundled prometheus.yml and
alertmanager.yml are loaded as they are, and only these change —
- addresses: the exporter target, the Alertmanager target, the webhook URL, the SMTP
  smarthost and password file, the template path;
- intervals: scrape and evaluation interval, Alertmanager's group_wait/group_interval;
- durations of the rules: every `for:`, range, offset and predict_linear horizon scaled
  by one factor with tests/rules_override.py (1/60: minutes become seconds).
Routes, matchers, grouping, inhibitions, expressions, labels and annotations stay.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml

from tests.rules_override import shorten

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "prometheus"
ALERTMANAGER_DIR = ROOT / "alertmanager"


class MissingBinary(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingBinary(f"{name} is not installed (apt-get install {package})")
    return path


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    """condition()'s first truthy answer, or TimeoutError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class _Process:
    """A server process with its log in a temp folder, stopped for sure by stop()."""

    def __init__(self, command: list[str], workdir: Path, name: str):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def _wait_ready(self, url: str, timeout: float = 60) -> None:
        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[0]} exited: {self.log()[-3000:]}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        try:
            wait_until(ready, timeout, url, interval=0.2)
        except BaseException:
            self.stop()
            raise


# --- Prometheus ------------------------------------------------------------------

def prometheus_config(workdir: Path, exporter_address: str, alertmanager_address: str | None,
                      interval: str = "1s", factor: float = 1 / 60) -> Path:
    """The bundled prometheus.yml and rules with the override applied; returns the config path."""
    document = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    document["global"].update(scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    rule_files = []
    for relative in document["rule_files"]:
        source = PROMETHEUS_DIR / relative
        target = rules_dir / source.name
        target.write_text(shorten(source.read_text(), factor))
        rule_files.append(str(target))
    document["rule_files"] = rule_files
    jobs = [job for job in document["scrape_configs"] if job["job_name"] == "aitools"]
    assert len(jobs) == 1, "prometheus.yml has one job named aitools"
    jobs[0]["static_configs"] = [{"targets": [exporter_address]}]
    if alertmanager_address:
        document["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager_address]}]}]
    else:
        document.pop("alerting", None)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Prometheus(_Process):
    def __init__(self, config_path: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([binary("prometheus", "prometheus"), f"--config.file={config_path}",
                          f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                         workdir, "prometheus")
        self._wait_ready(f"{self.url}/-/ready")

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=15).json()
        if answer.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {answer}")
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/alerts", timeout=15).json()["data"]["alerts"]

    def firing(self) -> set[str]:
        return {alert["labels"]["alertname"] for alert in self.alerts() if alert["state"] == "firing"}


# --- Alertmanager ----------------------------------------------------------------

def enable_email_route(text: str) -> str:
    """alertmanager.yml with its optional e-mail route turned on as the file documents it:
    the five commented lines after "uncomment the five lines below" uncommented."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "uncomment the five lines below" in line) + 1
    while lines[start].lstrip().startswith("# (`continue`") or not lines[start].lstrip().startswith("# -"):
        start += 1
    for index in range(start, start + 5):
        indent = len(lines[index]) - len(lines[index].lstrip())
        assert lines[index].lstrip().startswith("# "), lines[index]
        lines[index] = " " * indent + lines[index].lstrip()[2:]
    return "\n".join(lines) + "\n"


def alertmanager_config(webhook_url: str, smarthost: str, password_file: Path, token_file: Path | None = None,
                        email: bool = False) -> dict:
    """The bundled alertmanager.yml with the override applied: the webhook URL and its token
    file, plain SMTP on loopback, the password file, the template path, group_wait 1s,
    group_interval 2s. email=True turns the optional e-mail route on, as the file says."""
    text = (ALERTMANAGER_DIR / "alertmanager.yml").read_text()
    document = yaml.safe_load(enable_email_route(text) if email else text)
    if token_file is None:
        token_file = password_file.parent / "receiver.token"
        if not token_file.exists():
            token_file.write_text("test-receiver-token")
    for receiver in document["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    document["global"].update(smtp_smarthost=smarthost, smtp_require_tls=False,
                              smtp_auth_password_file=str(password_file))
    document["templates"] = [str(ALERTMANAGER_DIR / "templates" / "*.tmpl")]

    def shorten_waits(route: dict) -> None:
        for key, value in (("group_wait", "1s"), ("group_interval", "2s")):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten_waits(child)

    shorten_waits(document["route"])
    document["route"]["group_wait"], document["route"]["group_interval"] = "1s", "2s"
    return document


class Alertmanager(_Process):
    def __init__(self, config_path: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([binary("prometheus-alertmanager", "prometheus-alertmanager"), f"--config.file={config_path}",
                          f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                          "--cluster.listen-address=", "--log.level=debug"],
                         workdir, "alertmanager")
        self._wait_ready(f"{self.url}/-/ready")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def post(self, alerts: list[dict]) -> None:
        response = httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10)
        assert response.status_code == 200, response.text

    def alerts(self, **filters: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v2/alerts", params=filters, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


class WebhookReceiver:
    """Collects the JSON bodies Alertmanager posts."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        return [alert for body in list(self.received) for alert in body["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MetricsStandin:
    """Serves one fixed page of metrics in the text format: a scrape target for a real
    Prometheus (`address` for its static_configs)."""

    def __init__(self, text: str):
        body = text.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def temp_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
