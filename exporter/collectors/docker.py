"""Memory of running containers, as `docker stats` shows it.

Only read-only engine endpoints are called, so a socket proxy in front of the engine
can allow just these:

- GET /version: API version negotiation, once per client;
- GET /info: the memory of the machine the containers run on (Docker Desktop: its VM),
  published as aitools_docker_vm_memory_limit_bytes and taken as the limit of a container
  that has none (read once per client and every few minutes);
- GET /containers/json: the running containers;
- GET /containers/{id}/stats?stream=false&one-shot=true: one sample per container.

aitools_docker_up is 1 when the engine answered the container list; a failure after
that (a stats call) fails the collector but leaves it at 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric

from exporter.collectors.base import (CollectorError, Deadline, SourceCollector, SourceNotRunning, byte_count, gauge,
                                      single)
from exporter.collectors.docker_api import Engine, EngineAPIError, EngineNotFound, MalformedEngineAnswer, version_lt
from exporter.collectors.httpclient import HTTPError, NotRunning
from exporter.collectors.machine import current
from exporter.config import DEFAULT_TIMEOUT_SECONDS, DockerSection
from exporter.workers import Workers

# The engine answers stats from a loop that samples the containers it is asked about
# once a second: plain stream=false waits for two of its rounds, one-shot for the next
# one (at once only when the loop was idle). Asked one after another, each container
# costs up to a second; asked all at once, they share a round. Hence one request per
# container, all in parallel, up to this many.
MAX_PARALLEL_STATS = 64
# A stats call ends at the deadline itself; this is the hand-over of its outcome.
HAND_OVER_SECONDS = 0.05
HOST_MEMORY_TTL_SECONDS = 300.0
ONE_SHOT_MIN_API_VERSION = "1.41"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
CONTAINER_LABELS = ("name", "image", "family", "compose_project", "compose_service")

_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit value; anything this large is none.
CGROUP_NO_LIMIT = 2**62


@dataclass(frozen=True)
class ContainerMemory:
    name: str
    image: str
    family: str
    compose_project: str
    compose_service: str
    usage_bytes: int
    limit_bytes: int | None  # None: the container has no memory limit

    @property
    def label_values(self) -> list[str]:
        return [self.name, self.image, self.family, self.compose_project, self.compose_service]


class MalformedAnswer(ValueError):
    """The engine answered, but not in the shape its API documents."""


# --- finding the engine -------------------------------------------------------------

def resolve_docker_host(env: Mapping[str, str], home: Path, platform: str,
                        system_socket: str = "/var/run/docker.sock") -> str:
    """The engine address the docker CLI would use: DOCKER_HOST, then the active
    context, then the platform's socket (the first that exists, else the usual one)."""
    if env.get("DOCKER_HOST"):
        return env["DOCKER_HOST"]
    config_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    context_host = _context_host(config_dir, env.get("DOCKER_CONTEXT"))
    if context_host:
        return context_host
    if platform == "win32":
        return "npipe:////./pipe/docker_engine"
    if platform == "darwin":
        candidates = [home / ".docker" / "run" / "docker.sock", Path(system_socket)]
    else:
        candidates = [Path(system_socket)]
        if env.get("XDG_RUNTIME_DIR"):
            candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "docker.sock")  # rootless Docker
    for socket_path in candidates:
        if socket_path.exists():
            return f"unix://{socket_path}"
    return f"unix://{candidates[0]}"


def _context_host(config_dir: Path, context_override: str | None) -> str | None:
    name = context_override or _dig(_read_json(config_dir / "config.json"), "currentContext")
    if not isinstance(name, str) or name in ("", "default"):
        return None
    for meta_file in sorted((config_dir / "contexts" / "meta").glob("*/meta.json")):
        meta = _read_json(meta_file)
        if _dig(meta, "Name") == name:
            host = _dig(meta, "Endpoints", "docker", "Host")
            return host if isinstance(host, str) and host else None
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dig(document: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


# --- reading the engine's answers ---------------------------------------------------

def image_family(image: str) -> str:
    """The repository's base name: registry, namespace, tag and digest removed.

    `registry.example.com:5000/org/postgres@sha256:...` -> `postgres`. An image ID (the
    list call gives one when the container's tag has since moved) has no family: ''.
    """
    reference = image.split("@", 1)[0]
    if _IMAGE_ID.fullmatch(reference):
        return ""
    return reference.rsplit("/", 1)[-1].split(":", 1)[0]


def memory_usage(memory_stats: Mapping[str, Any]) -> int:
    """Usage less inactive file cache, computed as the docker CLI does
    (calculateMemUsageUnixNoCache): total_inactive_file on cgroup v1, inactive_file on
    cgroup v2, and the plain usage when that would not be positive."""
    usage = _count(memory_stats.get("usage"), "memory_stats.usage")
    stats = memory_stats.get("stats") or {}
    if not isinstance(stats, dict):
        raise MalformedAnswer("memory_stats.stats is not an object")
    for key in ("total_inactive_file", "inactive_file"):
        if key in stats:
            inactive = _count(stats[key], f"memory_stats.stats.{key}")
            if inactive < usage:
                return usage - inactive
    return usage


def container_memory(summary: Mapping[str, Any], stats: Mapping[str, Any], host_memory: int) -> ContainerMemory | None:
    """One container's reading from its list entry and its stats; None when it is no
    longer running (the engine then answers stats with an empty memory_stats)."""
    memory_stats = stats.get("memory_stats")
    if not isinstance(memory_stats, dict):
        raise MalformedAnswer("container stats without memory_stats")
    if "usage" not in memory_stats:
        return None
    # With no limit set, the engine reports the host's memory as the limit.
    limit = _count(memory_stats.get("limit", 0), "memory_stats.limit")
    return _with_labels(summary, memory_usage(memory_stats), limit if 0 < limit < host_memory else None)


def _with_labels(summary: Mapping[str, Any], usage_bytes: int, limit_bytes: int | None) -> ContainerMemory:
    labels = summary.get("Labels")
    labels = labels if isinstance(labels, dict) else {}
    image = str(summary.get("Image") or "")
    return ContainerMemory(
        name=_container_name(summary),
        image=image,
        family=image_family(image),
        compose_project=_text(labels.get(COMPOSE_PROJECT_LABEL)),
        compose_service=_text(labels.get(COMPOSE_SERVICE_LABEL)),
        usage_bytes=usage_bytes,
        limit_bytes=limit_bytes,
    )


def cgroup_memory(root: Path, container_id: str) -> tuple[int, int | None] | None:
    """(usage as docker stats computes it, limit or None) from the container's memory
    cgroup, as the engine itself reads it; None when no cgroup of that id is visible."""
    if not _CONTAINER_ID.fullmatch(container_id):
        return None
    read = _read_small
    base = str(root)
    candidates = (  # cgroupfs and systemd drivers, cgroup v1 and v2
        f"{base}/memory/docker/{container_id}/",
        f"{base}/memory/system.slice/docker-{container_id}.scope/",
        f"{base}/system.slice/docker-{container_id}.scope/",
        f"{base}/docker/{container_id}/",
    )
    # Read at every scrape for every container: plain reads, no probing and no Path objects.
    for directory in candidates:
        try:
            try:  # v1
                usage = int(read(directory + "memory.usage_in_bytes"))
                limit = int(read(directory + "memory.limit_in_bytes"))
                inactive_key = b"total_inactive_file"
            except (FileNotFoundError, NotADirectoryError):  # v2, or no cgroup here
                try:
                    usage = int(read(directory + "memory.current"))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                raw_limit = read(directory + "memory.max").strip()
                limit = CGROUP_NO_LIMIT if raw_limit == b"max" else int(raw_limit)
                inactive_key = b"inactive_file"
            inactive = _memory_stat_value(read(directory + "memory.stat"), inactive_key)
        except (OSError, ValueError):
            return None  # gone mid-read, or not ours to read: the API answers instead
        memory_stats = {"usage": usage, "stats": {inactive_key.decode(): inactive}}
        return memory_usage(memory_stats), (limit if 0 < limit < CGROUP_NO_LIMIT else None)
    return None


def _read_small(path: str) -> bytes:
    """A cgroup file: cgroupfs answers a read with all it has when the buffer holds it."""
    return current().read_file(path, 8192)


def _memory_stat_value(text: bytes, key: bytes) -> int:
    """The value of `key` in a memory.stat file ("key value" lines); 0 when it has none."""
    padded = b"\n" + text
    at = padded.find(b"\n" + key + b" ")
    if at < 0:
        return 0
    start = at + len(key) + 2
    end = padded.find(b"\n", start)
    return int(padded[start:] if end < 0 else padded[start:end])


def _text(value: Any) -> str:
    """A label's value as the API documents it (a string), or '' when it is not one."""
    return value if isinstance(value, str) else ""


def _container_name(summary: Mapping[str, Any]) -> str:
    names = summary.get("Names")
    names = [name.lstrip("/") for name in names if isinstance(name, str)] if isinstance(names, list) else []
    # Legacy links add names like /other/alias; the container's own name has no '/'.
    own = [name for name in names if "/" not in name]
    return (own or names or [str(summary.get("Id", ""))[:12]])[0]


def _count(value: Any, what: str) -> int:
    count = byte_count(value) if isinstance(value, int) else None  # the engine writes integers
    if count is None:
        raise MalformedAnswer(f"{what} is not a byte count: {value!r}")
    return count


def _running_containers(answer: Any) -> list[dict]:
    if not isinstance(answer, list) or not all(isinstance(item, dict) and item.get("Id") for item in answer):
        raise MalformedAnswer("GET /containers/json did not give a list of containers")
    return answer


def _host_memory(info: Any) -> int:
    total = _dig(info, "MemTotal")
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        raise MalformedAnswer(f"GET /info gave no MemTotal: {total!r}")
    return total


# --- the collector ------------------------------------------------------------------

class DockerCollector(SourceCollector):
    name = "docker"

    def __init__(self, section: DockerSection = DockerSection(), timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(timeout)
        self.section = section
        self.host: str | None = None
        self._client: Engine | None = None
        self._host_memory: int | None = None
        self._host_memory_read_at = 0.0
        self.cgroup_root: Path | None = CGROUP_ROOT if CGROUP_ROOT.is_dir() else None
        # Asks for every container's stats at once (each call keeps to the deadline itself).
        self._pool = Workers(MAX_PARALLEL_STATS, "docker")

    def collect(self, deadline: Deadline | None = None) -> Iterator[Metric]:
        # The scrape orchestrator keeps families yielded before a CollectorError, so
        # aitools_docker_up is published on failure too.
        deadline = self.deadline(deadline)
        up = gauge("aitools_docker_up", "1 when the Docker engine answered.")
        try:
            client = self._connected_client(deadline)
            listed = _running_containers(
                self._call("GET /containers/json", client.containers, deadline, filters={"status": "running"}))
        except (CollectorError, MalformedAnswer) as exc:
            self._drop_client()
            up.add_metric([], 0)
            yield up
            raise self._as_collector_error(exc) from None
        up.add_metric([], 1)
        yield up

        try:
            readings = self._read_containers(client, listed, deadline)
        except (CollectorError, MalformedAnswer) as exc:
            self._drop_client()
            raise self._as_collector_error(exc) from None
        usage = gauge("aitools_container_memory_usage_bytes",
                      "Container memory as docker stats shows it: usage less inactive file cache.",
                      CONTAINER_LABELS)
        limit = gauge("aitools_container_memory_limit_bytes",
                      "The container's memory limit; absent when it has none.", CONTAINER_LABELS)
        for reading in readings:
            usage.add_metric(reading.label_values, reading.usage_bytes)
            if reading.limit_bytes is not None:
                limit.add_metric(reading.label_values, reading.limit_bytes)
        yield usage
        yield limit
        machine = self._machine_memory(client, deadline)
        if machine is not None:
            yield single("aitools_docker_vm_memory_limit_bytes",
                         "Memory of the machine the engine runs containers on (Docker Desktop: its VM; /info MemTotal).",
                         machine)

    def _machine_memory(self, client: Engine, deadline: Deadline) -> int | None:
        """/info MemTotal (read every few minutes), or None when the engine does not tell it:
        the containers' figures stand without it."""
        try:
            return self._cached_host_memory(client, deadline)
        except (CollectorError, MalformedAnswer):
            return None

    def _read_containers(self, client: Engine, listed: list[dict], deadline: Deadline) -> list[ContainerMemory]:
        readings = []
        if self.cgroup_root is not None:
            through_api = []
            for summary in listed:
                figures = cgroup_memory(self.cgroup_root, summary["Id"])
                if figures is None:
                    through_api.append(summary)
                else:
                    readings.append(_with_labels(summary, *figures))
            listed = through_api
        if listed:
            readings += self._read_containers_through_api(client, listed, deadline)
        return readings

    def _read_containers_through_api(self, client: Engine, listed: list[dict],
                                     deadline: Deadline) -> list[ContainerMemory]:
        host_memory = self._cached_host_memory(client, deadline)
        one_shot = None if version_lt(client.api_version, ONE_SHOT_MIN_API_VERSION) else True
        # All in flight at once, each on its own connection: the engine answers them in one round.
        futures = [self._pool.submit(client.stats, summary["Id"], deadline, one_shot=one_shot) for summary in listed]
        _, not_done = wait(futures, timeout=deadline.left() + HAND_OVER_SECONDS)
        if not_done or any(_timed_out(future.exception()) for future in futures):
            for future in not_done:
                future.cancel()
            raise self._timeout_error("GET /containers/{id}/stats")
        readings = []
        for summary, future in zip(listed, futures):
            try:
                stats = future.result()
            except Exception as exc:
                if isinstance(exc, EngineNotFound):
                    continue  # removed since it was listed
                raise self._engine_error(exc, f"GET /containers/{summary['Id'][:12]}/stats") from None
            if not isinstance(stats, dict):
                raise MalformedAnswer(f"GET /containers/{summary['Id'][:12]}/stats did not give an object")
            reading = container_memory(summary, stats, host_memory)
            if reading is not None:
                readings.append(reading)
        return readings

    def _connected_client(self, deadline: Deadline) -> Engine:
        """The client of earlier scrapes (its kept connections make a scrape fast), or a new one."""
        if self._client is None:
            self.host = self.section.host or resolve_docker_host(os.environ, Path.home(), sys.platform)
            self._client = self._call("GET /version", Engine, self.host, deadline)
            self._host_memory = None
        return self._client

    def _cached_host_memory(self, client: Engine, deadline: Deadline) -> int:
        if self._host_memory is None or time.monotonic() - self._host_memory_read_at > HOST_MEMORY_TTL_SECONDS:
            self._host_memory = _host_memory(self._call("GET /info", client.info, deadline))
            self._host_memory_read_at = time.monotonic()
        return self._host_memory

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _call(self, what: str, function, *args, **kwargs):
        """function(*args, **kwargs), its failure in this collector's words."""
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            raise self._engine_error(exc, what) from None

    def _timeout_error(self, what: str) -> CollectorError:
        return CollectorError(f"the Docker engine at {self.host} did not answer {what} within {self.timeout:g}s")

    def _as_collector_error(self, exc: Exception) -> CollectorError:
        if isinstance(exc, CollectorError):
            return exc
        return CollectorError(f"the Docker engine at {self.host} sent a malformed answer: {exc}")

    def _engine_error(self, exc: Exception, what: str) -> CollectorError:
        """A one-line reason a person can act on."""
        where = f"the Docker engine at {self.host}"
        if isinstance(exc, EngineAPIError):
            return CollectorError(f"{where} answered {what} with HTTP {exc.status_code}: "
                                  f"{_one_line(exc.explanation or exc.reason)}")
        if isinstance(exc, (json.JSONDecodeError, MalformedEngineAnswer)):
            return CollectorError(f"{where} sent a malformed answer to {what}: {_one_line(str(exc))}")
        if isinstance(exc, NotRunning):
            # Docker Desktop quit, the engine stopped: a normal state, not a failure.
            if exc.missing:
                return SourceNotRunning(f"cannot reach {where}: no socket there (is the engine running?)")
            return SourceNotRunning(f"cannot reach {where}: connection refused")
        if _timed_out(exc):
            return self._timeout_error(what)
        if isinstance(exc, HTTPError) and isinstance(exc.error, PermissionError):
            return CollectorError(f"cannot reach {where}: permission denied "
                                  "(is this user allowed to use the Docker socket?)")
        return CollectorError(f"cannot reach {where}: {_one_line(str(exc) or type(exc).__name__)}")


def _timed_out(exc: BaseException | None) -> bool:
    return isinstance(exc, HTTPError) and exc.kind == "timeout"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]
