"""alertmanager/alertmanager.yml: routes, inhibitions, receivers and the notification template.

`amtool check-config` checks the file (and parses the notification template);
`amtool config routes test` checks where each kind of alert goes.
amtool cannot test inhibitions, so a real Alertmanager (Debian's
prometheus-alertmanager, on 127.0.0.1, a temporary --storage.path, a free port,
clustering off) gets alerts posted to /api/v2/alerts, and the test reads back which ones
it marks inhibited. The same run checks the receivers for real: a local webhook
receiver and a local SMTP server (which also checks that the password comes from the
file smtp_auth_password_file names) get the notifications, and the e-mail shows every
alert's summary, description and action.
"""

from __future__ import annotations

import base64
import email
import email.policy
import shutil
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing_realpart
from tests.parts.monitoring import Alertmanager, MissingBinary, WebhookReceiver, alertmanager_config, enable_email_route

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
TEMPLATES = ROOT / "alertmanager" / "templates"
# `aitools-exporter receive` on the host, as compose reaches it.
RECEIVER_WEBHOOK = "http://host.docker.internal:8731/"


def binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_realpart(f"{name} is not installed (Debian package {package}; tests/install-deps.sh)")
    return path


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("amtool", "prometheus-alertmanager"), *args], capture_output=True, text=True,
                          timeout=60)


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


# ------------------------------------------------------------------------ amtool

def test_amtool_check_config():
    out = amtool("check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    assert " - 4 inhibit rules" in out.stdout
    assert " - 2 receivers" in out.stdout
    assert " - 1 templates" in out.stdout


# (labels of an alert, the receivers it reaches, the last route of its path). As shipped,
# every alert goes to the webhook (the receiver); e-mail is optional (see below).
ROUTES = [
    ({"alertname": "AitoolsTotalOverBudget", "severity": "critical", "component": "system", "instance": "mac:8730"},
     "webhook", '{severity=~"critical|warning"}  receiver: webhook'),
    ({"alertname": "AitoolsNodeHeapNearLimit", "severity": "critical", "component": "node", "instance": "mac:8730"},
     "webhook", '{severity=~"critical|warning"}  receiver: webhook'),
    ({"alertname": "AitoolsDockerOverBudget", "severity": "warning", "component": "docker", "instance": "mac:8730"},
     "webhook", '{severity=~"critical|warning"}  receiver: webhook'),
    ({"alertname": "AitoolsCollectorFailing", "severity": "warning", "component": "exporter", "instance": "mac:8730"},
     "webhook", '{component="exporter"}  receiver: webhook'),
    ({"alertname": "AitoolsExporterDown", "severity": "warning", "component": "exporter", "instance": "mac:8730"},
     "webhook", '{component="exporter"}  receiver: webhook'),
    ({"alertname": "AitoolsSwiftBuildMemoryHigh", "severity": "warning", "component": "xcode", "instance": "mac:8730"},
     "webhook", '{component="xcode"}  receiver: webhook'),
    ({"alertname": "AitoolsLLMOverBudget", "severity": "warning", "component": "llm", "instance": "mac:8730"},
     "webhook", '{component="llm"}  receiver: webhook'),
    ({"alertname": "AitoolsEfficiencyScoreLow", "severity": "info", "component": "system", "instance": "mac:8730"},
     "webhook", '{severity="info"}  receiver: webhook'),
    # Anything else (no severity) still reaches someone.
    ({"alertname": "Watchdog"}, "webhook", "default-route  receiver: webhook"),
]


@pytest.mark.parametrize("labels, receivers, route", ROUTES, ids=[r[0]["alertname"] + "-" + r[0].get("severity", "none")
                                                                  for r in ROUTES])
def test_amtool_config_routes_test(labels, receivers, route):
    pairs = [f"{k}={v}" for k, v in labels.items()]
    out = amtool("config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receivers}", *pairs)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receivers
    tree = amtool("config", "routes", "test", f"--config.file={CONFIG}", "--tree", *pairs)
    last = [line for line in tree.stdout.splitlines() if "──" in line][-1]
    assert last.split("── ", 1)[1].strip() == route, tree.stdout


def test_routes_group_by_instance_and_alertname():
    route = config()["route"]
    assert route["group_by"] == ["instance", "alertname"]
    assert route["receiver"] == "webhook"
    assert all(child["receiver"] == "webhook" for child in route["routes"])  # e-mail is off as shipped
    critical = yaml.safe_load(enable_email_route(CONFIG.read_text()))["route"]["routes"][0]
    assert critical["matchers"] == ['severity="critical"'] and critical["receiver"] == "email"
    assert critical["continue"] is True


@pytest.mark.parametrize("labels, receivers", [
    ({"alertname": "AitoolsTotalOverBudget", "severity": "critical", "component": "system", "instance": "m"},
     "email,webhook"),
    ({"alertname": "AitoolsDockerOverBudget", "severity": "warning", "component": "docker", "instance": "m"},
     "webhook"),
])
def test_the_optional_email_route_as_documented(tmp_path, labels, receivers):
    """Uncommenting the five documented lines sends critical alerts by e-mail too."""
    enabled = tmp_path / "alertmanager.yml"
    enabled.write_text(enable_email_route(CONFIG.read_text()))
    assert amtool("check-config", str(enabled)).returncode == 0
    out = amtool("config", "routes", "test", f"--config.file={enabled}", f"--verify.receivers={receivers}",
                 *[f"{k}={v}" for k, v in labels.items()])
    assert out.returncode == 0 and out.stdout.strip() == receivers, out.stdout + out.stderr


def test_webhook_url_in_one_place_and_no_secret_in_the_config():
    text = CONFIG.read_text()
    lines = [line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "\n".join(lines).count(RECEIVER_WEBHOOK) == 1
    hooks = [w for r in config()["receivers"] for w in r.get("webhook_configs", [])]
    assert [w["url"] for w in hooks] == [RECEIVER_WEBHOOK]
    # The receiver's bearer token comes from a file (Alertmanager 0.22+), never the config.
    assert hooks[0]["http_config"] == {"authorization": {"credentials_file": "/etc/alertmanager/receiver.token"}}
    assert hooks[0]["send_resolved"] is True
    emails = [e for r in config()["receivers"] for e in r.get("email_configs", [])]
    assert emails and all(e["to"] for e in emails)
    glob = config()["global"]
    assert glob["smtp_auth_password_file"].startswith("/")
    assert "smtp_auth_password:" not in text and "auth_password:" not in text


# ----------------------------------------------------- a real Alertmanager

class SMTPSink:
    """A minimal SMTP server: EHLO (offers AUTH PLAIN), AUTH, MAIL, RCPT, DATA, QUIT."""

    def __init__(self):
        messages = self.messages = []
        logins = self.logins = []

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str):
                self.wfile.write(line.encode() + b"\r\n")
                self.wfile.flush()

            def handle(self):
                self.reply("220 127.0.0.1 ESMTP test sink")
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    command = line.decode().strip()
                    verb = command.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.reply("250-127.0.0.1")
                        self.reply("250-AUTH PLAIN")
                        self.reply("250 8BITMIME")
                    elif verb == "HELO":
                        self.reply("250 127.0.0.1")
                    elif verb == "AUTH":
                        parts = command.split(" ")
                        payload = parts[2] if len(parts) > 2 else None
                        if payload is None:
                            self.reply("334 ")
                            payload = self.rfile.readline().decode().strip()
                        _, user, password = base64.b64decode(payload).decode().split("\0")
                        logins.append((user, password))
                        self.reply("235 2.7.0 Authentication successful")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        data = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                        messages.append(email.message_from_bytes(b"".join(data), policy=email.policy.default))
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 Bye")
                        return
                    else:  # MAIL, RCPT, RSET, NOOP
                        self.reply("250 OK")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def alert(alertname: str, instance: str, severity: str, component: str, **labels: str) -> dict:
    return {
        "labels": {"alertname": alertname, "instance": instance, "severity": severity, "component": component,
                   **labels},
        "annotations": {"summary": f"{alertname} summary on {instance}",
                        "description": f"{alertname} description: {instance} uses 5.3GB",
                        "action": f"{alertname} action: `docker stop supabase_db_{instance}`"},
        "generatorURL": "http://prometheus.example/graph",
    }


# One root cause each: (the alert, whether Alertmanager must mark it inhibited).
SCENARIO = [
    # The exporter is down: the other alerts of that machine are silenced...
    (alert("AitoolsExporterDown", "down-mac", "warning", "exporter"), False),
    (alert("AitoolsDockerOverBudget", "down-mac", "warning", "docker", budget="docker"), True),
    (alert("AitoolsCollectorFailing", "down-mac", "warning", "exporter", collector="docker"), True),
    # ...not those of another machine.
    (alert("AitoolsDockerOverBudget", "up-mac", "warning", "docker", budget="docker"), False),
    # Only this bundle's alerts (issue 10, case 10): another project's alert of the same
    # machine stays, and the instance-less "no exporter answers" inhibits no alert
    # without an instance (a Watchdog, a KubeAPIDown).
    (alert("NodeFilesystemAlmostOutOfSpace", "down-mac", "warning", "storage"), False),
    ({**alert("AitoolsExporterDown", "", "warning", "exporter"),
      "labels": {"alertname": "AitoolsExporterDown", "severity": "warning", "component": "exporter"}}, False),
    ({**alert("Watchdog", "", "none", "meta"), "labels": {"alertname": "Watchdog", "severity": "none"}}, False),
    ({**alert("KubeAPIDown", "", "warning", "kubernetes"),
      "labels": {"alertname": "KubeAPIDown", "severity": "warning"}}, False),
    # The total over budget silences the prediction for the same budget, not another.
    (alert("AitoolsTotalOverBudget", "budget-mac", "critical", "system", budget="development_total"), False),
    (alert("AitoolsBudgetExhaustionPredicted", "budget-mac", "warning", "system", budget="development_total"), True),
    (alert("AitoolsBudgetExhaustionPredicted", "budget-mac", "warning", "docker", budget="docker"), False),
    # A Node.js target over its budget silences its own prediction, not another target's.
    (alert("AitoolsNodeHeapOverBudget", "budget-mac", "warning", "node", budget="node_heap", target="api"), False),
    (alert("AitoolsBudgetExhaustionPredicted", "budget-mac", "warning", "node", budget="node_heap", target="api"),
     True),
    (alert("AitoolsBudgetExhaustionPredicted", "budget-mac", "warning", "node", budget="node_heap", target="web"),
     False),
    # Critical memory shortage silences the warning of the same machine.
    (alert("AitoolsSystemMemoryLow", "mem-mac", "critical", "system"), False),
    (alert("AitoolsSystemMemoryLow", "mem-mac", "warning", "system"), True),
    # A heap near the V8 limit silences "over budget" of that target only.
    (alert("AitoolsNodeHeapNearLimit", "heap-mac", "critical", "node", target="api"), False),
    (alert("AitoolsNodeHeapOverBudget", "heap-mac", "warning", "node", budget="node_heap", target="api"), True),
    (alert("AitoolsNodeHeapOverBudget", "heap-mac", "warning", "node", budget="node_heap", target="web"), False),
]


def key(labels: dict) -> tuple:
    return tuple(sorted(labels.items()))


@pytest.fixture
def running_alertmanager(tmp_path):
    webhook, smtp = WebhookReceiver(), SMTPSink()
    password_file = tmp_path / "smtp_password"
    # No newline at the end: Alertmanager 0.25 sends the file's content as it is.
    password_file.write_text("s3cret-from-a-file")
    config_path = tmp_path / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(alertmanager_config(webhook.url, smtp.address, password_file, email=True),
                                          sort_keys=False))
    check = amtool("check-config", str(config_path))
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        manager = Alertmanager(config_path, tmp_path)
    except MissingBinary as exc:
        missing_realpart(str(exc))
    yield manager, webhook, smtp
    manager.stop()
    webhook.close()
    smtp.close()


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def test_inhibitions_and_receivers_in_a_real_alertmanager(running_alertmanager):
    manager, webhook, smtp = running_alertmanager
    manager.post([a for a, _ in SCENARIO])
    expected_inhibited = {key(a["labels"]) for a, inhibited in SCENARIO if inhibited}
    expected_active = {key(a["labels"]) for a, inhibited in SCENARIO if not inhibited}

    def inhibited_now():
        got = manager.alerts(active="false", silenced="false", inhibited="true", unprocessed="false")
        return got if {key(a["labels"]) for a in got} == expected_inhibited else None

    inhibited = wait_for(inhibited_now, what=f"the inhibited alerts\n{manager.log()}")
    for a in inhibited:
        assert a["status"]["state"] == "suppressed"
        assert a["status"]["inhibitedBy"], a["labels"]
    active = manager.alerts(inhibited="false", silenced="false")
    assert {key(a["labels"]) for a in active} == expected_active
    assert all(a["status"]["state"] == "active" and not a["status"]["inhibitedBy"] for a in active)

    # The webhook gets every active alert, with its annotations, and no inhibited one.
    wait_for(lambda: {key(a["labels"]) for a in webhook.alerts()} >= expected_active,
             what=f"the webhook notifications\n{manager.log()}")
    time.sleep(3)  # another group_interval: an inhibited alert would have come by now
    delivered = webhook.alerts()
    assert {key(a["labels"]) for a in delivered} == expected_active
    for a in delivered:
        assert set(a["annotations"]) == {"summary", "description", "action"}
        assert a["status"] == "firing"
    groups = {(body["groupLabels"].get("instance"), body["groupLabels"].get("alertname")) for body in webhook.received}
    assert ("budget-mac", "AitoolsBudgetExhaustionPredicted") in groups  # grouped by instance and alertname

    # The critical ones also go out by e-mail: one message per group, every alert of it
    # with its summary, description and action; the password came from the file.
    critical = [a for a, inhibited in SCENARIO if not inhibited and a["labels"]["severity"] == "critical"]
    wait_for(lambda: len(smtp.messages) >= len(critical), what=f"the e-mails\n{manager.log()}")
    time.sleep(1)
    assert len(smtp.messages) == len(critical)
    assert smtp.logins and all(login == ("aitools-alerts@example.com", "s3cret-from-a-file") for login in smtp.logins)
    by_subject = {str(message["Subject"]): message for message in smtp.messages}
    for a in critical:
        labels = a["labels"]
        subject = f"[FIRING:1] critical {labels['alertname']} on {labels['instance']}"
        assert subject in by_subject, list(by_subject)
        message = by_subject[subject]
        assert message["To"] == "you@example.com"
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        for annotation in ("summary", "description"):
            assert a["annotations"][annotation] in text
            assert a["annotations"][annotation] in html
        assert f"Fix: {a['annotations']['action']}" in text
        assert "docker stop supabase_db_" in html
    # The warning silenced by the critical SystemMemoryLow is in no e-mail either.
    mem = by_subject["[FIRING:1] critical AitoolsSystemMemoryLow on mem-mac"]
    assert mem.get_body(preferencelist=("plain",)).get_content().count("AitoolsSystemMemoryLow summary") == 1
