"""The one HTTP client: every request the exporter makes goes through `Client.request`.

Used by the collectors (Node url targets and the inspector's /json/list, Ollama, LM Studio,
the Docker engine over its unix socket or tcp://), the actions (unload a model, stop a
container) and `service status`. It imports only the bottom layer (collectors/base.py:
Deadline and the errors), so anything may use it.

- One timeout style: the caller's `Deadline` (a scrape's, or one the caller makes). Every
  connect, send and receive gets only the time left until it, so a server that trickles its
  headers or body a byte at a time still ends at the deadline; a connection that fails or
  runs out of time is closed at once, and nothing of it outlives the call.
- Kept-alive connections, pooled per origin and reused across calls; one that the server
  closed meanwhile is replaced once, at once (`_exchange`, the only place that retries).
- The body is capped per call on its DECODED size, as it is decoded: a server that answers
  `Content-Encoding: gzip` although it was asked for identity cannot inflate 2 MB into 2 GB
  in the exporter's memory (zlib is told how much it may give back at each step).
- https:// with a verifying TLS context (certifi's CA bundle, shared), or the caller's own
  (the Docker CLI's client certificates); unix sockets (`Client(unix_socket=PATH)`).
- Redirects are not followed: a 3xx is an answer like any other.
- Connection refused (or no socket at the path) raises `NotRunning` (a SourceNotRunning),
  any other failure `HTTPError` (a CollectorError) whose `kind` says what happened, so that
  each caller can word it in its own terms.

`Client.request` is the single seam for recording and replaying answers: nothing else in
the exporter opens an HTTP connection.

The standard library's http.client speaks HTTP here, over a socket we hold ourselves: no
decoding we did not ask for, and a fraction of an HTTP library's CPU per request.
"""

from __future__ import annotations

import collections
import functools
import http.client
import io
import json
import socket
import ssl
import threading
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from exporter.collectors.base import CollectorError, Deadline, SourceNotRunning
from exporter.collectors.machine import current

# Idle kept-alive connections per origin, at most (a client may ask for more).
MAX_IDLE_PER_ORIGIN = 4
READ_SIZE = 65536


class HTTPError(CollectorError):
    """The request failed. kind: 'timeout', 'closed' (before or while the answer came),
    'too_large', 'encoding', 'protocol', 'url', 'connect'; answered: a status line had
    arrived; error: the OSError underneath, where there was one."""

    def __init__(self, message: str, kind: str, answered: bool = False, error: OSError | None = None):
        super().__init__(message)
        self.kind, self.answered, self.error = kind, answered, error


class NotRunning(SourceNotRunning):
    """Connection refused, or no socket at that path: the server is not running.
    missing: there was no socket file at all (rather than one that refused)."""

    kind, answered = "refused", False

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


@dataclass
class Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ValueError (json.JSONDecodeError) when it is not."""
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


# --- TLS ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def verifying_context() -> ssl.SSLContext:
    """The context of https:// requests, shared: loading the CA bundle costs some 20 ms of
    CPU and about a megabyte, too much for each connection. certifi's bundle, as browsers and
    HTTP libraries ship it: a Python from python.org on macOS has no system store of its own."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


# --- the socket -----------------------------------------------------------------------

class TimedSocket:
    """A connected socket whose every receive and send waits only for the time left until
    `deadline` (set by whoever uses it now). Public so that the Node inspector's WebSocket
    runs on the same footing as the HTTP connections."""

    def __init__(self, sock: socket.socket, deadline: Deadline | None = None):
        self.sock = sock
        self.deadline = deadline
        # http.client closes a "Connection: close" connection and leaves its body to the reader
        # made by makefile(): the socket is closed when both have let go of it.
        self._readers = 0
        self._closed = False

    def _arm(self) -> None:
        self.sock.settimeout(self.deadline.remaining() if self.deadline is not None else None)

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        self._arm()
        return self.sock.recv_into(buffer, nbytes)

    def recv(self, size: int) -> bytes:
        self._arm()
        return self.sock.recv(size)

    def sendall(self, data) -> None:
        self._arm()
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", buffering: int = -1) -> io.BufferedReader:
        # A reader on this wrapper, not on the socket, so that its reads keep to the deadline.
        self._readers += 1
        return io.BufferedReader(_Reader(self))

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def setsockopt(self, *args) -> None:
        self.sock.setsockopt(*args)

    def release_reader(self) -> None:
        self._readers = max(0, self._readers - 1)
        if self._closed and not self._readers:
            self.sock.close()

    def close(self) -> None:
        self._closed = True
        if not self._readers:
            self.sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, owner: TimedSocket):
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._owner.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.release_reader()


def connect(address: tuple[str, int] | str, deadline: Deadline, tls: ssl.SSLContext | None = None) -> TimedSocket:
    """A connection made within the deadline: TCP to (host, port), with TLS when `tls` is
    given, or the unix socket at a path."""
    raw = None
    try:
        if isinstance(address, str):
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(deadline.remaining())
            raw.connect(address)
        else:
            raw = socket.create_connection(address, timeout=deadline.remaining())
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                raw.settimeout(deadline.remaining())
                raw = tls.wrap_socket(raw, server_hostname=address[0])
    except BaseException:
        if raw is not None:
            raw.close()
        raise
    return TimedSocket(raw, deadline)


class _Connection(http.client.HTTPConnection):
    def __init__(self, origin: tuple[str, str, int], tls: ssl.SSLContext | None, unix_socket: str | None):
        super().__init__(origin[1], origin[2])
        self.tls = tls if origin[0] == "https" else None
        self.unix_socket = unix_socket
        self.deadline: Deadline | None = None

    def connect(self) -> None:
        self.sock = connect(self.unix_socket or (self.host, self.port), self.deadline, self.tls)

    def serve(self, deadline: Deadline | None) -> None:
        self.deadline = deadline
        if isinstance(self.sock, TimedSocket):
            self.sock.deadline = deadline


# --- the body -------------------------------------------------------------------------

def _decoder(encoding: str):
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise HTTPError(f"unsupported Content-Encoding {encoding!r}", "encoding", answered=True)


def _too_large(limit: int) -> HTTPError:
    size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"
    return HTTPError(f"answer larger than {size}", "too_large", answered=True)


def read_body(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The response's body decoded, refused as soon as the decoded size passes `limit`."""
    decoder = _decoder(response.getheader("Content-Encoding", ""))
    if decoder is None and response.length is not None and response.length > limit:
        raise _too_large(limit)
    # Pieces of at most READ_SIZE joined once at the end: no buffer grown by realloc, no
    # piece large enough to move malloc's mmap threshold (both leave the heap fragmented).
    pieces: list[bytes] = []
    size = 0
    try:
        while chunk := response.read1(READ_SIZE):
            if decoder is None:
                pieces.append(chunk)
                size += len(chunk)
            else:
                try:
                    while chunk and size <= limit:
                        piece = decoder.decompress(chunk, READ_SIZE)  # never more than this at once
                        pieces.append(piece)
                        size += len(piece)
                        chunk = decoder.unconsumed_tail
                except zlib.error as exc:
                    raise HTTPError(f"cannot decode the {response.getheader('Content-Encoding')} body: {exc}",
                                    "encoding", answered=True) from None
            if size > limit:
                raise _too_large(limit)
        if response.length:  # the connection ended before the Content-Length it announced
            raise HTTPError("connection closed before the whole answer arrived", "closed", answered=True)
        if decoder is not None:
            piece = decoder.flush()  # all input went through decompress() above: a few bytes at most remain
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                raise _too_large(limit)
    except BaseException:
        # The exception's traceback keeps this frame alive until the next cyclic GC: not its pieces.
        pieces.clear()
        raise
    return b"".join(pieces)


# --- the client -----------------------------------------------------------------------

class Client:
    """Kept-alive connections to the origins of one user (a collector, an action), reused
    across calls. `headers` go with every request; `tls` replaces the verifying context for
    https:// (client certificates); `unix_socket` sends every request to that socket
    whatever the URL's host (the Host header stays the URL's). `source` names a collector's
    source (docker, ollama, node:api...): its answers are recorded and replayed
    (collectors/machine.py); a client without one always asks the live machine."""

    def __init__(self, headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None,
                 unix_socket: str | None = None, max_idle: int = MAX_IDLE_PER_ORIGIN, source: str | None = None):
        self.source = source
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.tls = tls
        self.unix_socket = unix_socket
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._lock = threading.Lock()

    def get(self, url: str, deadline: Deadline, limit: int, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", url, deadline, limit, headers)

    def post_json(self, url: str, document: Any, deadline: Deadline, limit: int,
                  headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", url, deadline, limit, {"Content-Type": "application/json", **(headers or {})},
                            json.dumps(document).encode())

    def request(self, method: str, url: str, deadline: Deadline, limit: int, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> Answer:
        """`method url` within the deadline: any status (redirects included) with its body of at
        most `limit` decoded bytes, or NotRunning / HTTPError. Every request goes through here."""
        origin, target = _split(url)
        machine = current()
        if self.source is not None and machine.replaying:
            return _replayed(machine, self.source, method, url, target, deadline, limit)
        request_headers = {**self.headers, **(headers or {})}
        if origin[0] == "https" and self.tls is None:
            self.tls = verifying_context()
        connection, reused = self._checkout(origin)
        answered = False
        try:
            connection, response = self._exchange(connection, reused, origin, method, target, request_headers,
                                                  body, deadline)
            answered = True
            content = read_body(response, limit)
            response.close()  # read to its end: the connection may carry the next request
            if response.will_close:
                connection.close()
            # Let go of this deadline before another call may take the connection.
            connection.serve(None)
            self._checkin(origin, connection)
            if self.source is not None:
                machine.recorded_http(self.source, method, target, response.status, content)
            return Answer(response.status, response.reason, response.headers, content)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, CollectorError):
                raise
            if isinstance(exc, Exception):
                raise _failure(exc, answered, deadline) from None
            raise

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def idle_connections(self) -> list[http.client.HTTPConnection]:
        """The kept connections waiting for the next request (for tests and diagnostics)."""
        with self._lock:
            return [connection for connections in self._idle.values() for connection in connections]

    def _exchange(self, connection: _Connection, reused: bool, origin, method: str, target: str,
                  headers: dict[str, str], body: bytes | None,
                  deadline: Deadline) -> tuple[_Connection, http.client.HTTPResponse]:
        connection.serve(deadline)
        try:
            connection.request(method, target, body=body, headers=headers)
            return connection, connection.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
        # The server closed the kept-alive connection meanwhile: once more, on a new one.
        connection.close()
        fresh = self._new(origin)
        fresh.serve(deadline)
        try:
            fresh.request(method, target, body=body, headers=headers)
            return fresh, fresh.getresponse()
        except BaseException:
            fresh.close()
            raise

    def _new(self, origin: tuple[str, str, int]) -> _Connection:
        return _Connection(origin, self.tls, self.unix_socket)

    def _checkout(self, origin) -> tuple[_Connection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._new(origin), False

    def _checkin(self, origin, connection: _Connection) -> None:
        if connection.sock is None:
            return  # closed (by the server or after an error): nothing to keep
        with self._lock:
            idle = self._idle.setdefault(origin, collections.deque())
            if len(idle) < self.max_idle:
                idle.append(connection)
                return
        connection.close()


def _replayed(machine, source: str, method: str, url: str, target: str, deadline: Deadline, limit: int) -> Answer:
    """A recorded answer as the live exchange would give it; a source the recording has no
    answer of was not running."""
    deadline.remaining()  # TimeoutError once the deadline has passed, as a live exchange
    found = machine.answer(source, method, target)
    if found is None:
        raise NotRunning(f"{url}: connection refused (no answer in the recording)")
    status, body = found
    if len(body) > limit:
        raise _too_large(limit)
    headers = http.client.HTTPMessage()
    headers["Content-Type"] = "application/json" if body[:1] in (b"{", b"[") else "text/plain; version=0.0.4"
    return Answer(status, http.client.responses.get(status, ""), headers, body)


def _split(url: str) -> tuple[tuple[str, str, int], str]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise HTTPError(f"not a usable URL: {exc}", "url") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _failure(exc: Exception, answered: bool, deadline: Deadline) -> CollectorError:
    if isinstance(exc, (TimeoutError, socket.timeout)) or deadline.passed():
        return HTTPError(f"timed out after {deadline.seconds:g}s", "timeout", answered)
    if isinstance(exc, ConnectionRefusedError):
        return NotRunning("connection refused")
    if isinstance(exc, FileNotFoundError):
        return NotRunning("no socket there", missing=True)
    if isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError,
                        BrokenPipeError)):
        return HTTPError("connection closed before the whole answer arrived", "closed", answered)
    if isinstance(exc, http.client.HTTPException):
        return HTTPError(f"not a valid HTTP answer: {type(exc).__name__}", "protocol", answered)
    if isinstance(exc, OSError):
        return HTTPError(f"cannot connect: {exc.strerror or exc}", "connect", answered, error=exc)
    return HTTPError(f"{type(exc).__name__}: {exc}", "protocol", answered)
