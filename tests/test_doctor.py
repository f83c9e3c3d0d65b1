"""`aitools-exporter doctor` against the real chain, each link broken in turn (issue 22).

Real parts: the exporter and the receiver as processes of their own, Debian's Prometheus
(2.42) loading the bundle's rule files and scraping the exporter, Debian's Alertmanager
(0.25) loading the bundle's alertmanager.yml pointed at the receiver (the suite's override,
tests/parts/monitoring.py). The desktop and the services are stand-ins on PATH (no desktop
and no user systemd here): notify-send, gsettings, systemctl (units written for real by
`service install` in a HOME of the test's own).

Prometheus reloads on SIGHUP and Alertmanager on POST /-/reload, so each case breaks one
link in place, waits until doctor sees it, and mends it again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.doctor import BUNDLE_RULE_FILES
from tests.conftest import missing_realpart
from tests.parts.exporter_process import ExporterProcess
from tests.parts.monitoring import (PROMETHEUS_DIR, Alertmanager, MissingBinary, Prometheus, alertmanager_config,
                                    free_port, prometheus_config, temp_workdir, wait_until)
from tests.parts.recorders import Recorders

TOKEN = "doctor-test-receiver-token"
QUIET = "docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"


def test_the_bundle_rule_files_are_the_ones_doctor_expects():
    document = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert tuple(Path(path).name for path in document["rule_files"]) == BUNDLE_RULE_FILES


class Chain:
    """Everything doctor checks, running; break and mend one link at a time."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.home = folder / "home"
        self.home.mkdir()
        self.recorders = Recorders(folder / "bin", ("notify-send", "gsettings", "systemctl"))
        self.recorders.answer("gsettings", "true\n")
        self.recorders.answer("systemctl", "active\n")
        self.token_file = folder / "receiver.token"
        self.token_file.write_text(TOKEN + "\n")
        self.config_text = QUIET + f"receiver: {{token_file: {self.token_file}}}\n"
        self.config_file = folder / "exporter.yml"
        self.config_file.write_text(self.config_text)
        self.env = {"HOME": str(self.home), "PATH": f"{self.recorders.folder}:{os.environ['PATH']}",
                    "AITOOLS_PLATFORM": "linux", "DISPLAY": ":0",
                    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}
        self.parts = []
        self.exporter = self._exporter()
        self.receiver_port = free_port()
        self.receiver_address = f"127.0.0.1:{self.receiver_port}"
        self.receiver = subprocess.Popen(
            [sys.executable, "-m", "exporter", "receive", "--config.file", str(self.config_file),
             "--web.listen-address", self.receiver_address, "--audit.file", str(folder / "audit.jsonl")],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._answers(f"http://{self.receiver_address}/healthz"), 30, "the receiver", 0.1)
        # The services, as `service install` writes them (systemctl stood in).
        installed = subprocess.run([sys.executable, "-m", "exporter", "service", "install"], env=self.env,
                                   capture_output=True, text=True, timeout=60)
        assert installed.returncode == 0, installed.stderr
        try:
            self.am_token = folder / "am-token"
            self.am_token.write_text(TOKEN)
            (folder / "smtp_password").write_text("unused")
            self.am_config = folder / "alertmanager.yml"
            self.write_alertmanager(f"http://127.0.0.1:{self.receiver_port}/", self.am_token)
            self.alertmanager = Alertmanager(self.am_config, folder / "am")
            self.parts.append(self.alertmanager)
            self.prometheus_config = prometheus_config(folder / "prom", self.exporter.address,
                                                       self.alertmanager.address)
            self.prometheus = Prometheus(self.prometheus_config, folder / "prom")
            self.parts.append(self.prometheus)
        except MissingBinary as exc:
            self.stop()
            missing_realpart(str(exc))

    def _exporter(self, port: int | None = None) -> ExporterProcess:
        return ExporterProcess(self.config_text, port=port).wait_ready()

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def write_alertmanager(self, url: str, token_file: Path) -> None:
        document = alertmanager_config(url, "127.0.0.1:9", self.folder / "smtp_password", token_file=token_file)
        self.am_config.write_text(yaml.safe_dump(document, sort_keys=False))

    def reload_alertmanager(self) -> None:
        assert httpx.post(f"{self.alertmanager.url}/-/reload", timeout=10).status_code == 200

    def reload_prometheus(self) -> None:
        self.prometheus.process.send_signal(signal.SIGHUP)

    def doctor(self) -> tuple[int, dict[str, dict]]:
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "doctor", "--json", "--config.file", str(self.config_file),
             "--web.listen-address", self.exporter.address, "--prometheus.url", self.prometheus.url,
             "--alertmanager.url", self.alertmanager.url, "--receiver.address", self.receiver_address],
            env=self.env, capture_output=True, text=True, timeout=120)
        document = json.loads(done.stdout)
        assert document["ok"] is (done.returncode == 0), done.stdout
        return done.returncode, {check["name"]: check for check in document["checks"]}

    def doctor_until(self, condition, what: str, timeout: float = 60) -> dict[str, dict]:
        last = {}

        def seen():
            nonlocal last
            last = self.doctor()[1]
            return condition(last)
        try:
            wait_until(seen, timeout, what, interval=1)
        except TimeoutError:
            raise AssertionError(f"{what}: {json.dumps(last, indent=1)}") from None
        return last

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()
        self.exporter.stop()
        self.receiver.terminate()
        self.receiver.wait(15)


@pytest.fixture(scope="module")
def chain():
    folder = temp_workdir("aitools-doctor-")
    made = Chain(folder)
    yield made
    made.stop()
    shutil.rmtree(folder, ignore_errors=True)


def all_pass(checks: dict) -> bool:
    return all(check["passed"] for check in checks.values())


def test_all_links_pass_in_order(chain):
    checks = chain.doctor_until(all_pass, "every check to pass")
    assert list(checks) == ["config", "token receiver.token_file", "exporter", "source node", "prometheus target",
                            "prometheus rules", "alertmanager receiver", "receiver token", "notifications",
                            "service serve", "service receive"]
    assert checks["prometheus target"]["detail"] == f"http://{chain.exporter.address}/metrics is up"
    files = [yaml.safe_load((PROMETHEUS_DIR / "rules" / name).read_text()) for name in BUNDLE_RULE_FILES]
    groups = sum(len(f["groups"]) for f in files)
    rules = sum(len(g["rules"]) for f in files for g in f["groups"])
    assert checks["prometheus rules"]["detail"] == f"{groups} groups, {rules} rules loaded without errors"
    assert checks["alertmanager receiver"]["detail"] == f"sends to http://127.0.0.1:{chain.receiver_port}/"
    assert checks["receiver token"]["detail"] == \
        f"the receiver takes the token of Alertmanager's credentials_file ({chain.am_token})"
    code, _ = chain.doctor()
    assert code == 0
    # The plain output: one line per check, and the count.
    done = subprocess.run([sys.executable, "-m", "exporter", "doctor", "--config.file", str(chain.config_file),
                           "--web.listen-address", chain.exporter.address, "--prometheus.url", chain.prometheus.url,
                           "--alertmanager.url", chain.alertmanager.url, "--receiver.address",
                           chain.receiver_address], env=chain.env, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert lines[0] == f"pass  config: {chain.config_file} loads (profile development)"
    assert lines[-1] == "11 passed, 0 failed" and done.returncode == 0


def test_exporter_stopped(chain):
    port = chain.exporter.port
    chain.exporter.stop()
    try:
        checks = chain.doctor_until(lambda c: not c["prometheus target"]["passed"], "Prometheus to see the target down")
        assert checks["exporter"]["passed"] is False
        assert checks["exporter"]["detail"] == \
            f"does not answer on http://127.0.0.1:{port}/metrics (connection refused)"
        assert checks["exporter"]["fix"] == "aitools-exporter service install"
        assert checks["prometheus target"]["detail"].startswith(f"http://127.0.0.1:{port}/metrics is down: ")
        assert "connection refused" in checks["prometheus target"]["detail"]
    finally:
        chain.exporter = chain._exporter(port)
    chain.doctor_until(all_pass, "every check to pass again")


def test_target_down_where_prometheus_cannot_reach_the_address(chain):
    """Prometheus in compose on Linux scrapes host.docker.internal:8730, which does not reach
    an exporter listening on 127.0.0.1 (no such name here: the same failure, a DNS one)."""
    original = chain.prometheus_config.read_text()
    document = yaml.safe_load(original)
    job = next(job for job in document["scrape_configs"] if job["job_name"] == "aitools")
    job["static_configs"] = [{"targets": [f"host.docker.internal:{chain.exporter.port}"]}]
    chain.prometheus_config.write_text(yaml.safe_dump(document, sort_keys=False))
    chain.reload_prometheus()
    try:
        checks = chain.doctor_until(
            lambda c: "host.docker.internal" in c["prometheus target"]["detail"], "the target at its new address")
        target = checks["prometheus target"]
        assert target["passed"] is False and checks["exporter"]["passed"] is True
        assert target["detail"].startswith(f"http://host.docker.internal:{chain.exporter.port}/metrics is ")
        assert target["fix"].startswith(f"curl -s http://host.docker.internal:{chain.exporter.port}/metrics")
    finally:
        chain.prometheus_config.write_text(original)
        chain.reload_prometheus()
    chain.doctor_until(all_pass, "every check to pass again")


def test_rules_file_broken(chain):
    rules = chain.folder / "prom" / "rules" / "aitools-alerts.rules.yml"
    original = rules.read_text()
    rules.write_text(original.replace("expr:", "expr: (", 1))  # a PromQL syntax error
    chain.reload_prometheus()
    try:
        checks = chain.doctor_until(lambda c: not c["prometheus rules"]["passed"], "the failed reload")
        assert checks["prometheus rules"]["detail"] == (
            "Prometheus's last reload failed (a rule or config file it cannot load): it still runs the rules it "
            "had before")
        assert checks["prometheus rules"]["fix"] == "promtool check rules prometheus/rules/*.yml"
    finally:
        rules.write_text(original)
        chain.reload_prometheus()
    chain.doctor_until(all_pass, "every check to pass again")


def test_rules_file_not_loaded(chain):
    original = chain.prometheus_config.read_text()
    document = yaml.safe_load(original)
    document["rule_files"] = [path for path in document["rule_files"] if not path.endswith("aitools-llm.rules.yml")]
    chain.prometheus_config.write_text(yaml.safe_dump(document, sort_keys=False))
    chain.reload_prometheus()
    try:
        checks = chain.doctor_until(lambda c: not c["prometheus rules"]["passed"], "the rules without one file")
        assert checks["prometheus rules"]["detail"] == "rule files not loaded: aitools-llm.rules.yml"
    finally:
        chain.prometheus_config.write_text(original)
        chain.reload_prometheus()
    chain.doctor_until(all_pass, "every check to pass again")


def test_alertmanager_pointing_elsewhere(chain):
    chain.write_alertmanager("http://127.0.0.1:9/", chain.am_token)
    chain.reload_alertmanager()
    try:
        checks = chain.doctor_until(lambda c: not c["alertmanager receiver"]["passed"], "the new webhook")
        assert checks["alertmanager receiver"]["detail"] == \
            f"Alertmanager sends to http://127.0.0.1:9/, not to the receiver on {chain.receiver_address}"
        assert checks["alertmanager receiver"]["fix"].startswith(
            "docker compose -f compose.monitoring.yml restart alertmanager  # after setting webhook_configs url to "
            f"http://host.docker.internal:{chain.receiver_port}/")
        assert checks["receiver token"]["passed"] is False
    finally:
        chain.write_alertmanager(f"http://127.0.0.1:{chain.receiver_port}/", chain.am_token)
        chain.reload_alertmanager()
    chain.doctor_until(all_pass, "every check to pass again")


def test_wrong_token(chain):
    other = chain.folder / "other-token"
    other.write_text("not-the-receivers-token")
    chain.write_alertmanager(f"http://127.0.0.1:{chain.receiver_port}/", other)
    chain.reload_alertmanager()
    try:
        checks = chain.doctor_until(lambda c: not c["receiver token"]["passed"], "the other token")
        assert checks["alertmanager receiver"]["passed"] is True
        assert checks["receiver token"]["detail"] == (
            f"the receiver refuses the token of Alertmanager's credentials_file ({other}): it is not the one in "
            f"{chain.token_file}")
        assert checks["receiver token"]["fix"] == \
            f"AITOOLS_RECEIVER_TOKEN_FILE={chain.token_file} docker compose -f compose.monitoring.yml up -d alertmanager"
        assert "not-the-receivers-token" not in json.dumps(checks)
    finally:
        chain.write_alertmanager(f"http://127.0.0.1:{chain.receiver_port}/", chain.am_token)
        chain.reload_alertmanager()
    chain.doctor_until(all_pass, "every check to pass again")


def test_notifications_off(chain):
    chain.recorders.answer("gsettings", "false\n")
    try:
        code, checks = chain.doctor()
        assert code == 1
        assert checks["notifications"]["detail"].startswith("GNOME's Do Not Disturb is on")
        assert checks["notifications"]["fix"] == "gsettings set org.gnome.desktop.notifications show-banners true"
        assert [name for name, check in checks.items() if not check["passed"]] == ["notifications"]
    finally:
        chain.recorders.answer("gsettings", "true\n")


def test_service_missing(chain):
    unit = chain.home / ".config" / "systemd" / "user" / "aitools-receiver.service"
    text = unit.read_text()
    unit.unlink()
    try:
        code, checks = chain.doctor()
        assert code == 1
        assert checks["service receive"] == {"name": "service receive", "passed": False, "detail": "not installed",
                                             "fix": "aitools-exporter service install"}
        assert checks["service serve"]["passed"] is True
        assert checks["service serve"]["detail"].endswith(", active")
    finally:
        unit.write_text(text)


def test_stopped_service_and_broken_config(chain, tmp_path):
    chain.recorders.answer("systemctl", "inactive\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("profile: nonsense\n")
    try:
        done = subprocess.run([sys.executable, "-m", "exporter", "doctor", "--json", "--config.file", str(bad),
                               "--prometheus.url", "http://127.0.0.1:9", "--alertmanager.url", "http://127.0.0.1:9"],
                              env=chain.env, capture_output=True, text=True, timeout=120)
        checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
        assert done.returncode == 1
        assert checks["config"]["passed"] is False and checks["config"]["detail"] == (
            f"{bad}:1: profile: must be one of development, production, not 'nonsense'")
        assert checks["config"]["fix"] == f"aitools-exporter check-config --config.file {bad}"
        assert checks["prometheus target"]["detail"] == \
            "Prometheus does not answer at http://127.0.0.1:9 (connection refused)"
        assert checks["service serve"]["passed"] is False and checks["service serve"]["detail"].endswith(", inactive")
    finally:
        chain.recorders.answer("systemctl", "active\n")


def test_sources_found_not_running_or_failing_with_the_token_file(tmp_path):
    """Each source: found (LM Studio with the token of lmstudio.token_file), not running
    (Ollama: nothing listens), or failing with its fix (the token file holds a refused token)."""
    from exporter.doctor import Doctor
    from tests.parts.llm_standins import LMStudioStandin

    token_file = tmp_path / "lmstudio.token"
    token_file.write_text("sk-lm-right\n")
    with LMStudioStandin() as lmstudio:
        lmstudio.required_token = "sk-lm-right"
        lmstudio.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
        config = tmp_path / "exporter.yml"
        config.write_text(f"docker: {{enabled: false}}\nollama: {{url: 'http://127.0.0.1:{free_port()}'}}\n"
                          f"lmstudio: {{url: '{lmstudio.url}', token_file: '{token_file}'}}\ntimeout: 2s\n")
        doctor = Doctor(str(config), "127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9", "127.0.0.1:9")
        doctor.config_loads()
        tokens = {check.name: check for check in doctor.token_files()}
        found = {check.name: check for check in doctor.sources()}
        token_file.write_text("sk-lm-rotated-elsewhere\n")
        refused = {check.name: check for check in doctor.sources()}
    assert tokens["token lmstudio.token_file"].passed and tokens["token lmstudio.token_file"].detail == \
        f"{token_file} holds a token"
    assert list(found) == ["source ollama", "source lmstudio", "source node"]
    assert found["source lmstudio"].passed and found["source lmstudio"].detail == "found"
    assert found["source ollama"].passed and found["source ollama"].detail.startswith("not running (ollama at ")
    assert refused["source lmstudio"].passed is False
    assert f"LM Studio refused the token in lmstudio.token_file {token_file}" in refused["source lmstudio"].detail
    assert refused["source lmstudio"].fix.startswith("lms server status")
    assert "sk-lm-rotated-elsewhere" not in refused["source lmstudio"].detail
