"""Faults of the real parts, seen through the real exporter process over HTTP.

One exporter reads every source at once, with a 1 s timeout: two Node targets (one
straight to a real Node process, one through a switch that can send it to the
process's /fail/truncated, where Node closes the connection mid-body), a Docker engine
of its own (stopped and started again on the same socket and data root), the Ollama
and LM Studio stand-ins, `vm_stat` (a stand-in on PATH that can go missing or print
garbage) and the process groups (with processes exiting while they are scanned).

For each fault, at every scrape: the answer comes within the timeout plus a margin;
the failing collector reports aitools_collector_success 0; every other collector
reports 1 and its metrics are there; the log gives the reason once (not once per
scrape); and once the fault is gone the collector recovers by itself, which the log
also says once.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.node import NodeCollector
from exporter.config import Config, NodeSection, NodeTarget
from exporter.scrape import Scraper
from tests.conftest import missing_realpart
from tests.parts.docker_engine import DockerEngine, EngineUnavailable
from tests.parts.exporter_process import ExporterProcess
from tests.parts.llm_standins import LMStudioStandin, OllamaStandin
from tests.parts.processes import NamedProcesses

TIMEOUT = 1.0
# What a scrape may take beyond the timeout: the orchestrator's own 0.5 s, and room for
# a loaded 2-core machine.
MARGIN = 1.0
FAILING_SCRAPES = 4
RECOVERY_SECONDS = 60.0
MiB = 2**20

COLLECTORS = ("node", "docker", "ollama", "lmstudio", "process", "system", "apps")

VM_STAT_GOOD = (Path(__file__).parent / "data" / "vm_stat_apple_silicon.txt").read_text()
VM_STAT_GARBAGE = "Segmentation fault\n\x00\xff garbage: 12.\nPages free: lots.\n"


# --- the switchable parts ---------------------------------------------------------------

class PathSwitch:
    """A TCP relay in front of a real Node process that sends every request to the path of
    the moment: `/memory` normally, `/fail/truncated` to have Node itself promise a whole
    body, send half of it and close the connection. Bytes pass through as Node sends them."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.path = "/memory"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="path-switch").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/memory"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                request_line, rest = head.split(b"\r\n", 1)
                method, _, version = request_line.split(b" ", 2)
                # One request per connection, so that the relay knows where the answer ends.
                rest = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", rest)
                with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10) as upstream:
                    upstream.sendall(b"%s %s %s\r\nConnection: close\r\n%s" % (method, self.path.encode(), version, rest))
                    while chunk := upstream.recv(65536):
                        client.sendall(chunk)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()


class RestartableEngine:
    """A Docker engine of this module's own (the session's engine is left alone), which a
    test stops and starts again with the same command line: same socket, same data root."""

    def __init__(self, engine: DockerEngine):
        self.engine = engine
        self.command = psutil.Process(engine.process.pid).cmdline()

    @property
    def host(self) -> str:
        return self.engine.host

    def stop(self) -> None:
        process = self.engine.process
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)  # it stops its containers first (10 s for a PID 1 that ignores SIGTERM)
        self.engine.client.close()

    def start(self) -> None:
        with open(Path(self.engine.workdir) / "dockerd.log", "ab") as log:
            self.engine.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            if self.engine.process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.engine.process.returncode} on restart")
            try:
                client = docker.DockerClient(base_url=self.host, version="auto", timeout=30)
                if client.ping():
                    self.engine.client = client
                    return
            except docker.errors.DockerException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("dockerd did not answer within 90 s of its restart")
            time.sleep(0.2)


# --- fixtures: one set of real parts for the module, one exporter per test ------------------

@pytest.fixture(scope="module")
def engine():
    dockerd = DockerEngine()
    try:
        dockerd.start()
    except EngineUnavailable as exc:
        missing_realpart(f"cannot start a Docker engine: {exc}")
    try:
        container = dockerd.run("faults-db", "postgres:15", hold_mb=20)
        # Started again by the engine when the engine comes back, as Docker Desktop users set it.
        dockerd.client.api.update_container(container, restart_policy={"Name": "always"})
        yield RestartableEngine(dockerd)
    finally:
        dockerd.close()


@pytest.fixture(scope="module")
def node_switch(node_steady):
    switch = PathSwitch(node_steady.http_port)
    yield switch
    switch.close()


@pytest.fixture(scope="module")
def ollama():
    with OllamaStandin() as standin:
        standin.load("llama3.1:8b", size=4_900_000_000, size_vram=3_000_000_000)
        yield standin


@pytest.fixture(scope="module")
def lmstudio():
    with LMStudioStandin() as standin:
        standin.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
        yield standin


@pytest.fixture
def vm_stat(tmp_path):
    """A folder put first on the exporter's PATH; `vm_stat.set(text)` is what it prints,
    `vm_stat.set(None)` removes it."""
    class VmStat:
        folder = tmp_path / "bin"
        path = folder / "vm_stat"

        def set(self, output: str | None) -> None:
            if output is None:
                self.path.unlink(missing_ok=True)
                return
            (self.folder / "output.txt").write_text(output, errors="surrogateescape")
            staged = self.folder / "vm_stat.new"
            staged.write_text(f"#!/bin/sh\ncat '{self.folder / 'output.txt'}'\n")
            staged.chmod(0o755)
            staged.replace(self.path)  # never half-written when the exporter runs it

    stand_in = VmStat()
    stand_in.folder.mkdir()
    stand_in.set(VM_STAT_GOOD)
    return stand_in


@pytest.fixture
def parts(engine, node_steady, node_switch, ollama, lmstudio, vm_stat):
    for standin in (ollama, lmstudio):
        standin.mode, standin.answer = None, None
    node_switch.path = "/memory"
    vm_stat.set(VM_STAT_GOOD)
    return Parts(engine, node_steady, node_switch, ollama, lmstudio, vm_stat)


@dataclass
class Parts:
    engine: RestartableEngine
    node: object
    node_switch: PathSwitch
    ollama: OllamaStandin
    lmstudio: LMStudioStandin
    vm_stat: object


def exporter_config(parts: Parts, extra: str = "") -> str:
    return f"""\
timeout: {TIMEOUT:g}s
node:
  targets:
    - {{name: direct, url: "{parts.node.url('/memory')}"}}
    - {{name: switched, url: "{parts.node_switch.url}"}}
docker: {{host: "{parts.engine.host}"}}
ollama: {{url: "{parts.ollama.url}"}}
lmstudio: {{url: "{parts.lmstudio.url}"}}
llamacpp: {{url: null}}
system: {{source: vm_stat}}
{extra}"""


@pytest.fixture
def exporter(parts):
    process = ExporterProcess(exporter_config(parts), env={"PATH": f"{parts.vm_stat.folder}{os.pathsep}{os.environ['PATH']}"})
    with process:
        yield process


# --- reading a scrape ---------------------------------------------------------------------

@dataclass
class Scrape:
    seconds: float
    samples: dict[str, list]  # family name -> samples

    def success(self) -> dict[str, float]:
        return {s.labels["collector"]: s.value for s in self.samples["aitools_collector_success"]}

    def value(self, metric: str, /, **labels) -> float | None:
        for sample in self.samples.get(metric, []):
            if all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
        return None


def scrape(exporter: ExporterProcess) -> Scrape:
    started = time.monotonic()
    response = httpx.get(f"{exporter.url}/metrics", timeout=30)
    seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        samples.setdefault(family.name, []).extend(family.samples)
    assert seconds <= TIMEOUT + MARGIN, f"the scrape took {seconds:.2f}s with a {TIMEOUT:g}s timeout"
    return Scrape(seconds, samples)


def assert_others_healthy(result: Scrape, failing: str) -> None:
    """Every collector but `failing` succeeded and its own metrics are there, with values."""
    success = result.success()
    assert set(success) == set(COLLECTORS)
    assert {name: value for name, value in success.items() if name != failing} == \
        {name: 1.0 for name in COLLECTORS if name != failing}
    checks = {
        "node": lambda: result.value("aitools_node_heap_used_bytes", target="direct") > MiB,
        "docker": lambda: result.value("aitools_docker_up") == 1 and \
            result.value("aitools_container_memory_usage_bytes", name="faults-db") >= 20 * MiB,
        "ollama": lambda: result.value("aitools_llm_model_loaded_bytes", server="ollama", model="llama3.1:8b") == 4.9e9,
        "lmstudio": lambda: result.value("aitools_llm_model_loaded_bytes", server="lmstudio",
                                         model="qwen/qwen3-4b-2507") == 2.5e9,
        "process": lambda: result.value("aitools_process_group_processes", group="swift-frontend") is not None,
        "system": lambda: result.value("aitools_system_memory_pages", state="wired") == 309858,
    }
    for name, check in checks.items():
        if name != failing:
            assert check(), f"{name} metrics missing or wrong while {failing} fails"
    assert result.value("aitools_budget_bytes", budget="docker") == 5e9
    assert result.value("aitools_build_info") == 1


def fail_for_a_while(exporter: ExporterProcess, collector: str, scrapes: int = FAILING_SCRAPES) -> list[Scrape]:
    results = []
    for _ in range(scrapes):
        result = scrape(exporter)
        assert result.success()[collector] == 0, f"{collector} did not fail"
        assert_others_healthy(result, collector)
        results.append(result)
    return results


def recover(exporter: ExporterProcess, collector: str) -> Scrape:
    """Scrape until the collector succeeds again, by itself; then it stays healthy."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        result = scrape(exporter)
        if result.success()[collector] == 1:
            break
        assert time.monotonic() < deadline, f"{collector} did not recover within {RECOVERY_SECONDS:g}s"
        time.sleep(0.5)
    for _ in range(2):
        result = scrape(exporter)
        assert_others_healthy(result, failing="")
    return result


def failure_lines(exporter: ExporterProcess, collector: str) -> list[str]:
    return [line.split(f"collector {collector} failed: ", 1)[1]
            for line in exporter.log().splitlines() if f"collector {collector} failed: " in line]


def recovery_lines(exporter: ExporterProcess, collector: str) -> list[str]:
    return [line for line in exporter.log().splitlines() if f"collector {collector} recovered" in line]


# --- the faults -----------------------------------------------------------------------------

def test_all_healthy_to_begin_with(exporter):
    result = scrape(exporter)
    assert_others_healthy(result, failing="")
    assert result.value("aitools_node_target_up", target="switched") == 1
    assert result.value("aitools_container_memory_usage_bytes", name="faults-db") >= 20 * MiB
    for _ in range(10):
        scrape(exporter)
    # Months of healthy scrapes must not fill a disk: nothing is logged per scrape (httpx,
    # for one, would log every backend request at INFO).
    lines = exporter.log().splitlines()
    assert len(lines) == 1 and "serving http://" in lines[0], lines[:5]


def test_docker_engine_stops_and_comes_back(exporter, engine):
    assert scrape(exporter).value("aitools_container_memory_usage_bytes", name="faults-db") >= 20 * MiB
    engine.stop()
    try:
        failing = fail_for_a_while(exporter, "docker")
        assert all(result.value("aitools_docker_up") == 0 for result in failing)
        assert all(result.value("aitools_container_memory_usage_bytes", name="faults-db") is None for result in failing)
    finally:
        engine.start()
    recovered = recover(exporter, "docker")
    assert recovered.value("aitools_docker_up") == 1
    # The engine restarted the container (restart policy always), and the exporter sees it again.
    deadline = time.monotonic() + RECOVERY_SECONDS
    while (recovered.value("aitools_container_memory_usage_bytes", name="faults-db") or 0) < 20 * MiB:
        assert time.monotonic() < deadline, "the restarted container did not come back"
        time.sleep(0.5)
        recovered = scrape(exporter)

    assert failure_lines(exporter, "docker") == [
        f"cannot reach the Docker engine at {engine.host}: no socket there (is the engine running?)"]
    assert len(recovery_lines(exporter, "docker")) == 1


def test_ollama_answers_after_longer_than_the_timeout(exporter, ollama):
    ollama.mode = "slow"  # answers after 10 s
    failing = fail_for_a_while(exporter, "ollama")
    assert all(result.value("aitools_llm_server_up", server="ollama") == 0 for result in failing)
    assert all(result.value("aitools_llm_model_loaded_bytes", server="ollama") is None for result in failing)
    ollama.mode = None
    recover(exporter, "ollama")
    assert failure_lines(exporter, "ollama") == [f"ollama at {ollama.url}: timed out after 1s"]
    assert len(recovery_lines(exporter, "ollama")) == 1


def test_lmstudio_returns_500_then_a_truncated_body_then_200(exporter, lmstudio):
    lmstudio.mode = "http500"
    for result in fail_for_a_while(exporter, "lmstudio"):
        assert result.value("aitools_llm_server_up", server="lmstudio") == 1  # it answered, badly
    lmstudio.mode = "truncated"
    for result in fail_for_a_while(exporter, "lmstudio"):
        assert result.value("aitools_llm_server_up", server="lmstudio") == 1
        assert result.value("aitools_llm_model_loaded_bytes", server="lmstudio") is None
    lmstudio.mode = None
    recover(exporter, "lmstudio")
    # Each reason once, not once per scrape: the failure changed, so it is said again.
    assert failure_lines(exporter, "lmstudio") == [
        f"lmstudio at {lmstudio.url}: answered HTTP 500 for /api/v1/models: "
        "llama runner process has terminated: exit status 2",
        f"lmstudio at {lmstudio.url}: connection closed before the whole body arrived (truncated)",
    ]
    assert len(recovery_lines(exporter, "lmstudio")) == 1


def test_node_target_closes_the_connection_mid_body(exporter, node_switch):
    node_switch.path = "/fail/truncated"
    for result in fail_for_a_while(exporter, "node", scrapes=6):
        assert result.value("aitools_node_target_up", target="switched") == 0
        assert result.value("aitools_node_target_up", target="direct") == 1
        assert result.value("aitools_node_heap_used_bytes", target="direct") > MiB  # the healthy target stays
        assert result.value("aitools_node_heap_used_bytes", target="switched") is None
    node_switch.path = "/memory"
    recovered = recover(exporter, "node")
    assert recovered.value("aitools_node_target_up", target="switched") == 1
    assert recovered.value("aitools_node_heap_used_bytes", target="switched") > MiB

    assert failure_lines(exporter, "node") == [
        f"target switched ({node_switch.url}): connection closed before the whole answer arrived"]
    assert len(recovery_lines(exporter, "node")) == 1


def test_a_truncated_answer_is_one_reason_whatever_its_length(caplog):
    """Real bodies change length from scrape to scrape (a counter, a timestamp); a reason
    that counted the bytes received would be a new reason, and a new log line, every time."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        for length in range(100, 10_000, 37):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n{\"heapUsed\": " % length + b"1" * (length // 3))

    threading.Thread(target=serve, daemon=True).start()
    config = Config(node=NodeSection(targets=(NodeTarget("api", url=f"http://127.0.0.1:{port}/memory"),)), timeout=TIMEOUT)
    scraper = Scraper([NodeCollector(config.node, config.timeout)], timeout=TIMEOUT)
    try:
        with caplog.at_level(logging.INFO, logger="exporter.scrape"):
            for _ in range(5):
                scraper.collect_once()
    finally:
        listener.close()
    assert [record.getMessage() for record in caplog.records] == [
        f"collector node failed: target api (http://127.0.0.1:{port}/memory): "
        "connection closed before the whole answer arrived"]


def test_vm_stat_goes_missing_then_prints_garbage_then_comes_back(exporter, vm_stat):
    vm_stat.set(None)
    for result in fail_for_a_while(exporter, "system"):
        assert result.value("aitools_system_memory_pages") is None
    vm_stat.set(VM_STAT_GARBAGE)
    fail_for_a_while(exporter, "system")
    vm_stat.set(VM_STAT_GOOD)
    recovered = recover(exporter, "system")
    assert recovered.value("aitools_system_page_size_bytes") == 16384
    assert failure_lines(exporter, "system") == [
        "vm_stat not found on PATH",
        "vm_stat printed something unexpected: no 'page size of N bytes' header",
    ]
    assert len(recovery_lines(exporter, "system")) == 1


class Churn:
    """Short-lived processes, swift-frontend-named ones among them, started and exiting all
    the time: /proc entries vanish while the process collector reads them."""

    def __init__(self, named: NamedProcesses, seconds: float):
        self.named = named
        self.marker = f"churn-marker-{os.getpid()}"
        self.seconds = seconds
        self.stop_at = time.monotonic() + seconds
        self.started = 0
        self.alive_max = 0
        self._children: list[subprocess.Popen] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.stop_at = time.monotonic() + self.seconds
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_at = 0
        self._thread.join(30)
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait(10)

    def _run(self) -> None:
        env = dict(os.environ, PYTHONHOME=sys.base_prefix)
        rng = random.Random(7)
        while time.monotonic() < self.stop_at:
            self._children = [child for child in self._children if child.poll() is None]
            self.alive_max = max(self.alive_max, len(self._children))
            if len(self._children) < 12:
                life = rng.uniform(0.0, 0.3)
                if rng.random() < 0.5:
                    command = [str(self.named.binary), "-S", "-c", f"import time; time.sleep({life})"]
                else:
                    command = ["sh", "-c", f"sleep {life:.2f}; echo {self.marker} >/dev/null"]
                self._children.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL))
                self.started += 1
            else:
                time.sleep(0.005)


def test_processes_exiting_during_the_scan(parts):
    named = NamedProcesses("swift-frontend")
    churn = Churn(named, seconds=15)
    # The default swift-frontend group (other swift-frontend processes on the machine count
    # there too), and groups only this test's processes can be in: its copies of the
    # binary, and the shells whose command line holds its marker.
    extra = (f"process_groups:\n  ours: {{cmdline: '^{re.escape(str(named.binary))} '}}\n"
             f"  shells: {{cmdline: '{churn.marker}'}}\n")
    try:
        steady = named.start(hold_mb=30)
        steady_rss = steady.memory_info().rss
        with ExporterProcess(exporter_config(parts, extra),
                             env={"PATH": f"{parts.vm_stat.folder}{os.pathsep}{os.environ['PATH']}"}) as exporter, churn:
            counts, scrapes = [], 0
            while time.monotonic() < churn.stop_at:
                result = scrape(exporter)
                scrapes += 1
                assert_others_healthy(result, failing="")
                assert result.value("aitools_process_group_processes", group="swift-frontend") >= 1
                assert result.value("aitools_process_group_rss_bytes", group="swift-frontend") >= steady_rss * 0.9
                count = result.value("aitools_process_group_processes", group="ours")
                rss = result.value("aitools_process_group_rss_bytes", group="ours")
                # The steady one is always there; the others come and go (at most 12 at once,
                # and one may be counted just before the churner reaps it).
                assert 1 <= count <= 1 + 12 + 2, count
                assert steady_rss * 0.9 <= rss < (30 + 15 * 40) * MiB, rss
                assert 0 <= result.value("aitools_process_group_processes", group="shells") <= 12 + 2
                counts.append(count)
            log = exporter.log()
        assert scrapes >= 10 and churn.started >= 50, (scrapes, churn.started)
        assert max(counts) > 1, "no short-lived swift-frontend was ever seen: the churn did not overlap the scans"
        assert "collector process failed" not in log and "Traceback" not in log
    finally:
        named.close()
