"""Nothing secret reaches a label or a log.

- A container's environment (POSTGRES_PASSWORD) and labels other than the compose
  project and service never reach /metrics or `snapshot --json`.
- LM_API_TOKEN is sent to LM Studio and nowhere else: not in the log (even at
  --log.level debug, where the HTTP libraries log too), not in /metrics, not in the
  output of `snapshot --json`, also when LM Studio refuses it, echoes it back in an error
  body, or the variable holds a token the HTTP header cannot carry.
- A password in a Node target's URL is not written into the log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.parts.exporter_process import ExporterProcess
from tests.parts.llm_standins import LMStudioStandin

TOKEN = "sk-lm-T0PS3CRET-4f9a1c"
DB_PASSWORD = "hunter2-secret"
LABEL_SECRET = "ghp_labelSECRETvalue123"
URL_PASSWORD = "n0de-m3trics-pw"


def run_snapshot(config_path, env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "snapshot", "--json", "--config.file", str(config_path),
                           "--log.level", "debug", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@pytest.fixture
def secret_container(docker_engine):
    container = docker_engine.client.containers.run(
        "postgres:15", ["sh", "-c", f"echo started && exec sleep 1000000"],
        name="secret-db", detach=True, network_mode="none",
        environment={"POSTGRES_PASSWORD": DB_PASSWORD, "API_TOKEN": LABEL_SECRET},
        labels={"com.docker.compose.project": "app", "com.docker.compose.service": "db",
                "com.example.db-password": DB_PASSWORD, "org.example.token": LABEL_SECRET})
    deadline = time.monotonic() + 60
    while b"started" not in container.logs():
        assert time.monotonic() < deadline, "the container did not start"
        time.sleep(0.1)
    yield container
    container.remove(force=True)


def test_container_environment_and_labels_never_reach_metrics(docker_engine, secret_container, tmp_path):
    # The engine does hold the secrets: they are there to be leaked.
    inspected = docker_engine.client.api.inspect_container(secret_container.id)
    assert f"POSTGRES_PASSWORD={DB_PASSWORD}" in inspected["Config"]["Env"]
    assert inspected["Config"]["Labels"]["org.example.token"] == LABEL_SECRET

    config = f'docker: {{host: "{docker_engine.host}"}}\nollama: {{url: null}}\nlmstudio: {{url: null}}\n'
    with ExporterProcess(config, args=("--log.level", "debug")) as exporter:
        text = exporter.scrape().text
        openmetrics = exporter.scrape(headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
        log = exporter.log()
    config_path = tmp_path / "config.yml"
    config_path.write_text(config)
    snapshot = run_snapshot(config_path, {})

    # The container is there, with the labels the contract names and no others.
    [line] = [line for line in text.splitlines() if line.startswith("aitools_container_memory_usage_bytes{")
              and 'name="secret-db"' in line]
    assert 'compose_project="app"' in line and 'compose_service="db"' in line and 'family="postgres"' in line
    assert snapshot.returncode == 0, snapshot.stderr
    assert "container secret-db" in [reading["subject"] for reading in json.loads(snapshot.stdout)["readings"]]
    for output in (text, openmetrics, log, snapshot.stdout, snapshot.stderr):
        assert DB_PASSWORD not in output
        assert LABEL_SECRET not in output
        assert "POSTGRES_PASSWORD" not in output


@pytest.fixture
def lmstudio():
    with LMStudioStandin() as standin:
        standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
        yield standin


def lmstudio_config(standin: LMStudioStandin, tmp_path) -> tuple[str, object]:
    config = f'docker: {{enabled: false}}\nollama: {{url: null}}\nlmstudio: {{url: "{standin.url}"}}\ntimeout: 2s\n'
    path = tmp_path / "config.yml"
    path.write_text(config)
    return config, path


# What LM Studio may answer while the token is set: refusing it, or echoing it back in
# an error body of each kind the collector reads.
ECHOES = {
    "refused": None,  # required_token differs: the stand-in's own 401
    "401 echo": (401, json.dumps({"error": {"message": f"invalid token {TOKEN}", "type": "invalid_request_error"}})),
    "403 echo": (403, json.dumps({"error": f"Bearer {TOKEN} is not allowed here"})),
    "500 echo": (500, json.dumps({"error": f"internal error while checking Authorization: Bearer {TOKEN}"})),
    "html echo": (200, f"<html><body>Your token {TOKEN} is wrong</body></html>"),
    "unknown endpoint echo": (200, json.dumps({"error": f"Unexpected endpoint or method. (GET /api/v1/models {TOKEN})"})),
}


@pytest.mark.parametrize("case", list(ECHOES))
def test_lmstudio_token_never_appears_in_the_log_metrics_or_snapshot(lmstudio, tmp_path, case):
    lmstudio.required_token = "sk-lm-the-one-lm-studio-wants"
    if ECHOES[case] is not None:
        status, body = ECHOES[case]
        lmstudio.answer = (status, body.encode())
    config, path = lmstudio_config(lmstudio, tmp_path)
    env = {"LM_API_TOKEN": TOKEN}

    with ExporterProcess(config, args=("--log.level", "debug"), env=env) as exporter:
        scrapes = [exporter.scrape().text for _ in range(3)]
        openmetrics = exporter.scrape(headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
        landing = httpx.get(exporter.url + "/", timeout=15).text
        log = exporter.log()
    snapshot = run_snapshot(path, env)
    table = subprocess.run([sys.executable, "-m", "exporter", "snapshot", "--config.file", str(path),
                            "--log.level", "debug"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **env})

    # The token was in use: LM Studio got it, and the collector failed because of its answers.
    assert f"Bearer {TOKEN}" in [headers.get("Authorization") for _, headers in lmstudio.requests]
    assert 'aitools_collector_success{collector="lmstudio"} 0.0' in scrapes[0]
    assert "collector lmstudio failed" in log  # the reason is logged, without the token
    assert json.loads(snapshot.stdout)["collectors"]["lmstudio"]["success"] is False
    for output in (*scrapes, openmetrics, landing, log, snapshot.stdout, snapshot.stderr, table.stdout, table.stderr):
        assert TOKEN not in output
    if "echo" in case and "html" not in case and "unknown" not in case:
        assert "[redacted]" in json.loads(snapshot.stdout)["collectors"]["lmstudio"]["error"]


@pytest.mark.parametrize("variable, works", [
    (TOKEN + "\n", True),        # read from a file with its newline: the newline is not part of the token
    (f"  {TOKEN}\r\n", True),
    (TOKEN + "\r\nX-Injected: 1", False),  # cannot be a header: refused without showing it
    (TOKEN[:6] + "\x7f" + TOKEN[6:], False),
    (TOKEN + "é", False),
])
def test_a_token_the_header_cannot_carry_is_refused_without_showing_it(lmstudio, tmp_path, variable, works):
    lmstudio.required_token = TOKEN
    _, path = lmstudio_config(lmstudio, tmp_path)
    result = run_snapshot(path, {"LM_API_TOKEN": variable})
    assert result.returncode == 0, result.stderr
    collectors = json.loads(result.stdout)["collectors"]
    assert collectors["lmstudio"]["success"] is works, collectors["lmstudio"]
    if not works:
        assert collectors["lmstudio"]["error"] == (
            f"lmstudio at {lmstudio.url}: LM_API_TOKEN cannot be sent: it holds a space, a control character "
            "or a non-ASCII character")
        assert not lmstudio.requests  # never sent
    for output in (result.stdout, result.stderr):
        assert TOKEN not in output
        assert "sk-lm-T0PS3CRET" not in output


def test_a_password_in_a_node_target_url_is_not_logged(node_steady, tmp_path):
    url = node_steady.url("/fail/status500").replace("http://", f"http://metrics:{URL_PASSWORD}@")
    config = (f'docker: {{enabled: false}}\nollama: {{url: null}}\nlmstudio: {{url: null}}\n'
              f'node: {{targets: [{{name: api, url: "{url}"}}]}}\n')
    path = tmp_path / "config.yml"
    path.write_text(config)
    with ExporterProcess(config) as exporter:
        text = exporter.scrape().text
        log = exporter.log()
    snapshot = run_snapshot(path, {})
    assert 'aitools_node_target_up{target="api"} 0.0' in text
    assert "collector node failed: target api (http://metrics:<secret>@127.0.0.1:" in log
    for output in (text, log, snapshot.stdout):
        assert URL_PASSWORD not in output


def test_lmstudio_token_file_is_read_at_each_scrape_and_never_shown(lmstudio, tmp_path):
    """lmstudio.token_file: the services' way to LM Studio's token. A rotated token works at
    the next scrape without a restart; a refused one and an unreadable file are reported
    naming the file, never its content; the file wins over LM_API_TOKEN."""
    token_file = tmp_path / "lmstudio.token"
    token_file.write_text("sk-lm-old-0000\n")
    lmstudio.required_token = TOKEN
    config = (f'docker: {{enabled: false}}\nollama: {{url: null}}\n'
              f'lmstudio: {{url: "{lmstudio.url}", token_file: "{token_file}"}}\ntimeout: 2s\n')
    with ExporterProcess(config, args=("--log.level", "debug"), env={"LM_API_TOKEN": "sk-lm-from-the-env"}) as exporter:
        refused = exporter.scrape().text
        token_file.write_text(TOKEN + "\n")  # rotated: the next scrape sends the new one
        accepted = exporter.scrape().text
        token_file.unlink()
        missing = exporter.scrape().text
        log = exporter.log()
    sent = [headers.get("Authorization") for _, headers in lmstudio.requests]
    assert sent[0] == "Bearer sk-lm-old-0000" and f"Bearer {TOKEN}" in sent
    assert "Bearer sk-lm-from-the-env" not in sent
    assert 'aitools_collector_success{collector="lmstudio"} 0.0' in refused
    assert 'aitools_collector_success{collector="lmstudio"} 1.0' in accepted
    assert 'aitools_llm_model_loaded_bytes{model="qwen/qwen3-4b-2507",server="lmstudio"} 2.5e+09' in accepted
    assert 'aitools_collector_success{collector="lmstudio"} 0.0' in missing
    assert f"LM Studio refused the token in lmstudio.token_file {token_file}" in log
    assert f"cannot read lmstudio.token_file {token_file}: No such file or directory" in log
    assert TOKEN not in log and "sk-lm-old-0000" not in log


def test_lmstudio_token_file_must_be_a_path(tmp_path):
    from exporter.config import ConfigError, load_config

    path = tmp_path / "config.yml"
    path.write_text("lmstudio:\n  token_file: 42\n")
    with pytest.raises(ConfigError, match="lmstudio.token_file"):
        load_config(path)
    path.write_text("lmstudio:\n  token_file: ~/.config/aitools/lmstudio.token\n")
    assert load_config(path).lmstudio.token_file == os.path.expanduser("~/.config/aitools/lmstudio.token")
