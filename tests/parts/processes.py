"""Real processes named swift-frontend that hold a known amount of memory (TESTING.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

HOLD_SCRIPT = "x = bytearray({mb} * 2**20); import time; time.sleep(600)"


class NamedProcesses:
    """Starts copies of the real Python interpreter under another name (swift-frontend by default)."""

    def __init__(self, name: str = "swift-frontend"):
        self.name = name
        self.folder = Path(tempfile.mkdtemp(prefix="aitools-procs-"))
        self.binary = self.folder / name
        # The real executable, not the venv's link or a shim, so that the kernel names the process after the copy.
        shutil.copy2(os.path.realpath(sys.executable), self.binary)
        self.processes: list[subprocess.Popen] = []

    def start(self, hold_mb: int = 50) -> psutil.Process:
        env = dict(os.environ, PYTHONHOME=sys.base_prefix)  # the copy sits outside the interpreter's prefix
        process = subprocess.Popen([str(self.binary), "-c", HOLD_SCRIPT.format(mb=hold_mb)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.processes.append(process)
        handle = psutil.Process(process.pid)
        deadline = time.monotonic() + 20
        while handle.memory_info().rss < hold_mb * 2**20:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {process.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not take {hold_mb} MB in time")
            time.sleep(0.05)
        return handle

    def stop(self, process: subprocess.Popen | None = None) -> None:
        for proc in [process] if process else list(self.processes):
            proc.kill()
            proc.wait(10)
            self.processes.remove(proc)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def swift_frontend():
    processes = NamedProcesses("swift-frontend")
    try:
        yield processes
    finally:
        processes.close()
