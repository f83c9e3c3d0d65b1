"""One bounded HTTP GET for every HTTP source (Node url and inspector targets, Ollama, LM Studio).

- Kept-alive connections, pooled per origin and reused across scrapes; one that the
  server closed meanwhile is replaced once, at once.
- The deadline bounds the request as a whole: every connect, send and receive gets only
  the time left until it, so a backend that trickles its headers or its body a byte at a
  time still ends at the deadline, and nothing of it outlives the scrape.
- The body is capped on its DECODED size, as it is decoded: a backend that answers
  `Content-Encoding: gzip` although it was asked for identity cannot inflate 2 MB into
  2 GB in the exporter's memory (zlib is told how much it may give back at each step).
- Redirects are not followed: a 3xx is an answer like any other.
- Connection refused (or no such socket) raises `NotRunning` (a SourceNotRunning), any
  other failure `FetchError` (a CollectorError) whose `kind` says what happened, so each
  collector can word it in its own terms.

The standard library's http.client speaks it: a socket we hold ourselves, no decoding we
did not ask for, and a fraction of an HTTP library's CPU per request.
"""

from __future__ import annotations

import collections
import http.client
import io
import socket
import ssl
import threading
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from exporter.collectors.base import CollectorError, Deadline, SourceNotRunning

# Idle kept-alive connections per origin, at most.
MAX_IDLE_PER_ORIGIN = 4
READ_SIZE = 65536


class FetchError(CollectorError):
    """The GET failed. kind: 'timeout', 'closed' (before or while the answer came),
    'too_large', 'encoding', 'protocol', 'url', 'connect'; answered: a status line had arrived."""

    def __init__(self, message: str, kind: str, answered: bool = False):
        super().__init__(message)
        self.kind, self.answered = kind, answered


class NotRunning(SourceNotRunning):
    """Connection refused, or no socket at that address: the backend is not running."""

    kind, answered = "refused", False


@dataclass
class Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


class _TimedSocket:
    """A connected socket whose every receive and send waits only for the time left until
    the deadline of the request it serves."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.deadline: Deadline | None = None
        # As socket.socket: closing waits for the readers made by makefile() (http.client closes
        # the connection and leaves the body of a "Connection: close" answer to its reader).
        self._io_refs = 0
        self._closed = False

    def _arm(self) -> None:
        self._sock.settimeout(self.deadline.remaining() if self.deadline is not None else None)

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buffer, nbytes, flags)

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._arm()
        return self._sock.recv(size, flags)

    def sendall(self, data, flags: int = 0) -> None:
        self._arm()
        self._sock.sendall(data, flags)

    def send(self, data, flags: int = 0) -> int:
        self._arm()
        return self._sock.send(data, flags)

    def makefile(self, mode: str = "rb", buffering: int = -1):
        # A reader on this wrapper, not on the socket, so that its reads keep to the deadline.
        self._io_refs += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))

    def _decref_socketios(self) -> None:
        self._io_refs = max(0, self._io_refs - 1)
        if self._closed and not self._io_refs:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if not self._io_refs:
            self._sock.close()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None):
        super().__init__(host, port)
        self.tls = tls
        self.deadline: Deadline | None = None

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=self.deadline.remaining())
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                raw.settimeout(self.deadline.remaining())
                raw = self.tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.sock = _TimedSocket(raw)
        self.sock.deadline = self.deadline

    def serve(self, deadline: Deadline) -> None:
        self.deadline = deadline
        if isinstance(self.sock, _TimedSocket):
            self.sock.deadline = deadline


def _decoder(encoding: str):
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise FetchError(f"unsupported Content-Encoding {encoding!r}", "encoding", answered=True)


def _too_large(limit: int) -> FetchError:
    return FetchError(f"answer larger than {limit // 2**20} MiB", "too_large", answered=True)


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
                    raise FetchError(f"cannot decode the {response.getheader('Content-Encoding')} body: {exc}",
                                     "encoding", answered=True) from None
            if size > limit:
                raise _too_large(limit)
        if response.length:  # the connection ended before the Content-Length it announced
            raise FetchError("connection closed before the whole answer arrived", "closed", answered=True)
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


class ConnectionPool:
    """Kept-alive connections to the origins of one source, reused across scrapes."""

    def __init__(self, headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.tls = tls
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._lock = threading.Lock()

    def get(self, url: str, deadline: Deadline, limit: int, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> Answer:
        """GET url within the deadline (POST `body` as JSON when one is given): any status
        (redirects included) with its body of at most `limit` decoded bytes, or NotRunning / FetchError."""
        origin, target = _split(url)
        request_headers = {**self.headers, **(headers or {})}
        if origin[0] == "https" and self.tls is None:
            from exporter.collectors.tls import tls_verify
            self.tls = tls_verify(url)
        connection, reused = self._checkout(origin)
        answered = False
        try:
            try:
                connection.serve(deadline)
                response = self._exchange(connection, target, request_headers, body)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The server closed the kept-alive connection meanwhile: once more on a new one.
                connection.close()
                connection = self._new(origin)
                connection.serve(deadline)
                response = self._exchange(connection, target, request_headers, body)
            answered = True
            body = read_body(response, limit)
            response.close()  # read to its end: the connection may carry the next request
            if response.will_close:
                connection.close()
            self._checkin(origin, connection)
            return Answer(response.status, response.reason, response.headers, body)
        except BaseException as exc:
            connection.close()
            if isinstance(exc, CollectorError):
                raise
            if isinstance(exc, Exception):
                raise _failure(exc, answered, deadline) from None
            raise
        finally:
            connection.deadline = None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    @staticmethod
    def _exchange(connection: _Connection, target: str, headers: dict[str, str],
                  body: bytes | None = None) -> http.client.HTTPResponse:
        if body is not None:
            connection.request("POST", target, body=body, headers={**headers, "Content-Type": "application/json"})
        else:
            connection.request("GET", target, headers=headers)
        return connection.getresponse()

    def _new(self, origin: tuple[str, str, int]) -> _Connection:
        return _Connection(origin[1], origin[2], self.tls if origin[0] == "https" else None)

    def _checkout(self, origin) -> tuple[_Connection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._new(origin), False

    def _checkin(self, origin, connection: _Connection) -> None:
        if connection.sock is None:
            return
        with self._lock:
            idle = self._idle.setdefault(origin, collections.deque())
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(connection)
                return
        connection.close()


def _split(url: str) -> tuple[tuple[str, str, int], str]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise FetchError(f"not a usable URL: {exc}", "url") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _failure(exc: Exception, answered: bool, deadline: Deadline) -> CollectorError:
    if isinstance(exc, (TimeoutError, socket.timeout)) or deadline.passed():
        return FetchError(f"timed out after {deadline.seconds:g}s", "timeout", answered)
    if isinstance(exc, (ConnectionRefusedError, FileNotFoundError)):
        return NotRunning("connection refused")
    if isinstance(exc, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError,
                        BrokenPipeError)):
        return FetchError("connection closed before the whole answer arrived", "closed", answered)
    if isinstance(exc, http.client.HTTPException):
        return FetchError(f"not a valid HTTP answer: {type(exc).__name__}", "protocol", answered)
    if isinstance(exc, OSError):
        return FetchError(f"cannot connect: {exc.strerror or exc}", "connect", answered)
    return FetchError(f"{type(exc).__name__}: {exc}", "protocol", answered)
