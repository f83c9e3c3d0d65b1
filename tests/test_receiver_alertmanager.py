"""Debian's real Alertmanager, with the bundled alertmanager.yml (addresses overridden the
documented way, tests/parts/monitoring.py), posting to the real receiver started by the
CLI (`aitools-exporter receive`), notify-send stood in on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml

from tests.conftest import missing_realpart
from tests.parts.monitoring import Alertmanager, MissingBinary, alertmanager_config, free_port, wait_until
from tests.parts.recorders import Recorders

TOKEN = "token-from-receiver-token-file"


class ReceiverProcess:
    def __init__(self, tmp_path, recorders: Recorders, token: str = TOKEN,
                 config_text: str = "docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp_path / "receiver.token").write_text(token + "\n")
        config = tmp_path / "exporter.yml"
        config.write_text(config_text + f"receiver: {{token_file: {tmp_path / 'receiver.token'}}}\n")
        env = {"PATH": f"{recorders.folder}:{os.environ['PATH']}", "HOME": str(tmp_path), "AITOOLS_PLATFORM": "linux",
               "DISPLAY": ":0", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}
        self.log_path = tmp_path / "receiver.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "receive", "--config.file", str(config),
             "--web.listen-address", f"127.0.0.1:{self.port}", "--audit.file", str(tmp_path / "audit.jsonl")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"))

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"the receiver exited: {self.log_path.read_text()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, 30, "the receiver", interval=0.1)

    def metric(self, line_start: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self):
        self.process.terminate()
        self.process.wait(15)


@pytest.fixture
def setup(tmp_path):
    recorders = Recorders(tmp_path / "bin", ("notify-send",))
    started = []

    def start(alertmanager_token: str = TOKEN, **receiver_options):
        receiver = ReceiverProcess(tmp_path, recorders, **receiver_options)
        started.append(receiver)
        (tmp_path / "am-token").write_text(alertmanager_token)
        (tmp_path / "smtp_password").write_text("unused")
        config_path = tmp_path / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(alertmanager_config(receiver.url + "/", "127.0.0.1:9",
                                                                  tmp_path / "smtp_password",
                                                                  token_file=tmp_path / "am-token"), sort_keys=False))
        try:
            manager = Alertmanager(config_path, tmp_path / "am")
        except MissingBinary as exc:
            missing_realpart(str(exc))
        started.append(manager)
        return receiver, manager

    yield start, recorders
    for part in reversed(started):
        part.stop()


def duplicate(ends_at: datetime | None = None) -> dict:
    alert = {
        "labels": {"alertname": "AitoolsDuplicateService", "instance": "mac:8730", "severity": "warning",
                   "component": "docker", "family": "postgres"},
        "annotations": {"summary": "2 postgres containers run at once",
                        "description": "2 containers of the image family postgres run on mac:8730: supabase_db "
                                       "1.2GB, stray-postgres 300MB.",
                        "action": "Keep the one your app uses and stop the other: `docker stop stray-postgres`"},
        "generatorURL": "http://prometheus:9090/graph",
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    return alert


def test_alertmanager_notifies_the_receiver_firing_then_resolved(setup):
    start, recorders = setup
    # A token file written with `echo` ends in a newline: Alertmanager and the receiver both trim it.
    receiver, manager = start(alertmanager_token=TOKEN + "\n")
    manager.post([duplicate()])
    wait_until(lambda: recorders.calls("notify-send"), 60, f"a notification\n{manager.log()[-3000:]}")
    (firing,) = recorders.calls("notify-send")
    assert firing == ["--app-name=aitools", "--urgency=normal", "--",
                      "Firing: AitoolsDuplicateService: 2 postgres containers run at once",
                      "2 containers of the image family postgres run on mac:8730: supabase_db 1.2GB, stray-postgres "
                      "300MB.\nFix: Keep the one your app uses and stop the other: `docker stop stray-postgres`"]

    manager.post([duplicate(ends_at=datetime.now(timezone.utc) - timedelta(seconds=1))])
    wait_until(lambda: len(recorders.calls("notify-send")) >= 2, 60, f"the resolved notification\n{manager.log()[-3000:]}")
    resolved = recorders.calls("notify-send")[1]
    assert resolved[3] == "Resolved: AitoolsDuplicateService: 2 postgres containers run at once"
    assert receiver.metric('aitools_receiver_notifications_total{result="ok"}') == 2
    assert receiver.metric('aitools_receiver_requests_total{code="200"}') == 2


def test_alertmanager_with_the_wrong_token_is_refused(setup):
    start, recorders = setup
    receiver, manager = start(alertmanager_token="not-the-token")
    manager.post([duplicate()])
    wait_until(lambda: receiver.metric('aitools_receiver_requests_total{code="401"}') >= 1, 60,
               f"Alertmanager's refused attempt\n{manager.log()[-3000:]}")
    time.sleep(1)
    assert recorders.calls("notify-send") == []
    assert "401" in manager.log()


def test_alertmanager_to_receiver_to_docker_stop_of_the_stray_copy(setup, docker_engine, tmp_path):
    """The whole chain: Alertmanager notifies, the receiver confirms in a real engine and stops
    the copy outside any compose project; the compose one runs on."""
    start, recorders = setup
    docker_engine.stop_all()
    try:
        docker_engine.client.containers.run("supabase/postgres:15.1.0.147", ["sleep", "1000000"], name="supabase_db_e2e",
                                            detach=True, network_mode="none",
                                            labels={"com.docker.compose.project": "supabase"})
        docker_engine.client.containers.run("postgres:15", ["sleep", "1000000"], name="stray-postgres", detach=True,
                                            network_mode="none")
        receiver, manager = start(config_text=(
            f"docker: {{host: '{docker_engine.host}'}}\nollama: {{url: null}}\nlmstudio: {{url: null}}\n"
            "actions: {enabled: [stop_duplicate_container], dry_run: false}\n"))
        manager.post([duplicate()])
        wait_until(lambda: recorders.calls("notify-send"), 60, f"a notification\n{manager.log()[-3000:]}")
        (call,) = recorders.calls("notify-send")
        assert call[4].endswith("Done: docker stop stray-postgres")
        assert docker_engine.client.containers.get("stray-postgres").status == "exited"
        assert docker_engine.client.containers.get("supabase_db_e2e").status == "running"
        assert receiver.metric('aitools_receiver_actions_total{action="stop_duplicate_container",result="done"}') == 1
        entry = json.loads((tmp_path / "audit.jsonl").read_text())
        assert (entry["alert"], entry["target"], entry["result"]) == ("AitoolsDuplicateService", "stray-postgres", "done")
    finally:
        docker_engine.stop_all()


def test_compose_mounts_the_token_where_alertmanager_yml_reads_it_and_reaches_the_host():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    service = yaml.safe_load((root / "compose.monitoring.yml").read_text())["services"]["alertmanager"]
    config = yaml.safe_load((root / "alertmanager" / "alertmanager.yml").read_text())
    (hook,) = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    credentials = hook["http_config"]["authorization"]["credentials_file"]
    mounts = [v for v in service["volumes"] if v.split(":")[-2:-1] == [credentials] or f":{credentials}:" in v]
    assert mounts == [f"${{AITOOLS_RECEIVER_TOKEN_FILE:-~/.config/aitools/receiver.token}}:{credentials}:ro"]
    assert "host.docker.internal:host-gateway" in service["extra_hosts"]
    assert hook["url"] == "http://host.docker.internal:8731/"
    # The route sends everything there: the root receiver and every child route.
    assert config["route"]["receiver"] == "webhook"
