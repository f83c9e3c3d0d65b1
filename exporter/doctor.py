"""`aitools-exporter doctor [--json]`: the whole chain on this machine, link by link.

In order: the configuration loads and the token files it names can be read; the exporter
answers on its address; each source (Docker, Ollama, LM Studio, Node targets) is found or
reported not running; Prometheus has the exporter's target up (/api/v1/targets) and the
bundle's rule groups loaded without errors (/api/v1/rules, and its last reload succeeded:
/api/v1/status/runtimeinfo); Alertmanager's configuration sends to the receiver
(/api/v2/status config.original) and the receiver takes the token Alertmanager sends;
notifications can be shown; both services are installed and running.

Each check is a line: pass or fail, what was seen, and the one command that fixes it. Every
HTTP request goes through `request()` with a deadline of its own; a check never raises.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import yaml

from exporter.collectors.base import CollectorError, Deadline
from exporter.config import Config, ConfigError, load_config
from exporter.collectors.httpclient import Client

DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
DEFAULT_ALERTMANAGER_URL = "http://127.0.0.1:9093"
HTTP_SECONDS = 5.0
MAX_ANSWER_BYTES = 8 * 2**20
# The rule files of the bundle (prometheus/prometheus.yml rule_files; a test keeps them equal).
BUNDLE_RULE_FILES = ("aitools-recording.rules.yml", "aitools-apps.rules.yml", "aitools-alerts.rules.yml",
                     "aitools-llm.rules.yml")
# Names under which a container or the host reaches a service of this machine: Prometheus in
# compose scrapes host.docker.internal:8730 while the exporter listens on 127.0.0.1:8730.
SAME_MACHINE = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "", "host.docker.internal", "host-gateway",
                "aitools-exporter"}
SOURCES = ("docker", "ollama", "lmstudio", "node")
COMPOSE = "docker compose -f compose.monitoring.yml"


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""


@dataclass
class Answer:
    status: int  # 0: no answer
    body: bytes
    error: str = ""


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    """One request within HTTP_SECONDS through the project's HTTP client; never raises."""
    client = Client()
    try:
        answer = client.request(method, url, Deadline(HTTP_SECONDS), MAX_ANSWER_BYTES, headers, body)
        return Answer(answer.status, answer.body)
    except (CollectorError, TimeoutError) as exc:
        return Answer(0, b"", str(exc) or type(exc).__name__)
    finally:
        client.close()


def _json(answer: Answer) -> dict | None:
    try:
        document = json.loads(answer.body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _answering(url: str, what: str, names: tuple[str, str], fix: str) -> tuple[dict | None, list[Check]]:
    """(the JSON object `url` answers, []); or (None, both checks `names` failed: the first
    with the reason, the second not checked) when it does not answer one."""
    answer = request(url)
    document = _json(answer)
    if answer.status == 200 and document is not None:
        return document, []
    seen = f"HTTP {answer.status}" if answer.status else answer.error
    detail = f"{what} does not answer at {url.split('/api/', 1)[0]} ({seen})"
    return None, [Check(names[0], False, detail, fix), Check(names[1], False, "not checked: " + detail, fix)]


def _host_port(address: str) -> tuple[str, int | None]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or ""), port


def same_endpoint(a: str, b: str) -> bool:
    """Whether two host:port (or URLs) name the same listener of this machine."""
    (host_a, port_a), (host_b, port_b) = _host_port(a), _host_port(b)
    return port_a == port_b and (host_a == host_b or (host_a in SAME_MACHINE and host_b in SAME_MACHINE))


# --------------------------------------------------------------------------- the checks

class Doctor:
    def __init__(self, config_file: str | None, exporter_address: str, prometheus_url: str, alertmanager_url: str,
                 receiver_address: str):
        self.config_file = config_file
        self.exporter_address = exporter_address
        self.prometheus_url = prometheus_url.rstrip("/")
        self.alertmanager_url = alertmanager_url.rstrip("/")
        self.receiver_address = receiver_address
        self.config = Config()

    def run(self) -> list[Check]:
        checks: list[Check] = []
        steps: list[Callable[[], list[Check]]] = [
            self.config_loads, self.token_files, self.exporter_answers, self.sources, self.prometheus,
            self.alertmanager, self.notifications, self.services]
        for step in steps:
            try:
                checks += step()
            except Exception as exc:  # a check that breaks is a failed check, not a crash
                checks.append(Check(step.__name__, False, f"the check itself failed: {type(exc).__name__}: {exc}",
                                    "aitools-exporter doctor --log.level debug"))
        return checks

    def config_loads(self) -> list[Check]:
        where = self.config_file or "built-in defaults"
        try:
            self.config = load_config(self.config_file)
        except ConfigError as exc:
            return [Check("config", False, str(exc),
                          f"aitools-exporter check-config --config.file {self.config_file}")]
        return [Check("config", True, f"{where} loads (profile {self.config.profile})")]

    def token_files(self) -> list[Check]:
        from exporter.receiver import read_token

        checks = []
        for key, path in (("receiver.token_file", self.config.receiver.token_file),
                          ("lmstudio.token_file", self.config.lmstudio.token_file)):
            if path is None:
                continue
            try:
                read_token(path)
            except ValueError as exc:
                checks.append(Check(f"token {key}", False, str(exc).replace("receiver.token_file", key),
                                    f"chmod 600 {path}  # after writing the token into it"))
            else:
                checks.append(Check(f"token {key}", True, f"{path} holds a token"))
        return checks

    def exporter_answers(self) -> list[Check]:
        answer = request(f"http://{self.exporter_address}/metrics")
        if answer.status == 200 and b"aitools_collector_success" in answer.body:
            return [Check("exporter", True, f"answers on http://{self.exporter_address}/metrics")]
        seen = f"HTTP {answer.status}" if answer.status else answer.error
        return [Check("exporter", False, f"does not answer on http://{self.exporter_address}/metrics ({seen})",
                      "aitools-exporter service install")]

    def sources(self) -> list[Check]:
        from exporter.app import Exporter
        from exporter.snapshot import take_snapshot

        snapshot = take_snapshot(Exporter(self.config))
        fixes = {"docker": "docker context ls  # then set docker.host to the engine's socket",
                 "ollama": "ollama ps  # then set ollama.url to where it answers",
                 "lmstudio": "lms server status  # a refused token: put LM Studio's API token in lmstudio.token_file",
                 "node": "aitools-exporter snapshot  # names the Node target that failed and why"}
        checks = []
        for name in SOURCES:
            if name not in snapshot.collector_errors:
                continue  # disabled in the configuration
            error = snapshot.collector_errors[name]
            running = snapshot.samples.value("aitools_collector_source_running", collector=name)
            if name == "node" and not self.config.node.targets:
                checks.append(Check("source node", True, "no targets in node.targets"))
            elif error is None:
                checks.append(Check(f"source {name}", True, "found"))
            elif running == 0:
                checks.append(Check(f"source {name}", True, f"not running ({error})"))
            else:
                checks.append(Check(f"source {name}", False, error, fixes[name]))
        return checks

    def prometheus(self) -> list[Check]:
        restart = f"{COMPOSE} up -d prometheus"
        document, failed = _answering(f"{self.prometheus_url}/api/v1/targets?state=active", "Prometheus",
                                      ("prometheus target", "prometheus rules"), restart)
        return failed or [self._target(document), self._rules()]

    def _target(self, document: dict) -> Check:
        active = [t for t in document.get("data", {}).get("activeTargets", []) if isinstance(t, dict)]
        ours = [t for t in active if t.get("labels", {}).get("job") == "aitools"
                and same_endpoint(t.get("labels", {}).get("instance") or t.get("scrapeUrl", ""), self.exporter_address)]
        if not ours:
            instances = [t.get("labels", {}).get("instance", "?") for t in active
                         if t.get("labels", {}).get("job") == "aitools"]
            return Check("prometheus target", False,
                         f"Prometheus at {self.prometheus_url} has no aitools target for {self.exporter_address} "
                         f"(its aitools targets: {', '.join(instances) or 'none'})",
                         f"{COMPOSE} restart prometheus  # after adding {self.exporter_address} to the aitools job "
                         "of prometheus/prometheus.yml")
        up = [t for t in ours if t.get("health") == "up"]
        if up:
            return Check("prometheus target", True, f"{up[0].get('scrapeUrl')} is up")
        target = ours[0]
        return Check("prometheus target", False,
                     f"{target.get('scrapeUrl')} is {target.get('health')}: {target.get('lastError') or 'not scraped yet'}",
                     "aitools-exporter service install" if "refused" in (target.get("lastError") or "")
                     else f"curl -s {target.get('scrapeUrl')} | head  # from where Prometheus runs")

    def _rules(self) -> Check:
        fix = "promtool check rules prometheus/rules/*.yml"
        runtime = _json(request(f"{self.prometheus_url}/api/v1/status/runtimeinfo")) or {}
        if runtime.get("data", {}).get("reloadConfigSuccess") is False:
            return Check("prometheus rules", False, "Prometheus's last reload failed (a rule or config file it cannot "
                         "load): it still runs the rules it had before", fix)
        document = _json(request(f"{self.prometheus_url}/api/v1/rules")) or {}
        groups = [g for g in document.get("data", {}).get("groups", []) if isinstance(g, dict)]
        loaded = {Path(str(g.get("file", ""))).name for g in groups}
        missing = [name for name in BUNDLE_RULE_FILES if name not in loaded]
        if missing:
            return Check("prometheus rules", False, f"rule files not loaded: {', '.join(missing)}", fix)
        failing = [(g.get("name"), r.get("name"), r.get("lastError")) for g in groups
                   if Path(str(g.get("file", ""))).name in BUNDLE_RULE_FILES
                   for r in g.get("rules", []) if isinstance(r, dict) and r.get("health") == "err"]
        if failing:
            group, rule, error = failing[0]
            return Check("prometheus rules", False, f"{len(failing)} rule(s) fail to evaluate, first {group}/{rule}: "
                         f"{error}", fix)
        bundle = [g for g in groups if Path(str(g.get("file", ""))).name in BUNDLE_RULE_FILES]
        count = sum(len(g.get("rules", [])) for g in bundle)
        return Check("prometheus rules", True, f"{len(bundle)} groups, {count} rules loaded without errors")

    def alertmanager(self) -> list[Check]:
        restart = f"{COMPOSE} up -d alertmanager"
        document, failed = _answering(f"{self.alertmanager_url}/api/v2/status", "Alertmanager",
                                      ("alertmanager receiver", "receiver token"), restart)
        if failed:
            return failed
        try:
            config = yaml.safe_load(document.get("config", {}).get("original", "")) or {}
        except yaml.YAMLError as exc:
            return [Check("alertmanager receiver", False, f"cannot read Alertmanager's configuration: {exc}", restart)]
        hooks = [hook for receiver in config.get("receivers", []) or [] if isinstance(receiver, dict)
                 for hook in receiver.get("webhook_configs", []) or [] if isinstance(hook, dict)]
        ours = [hook for hook in hooks if same_endpoint(str(hook.get("url", "")), self.receiver_address)]
        if not ours:
            urls = ", ".join(str(hook.get("url")) for hook in hooks) or "no webhook"
            port = _host_port(self.receiver_address)[1]
            return [Check("alertmanager receiver", False,
                          f"Alertmanager sends to {urls}, not to the receiver on {self.receiver_address}",
                          f"{COMPOSE} restart alertmanager  # after setting webhook_configs url to "
                          f"http://host.docker.internal:{port}/ in alertmanager/alertmanager.yml"),
                    Check("receiver token", False, "not checked: Alertmanager does not send to the receiver",
                          restart)]
        hook = ours[0]
        checks = [Check("alertmanager receiver", True, f"sends to {hook.get('url')}")]
        checks.append(self._token(hook))
        return checks

    def _token(self, hook: dict) -> Check:
        auth = ((hook.get("http_config") or {}).get("authorization") or {})
        credentials_file = auth.get("credentials_file")
        token = auth.get("credentials")
        where = "Alertmanager's credentials"
        if credentials_file:
            path = Path(credentials_file)
            if not path.is_file() and credentials_file == "/etc/alertmanager/receiver.token":
                # compose.monitoring.yml mounts this file there.
                path = Path(os.path.expanduser(os.environ.get("AITOOLS_RECEIVER_TOKEN_FILE")
                                               or "~/.config/aitools/receiver.token"))
            where = f"Alertmanager's credentials_file ({path})"
            try:
                token = path.read_text()[:4096].strip()
            except OSError as exc:
                return Check("receiver token", False, f"cannot read {where}: {exc.strerror}",
                             f"aitools-exporter service install  # creates {path} when absent")
        if token == "<secret>" or (token is None and auth):
            return Check("receiver token", False, f"{where} cannot be read here", "aitools-exporter service install")
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # A body the receiver refuses (400) only after it has taken the token: nothing is shown.
        answer = request(str(hook.get("url")).replace("host.docker.internal", "127.0.0.1")
                      .replace("host-gateway", "127.0.0.1"), "POST", headers, b"{}")
        ours = self.config.receiver.token_file or "receiver.token_file"
        if answer.status == 400:
            return Check("receiver token", True, f"the receiver takes the token of {where}")
        if answer.status == 401:
            return Check("receiver token", False, f"the receiver refuses the token of {where}: it is not the one "
                         f"in {ours}",
                         f"AITOOLS_RECEIVER_TOKEN_FILE={ours} {COMPOSE} up -d alertmanager")
        seen = f"HTTP {answer.status}" if answer.status else answer.error
        return Check("receiver token", False, f"the receiver does not answer at {hook.get('url')} ({seen})",
                     "aitools-exporter service install")

    def notifications(self) -> list[Check]:
        from exporter.notify import Notification, Notifier

        from exporter.service import LAUNCHD_PATH

        # As the receiver service sees it: on macOS launchd gives it LAUNCHD_PATH, not this shell's.
        notifier = Notifier()
        if notifier.platform == "darwin":
            notifier = Notifier(env={**os.environ, "PATH": LAUNCHD_PATH})
        if notifier.command(Notification("", "", "")) is None:
            reason = ("no desktop session here" if not notifier.has_desktop()
                      else "notify-send is not installed")
            return [Check("notifications", False, f"{reason}: alerts go to the receiver's log only",
                          "sudo apt-get install libnotify-bin" if notifier.has_desktop()
                          else "aitools-exporter service install  # from a terminal of your desktop session")]
        blocked = notifier.blocked_reason()
        if blocked:
            fix = ("open 'x-apple.systempreferences:com.apple.Notifications-Settings.extension'"
                   if notifier.platform == "darwin" else "gsettings set org.gnome.desktop.notifications show-banners true")
            return [Check("notifications", False, blocked, fix)]
        return [Check("notifications", True, "nothing on this machine says they are hidden "
                      "(aitools-exporter notify --test shows one)")]

    def services(self) -> list[Check]:
        from exporter.service import ServiceError, service_states

        try:
            states = service_states()
        except ServiceError as exc:
            return [Check("services", False, str(exc), "aitools-exporter serve  # run it by hand")]
        return [Check(f"service {name}", running, state, "" if running else "aitools-exporter service install")
                for name, running, state in states]


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
        if not check.passed and check.fix:
            lines.append(f"      fix: {check.fix}")
    failed = sum(not check.passed for check in checks)
    lines.append(f"{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    return json.dumps({"ok": all(check.passed for check in checks), "checks": [asdict(c) for c in checks]}, indent=2)
