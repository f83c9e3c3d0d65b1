"""A team: workstations forward to one store, which evaluates the same rules across them.

- prometheus/team/prometheus.yml is the bundled prometheus.yml plus remote write and the
  external labels team and user; prometheus/team/agent.yml the agent-mode way; the compose
  overrides mount them (docker-compose resolves them);
- the store's rules (prometheus/team/rules/, generated) pass every workstation unit test,
  and keep two workstations apart where the workstation rules would merge them;
- end to end with real processes: two `aitools-exporter serve` on two addresses, each
  forwarded with basic auth by a Prometheus 2.42 (alice's the full one of compose.team.yml,
  bob's in agent mode, `--enable-feature=agent`) to one Prometheus with the remote-write
  receiver that loads the store's rules; every query of the team dashboard returns data for
  both; the store refuses no write; the store stopped for a while loses nothing (the
  forwarders' write-ahead logs hold it), a forwarder stopped and restarted loses nothing it
  had scraped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml

from tests.conftest import missing_realpart
from tests.parts.monitoring import free_port, wait_until
from tests.rules_override import shorten

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "prometheus"
TEAM_DIR = PROMETHEUS_DIR / "team"
TEAM_RULES = TEAM_DIR / "rules"
TEAM_SELECTOR = 'team=~"$team", user=~"$user"'


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_realpart(f"{name} is not installed (Debian package prometheus; tests/install-deps.sh)")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


# --- the files ---------------------------------------------------------------------------

def test_generated_store_rules_are_current():
    out = subprocess.run([sys.executable, str(PROMETHEUS_DIR / "build.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    bundled = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]
    assert sorted(p.name for p in TEAM_RULES.glob("*.yml")) == sorted(Path(r).name for r in bundled)


def test_forwarding_config_is_the_bundled_one_plus_remote_write():
    bundled = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    team = yaml.safe_load((TEAM_DIR / "prometheus.yml").read_text())
    assert team["global"].pop("external_labels") == {"team": "${AITOOLS_TEAM}", "user": "${AITOOLS_USER}"}
    assert team["global"] == bundled["global"]
    assert [(TEAM_DIR / r).resolve() for r in team["rule_files"]] == [(PROMETHEUS_DIR / r).resolve() for r in bundled["rule_files"]]
    assert team["alerting"] == bundled["alerting"]
    assert [j["static_configs"] for j in team["scrape_configs"]] == [j["static_configs"] for j in bundled["scrape_configs"]]
    (write,) = team["remote_write"]
    assert write["basic_auth"]["password_file"] == "/run/secrets/remote-write"
    # The store evaluates the rules itself: what they record here stays here.
    drop = write["write_relabel_configs"][0]
    assert drop["action"] == "drop" and drop["source_labels"] == ["__name__"]
    assert drop["regex"] == "aitools:.*|ALERTS|ALERTS_FOR_STATE"


@pytest.mark.parametrize("name,flags", [("prometheus.yml", ()), ("agent.yml", ("--agent",)), ("central.yml", ())])
def test_team_configs_pass_promtool_check_config(name, flags):
    out = promtool("check", "config", *flags, str(TEAM_DIR / name))
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_overrides_resolve(tmp_path):
    compose = shutil.which("docker-compose")
    if compose is None:
        missing_realpart("docker-compose is not installed (apt-get install docker-compose)")
    secret = tmp_path / "remote-write"
    secret.write_text("s3cret")
    (tmp_path / "empty.env").write_text("")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GRAFANA_ADMIN_PASSWORD": "x",
           "AITOOLS_TEAM": "platform", "AITOOLS_USER": "alice", "AITOOLS_REMOTE_WRITE_SECRET_FILE": str(secret)}
    for override, config, agent in (("compose.team.yml", "team/prometheus.yml", False),
                                     ("compose.team-agent.yml", "team/agent.yml", True)):
        args = [compose, "--env-file", str(tmp_path / "empty.env"), "-f", str(ROOT / "compose.monitoring.yml"),
                "-f", str(ROOT / override), "config"]
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        service = yaml.safe_load(out.stdout)["services"]["prometheus"]
        assert f"--config.file=/etc/prometheus/{config}" in service["command"]
        assert ("--agent" in service["command"]) is agent
        assert service["environment"] == {"AITOOLS_TEAM": "platform", "AITOOLS_USER": "alice"}
        assert f"{secret}:/run/secrets/remote-write:ro" in service["volumes"]
        # Without the team's names the stack does not start.
        missing = {k: v for k, v in env.items() if k != "AITOOLS_USER"}
        out = subprocess.run(args, capture_output=True, text=True, env=missing, timeout=60)
        assert out.returncode != 0 and "AITOOLS_USER" in out.stderr


# --- the store's rules -------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml")), ids=lambda p: p.name)
def test_store_rules_pass_every_workstation_unit_test(path, tmp_path):
    document = yaml.safe_load(path.read_text())
    document["rule_files"] = [str(TEAM_RULES / Path(r).name) for r in document["rule_files"]]
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    out = promtool("test", "rules", str(copy))
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_workstations_with_one_address_stay_apart(tmp_path):
    """Both exporters are host.docker.internal:8730 (the bundle's address): the workstation
    rules would add the two users' models together, the store's rules keep them apart, and
    each user's alert names that user's own models and budget."""
    series = []
    for user, loaded, size in (("alice", 2e9, 1e9), ("bob", 3.5e9, 3e9)):
        labels = f'job="aitools",instance="host.docker.internal:8730",team="platform",user="{user}"'
        series += [
            {"series": f'aitools_llm_model_loaded_bytes{{{labels},server="ollama",model="m-{user}"}}', "values": f"{loaded}x30"},
            {"series": f'aitools_budget_bytes{{{labels},budget="ollama"}}', "values": f"{size}x30"},
            {"series": f'aitools_collector_success{{{labels},collector="ollama"}}', "values": "1x30"},
        ]

    def run(rule_dir: Path, expected: list[dict], alerts: list[dict] | None = None) -> None:
        test = {"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": 'aitools:budget_usage_bytes{budget="ollama"}', "eval_time": "5m", "exp_samples": expected}]}
        if alerts is not None:
            test["alert_rule_test"] = [{"alertname": "AitoolsLLMOverBudget", "eval_time": "20m", "exp_alerts": alerts}]
        document = {"rule_files": [str(rule_dir / "aitools-recording.rules.yml"), str(rule_dir / "aitools-alerts.rules.yml")],
                    "evaluation_interval": "1m", "tests": [test]}
        path = tmp_path / f"{rule_dir.name}.test.yml"
        path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
        out = promtool("test", "rules", str(path))
        assert out.returncode == 0, out.stdout + out.stderr

    instance = 'instance="host.docker.internal:8730"'
    fix = ("(`ollama ps` lists what is loaded). To stay inside the budget, start the server with "
           "OLLAMA_MAX_LOADED_MODELS=1 and a short OLLAMA_KEEP_ALIVE, or use a smaller quantization.")
    run(TEAM_RULES, [
        {"labels": f'aitools:budget_usage_bytes{{budget="ollama",{instance},team="platform",user="alice"}}', "value": 2e9},
        {"labels": f'aitools:budget_usage_bytes{{budget="ollama",{instance},team="platform",user="bob"}}', "value": 3.5e9},
    ], [
        {"exp_labels": {"severity": "warning", "component": "llm", "server": "ollama", "budget": "ollama",
                        "instance": "host.docker.internal:8730", "team": "platform", "user": user},
         "exp_annotations": {
             "summary": "Models loaded in Ollama use more memory than the ollama budget",
             "description": f"Ollama on host.docker.internal:8730 holds {held}B of loaded models, over the ollama "
                            f"budget of {size}B: m-{user} {held}B.",
             "action": f"Unload the biggest: `ollama stop m-{user}` {fix}"}}
        for user, held, size in (("alice", "2G", "1G"), ("bob", "3.5G", "3G"))
    ])
    run(PROMETHEUS_DIR / "rules", [
        {"labels": f'aitools:budget_usage_bytes{{budget="ollama",{instance}}}', "value": 5.5e9},
    ])


def test_team_dashboard_panels():
    from tests.test_kubernetes import assert_panels_well_formed, beyond_dashboard

    dashboard = beyond_dashboard("team.json")
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "team", "user"]
    assert_panels_well_formed(dashboard, TEAM_SELECTOR)


# --- end to end: two workstations, two agents, one store -----------------------------------

USERS = {"alice": {"llama3.2:3b": 2_000_000_000},
         "bob": {"llama3.2:3b": 2_000_000_000, "qwen2.5:7b": 1_500_000_000}}
PASSWORD = "team-s3cret"
# alice forwards from the full Prometheus (compose.team.yml), bob from an agent (compose.team-agent.yml).
FORWARDERS = {"alice": "prometheus.yml", "bob": "agent.yml"}


def forwarder_args(name: str, workdir: Path, exporter: str, store_url: str) -> list[str]:
    """prometheus/team/<name> with the override of the end-to-end tests: the addresses (the
    exporter, the store, no Alertmanager), the secret file's path, 1 s intervals, and the
    rules' durations divided by 60. Prometheus 2.42 needs the feature flags 3.x has built in."""
    config = yaml.safe_load((TEAM_DIR / name).read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    if "rule_files" in config:
        config["global"]["evaluation_interval"] = "1s"
        (workdir / "rules").mkdir()
        rule_files = []
        for relative in config["rule_files"]:
            target = workdir / "rules" / Path(relative).name
            target.write_text(shorten((TEAM_DIR / relative).read_text(), 1 / 60))
            rule_files.append(str(target))
        config["rule_files"] = rule_files
        config.pop("alerting")
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [exporter]}]
    (write,) = config["remote_write"]
    write["url"] = f"{store_url}/api/v1/write"
    write["basic_auth"]["password_file"] = str(workdir / "secret")
    (workdir / name).write_text(yaml.safe_dump(config, sort_keys=False))
    if name == "agent.yml":
        return ["--enable-feature=agent,expand-external-labels", f"--config.file={workdir / name}",
                f"--storage.agent.path={workdir / 'wal'}"]
    return ["--enable-feature=expand-external-labels", f"--config.file={workdir / name}",
            f"--storage.tsdb.path={workdir / 'data'}"]


class Server:
    """A Prometheus process that can be stopped and started again on the same port and data."""

    def __init__(self, name: str, workdir: Path, args: list[str], env: dict[str, str] | None = None,
                 auth: tuple[str, str] | None = None):
        self.name, self.workdir, self.auth = name, workdir, auth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [binary("prometheus"), *args, f"--web.listen-address=127.0.0.1:{self.port}"]
        self.env = env
        self.starts = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.workdir / f"{self.name}-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **(self.env or {})})

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/-/ready", auth=self.auth, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(ready, 60, f"{self.name} ready", interval=0.2)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, auth=self.auth, timeout=15).json()
        assert answer.get("status") == "success", (expr, answer)
        return answer["data"]["result"]


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    from tests.parts.exporter_process import ExporterProcess
    from tests.parts.llm_standins import OllamaStandin

    binary("prometheus")
    root = tmp_path_factory.mktemp("team")
    started = []
    try:
        # The store: central.yml with the override of the end-to-end tests (README, "Tests"):
        # its rules shortened by 1/60, evaluation every second; basic auth on its receiver.
        store_dir = root / "store"
        (store_dir / "rules").mkdir(parents=True)
        central = yaml.safe_load((TEAM_DIR / "central.yml").read_text())
        central["global"]["evaluation_interval"] = "1s"
        rule_files = []
        for relative in central["rule_files"]:
            target = store_dir / "rules" / Path(relative).name
            target.write_text(shorten((TEAM_DIR / relative).read_text(), 1 / 60))
            rule_files.append(str(target))
        central["rule_files"] = rule_files
        (store_dir / "central.yml").write_text(yaml.safe_dump(central, sort_keys=False))
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        (store_dir / "web.yml").write_text(f"basic_auth_users:\n  aitools: '{hashed}'\n")
        store = Server("store", store_dir, [f"--config.file={store_dir / 'central.yml'}",
                                            f"--storage.tsdb.path={store_dir / 'data'}",
                                            "--web.enable-remote-write-receiver",
                                            f"--web.config.file={store_dir / 'web.yml'}"],
                       auth=("aitools", PASSWORD))
        started.append(store)

        agents, exporters = {}, {}
        for user, models in USERS.items():
            ollama = OllamaStandin().start()
            started.append(ollama)
            for model, size in models.items():
                ollama.load(model, size=size)
            exporter = ExporterProcess(textwrap.dedent(f"""\
                budgets: {{ollama: 1GB}}
                docker: {{enabled: false}}
                ollama: {{url: "{ollama.url}"}}
                lmstudio: {{url: null}}
                """)).wait_ready(60)
            started.append(exporter)
            exporters[user] = exporter
            forwarder_dir = root / user
            forwarder_dir.mkdir()
            (forwarder_dir / "secret").write_text(PASSWORD)
            forwarder = Server(f"forwarder-{user}", forwarder_dir,
                               forwarder_args(FORWARDERS[user], forwarder_dir, exporter.address, store.url),
                               env={"AITOOLS_TEAM": "platform", "AITOOLS_USER": user})
            started.append(forwarder)
            agents[user] = forwarder

        def both(expr: str) -> bool:
            return {s["metric"].get("user") for s in store.query(expr)} >= set(USERS)

        try:
            wait_until(lambda: both('aitools:efficiency_score:overall{team="platform"}'), 120, "both users' scores")
            wait_until(lambda: both('ALERTS{alertname="AitoolsLLMOverBudget",alertstate="firing"}'), 120,
                       "the LLM alert of both users")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {s.name}\n{s.log()[-1500:]}" for s in started if isinstance(s, Server))
            pytest.fail(f"{exc}\n{logs}")
        yield store, agents, exporters
    finally:
        for part in reversed(started):
            part.stop()


def substitute(expr: str, team_value: str, user_value: str) -> str:
    return expr.replace("$team", team_value).replace("$user", user_value)


def test_every_team_dashboard_query_returns_data_for_both_workstations(team):
    from tests.test_kubernetes import beyond_dashboard, dashboard_queries

    store, _, exporters = team
    dashboard = beyond_dashboard("team.json")
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 12
    for title, ref, expr in queries:
        for user in USERS:
            result = store.query(substitute(expr, "platform", user))
            assert result, f"{title} / {ref} for {user}: {expr}"
            users = {s["metric"].get("user") for s in result} - {None}
            assert users <= {user}, (title, users)
        everyone = store.query(substitute(expr, ".*", ".*"))
        users = {s["metric"].get("user") for s in everyone} - {None}
        assert users in (set(), set(USERS)), (title, ref, users)
    # Variables: the team and its users.
    assert {s["metric"]["team"] for s in store.query("aitools_build_info")} == {"platform"}
    assert {s["metric"]["user"] for s in store.query('aitools_build_info{team=~"platform"}')} == set(USERS)

    def run(title: str, ref: str = "A", user: str = ".*") -> list[dict]:
        (expr,) = [e for t, r, e in queries if t == title and r == ref]
        return store.query(substitute(expr, ".*", user))

    # The store's rules, per workstation: each user's models against their own 1GB budget.
    over = {(s["metric"]["user"], s["metric"]["budget"]): float(s["value"][1]) for s in run("Who is over which budget")}
    assert over[("alice", "ollama")] == 2.0 and over[("bob", "ollama")] == 3.5
    assert {s["metric"]["instance"] for s in run("Every workstation's score")} == {e.address for e in exporters.values()}
    assert float(run("Workstations over a budget")[0]["value"][1]) == 2
    models = {(s["metric"]["server"], s["metric"]["model"]): float(s["value"][1]) for s in run("Loaded models across the team")}
    assert models == {("ollama", "llama3.2:3b"): 4e9, ("ollama", "qwen2.5:7b"): 1.5e9}
    alerts = {(s["metric"]["user"], s["metric"]["alertname"]) for s in run("Firing alerts")}
    assert {("alice", "AitoolsLLMOverBudget"), ("bob", "AitoolsLLMOverBudget")} <= alerts
    # The team total is the users' totals added up.
    per_user = sum(float(s["value"][1]) for s in run("Tracked total per workstation"))
    assert float(run("Tracked memory of the team")[0]["value"][1]) == pytest.approx(per_user)


def sample_times(store: Server, user: str, seconds: int) -> list[float]:
    """The timestamps of every `up` sample the store holds of `user` for the last `seconds`."""
    result = store.query(f'up{{job="aitools", user="{user}"}}[{seconds}s]')
    assert len(result) == 1, result
    return [float(t) for t, _ in result[0]["values"]]


def largest_gap(times: list[float], start: float, end: float) -> float:
    inside = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in zip(inside, inside[1:]))


def caught_up(store: Server, user: str, moment: float) -> bool:
    times = sample_times(store, user, 120)
    return bool(times) and max(times) > moment


def test_the_store_down_for_a_while_loses_nothing(team):
    """While the store is unreachable the agents keep scraping into their write-ahead logs
    and send it all once it is back: samples every scrape interval across the outage."""
    store, _, _ = team
    time.sleep(3)
    down = time.time()
    store.stop()
    time.sleep(10)
    store.start()
    back = time.time()
    for user in USERS:
        wait_until(lambda: caught_up(store, user, back + 3), 90, f"{user}'s samples after the outage")
        times = sample_times(store, user, int(time.time() - down) + 10)
        during = [t for t in times if down <= t <= back]
        assert len(during) >= 0.7 * (back - down), (user, len(during), back - down)
        assert largest_gap(times, down - 2, back + 2) <= 3.0, (user, largest_gap(times, down - 2, back + 2))


@pytest.mark.parametrize("user", sorted(USERS), ids=lambda u: f"{u}-{FORWARDERS[u]}")
def test_a_forwarder_stopped_and_restarted_loses_nothing_it_scraped(team, user):
    """Stopped, a forwarder (the full Prometheus or the agent) sends what it has scraped
    before it exits; restarted on the same write-ahead log, it goes on. Only the time it was
    stopped (nothing scraped) is missing, and the other workstation is untouched."""
    store, forwarders, _ = team
    (other,) = set(USERS) - {user}
    time.sleep(3)
    stopped = time.time()
    forwarders[user].stop()
    time.sleep(6)
    forwarders[user].start()
    restarted = time.time()
    wait_until(lambda: caught_up(store, user, restarted + 3), 90, f"{user}'s samples after the restart")
    window = int(time.time() - stopped) + 20
    times = sample_times(store, user, window)
    before = [t for t in times if t < stopped]
    # Every scrape up to the stop arrived: no gap before it, the last within 2 intervals of it.
    assert largest_gap(times, stopped - 15, max(before)) <= 3.0
    assert max(before) >= stopped - 2.0, (max(before), stopped)
    # Nothing was scraped while it was stopped; scraping resumed after the restart.
    assert not [t for t in times if stopped + 1 < t < restarted - 2]
    assert len([t for t in times if t > restarted]) >= 2
    assert largest_gap(sample_times(store, other, window), stopped - 2, restarted + 2) <= 3.0


def test_nothing_was_refused_or_recorded_twice(team):
    """The full forwarder keeps its own recorded series (aitools:*, ALERTS) to itself: had it
    sent them, they would clash with the store's own (out-of-order samples, refused writes)."""
    store, forwarders, _ = team

    def metrics(server: Server) -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", auth=server.auth, timeout=10).text
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    own = metrics(store)
    refused = {k: v for k, v in own.items() if k.startswith("prometheus_http_requests_total{")
               and 'handler="/api/v1/write"' in k and not 'code="204"' in k}
    assert not any(refused.values()), refused
    assert own['prometheus_http_requests_total{code="204",handler="/api/v1/write"}'] > 0
    assert sum(v for k, v in own.items() if k.startswith("prometheus_tsdb_out_of_order_samples_total")) == 0
    assert sum(v for k, v in own.items() if k.startswith("prometheus_rule_evaluation_failures_total")) == 0
    for user, forwarder in forwarders.items():
        sent = metrics(forwarder)
        assert sum(v for k, v in sent.items() if k.startswith("prometheus_remote_storage_samples_total")) > 0, user
        assert sum(v for k, v in sent.items() if k.startswith("prometheus_remote_storage_samples_failed_total")) == 0, user
        # Dropped before sending: by write_relabel_configs, the full forwarder's recorded series only.
        dropped = sum(v for k, v in sent.items() if k.startswith("prometheus_remote_storage_samples_dropped_total"))
        assert (dropped > 0) if FORWARDERS[user] == "prometheus.yml" else (dropped == 0), (user, dropped)
