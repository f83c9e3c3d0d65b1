"""Load and a long run against the real exporter process, with real sources behind it.

- Load: 50 concurrent scrapers for a minute. Every answer is a complete, well-formed
  page; afterwards the exporter's threads are back to where they were and its resident
  memory has not grown more than LOAD_RSS_GROWTH_LIMIT.
- Long run: 10,000 scrapes one after another while containers start and stop,
  swift-frontend processes come and go and Ollama loads and unloads models. Resident memory is sampled every 1,000 scrapes
  and is flat after warm-up.

The figures are printed (pytest -s shows them) and written to a file in the test's
temporary folder; a one-line summary of each is printed with the prefix FIGURES.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.parts.exporter_process import ExporterProcess
from tests.parts.llm_standins import LMStudioStandin, OllamaStandin
from tests.parts.processes import NamedProcesses

MiB = 2**20
COLLECTORS = {"node", "docker", "ollama", "lmstudio", "process", "system", "apps"}

LOAD_CLIENTS = 50
LOAD_SECONDS = 60.0
LOAD_RSS_GROWTH_LIMIT = 20 * MiB
LOAD_LATE_GROWTH_LIMIT = 5 * MiB
LOAD_THREAD_SLACK = 3

LONG_RUN_SCRAPES = int(os.environ.get("AITOOLS_LONG_RUN_SCRAPES", "10000"))
RSS_EVERY = 1000
WARM_UP_SCRAPES = 2000
FLAT_RSS_LIMIT = 5 * MiB


@pytest.fixture(scope="module")
def sources(docker_engine, node_steady):
    with OllamaStandin() as ollama, LMStudioStandin() as lmstudio:
        ollama.load("llama3.1:8b", size=4_900_000_000)
        lmstudio.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
        container = docker_engine.run("load-db", "postgres:15", hold_mb=10,
                                      labels={"com.docker.compose.project": "load"})
        try:
            yield {"docker": docker_engine, "node": node_steady, "ollama": ollama, "lmstudio": lmstudio}
        finally:
            docker_engine.client.api.remove_container(container, force=True)


def config_for(sources) -> str:
    return f"""\
timeout: 3s
node:
  targets:
    - {{name: api, url: "{sources['node'].url('/memory')}"}}
    - {{name: metrics, url: "{sources['node'].url('/metrics')}"}}
docker: {{host: "{sources['docker'].host}"}}
ollama: {{url: "{sources['ollama'].url}"}}
lmstudio: {{url: "{sources['lmstudio'].url}"}}
llamacpp: {{url: null}}
"""


def check_page(response: httpx.Response, collectors: set[str] = COLLECTORS) -> dict:
    """A complete, well-formed page from a healthy exporter: {family name: samples}."""
    assert response.status_code == 200, response.status_code
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = response.content
    # Every byte promised arrived (gzip-compressed, as httpx asks like Prometheus does).
    assert response.headers.get("content-encoding") == "gzip"
    assert int(response.headers["content-length"]) == response.num_bytes_downloaded
    assert body.endswith(b"\n")
    text = body.decode("utf-8")
    # One HELP and one TYPE per name, as the format requires (a second one makes promtool,
    # and Prometheus's OpenMetrics parser, refuse the page).
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(name for name, count in Counter(types).items() if count > 1)
    families = {family.name: family.samples for family in text_string_to_metric_families(text)}
    success = {sample.labels["collector"]: sample.value for sample in families["aitools_collector_success"]}
    assert success == {name: 1.0 for name in collectors}, success
    assert [sample.value for sample in families["aitools_build_info"]] == [1.0]
    assert len(families["aitools_budget_bytes"]) == 8
    return families


def wait_for_threads(process: psutil.Process, at_most: int, seconds: float) -> int:
    """The thread count once it is at most `at_most`, or when `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        threads = process.num_threads()
        if threads <= at_most or time.monotonic() > deadline:
            return threads
        time.sleep(0.5)


def report(tmp_path: Path, name: str, figures: dict, summary: str) -> None:
    (tmp_path / f"{name}.json").write_text(json.dumps(figures, indent=2))
    print(f"\n{name} figures ({tmp_path / f'{name}.json'}):\n{json.dumps(figures, indent=2)}")
    print(f"FIGURES {name}: {summary}")


def test_every_page_is_one_prometheus_accepts(sources):
    """promtool (Prometheus's own parser and linter) accepts the text page, and the
    OpenMetrics page, which Prometheus asks for first, parses with one family per name."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    from tests.conftest import missing_realpart

    if shutil.which("promtool") is None:
        missing_realpart("promtool is not installed (apt-get install prometheus)")
    with ExporterProcess(config_for(sources)) as exporter:
        text = exporter.scrape().text
        openmetrics = exporter.scrape(headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = [family.name for family in parse_openmetrics(openmetrics)]
    assert len(names) == len(set(names))
    # Both LLM servers' series are in the one family.
    [loaded] = [family for family in text_string_to_metric_families(text) if family.name == "aitools_llm_model_loaded_bytes"]
    assert {sample.labels["server"] for sample in loaded.samples} == {"ollama", "lmstudio"}


def test_fifty_concurrent_scrapers_for_a_minute(sources, tmp_path):
    # All fifty served at once: over --web.max-requests (default 40) they would be answered 503,
    # which tests/test_core_attacks.py holds. Room above fifty: a scraper that reconnects at once
    # can come back before its worker has counted the previous request done (so can node_exporter's).
    with ExporterProcess(config_for(sources), args=("--web.max-requests", str(LOAD_CLIENTS + 10))) as exporter:
        process = psutil.Process(exporter.process.pid)
        with httpx.Client(timeout=30) as client:
            for _ in range(20):  # warm-up: every code path loaded, every pool made
                check_page(client.get(f"{exporter.url}/metrics"))
        time.sleep(1)
        threads_before = process.num_threads()
        rss_before = process.memory_info().rss

        outcomes: Counter = Counter()
        failures: list[str] = []
        peak_threads = [threads_before]
        stop_at = time.monotonic() + LOAD_SECONDS

        def scraper(number: int) -> None:
            # Half keep their connection between scrapes (as Prometheus does), half do not.
            with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=number % 2)) as client:
                while time.monotonic() < stop_at:
                    try:
                        check_page(client.get(f"{exporter.url}/metrics"))
                        outcomes["complete"] += 1
                    except Exception as exc:  # noqa: BLE001 - every kind of failure is counted and shown
                        outcomes["failed"] += 1
                        failures.append(f"{type(exc).__name__}: {exc}"[:300])

        clients = [threading.Thread(target=scraper, args=(number,)) for number in range(LOAD_CLIENTS)]
        for client_thread in clients:
            client_thread.start()
        load_started = time.monotonic()
        rss_during: dict[int, float] = {}  # second of the load -> MiB
        while any(thread.is_alive() for thread in clients):
            peak_threads.append(process.num_threads())
            second = round(time.monotonic() - load_started)
            if second % 10 == 0:
                rss_during[second] = round(process.memory_info().rss / MiB, 1)
            time.sleep(1)
        for client_thread in clients:
            client_thread.join()

        # Idle connections are closed by now; the handler threads end with them.
        threads_after = wait_for_threads(process, threads_before + LOAD_THREAD_SLACK, seconds=40)
        rss_after = process.memory_info().rss
        log = exporter.log()

    figures = {
        "clients": LOAD_CLIENTS, "seconds": LOAD_SECONDS,
        "responses_complete": outcomes["complete"], "responses_failed": outcomes["failed"],
        "threads_before": threads_before, "threads_peak": max(peak_threads), "threads_after": threads_after,
        "rss_before_mib": round(rss_before / MiB, 1), "rss_after_mib": round(rss_after / MiB, 1),
        "rss_growth_mib": round((rss_after - rss_before) / MiB, 1),
        "rss_mib_every_10s_of_load": rss_during,
    }
    report(tmp_path, "load", figures,
           f"{outcomes['complete']} complete responses, {outcomes['failed']} failed; threads {threads_before} -> "
           f"peak {max(peak_threads)} -> {threads_after}; RSS {figures['rss_before_mib']} -> "
           f"{figures['rss_after_mib']} MiB (every 10 s of load: "
           + ", ".join(f"{mib}" for mib in rss_during.values()) + ")")

    assert not failures, failures[:5]
    assert outcomes["complete"] >= LOAD_CLIENTS * 10  # each scraper got many answers, not one
    assert max(peak_threads) > threads_before  # the load did reach the exporter
    assert threads_after <= threads_before + LOAD_THREAD_SLACK, figures
    assert rss_after - rss_before < LOAD_RSS_GROWTH_LIMIT, figures
    # Bounded, not merely small: what the load costs is taken in its first seconds (thread
    # stacks, allocator arenas), and the second half of the minute adds next to nothing.
    halfway = min(rss_during, key=lambda second: abs(second - LOAD_SECONDS / 2))
    assert rss_after / MiB - rss_during[halfway] < LOAD_LATE_GROWTH_LIMIT / MiB, figures
    assert "Traceback" not in log and "failed" not in log, log[-2000:]


class Churn:
    """Containers started and removed, swift-frontend processes started and stopped, Ollama
    models loaded and unloaded, in the background for as long as the run lasts."""

    def __init__(self, engine, named: NamedProcesses, ollama: OllamaStandin):
        self.engine, self.named, self.ollama = engine, named, ollama
        self.stopping = threading.Event()
        self.containers_started = self.containers_removed = 0
        self.processes_started = self.processes_stopped = 0
        self.models_loaded = 0
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._containers, daemon=True),
                         threading.Thread(target=self._processes, daemon=True),
                         threading.Thread(target=self._models, daemon=True)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self._threads:
            thread.join(120)

    def _containers(self) -> None:
        running: list[str] = []
        number = 0
        try:
            while not self.stopping.is_set():
                number += 1
                running.append(self.engine.run(f"churn-{number}", "redis:7", hold_mb=2 + number % 5))
                self.containers_started += 1
                if len(running) > 3:
                    self.engine.client.api.remove_container(running.pop(0), force=True)
                    self.containers_removed += 1
                self.stopping.wait(1.0)
        except Exception as exc:  # noqa: BLE001 - shown by the test
            self.errors.append(f"containers: {type(exc).__name__}: {exc}")
        finally:
            for container in running:
                try:
                    self.engine.client.api.remove_container(container, force=True)
                except Exception:  # noqa: BLE001 - cleaning up
                    pass

    def _processes(self) -> None:
        try:
            while not self.stopping.is_set():
                self.named.start(hold_mb=10)
                self.processes_started += 1
                if len(self.named.processes) > 3:
                    self.named.stop(self.named.processes[0])
                    self.processes_stopped += 1
                self.stopping.wait(0.5)
        except Exception as exc:  # noqa: BLE001 - shown by the test
            self.errors.append(f"processes: {type(exc).__name__}: {exc}")

    def _models(self) -> None:
        while not self.stopping.wait(0.2):
            self.models_loaded += 1
            self.ollama.load(f"churn-model-{self.models_loaded}:7b", size=10**9 + self.models_loaded)
            # Removed, not just unloaded: the installed models stay a few, as on a real machine.
            self.ollama.remove(f"churn-model-{self.models_loaded - 3}:7b")
        for number in range(self.models_loaded - 2, self.models_loaded + 1):
            self.ollama.remove(f"churn-model-{number}:7b")


@pytest.mark.timeout(1800)  # some 4 minutes on an idle 2-core machine; room for a busy one
def test_ten_thousand_scrapes_with_changing_containers_and_processes(sources, tmp_path):
    named = NamedProcesses("swift-frontend")
    samples: list[dict] = []
    seen_containers: set[str] = set()
    process_counts: set[float] = set()
    seen_models: set[str] = set()
    try:
        with ExporterProcess(config_for(sources)) as exporter, \
                Churn(sources["docker"], named, sources["ollama"]) as churn:
            process = psutil.Process(exporter.process.pid)
            started = time.monotonic()
            with httpx.Client(timeout=30) as client:
                for number in range(1, LONG_RUN_SCRAPES + 1):
                    families = check_page(client.get(f"{exporter.url}/metrics"))
                    seen_containers.update(s.labels["name"] for s in families["aitools_container_memory_usage_bytes"])
                    process_counts.update(s.value for s in families["aitools_process_group_processes"])
                    seen_models.update(s.labels["model"] for s in families["aitools_llm_model_loaded_bytes"])
                    if number % RSS_EVERY == 0:
                        samples.append({"scrapes": number, "seconds": round(time.monotonic() - started, 1),
                                        "rss_mib": round(process.memory_info().rss / MiB, 2),
                                        "threads": process.num_threads()})
            log = exporter.log()
        elapsed = time.monotonic() - started
    finally:
        named.close()

    by_scrape = {sample["scrapes"]: sample["rss_mib"] for sample in samples}
    figures = {
        "scrapes": LONG_RUN_SCRAPES, "seconds": round(elapsed, 1),
        "scrapes_per_second": round(LONG_RUN_SCRAPES / elapsed, 1),
        "containers_started": churn.containers_started, "containers_removed": churn.containers_removed,
        "distinct_containers_seen": len(seen_containers),
        "swift_frontend_started": churn.processes_started, "swift_frontend_stopped": churn.processes_stopped,
        "swift_frontend_counts_seen": sorted(process_counts),
        "ollama_models_loaded": churn.models_loaded, "distinct_models_seen": len(seen_models),
        "rss_every_1000": samples,
    }
    flat = None
    if WARM_UP_SCRAPES in by_scrape:
        flat = round(samples[-1]["rss_mib"] - by_scrape[WARM_UP_SCRAPES], 2)
        figures["rss_growth_after_warm_up_mib"] = flat
    report(tmp_path, "long_run", figures,
           f"{LONG_RUN_SCRAPES} scrapes in {elapsed:.0f}s; RSS MiB every {RSS_EVERY}: "
           + ", ".join(f"{sample['rss_mib']:.1f}" for sample in samples)
           + (f"; growth after {WARM_UP_SCRAPES} scrapes: {flat:+.2f} MiB" if flat is not None else ""))

    assert not churn.errors, churn.errors
    # Things did change during the run, and the exporter saw them change.
    assert churn.containers_started >= 5 and len(seen_containers) >= 5, figures
    assert churn.processes_started >= 5 and len(process_counts) >= 2, figures
    assert len(seen_models) >= 10, figures
    assert "Traceback" not in log
    if flat is not None:
        assert flat < FLAT_RSS_LIMIT / MiB, figures
        thread_counts = [sample["threads"] for sample in samples]
        assert max(thread_counts[1:]) - min(thread_counts[1:]) <= LOAD_THREAD_SLACK, thread_counts
