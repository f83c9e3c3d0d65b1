"""Real processes named like the user's applications, holding a known amount of memory.

Copies of the real Python interpreter under the names the apps collector recognises
(`Cursor`, `Cursor Helper (Renderer)`, `swift-frontend`, ...): the kernel names a
process after the file it runs. A process can start children (copies too), so that
trees like Cursor's and Xcode's are real process trees.
"""

from __future__ import annotations

import json
import os
import shutil
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

# Holds MB MiB of touched (anonymous, private) memory, starts its children, then sleeps.
# "ready" goes out in one write: the tree shares one pipe, and print() under PYTHONUNBUFFERED
# writes the text and its newline apart, so that two processes' lines could interleave.
SCRIPT = """
import json, os, subprocess, sys, time
mb, children = int(sys.argv[1]), json.loads(sys.argv[2])
held = bytearray(b"\\x01") * (mb * 2**20)
kids = [subprocess.Popen(child) for child in children]
os.write(1, b"ready\\n")
time.sleep(600)
"""



def readable(fd: int, timeout: float) -> bool:
    """Whether fd has something to read within timeout; poll(), not select(): the process
    walk keeps thousands of descriptors open, so new ones are numbered above select's 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))

class AppProcesses:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aitools-apps-"))
        self.leaders: list[subprocess.Popen] = []
        self._interpreter = os.path.realpath(sys.executable)

    def binary(self, name: str) -> str:
        path = self.folder / name
        if not path.exists():
            shutil.copy2(self._interpreter, path)
        return str(path)

    def command(self, name: str, mb: int, children=(), tag: str = "") -> list[str]:
        """argv of a copy named `name` holding mb MiB; children: commands from command();
        tag: words added to its command line (e.g. an ML service's module name)."""
        argv = [self.binary(name), "-c", SCRIPT + (f"# {tag}\n" if tag else ""), str(mb), json.dumps(list(children))]
        return argv

    def start(self, name: str, mb: int, children=(), tag: str = "", expect: int = 1,
              orphan: bool = False) -> psutil.Process:
        """Starts a tree; returns its root once every one of its `expect` processes holds its
        memory. orphan: started by a shell that exits at once, so that the tree has no
        ancestor of this test's (whose app it would take)."""
        env = dict(os.environ, PYTHONHOME=sys.base_prefix)  # the copies sit outside the interpreter's prefix
        argv = self.command(name, mb, children, tag)
        if orphan:
            argv = ["sh", "-c", '"$@" & echo $!', "sh", *argv]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        self.leaders.append(process)
        deadline = time.monotonic() + 120  # a loaded 2-core machine can be slow
        # The root prints ready once it holds its memory and has started its children; the
        # children print to the same pipe (an orphan's shell first prints the root's pid).
        # A child that fails leaves the pipe open (the others hold it): wait with a
        # deadline, not for end of file.
        fd, output = process.stdout.fileno(), b""
        while output.count(b"ready\n") < expect or (orphan and b"\n" not in output):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not readable(fd, remaining):
                self._kill(process)
                raise RuntimeError(f"{name}: {output.count(b'ready')} of {expect} processes ready in time; "
                                   f"stderr: {process.stderr.read().decode(errors='replace')[-2000:]}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"{name} exited: {process.stderr.read().decode(errors='replace')}")
            output += chunk
        root = psutil.Process(int(output.split(b"\n", 1)[0]) if orphan else process.pid)
        return root

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for process in self.leaders:
            members = [p for p in psutil.process_iter() if _group_of(p) == process.pid]
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)
            # Gone, not just dying: the next test must not see them (even as zombies).
            psutil.wait_procs(members, timeout=10)
        self.leaders.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


@pytest.fixture
def app_processes():
    processes = AppProcesses()
    try:
        yield processes
    finally:
        processes.close()
