"""Real Node.js processes that serve their own memory figures (tests/parts/node/memory_server.js).

Usable outside pytest (an end-to-end test, a benchmark):

    with node_process(mode="leaky", leak_bytes_per_second=20 * 2**20, inspector=True) as node:
        node.url("/memory")         # JSON.stringify(process.memoryUsage())
        node.url("/nested")         # the same deep inside a larger document, with v8 heap statistics
        node.url("/metrics")        # prom-client style text
        node.inspector_address      # "127.0.0.1:PORT" of --inspect
        node.get_json("/last-served")  # exactly what those endpoints last answered

The fixtures below wrap them for pytest; without `node` on PATH they skip (locally)
or fail (under CI=true).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

SERVER_SCRIPT = Path(__file__).with_name("node") / "memory_server.js"
STARTUP_TIMEOUT_SECONDS = 15.0


class NodeStartError(RuntimeError):
    pass


@dataclass(eq=False)
class NodeProcess:
    process: subprocess.Popen
    http_port: int
    inspector_address: str | None  # host:port, when started with the inspector
    log_path: Path
    _log_dir: tempfile.TemporaryDirectory = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str = "/memory") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get_json(self, path: str):
        response = httpx.get(self.url(path), timeout=5, trust_env=False)
        response.raise_for_status()
        return response.json()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        _running.discard(self)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_dir.cleanup()


# Every process started and not yet stopped: a script that forgets stop() leaves none behind.
_running: set[NodeProcess] = set()


@atexit.register
def _stop_all() -> None:
    for node in list(_running):
        node.stop()


def node_binary() -> str | None:
    return shutil.which("node")


def start_node_process(
    *,
    mode: str = "steady",
    leak_bytes_per_second: int = 10 * 2**20,
    leak_cap_bytes: int = 512 * 2**20,
    inspector: bool = False,
    max_old_space_size_mib: int | None = None,
) -> NodeProcess:
    """Start a memory server and return once its HTTP endpoint (and inspector) answer.

    mode "steady" holds its memory still; "leaky" retains leak_bytes_per_second more
    heap every second, up to leak_cap_bytes, and stays alive.
    """
    node = node_binary()
    if node is None:
        raise NodeStartError("node is not on PATH")
    command = [node]
    if max_old_space_size_mib is not None:
        command.append(f"--max-old-space-size={max_old_space_size_mib}")
    if inspector:
        # Port 0: the inspector picks a free port itself (no race with other tests) and
        # the script reports it from inspector.url().
        command.append("--inspect=127.0.0.1:0")
    command += [str(SERVER_SCRIPT), f"--mode={mode}",
                f"--leak-bytes-per-second={leak_bytes_per_second}", f"--leak-cap-bytes={leak_cap_bytes}"]

    log_dir = tempfile.TemporaryDirectory(prefix="aitools-node-")
    log_path = Path(log_dir.name) / "node.log"
    # stderr goes to a file: the inspector writes "Debugger attached." on every
    # connection, which would fill a pipe nobody reads and block the process.
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=log_file, env={**os.environ, "NODE_OPTIONS": ""})
    started = None
    try:
        ready = _read_ready_line(process, STARTUP_TIMEOUT_SECONDS)
        inspector_address = None
        if inspector:
            if not ready.get("inspectorUrl"):
                raise NodeStartError("the inspector did not start")
            inspector_address = urlsplit(ready["inspectorUrl"]).netloc
        started = NodeProcess(process, int(ready["httpPort"]), inspector_address, log_path, log_dir)
        _running.add(started)
        _wait_until_answering(started, STARTUP_TIMEOUT_SECONDS)
        return started
    except BaseException as exc:
        log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        if started is not None:
            started.stop()
        else:
            process.kill()
            process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
            log_dir.cleanup()
        if isinstance(exc, NodeStartError):
            raise NodeStartError(f"{exc}; node said: {log.strip() or '(nothing)'}") from None
        raise


def _read_ready_line(process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()
                if not line:
                    raise NodeStartError(f"node exited with status {process.wait(timeout=5)} before listening")
                return json.loads(line)
            if process.poll() is not None:
                raise NodeStartError(f"node exited with status {process.returncode} before listening")
    raise NodeStartError(f"node did not listen within {timeout:g}s")


def _wait_until_answering(node: NodeProcess, timeout: float) -> None:
    urls = [node.url("/memory")]
    if node.inspector_address:
        urls.append(f"http://{node.inspector_address}/json/list")
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise NodeStartError(f"{url} did not answer within {timeout:g}s")
            time.sleep(0.05)


@contextlib.contextmanager
def node_process(**options) -> Iterator[NodeProcess]:
    """start_node_process(**options), stopped and cleaned up on leaving the block."""
    node = start_node_process(**options)
    try:
        yield node
    finally:
        node.stop()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connection is refused: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _start_or_missing(**options) -> NodeProcess:
    from tests.conftest import missing_realpart

    if node_binary() is None:
        missing_realpart("node (Node.js) is not on PATH")
    try:
        return start_node_process(**options)
    except NodeStartError as exc:
        missing_realpart(f"cannot start a Node process: {exc}")


@pytest.fixture(scope="module")
def node_steady():
    """A steady Node process with the inspector on and --max-old-space-size=3072 (shared by a module's tests)."""
    node = _start_or_missing(mode="steady", inspector=True, max_old_space_size_mib=3072)
    yield node
    node.stop()


@pytest.fixture
def node_leaky():
    """A Node process whose heap grows 20 MiB a second (up to 512 MiB), with the inspector on."""
    node = _start_or_missing(mode="leaky", leak_bytes_per_second=20 * 2**20, inspector=True)
    yield node
    node.stop()


@pytest.fixture
def start_node():
    """Factory: start_node(**options) -> NodeProcess; all are stopped at the end of the test."""
    started: list[NodeProcess] = []

    def start(**options) -> NodeProcess:
        node = _start_or_missing(**options)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def refused_url():
    """An http:// URL on loopback where the connection is refused."""
    with refused_port() as port:
        yield f"http://127.0.0.1:{port}/memory"
