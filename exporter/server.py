"""The one HTTP server: the exporter's /metrics, landing page at / and /healthz
(ExporterHandler), and the receiver's webhook pages (exporter/receiver.py), each a Handler
on the same bounded ExporterServer."""

from __future__ import annotations

import collections
import errno
import gzip
import io
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.app import Exporter
from exporter.landing import page, render_links_only
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

# node_exporter's --web.max-requests default: /metrics requests served at once; more get a 503.
DEFAULT_MAX_REQUESTS = 40
# Workers beyond those for /metrics: /healthz and / still answer while /metrics is saturated.
OTHER_WORKERS = 4
# Workers are kept while they have work (no thread per request); one idle this long ends,
# down to MIN_WORKERS, so that a burst of scrapers does not keep its threads for ever.
WORKER_IDLE_SECONDS = 10.0
MIN_WORKERS = 2
# Go's http.DefaultMaxHeaderBytes: the request line and headers together.
MAX_HEADER_BYTES = 2**20
# A request's head must arrive within this of its first byte (or of the connection).
HEADER_TIMEOUT_SECONDS = 10.0
# A kept-alive connection with no new request is closed after this (Prometheus reconnects).
IDLE_TIMEOUT_SECONDS = 120.0
# Sending an answer, all of it (sendall's timeout is for the whole call).
WRITE_TIMEOUT_SECONDS = 30.0
MAX_CONNECTIONS = 1024
ACCEPT_PAUSE_SECONDS = 0.1

def metrics_page(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The registry's page and its content type in the format the Accept header asks for,
    as prometheus_client chooses and writes it (Prometheus text 0.0.4, or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class Handler(BaseHTTPRequestHandler):
    """What every page of the server shares: one request per call (its head read by the
    front), answers with a Content-Length and the web config's headers, a body read within
    a time limit. A site (the exporter's pages below, the receiver's in exporter/receiver.py)
    adds its do_GET / do_POST."""

    server: "ExporterServer"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body then waits
    # for the client's delayed ACK of the headers: some 40 ms on every kept-alive scrape.
    disable_nagle_algorithm = True

    def __init__(self, request, client_address, server, head: bytes, pending: bytearray):
        self.head = head  # the request line and headers, read by the server's front
        self.pending = pending  # what the front read after the head: the start of a body
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.connection = self.request
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = io.BytesIO(self.head)
        self.wfile = _SocketWriter(self.connection)

    def handle(self) -> None:
        # One request: between requests a kept-alive connection waits in the front, not here.
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        self.rfile.close()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def read_body(self, length: int, seconds: float) -> bytes:
        """The request's body of `length` bytes (its Content-Length: the caller has capped it),
        all of it within `seconds`; TimeoutError, ConnectionError (the client left) or OSError.
        Bytes after it stay for the connection's next request."""
        deadline = time.monotonic() + seconds
        buffer = self.pending
        while len(buffer) < length:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.connection.settimeout(left)
            chunk = self.connection.recv(min(65536, length - len(buffer)))
            if not chunk:
                raise ConnectionError("the client closed the connection")
            buffer += chunk
        body = bytes(buffer[:length])
        del buffer[:length]
        return body

    def send_page(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                  encoding: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.server.web_config.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self.close_connection:
            # The answer goes out before the close: a client still sending a body we did not
            # read then gets it before the reset that closing on unread data causes.
            try:
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def send_metrics(self, registry: CollectorRegistry) -> None:
        try:
            body, content_type = metrics_page(registry, self.headers.get("Accept", ""))
        except Exception:  # the collectors guard themselves; this is the last line
            log.exception("building the metrics page failed")
            self.send_page(500, b"internal error while collecting metrics\n")
            return
        encoding = None
        if accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body, encoding = gzip.compress(body, compresslevel=1), "gzip"
        self.send_page(200, body, content_type, encoding)


class ExporterHandler(Handler):
    """The exporter's pages: /metrics, the landing page at / and /healthz, behind basic auth
    when the web config has users."""

    server_version = f"aitools-exporter/{__version__}"

    @property
    def exporter(self) -> Exporter:
        return self.server.app

    def do_GET(self) -> None:
        if not self.server.web_config.authorized(self.headers.get("Authorization")):
            self.send_page(401, b"unauthorized\n",
                           headers={"WWW-Authenticate": 'Basic realm="aitools-exporter", charset="UTF-8"'})
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            self.send_metrics(self.exporter.registry)
        elif path == "/":
            try:
                body = page(self.exporter)  # the breakdown page (exporter/landing.py)
            except Exception:  # never worse than the plain page of links
                log.exception("building the landing page failed")
                body = render_links_only()
            self.send_page(200, body, "text/html; charset=utf-8")
        elif path == "/healthz":
            self.send_page(200, b"ok\n")
        else:
            self.send_page(404, b"not found: see / for what this exporter serves\n")

    do_HEAD = do_GET


class _SocketWriter(io.RawIOBase):
    """What the handler writes, sent at once and whole (sendall, within the socket's timeout)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header takes gzip: named (or `*` when gzip is not named)
    with a q-value above 0. `gzip;q=0` means "not gzip"; a q-value that does not parse counts as 0."""
    named: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
                if not 0 <= quality <= 1:  # nan, inf and negatives included
                    quality = 0.0
        if coding:
            named[coding.lower()] = quality
    if "gzip" in named:
        return named["gzip"] > 0
    return named.get("*", 0.0) > 0



class ExporterServer:
    """The HTTP server, bounded whatever its clients do.

    One thread (the front) accepts connections and reads request heads from all of them
    without blocking (selectors), each head capped at MAX_HEADER_BYTES and required within
    HEADER_TIMEOUT_SECONDS of its first byte (or of the connection); only a complete head is
    handed to a worker thread kept for the life of the process. At most `max_requests`
    /metrics requests are served at once (and OTHER_WORKERS more for the other pages); over
    that the front answers 503 at once, as node_exporter's --web.max-requests does. A kept-alive connection goes back to the front between
    requests, so idle and half-sent connections hold a file descriptor, never a thread; they
    are capped too (the oldest goes first), below the process's open-file limit, and when
    accept() finds no descriptor left the front closes the oldest waiting connection or
    pauses accepting briefly instead of spinning.

    `handler` is the site served (ExporterHandler, or the receiver's), `app` what it serves
    (the Exporter, or the receiver's Receiver); `max_connections` lowers the cap of waiting connections;
    `header_timeout` may be set before serving.
    """

    address_family = socket.AF_INET

    def __init__(self, address: tuple[str, int], app, web_config: WebConfig | None = None,
                 max_requests: int = DEFAULT_MAX_REQUESTS, handler: type[Handler] = ExporterHandler,
                 max_connections: int | None = None):
        self.app = app  # what the handler serves: the Exporter (ExporterHandler), the receiver's Receiver
        self.handler = handler
        self.web_config = web_config or WebConfig()
        self.max_requests = max(1, max_requests)
        self.max_connections = min(max_connections or MAX_CONNECTIONS, _connection_cap())
        self.header_timeout = HEADER_TIMEOUT_SECONDS
        self.socket = socket.socket(self.address_family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(socket.SOMAXCONN)  # the system's backlog, not socketserver's 5
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._returned: collections.deque[_Connection] = collections.deque()
        self._waiting: dict[socket.socket, _Connection] = {}  # connections the front reads (heads, idle)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle_workers = 0
        self._metrics_in_flight = 0
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._paused_until = 0.0

    # --- the front -------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        listening = True
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if not listening and now >= self._paused_until:
                    self._selector.register(self.socket, selectors.EVENT_READ)
                    listening = True
                soonest = min((c.expires for c in self._waiting.values()), default=now + 1.0)
                if not listening:
                    soonest = min(soonest, self._paused_until)
                for key, _ in self._selector.select(max(0.0, min(soonest - now, 1.0))):
                    if key.fileobj is self.socket:
                        if not self._accept():
                            self._selector.unregister(self.socket)
                            listening = False
                    elif key.fileobj is self._wake_read:
                        self._take_back()
                    else:
                        self._read(key.data)
                self._expire(time.monotonic())
        finally:
            for connection in list(self._waiting.values()):
                self._drop(connection)
            self._selector.close()
            self._stopped.set()

    def _accept(self) -> bool:
        """Accept what is waiting; False when out of file descriptors (pause listening)."""
        for _ in range(64):
            try:
                sock, client = self.socket.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._drop_oldest():
                        self._paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
                        return False
                    continue
                return True  # ECONNABORTED and the like: that client is gone
            if len(self._waiting) >= self.max_connections:
                self._drop_oldest()
            sock.setblocking(False)
            context = self.web_config.ssl_context
            if context is not None:
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            connection = _Connection(sock, client, time.monotonic() + self.header_timeout, context is not None)
            self._wait_for(connection)
        return True

    def _wait_for(self, connection: "_Connection", events: int = selectors.EVENT_READ) -> None:
        self._waiting[connection.sock] = connection
        self._selector.register(connection.sock, events, connection)

    def _read(self, connection: "_Connection") -> None:
        sock = connection.sock
        try:
            if connection.handshaking:
                try:
                    sock.do_handshake()
                    connection.handshaking = False
                except ssl.SSLWantReadError:
                    self._selector.modify(sock, selectors.EVENT_READ, connection)
                    return
                except ssl.SSLWantWriteError:
                    self._selector.modify(sock, selectors.EVENT_WRITE, connection)
                    return
                self._selector.modify(sock, selectors.EVENT_READ, connection)
            while True:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not data:
                    self._drop(connection)
                    return
                if not connection.buffer:
                    connection.expires = time.monotonic() + self.header_timeout  # a request begins
                connection.buffer += data
                if b"\r\n\r\n" in connection.buffer or len(connection.buffer) > MAX_HEADER_BYTES:
                    break
        except OSError:
            self._drop(connection)
            return
        end = connection.buffer.find(b"\r\n\r\n")
        if end < 0 or end + 4 > MAX_HEADER_BYTES:
            if len(connection.buffer) > MAX_HEADER_BYTES:
                self._refuse(connection, 431, "Request Header Fields Too Large")
            return
        head = bytes(connection.buffer[:end + 4])
        del connection.buffer[:end + 4]
        self._selector.unregister(sock)
        del self._waiting[sock]
        is_metrics = _is_metrics_request(head)
        with self._lock:
            busy = ((is_metrics and self._metrics_in_flight >= self.max_requests)
                    or (self._idle_workers == 0 and len(self._workers) >= self.max_requests + OTHER_WORKERS))
            if not busy:
                self._metrics_in_flight += is_metrics
                if self._idle_workers:
                    self._idle_workers -= 1
                else:
                    worker = threading.Thread(target=self._work, name="http-worker", daemon=True)
                    self._workers.append(worker)
                    worker.start()
        if busy:
            self._refuse(connection, 503, "Service Unavailable", registered=False,
                         body=f"too many requests in flight (--web.max-requests={self.max_requests})\n")
            return
        self._jobs.put((connection, head, is_metrics))

    def _refuse(self, connection: "_Connection", status: int, reason: str, registered: bool = True,
                body: str | None = None) -> None:
        """A short answer written without waiting (what does not fit in the socket buffer is lost), then close."""
        payload = (body or f"{reason}\n").encode()
        message = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
        try:
            connection.sock.send(message)
        except (OSError, ValueError):
            pass
        if registered:
            self._drop(connection)
        else:
            _close(connection.sock)

    def _drop(self, connection: "_Connection") -> None:
        if self._waiting.pop(connection.sock, None) is not None:
            try:
                self._selector.unregister(connection.sock)
            except (KeyError, ValueError):
                pass
        _close(connection.sock)

    def _drop_oldest(self) -> bool:
        if not self._waiting:
            return False
        self._drop(min(self._waiting.values(), key=lambda connection: connection.expires))
        return True

    def _expire(self, now: float) -> None:
        for connection in [c for c in self._waiting.values() if c.expires <= now]:
            if connection.buffer:
                self._refuse(connection, 408, "Request Timeout")
            else:
                self._drop(connection)

    def _take_back(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._returned:
            connection = self._returned.popleft()
            if self._stopping.is_set():
                _close(connection.sock)
                continue
            connection.sock.setblocking(False)
            connection.expires = time.monotonic() + (self.header_timeout if connection.buffer else IDLE_TIMEOUT_SECONDS)
            if len(self._waiting) >= self.max_connections:
                self._drop_oldest()
            self._wait_for(connection)
            if connection.buffer:
                self._read(connection)  # a pipelined request already here

    # --- the workers -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                connection, head, is_metrics = self._jobs.get(timeout=WORKER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # An idle worker not yet promised a job, beyond the few kept: it ends.
                    if self._idle_workers > 0 and len(self._workers) > MIN_WORKERS:
                        self._idle_workers -= 1
                        self._workers.remove(threading.current_thread())
                        return
                continue
            keep = False
            try:
                connection.sock.setblocking(True)
                connection.sock.settimeout(WRITE_TIMEOUT_SECONDS)
                handler = self.handler(connection.sock, connection.client, self, head, connection.buffer)
                keep = not handler.close_connection
            except Exception:
                self.handle_error(connection.sock, connection.client)
            # Free before the connection goes back: its next request, read by the front only
            # after that, must not find this one still counted.
            with self._lock:
                self._idle_workers += 1
                self._metrics_in_flight -= is_metrics
            if keep and not self._stopping.is_set():
                self._returned.append(connection)
                try:
                    self._wake_write.send(b"x")
                except OSError:
                    pass
            else:
                _close(connection.sock)
            del connection, head

    # --- the rest --------------------------------------------------------------------

    def shutdown(self) -> None:
        self._stopping.set()
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass
        self._stopped.wait(5)
        self.server_close()

    def server_close(self) -> None:
        _close(self.socket)
        _close(self._wake_read)
        _close(self._wake_write)

    def handle_error(self, request, client_address) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)

    @property
    def threads(self) -> int:
        return len(self._workers)


def _is_metrics_request(head: bytes) -> bool:
    parts = head.split(b" ", 2)
    return len(parts) > 1 and parts[1].split(b"?", 1)[0] == b"/metrics"


class _Connection:
    __slots__ = ("sock", "client", "expires", "handshaking", "buffer")

    def __init__(self, sock: socket.socket, client, expires: float, handshaking: bool):
        self.sock, self.client, self.expires, self.handshaking = sock, client, expires, handshaking
        self.buffer = bytearray()


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _connection_cap() -> int:
    """Connections the front keeps at most: half the open-file limit (the collectors need
    descriptors too: sockets to Docker and the backends, /proc files), at most MAX_CONNECTIONS."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 256
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        soft = 2 * MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 2))


class ExporterServerIPv6(ExporterServer):
    address_family = socket.AF_INET6


def parse_listen_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:8730', ':8730' (all interfaces) or '[::1]:8730' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def start_server(address: str, app, web_config: WebConfig | None = None,
                 max_requests: int = DEFAULT_MAX_REQUESTS, handler: type[Handler] = ExporterHandler,
                 max_connections: int | None = None, name: str = "http") -> ExporterServer:
    """The server on `address` ('127.0.0.1:8730', '[::1]:8730', ':8730'), serving `app` (an
    Exporter, or what `handler` serves) on a thread of its own."""
    host, port = parse_listen_address(address)
    server_class = ExporterServerIPv6 if ":" in host else ExporterServer
    server = server_class((host, port), app, web_config, max_requests, handler, max_connections)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
