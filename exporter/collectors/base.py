"""What every source collector shares.

A source collector is a prometheus_client custom Collector: `collect(deadline)` builds
fresh metric families from its backend at every call and raises `CollectorError` (with a
one-line reason a person can act on) when the backend cannot be read.

One deadline: the scraper (exporter/scrape.py) makes one `Deadline` per scrape and hands
it to every collector; every blocking call a collector makes (a socket read or write, a
subprocess, a wait for its own workers) takes its timeout from `deadline.remaining()`, so
sub-calls share the time that is left instead of each getting the whole timeout. Called
without one (tests), a collector makes its own from its `timeout`.

Each collector is given its own section of the configuration (exporter/config.py) and the
timeout, never the whole configuration.

This is the bottom of the exporter's layers: it imports nothing of the exporter but the
configuration's types; every collector, the scraper and the app build on it.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import ClassVar

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import DEFAULT_TIMEOUT_SECONDS

# Sizes are int64 in every backend's API; anything larger is garbage, not a reading.
MAX_BYTE_COUNT = 2**63


class CollectorError(Exception):
    """The source could not be read; the message says why, in one line."""


class SourceNotRunning(CollectorError):
    """The source is simply not running (connection refused, no socket): a normal state on a
    workstation (Ollama not started, Docker Desktop quit, the dev server stopped), not a failure."""


class Deadline:
    """The moment a scrape's work must be done by, on the monotonic clock."""

    __slots__ = ("seconds", "at")

    def __init__(self, seconds: float, at: float | None = None):
        self.seconds = seconds
        self.at = time.monotonic() + seconds if at is None else at

    def left(self) -> float:
        """Seconds left, 0 once it has passed."""
        return max(0.0, self.at - time.monotonic())

    def remaining(self) -> float:
        """Seconds left for the next blocking call; TimeoutError once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {self.seconds:g}s")
        return left

    def passed(self) -> bool:
        return time.monotonic() >= self.at


class SourceCollector(Collector):
    name: ClassVar[str]

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.timeout = timeout

    def collect(self, deadline: Deadline | None = None) -> Iterable[Metric]:  # pragma: no cover - abstract
        raise NotImplementedError

    def deadline(self, deadline: Deadline | None) -> Deadline:
        """The scrape's deadline, or one of `timeout` from now when called on its own."""
        return deadline if deadline is not None else Deadline(self.timeout)


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def single(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge of one sample without labels."""
    family = gauge(name, documentation)
    family.add_metric([], float(value))
    return family


def byte_count(value: object, maximum: int = MAX_BYTE_COUNT) -> int | None:
    """`value` as a size in bytes when it is one: a non-negative integer below `maximum`
    (2.0 counts, 2.5, NaN, True and "2" do not); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value < maximum:
        return value
    return None


def read_small_file(path: str, size: int = 4096, limit: int = 2**20) -> bytes:
    """The whole of a small kernel file (/proc, cgroup), in as few system calls as it takes
    and without a file object around them: such files answer a read with all they have when
    the buffer is large enough, so a shorter answer than the buffer is the whole file.
    At most `limit` bytes (a command line can be long, never endless). OSError as open()."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_from_start(fd, size, limit)
    finally:
        os.close(fd)


def read_from_start(fd: int, size: int, limit: int) -> bytes:
    """An open small kernel file's whole content (at most `limit` bytes), read from offset 0:
    one pread when the file fits in `size` bytes."""
    data = os.pread(fd, size, 0)
    if len(data) < size:
        return data
    chunks, total = [data], len(data)
    while total < limit and (chunk := os.pread(fd, min(65536, limit - total), total)):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def run_bounded(argv: list[str], deadline: Deadline, limit: int = 2**20) -> subprocess.CompletedProcess:
    """Run a fixed argv (never a shell) with the time left until the deadline. At the deadline
    its whole process group is killed, so a child it started cannot keep the pipes (and the
    scrape) open past it: TimeoutError then. Output beyond `limit` bytes is cut."""
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=deadline.remaining())
    except (subprocess.TimeoutExpired, TimeoutError):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        process.communicate()
        raise TimeoutError(f"timed out after {deadline.seconds:g}s") from None
    return subprocess.CompletedProcess(argv, process.returncode, stdout[:limit], stderr[:limit])
