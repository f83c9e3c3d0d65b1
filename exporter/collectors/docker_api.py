"""The few Docker Engine API calls the docker collector makes, over a unix socket.

The collector needs four read-only GETs. Over the unix socket that Docker Desktop,
colima, rootless Docker and Linux engines listen on, this speaks them with the
standard library's http.client: the Docker SDK would bring requests, urllib3 and
charset_normalizer along (about 7 MB of the exporter's resident memory) and spend three
times the CPU on each call. Other hosts (tcp://, ssh://, npipe://) still go through the
SDK, imported only then.

`UnixSocketEngine` has the methods of `docker.APIClient` the collector uses, with the
same arguments, and negotiates the API version as the SDK's `version="auto"` does.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
from typing import Any, Protocol
from urllib.parse import quote, urlencode

# Idle keep-alive connections kept for the next scrape, at most.
MAX_IDLE_CONNECTIONS = 64


class EngineAPIError(Exception):
    """The engine answered with an error status; `explanation` is its message."""

    def __init__(self, status_code: int, explanation: str, reason: str = ""):
        super().__init__(f"HTTP {status_code}: {explanation or reason}")
        self.status_code, self.explanation, self.reason = status_code, explanation, reason


class EngineNotFound(EngineAPIError):
    """HTTP 404: e.g. a container removed since it was listed."""


class MalformedEngineAnswer(ValueError):
    """The engine answered 2xx, but not with what the API documents."""


class EngineClient(Protocol):
    """What the collector uses of a client: `docker.APIClient`, or `UnixSocketEngine` below."""

    api_version: str

    def containers(self, filters: dict[str, Any] | None = None) -> Any: ...
    def stats(self, container: str, stream: bool = ..., one_shot: bool | None = ...) -> Any: ...
    def info(self) -> Any: ...
    def close(self) -> None: ...


def version_lt(version: str, other: str) -> bool:
    """'1.40' < '1.41', numerically (as docker.utils.version_lt)."""
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))
    return parts(version) < parts(other)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)  # the Host header the docker CLI sends too
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixSocketEngine:
    """GET /version (once), /info, /containers/json and /containers/{id}/stats over a unix socket."""

    def __init__(self, socket_path: str, timeout: float):
        self.socket_path = socket_path
        self.timeout = timeout
        # First in, first out: all the connections a scrape needs in parallel stay in use.
        self._idle: collections.deque[_UnixConnection] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        document = self._get("/version")
        version = document.get("ApiVersion") if isinstance(document, dict) else None
        if not isinstance(version, str) or not all(part.isdigit() for part in version.split(".")):
            raise MalformedEngineAnswer(f"no usable ApiVersion: {version!r}")
        self.api_version = version

    # --- the calls ---

    def containers(self, filters: dict[str, Any] | None = None) -> Any:
        query = {"filters": json.dumps({key: value if isinstance(value, list) else [value]
                                        for key, value in filters.items()})} if filters else {}
        return self._get(self._versioned("/containers/json"), query)

    def stats(self, container: str, stream: bool = False, one_shot: bool | None = None) -> Any:
        if stream:
            raise ValueError("only stream=False is supported")
        query = {"stream": "false"}
        if one_shot is not None:
            query["one-shot"] = "true" if one_shot else "false"
        return self._get(self._versioned(f"/containers/{quote(container, safe='')}/stats"), query)

    def info(self) -> Any:
        return self._get(self._versioned("/info"))

    def reserve(self, count: int) -> None:
        """Have a connection ready for each of `count` requests about to be made at once
        (connected at its first request), so that each has its own and none waits for another's."""
        with self._lock:
            while len(self._idle) < min(count, MAX_IDLE_CONNECTIONS):
                self._idle.append(_UnixConnection(self.socket_path, self.timeout))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), collections.deque()
        for connection in idle:
            connection.close()

    # --- HTTP ---

    def _versioned(self, path: str) -> str:
        return f"/v{self.api_version}{path}"

    def _get(self, path: str, query: dict[str, str] | None = None) -> Any:
        target = f"{path}?{urlencode(query)}" if query else path
        status, reason, body = self._request(target)
        if status >= 400:
            explanation = ""
            try:
                document = json.loads(body)
                if isinstance(document, dict) and isinstance(document.get("message"), str):
                    explanation = document["message"]
            except ValueError:
                explanation = body.decode("utf-8", "replace").strip()
            raise (EngineNotFound if status == 404 else EngineAPIError)(status, explanation, reason)
        return json.loads(body)

    def _request(self, target: str) -> tuple[int, str, bytes]:
        connection, reused = self._checkout()
        try:
            try:
                return self._exchange(connection, target)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The engine closed the kept-alive connection meanwhile: once more on a new one.
                connection.close()
                connection = _UnixConnection(self.socket_path, self.timeout)
                return self._exchange(connection, target)
        except BaseException:
            connection.close()
            raise
        finally:
            self._checkin(connection)

    @staticmethod
    def _exchange(connection: _UnixConnection, target: str) -> tuple[int, str, bytes]:
        connection.request("GET", target, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
        if response.will_close:
            connection.close()
        return response.status, response.reason, body

    def _checkout(self) -> tuple[_UnixConnection, bool]:
        with self._lock:
            if self._idle:
                connection = self._idle.popleft()
                return connection, connection.sock is not None
        return _UnixConnection(self.socket_path, self.timeout), False

    def _checkin(self, connection: _UnixConnection) -> None:
        if connection.sock is None:
            return  # closed (by the engine or after an error): nothing to keep
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()
