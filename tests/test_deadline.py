"""One deadline: every backend slow just under, then just over the timeout.

Node (a real node process answering late), Ollama and LM Studio (stand-ins answering their
headers late), Docker (an engine stand-in on a unix socket listing its containers late) and
the macOS system path (vm_stat, then sysctl, each taking half the delay: they share the
deadline, so together they cannot take twice the timeout). Under the timeout every value is
there; over it every slow source fails; either way the scrape ends by the timeout plus a
small constant (it was timeout + 0.5 s in the scraper, and 2x timeout for vm_stat + sysctl).
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from exporter.app import build_sources
from exporter.config import Config, NodeTarget
from exporter.scrape import SCRAPE_MARGIN_SECONDS, Scraper
from tests.parts.llm_standins import LMStudioStandin, OllamaStandin

TIMEOUT = 1.0
# The scraper's hand-over (SCRAPE_MARGIN_SECONDS) and building the page, with room for a busy machine.
SMALL_CONSTANT = 0.3
DATA = Path(__file__).parent / "data"
CONTAINER_ID = "c0ffee" * 10 + "c0de"


class _EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path.endswith("/containers/json"):
            time.sleep(self.server.delay)
            body = [{"Id": CONTAINER_ID, "Names": ["/db"], "Image": "postgres:15", "Labels": {}}]
        elif path.endswith("/stats"):
            body = {"memory_stats": {"usage": 123_000_000, "limit": 2**62, "stats": {"inactive_file": 3_000_000}}}
        elif path.endswith("/info"):
            body = {"MemTotal": 64 * 2**30}
        elif path.endswith("/version"):
            body = {"ApiVersion": "1.41"}
        else:
            body = {"message": "no"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


class EngineStandin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str):
        self.delay = 0.0
        super().__init__(path, _EngineHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def handle_error(self, request, client_address):
        pass  # the exporter gave up at its deadline: expected here


@pytest.fixture
def slow_everything(tmp_path, monkeypatch, node_steady):
    engine = EngineStandin(str(tmp_path / "docker.sock"))
    ollama, lmstudio = OllamaStandin().start(), LMStudioStandin().start()
    ollama.load("llama3.1:8b", size=4_900_000_000)
    lmstudio.load("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def set_delay(seconds: float) -> Config:
        engine.delay = ollama.header_delay = lmstudio.header_delay = seconds
        half = seconds / 2
        for name, output in (("vm_stat", f"cat '{DATA / 'vm_stat_apple_silicon.txt'}'"), ("sysctl", "echo 2")):
            script = bin_dir / name
            script.write_text(f"#!/bin/sh\nsleep {half:.2f}\n{output}\n")
            script.chmod(0o755)
        return Config(node_targets=(NodeTarget("api", url=node_steady.url(f"/fail/slow?ms={int(seconds * 1000)}")),),
                      docker_host=f"unix://{tmp_path / 'docker.sock'}", ollama_url=ollama.url,
                      lmstudio_url=lmstudio.url, llamacpp_url=None, system_source="vm_stat", timeout=TIMEOUT)

    yield set_delay
    engine.shutdown()
    engine.server_close()
    ollama.stop()
    lmstudio.stop()


def scrape(config: Config) -> tuple[dict, float, dict]:
    scraper = Scraper(build_sources(config), config.timeout)
    started = time.monotonic()
    families = scraper.collect_once()
    took = time.monotonic() - started
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return samples, took, scraper.last_errors()


def success(samples: dict, collector: str) -> float:
    return samples[("aitools_collector_success", (("collector", collector),))]


def test_every_backend_just_under_the_timeout_gives_every_value_in_time(slow_everything):
    samples, took, errors = scrape(slow_everything(0.7 * TIMEOUT))
    assert took < TIMEOUT + SMALL_CONSTANT
    assert {name: error for name, error in errors.items() if error} == {}
    for collector in ("node", "docker", "ollama", "lmstudio", "system", "process"):
        assert success(samples, collector) == 1, (collector, errors)
    assert samples[("aitools_node_heap_used_bytes", (("target", "api"),))] > 2**20
    assert samples[("aitools_container_memory_usage_bytes", (("compose_project", ""), ("compose_service", ""),
                    ("family", "postgres"), ("image", "postgres:15"), ("name", "db")))] == 120_000_000
    assert samples[("aitools_llm_model_loaded_bytes", (("model", "llama3.1:8b"), ("server", "ollama")))] == 4.9e9
    assert samples[("aitools_llm_model_loaded_bytes", (("model", "qwen/qwen3-4b-2507"), ("server", "lmstudio")))] == 2.5e9
    assert samples[("aitools_system_page_size_bytes", ())] == 16384
    assert samples[("aitools_system_memory_pressure_level", ())] == 2  # vm_stat then sysctl: 0.7 s together


def test_every_backend_just_over_the_timeout_ends_the_scrape_at_the_timeout(slow_everything):
    samples, took, errors = scrape(slow_everything(1.5 * TIMEOUT))
    assert took < TIMEOUT + SMALL_CONSTANT, took
    for collector in ("node", "docker", "ollama", "lmstudio"):
        assert success(samples, collector) == 0, (collector, errors)
    assert errors["ollama"].endswith(f"timed out after {TIMEOUT:g}s")
    assert errors["node"].endswith(f"no answer within {TIMEOUT:g}s")
    assert samples[("aitools_node_target_up", (("target", "api"),))] == 0
    assert samples[("aitools_llm_server_up", (("server", "ollama"),))] == 0  # yielded before the deadline
    # vm_stat (0.75 s) answered; sysctl had the 0.25 s left and was stopped there: no pressure, no 1.5 s.
    assert success(samples, "system") == 1
    assert ("aitools_system_memory_pressure_level", ()) not in samples
    assert SCRAPE_MARGIN_SECONDS <= 0.1
