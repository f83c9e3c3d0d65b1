"""The real exporter as users run it: `aitools-exporter` in a process of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ExporterProcess:
    """Starts `python -m exporter` (the console script's code) with a config text; stop() ends it."""

    def __init__(self, config_text: str | None = None, args: tuple[str, ...] = (), env: dict | None = None,
                 port: int | None = None):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.folder = Path(tempfile.mkdtemp(prefix="aitools-exporter-"))
        self.log_path = self.folder / "exporter.log"
        command = [sys.executable, "-m", "exporter", "--web.listen-address", self.address]
        if config_text is not None:
            config_path = self.folder / "config.yml"
            config_path.write_text(config_text)
            command += ["--config.file", str(config_path)]
        command += list(args)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 20) -> "ExporterProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exporter exited with {self.process.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"exporter did not answer within {timeout}s: {self.log()}")

    def scrape(self, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.url}/metrics", timeout=kwargs.pop("timeout", 15), **kwargs)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def __enter__(self) -> "ExporterProcess":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
