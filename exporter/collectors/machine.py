"""The machine the collectors read: this one, or a recording of one.

Every read of the outside world a scrape makes goes through the current machine: the
commands it runs (`vm_stat`, `sysctl -n`, `ioreg`), the files it reads (/proc/meminfo,
cgroup files, /proc/PID/smaps), the answers of its HTTP sources (httpclient.Client with a
`source` name), the process table's reader (proctable), the platform whose rules apply, and
a server process's environment (the model-fit estimate).

- `Live`: this machine.
- `Recorder`: this machine, keeping everything it answers in a Recording
  (exporter/recording.py: what it keeps and redacts) for `aitools-exporter record DIR`.
- `Replay`: a Recording's answers, for `serve --replay DIR` and `snapshot --replay DIR`: the
  same collectors with the recorded platform's logic, on any machine. What a recording does
  not hold is absent, as on a machine that lacks it (a command not found, a file missing, a
  source not running).

One machine per process: `use()` sets it before the collectors are built.
"""

from __future__ import annotations

import os
import platform as platform_module
import shutil
import subprocess
import sys
import threading

from exporter.collectors.base import CollectorError, Deadline, read_small_file, run_bounded
from exporter.recording import (Answer, Command, Process, Recording, command_key, http_key, kept_environment,
                                numbers_only, prune_docker, redact_arguments)

PLATFORM = "darwin" if sys.platform == "darwin" else "linux" if sys.platform.startswith("linux") else sys.platform


class Live:
    """This machine."""

    replaying = False

    def __init__(self) -> None:
        self.platform = PLATFORM
        self.arch = platform_module.machine()
        self.own_pid = os.getpid()

    @property
    def apple_silicon(self) -> bool:
        return self.platform == "darwin" and self.arch == "arm64"

    def memory_total(self) -> int:
        import psutil

        return psutil.virtual_memory().total

    def process_environment(self, names: tuple[str, ...], argument: str, prefix: str) -> dict[str, str]:
        """The environment (names starting with `prefix`) of the user's own process named one
        of `names` whose first argument is `argument` (`ollama serve`), where the OS lets us
        read it; {} else."""
        pid, found = self._process_environment(names, argument)
        return {key: value[:64] for key, value in found.items() if key.startswith(prefix)}

    def _process_environment(self, names: tuple[str, ...], argument: str) -> tuple[int | None, dict[str, str]]:
        import psutil

        me = os.getuid() if hasattr(os, "getuid") else None
        for process in psutil.process_iter(["name"]):
            if process.info.get("name") not in names:
                continue
            try:
                if argument not in process.cmdline()[1:2] or (me is not None and process.uids().real != me):
                    continue
                return process.pid, dict(process.environ())
            except (psutil.Error, OSError):
                continue
        return None, {}

    def run(self, argv: list[str], deadline: Deadline, limit: int = 2**20) -> subprocess.CompletedProcess:
        """Run a program found on PATH by its name, within the deadline (base.run_bounded);
        FileNotFoundError when there is none."""
        path = shutil.which(argv[0])
        if path is None:
            raise FileNotFoundError(f"{argv[0]} not found on PATH")
        return run_bounded([path, *argv[1:]], deadline, limit)

    def read_file(self, path: str, size: int = 4096, limit: int = 2**20) -> bytes:
        """A small kernel file (/proc/meminfo, a cgroup file): base.read_small_file."""
        return read_small_file(path, size, limit)

    def read_to_end(self, path: str, limit: int) -> bytes:
        """A file the kernel writes a little per read (/proc/PID/smaps), read to its end, at
        most `limit` bytes."""
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks, total = [], 0
            while total < limit and (chunk := os.read(fd, min(256 * 1024, limit - total))):
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # What a Recorder keeps; nothing here.
    def recorded_http(self, source: str, method: str, target: str, status: int, body: bytes) -> None:
        pass

    def recorded_processes(self, processes) -> None:
        pass


class Recorder(Live):
    """This machine, keeping what it answers (redacted as exporter/recording.py says)."""

    def __init__(self, patterns=(), config_text: str | None = None) -> None:
        super().__init__()
        self.recording = Recording(self.platform, config_text=config_text, own_pid=self.own_pid)
        self.patterns = tuple(patterns)
        self._lock = threading.Lock()

    def run(self, argv: list[str], deadline: Deadline, limit: int = 2**20) -> subprocess.CompletedProcess:
        done = super().run(argv, deadline, limit)
        with self._lock:
            self.recording.commands[command_key(argv)] = Command(done.stdout.decode("utf-8", "replace"),
                                                                 done.stderr.decode("utf-8", "replace"),
                                                                 done.returncode)
        return done

    def read_file(self, path: str, size: int = 4096, limit: int = 2**20) -> bytes:
        return self._kept(path, super().read_file(path, size, limit))

    def read_to_end(self, path: str, limit: int) -> bytes:
        return self._kept(path, super().read_to_end(path, limit))

    def _kept(self, path: str, data: bytes) -> bytes:
        with self._lock:
            self.recording.files[path] = data.decode("utf-8", "replace")
        return data

    def _process_environment(self, names: tuple[str, ...], argument: str) -> tuple[int | None, dict[str, str]]:
        pid, found = super()._process_environment(names, argument)
        if pid is not None:
            with self._lock:
                self.recording.environment[pid] = kept_environment(found)
        return pid, found

    def recorded_http(self, source: str, method: str, target: str, status: int, body: bytes) -> None:
        import json

        try:
            document = json.loads(body)
        except ValueError:
            document = body.decode("utf-8", "replace")
        if source == "docker":
            document = prune_docker(target, document)
        elif source.startswith("node:"):
            document = numbers_only(document) if not isinstance(document, str) else _prometheus_heap_lines(document)
        with self._lock:
            self.recording.http[http_key(source, method, target)] = Answer(status, document)

    def recorded_processes(self, processes) -> None:
        kept = [Process(proc.pid, proc.ppid, proc.name,
                        redact_arguments(proc.cmdline.split(" "), self.patterns) if proc.cmdline else None,
                        proc.resident,
                        footprint=proc.memory if proc.figure == "footprint" else None,
                        anonymous=proc.memory if proc.figure == "resident_less_shared" else None)
                for proc in processes]
        with self._lock:
            self.recording.processes = kept


def _prometheus_heap_lines(text: str) -> str:
    """Of a prom-client page, the lines the Node collector reads (the heap's)."""
    return "\n".join(line for line in text.splitlines() if line.startswith(("nodejs_heap", "# TYPE nodejs_heap",
                                                                            "process_resident_memory_bytes"))) + "\n"


class Replay(Live):
    """A recording's answers."""

    replaying = True

    def __init__(self, recording: Recording) -> None:
        super().__init__()
        self.recording = recording
        self.platform = recording.platform
        self.arch = recording.arch
        self.own_pid = recording.own_pid if recording.own_pid is not None else -1

    def run(self, argv: list[str], deadline: Deadline, limit: int = 2**20) -> subprocess.CompletedProcess:
        deadline.remaining()  # TimeoutError once the scrape's time is up, as a live run
        found = self.recording.commands.get(command_key(argv))
        if found is None:
            raise FileNotFoundError(f"{argv[0]} not found on PATH (not in the recording)")
        return subprocess.CompletedProcess(argv, found.returncode, found.stdout.encode()[:limit],
                                           found.stderr.encode()[:limit])

    def read_file(self, path: str, size: int = 4096, limit: int = 2**20) -> bytes:
        found = self.recording.files.get(path)
        if found is None:
            raise FileNotFoundError(2, "not in the recording", path)
        return found.encode("utf-8")[:limit]

    def read_to_end(self, path: str, limit: int) -> bytes:
        return self.read_file(path, limit=limit)

    def memory_total(self) -> int:
        for key in ("sysctl -n hw.memsize",):
            found = self.recording.commands.get(key)
            if found is not None and found.stdout.strip().isdigit():
                return int(found.stdout.strip())
        for line in self.recording.files.get("/proc/meminfo", "").splitlines():
            if line.startswith("MemTotal:") and line.split()[1].isdigit():
                return int(line.split()[1]) * 1024
        return 0

    def _process_environment(self, names: tuple[str, ...], argument: str) -> tuple[int | None, dict[str, str]]:
        # The recorder kept the environment of the one process it matched (its arguments are
        # redacted in the recording): that process, by its name.
        names_by_pid = {process.pid: process.name for process in self.recording.processes}
        for pid, environment in self.recording.environment.items():
            if names_by_pid.get(pid) in names:
                return pid, dict(environment)
        return None, {}

    def answer(self, source: str, method: str, target: str) -> tuple[int, bytes] | None:
        """(status, body) of a recorded answer; None when the recording has none (the source
        was not running, or not asked)."""
        import json

        found = self.recording.http.get(http_key(source, method, target))
        if found is None:
            return None
        body = found.body if isinstance(found.body, str) else json.dumps(found.body)
        return found.status, body.encode("utf-8")


def run_tool(argv: list[str], deadline: Deadline, limit: int = 2**20) -> bytes:
    """What a tool the collectors run (vm_stat, ioreg) printed, or CollectorError in its words:
    not found on PATH (FileNotFoundError's message), cut by the deadline, failed."""
    name = argv[0]
    try:
        result = current().run(argv, deadline, limit)
    except FileNotFoundError:
        raise ToolMissing(f"{name} not found on PATH") from None
    except TimeoutError:
        raise CollectorError(f"{name} did not finish within {deadline.seconds:g}s") from None
    except OSError as exc:
        raise CollectorError(f"{name} failed: {exc}") from None
    if result.returncode != 0:
        raise CollectorError(f"{name} failed: exit status {result.returncode}")
    return result.stdout


class ToolMissing(CollectorError):
    """The tool is not on this machine's PATH (or not in the recording)."""


_current: Live = Live()


def current() -> Live:
    return _current


def use(machine: Live) -> Live:
    """Make `machine` the one the collectors read (before they are built); returns it."""
    global _current
    _current = machine
    return machine
