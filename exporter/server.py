"""The HTTP server: /metrics, a landing page at / and /healthz."""

from __future__ import annotations

import gzip
import html
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

LANDING_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aitools memory exporter</title></head>
<body>
<h1>aitools memory exporter</h1>
<p>Memory budgets of this workstation, for Prometheus. Version {version}.</p>
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="healthz">Health</a></li>
</ul>
</body></html>
"""


class ExporterHandler(BaseHTTPRequestHandler):
    server: "ExporterServer"
    server_version = f"aitools-exporter/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stalls mid-request cannot hold a thread for ever
    # Headers and body go out in two writes; with Nagle's algorithm the body then waits
    # for the client's delayed ACK of the headers: some 40 ms on every kept-alive scrape.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if not self.server.web_config.authorized(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="aitools-exporter", charset="UTF-8"')
            self._finish_headers(b"unauthorized\n", "text/plain; charset=utf-8")
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send_metrics()
        elif path == "/":
            from exporter.landing import page  # the breakdown page (exporter/landing.py)
            try:
                body = page(self.server.registry)
            except Exception:  # never worse than the plain page of links
                log.exception("building the landing page failed")
                body = LANDING_PAGE.format(version=html.escape(__version__)).encode()
            self._send(200, body, "text/html; charset=utf-8")
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: see / for what this exporter serves\n", "text/plain; charset=utf-8")

    def _send_metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.registry)
        except Exception:  # the collectors guard themselves; this is the last line
            log.exception("building the metrics page failed")
            self._send(500, b"internal error while collecting metrics\n", "text/plain; charset=utf-8")
            return
        encoding = None
        if accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body, encoding = gzip.compress(body, compresslevel=1), "gzip"
        self._send(200, body, content_type, encoding)

    def _send(self, status: int, body: bytes, content_type: str, encoding: str | None = None) -> None:
        self.send_response(status)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self._finish_headers(body, content_type)

    def _finish_headers(self, body: bytes, content_type: str) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.server.web_config.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


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


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, web_config: WebConfig | None = None):
        self.registry = registry
        self.web_config = web_config or WebConfig()
        super().__init__(address, ExporterHandler)

    def get_request(self):
        connection, client = super().get_request()
        context = self.web_config.ssl_context
        if context is not None:
            # The handshake happens on the first read, in the request's own thread, so that a
            # slow or broken client cannot hold up the accept loop.
            connection = context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, client

    def handle_error(self, request, client_address) -> None:
        log.debug("request from %s failed", client_address, exc_info=True)


class ExporterServerIPv6(ExporterServer):
    address_family = socket.AF_INET6


def parse_listen_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:8730', ':8730' (all interfaces) or '[::1]:8730' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def start_server(address: str, registry: CollectorRegistry, web_config: WebConfig | None = None) -> ExporterServer:
    host, port = parse_listen_address(address)
    server_class = ExporterServerIPv6 if ":" in host else ExporterServer
    server = server_class((host, port), registry, web_config)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
