"""The command as a user runs it: serve, snapshot, check-config, options and environment."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from tests.conftest import missing_realpart
from tests.parts.exporter_process import ExporterProcess, free_port

CONTRACT_ALWAYS = {
    "aitools_process_group_rss_bytes", "aitools_process_group_processes", "aitools_system_memory_pages",
    "aitools_system_page_size_bytes", "aitools_system_memory_total_bytes", "aitools_system_memory_available_bytes",
    "aitools_system_swap_used_bytes", "aitools_budget_bytes", "aitools_profile_info", "aitools_collector_success",
    "aitools_collector_duration_seconds", "aitools_build_info", "aitools_docker_up", "aitools_llm_server_up",
}

# Nothing listens on these in the tests: Docker, Ollama, LM Studio and llama.cpp are absent.
ABSENT_BACKENDS = textwrap.dedent("""\
    docker: {host: "unix:///nonexistent/docker.sock"}
    ollama: {url: "http://127.0.0.1:9"}
    lmstudio: {url: "http://127.0.0.1:9"}
    llamacpp: {url: "http://127.0.0.1:9"}
    """)


def run_cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def parse(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_zero_configuration_serves_on_the_default_address():
    port_free = True
    try:
        with httpx.Client() as client:
            client.get("http://127.0.0.1:8730/", timeout=0.5)
            port_free = False
    except httpx.HTTPError:
        pass
    if not port_free:  # the default address is what this test is about: no other port will do
        missing_realpart("something already listens on 127.0.0.1:8730, the default address")
    exporter = subprocess.Popen([sys.executable, "-m", "exporter"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proc = ExporterProcess.__new__(ExporterProcess)
        proc.url, proc.process, proc.log = "http://127.0.0.1:8730", exporter, lambda: ""
        proc.wait_ready()
        response = httpx.get("http://127.0.0.1:8730/metrics", timeout=15)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = parse(response.text)
        assert CONTRACT_ALWAYS <= set(families)
        success = {s.labels["collector"]: s.value for s in families["aitools_collector_success"].samples}
        assert set(success) == {"node", "docker", "ollama", "lmstudio", "llamacpp", "process", "system", "apps"}
        assert success["system"] == 1 and success["process"] == 1 and success["node"] == 1
        budgets = {s.labels["budget"]: s.value for s in families["aitools_budget_bytes"].samples}
        assert budgets["docker"] == 5e9 and budgets["development_total"] == 2e10
    finally:
        exporter.terminate()
        exporter.wait(10)


def test_landing_page_health_404_openmetrics_and_gzip():
    with ExporterProcess(ABSENT_BACKENDS) as exporter:
        landing = httpx.get(exporter.url + "/")
        assert landing.status_code == 200 and 'href="metrics"' in landing.text
        assert httpx.get(exporter.url + "/healthz").text == "ok\n"
        assert httpx.get(exporter.url + "/nothing").status_code == 404

        om = exporter.scrape(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")

        raw = httpx.get(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=15)
        assert raw.headers["content-encoding"] == "gzip"
        assert "aitools_build_info" in raw.text  # httpx decodes it

        families = parse(exporter.scrape().text)
        assert families["aitools_docker_up"].samples[0].value == 0
        up = {s.labels["server"]: s.value for s in families["aitools_llm_server_up"].samples}
        assert up == {"ollama": 0, "lmstudio": 0, "llamacpp": 0}
        success = {s.labels["collector"]: s.value for s in families["aitools_collector_success"].samples}
        assert success["docker"] == 0 and success["ollama"] == 0 and success["system"] == 1
        assert [s.labels["version"] for s in families["aitools_build_info"].samples] == [__version__]


def test_absent_backends_are_logged_once_not_every_scrape():
    with ExporterProcess(ABSENT_BACKENDS) as exporter:
        for _ in range(4):
            assert exporter.scrape().status_code == 200
        log = exporter.log()
    assert log.count("collector docker failed") == 1
    assert log.count("collector ollama failed") == 1


def test_options_come_from_the_environment(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(ABSENT_BACKENDS + "profile: production\n")
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "exporter", "serve"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env={**os.environ, "AITOOLS_CONFIG_FILE": str(config),
                                     "AITOOLS_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}", "AITOOLS_LOG_LEVEL": "debug"})
    try:
        proc = ExporterProcess.__new__(ExporterProcess)
        proc.url, proc.process, proc.log = f"http://127.0.0.1:{port}", exporter, lambda: ""
        proc.wait_ready()
        families = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=15).text)
        assert [s.labels["profile"] for s in families["aitools_profile_info"].samples] == ["production"]
    finally:
        exporter.terminate()
        exporter.wait(10)


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"aitools-exporter, version {__version__}"
    help_text = run_cli("--help").stdout
    for word in ("--config.file", "--web.listen-address", "--log.level", "snapshot", "check-config", "serve"):
        assert word in help_text


def test_check_config_good_and_bad(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("profile: production\nbudgets: {docker: 4GB}\n")
    result = run_cli("check-config", "--config.file", str(good))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout

    bad = tmp_path / "bad.yml"
    bad.write_text("profile: development\nbudgets:\n  docker: 4GB\n  ollama: plenty\n")
    result = run_cli("--config.file", str(bad), "check-config")
    assert result.returncode == 2
    assert f"{bad}:4: budgets.ollama:" in result.stderr and "not a size" in result.stderr


def test_serve_refuses_a_bad_config_at_start(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("timeout: forever\n")
    result = run_cli("--config.file", str(bad), "--web.listen-address", f"127.0.0.1:{free_port()}", timeout=20)
    assert result.returncode == 2
    assert "bad.yml:1: timeout:" in result.stderr


def test_snapshot_table_and_json(tmp_path, swift_frontend):
    swift_frontend.start(hold_mb=60)
    config = tmp_path / "config.yml"
    config.write_text(ABSENT_BACKENDS + "budgets: {swift_build: 50MB}\n")
    table = run_cli("snapshot", "--config.file", str(config))
    assert table.returncode == 0, table.stderr
    # The readings table's row (the tree above it shows the group too).
    row = next(line for line in table.stdout.splitlines() if line.startswith("process") and "swift-frontend" in line)
    assert "(1 processes)" in row and "50.0 MB (swift_build)" in row and "OVER" in row
    assert "Collectors that failed:" in table.stdout and "docker:" in table.stdout

    result = run_cli("snapshot", "--json", "--config.file", str(config))
    data = json.loads(result.stdout)
    swift = next(r for r in data["readings"] if r["budget"] == "swift_build")
    assert swift["used_bytes"] > 60 * 2**20 and swift["budget_bytes"] == 50e6 and swift["ratio"] > 1
    assert swift["status"] == "OVER"
    assert data["collectors"]["system"]["success"] is True
    assert data["collectors"]["docker"]["success"] is False and data["collectors"]["docker"]["error"]
    names = {m["name"] for m in data["metrics"]}
    assert "aitools_system_memory_total_bytes" in names
    total = next(r for r in data["readings"] if r["area"] == "total")
    assert total["budget"] == "development_total" and total["used_bytes"] >= swift["used_bytes"]
