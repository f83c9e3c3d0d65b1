"""exporter/collectors/httpclient.py, the one HTTP client, against real servers on loopback
(and a real Docker engine): POST, unix sockets, TLS (trustme), the one retry on a stale
kept connection, per-call body caps, the deadline on a server that never answers, and the
Docker engine over tcp:// and over TLS with the docker CLI's certificate files."""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import ssl
import tempfile
import threading
import time

import pytest
import trustme

from exporter.collectors.base import Deadline, SourceNotRunning
from exporter.collectors.docker import DockerCollector
from exporter.collectors.docker_api import Engine, UnsupportedHost, tls_from_env
from exporter.collectors.httpclient import Client, HTTPError, NotRunning
from exporter.config import DockerSection


class Server:
    """A keep-alive HTTP/1.1 server on loopback (TCP, TLS or a unix socket) that records what it got."""

    def __init__(self, tls: ssl.SSLContext | None = None, unix: str | None = None, close_after_answer=False,
                 hang=False, body: bytes = b'{"ok": true}'):
        self.requests: list[tuple[str, str, bytes, dict]] = []
        self.connections = 0
        self.ended = threading.Event()  # a connection ended (the client closed it)
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                owner.connections += 1

            def finish(self):
                super().finish()
                owner.ended.set()

            def _answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                owner.requests.append((method, self.path, self.rfile.read(length), dict(self.headers)))
                if hang:
                    owner.release.wait(30)
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if close_after_answer:
                    # Closed without saying so: the client finds out at its next request.
                    self.close_connection = True

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):
                pass

        if unix:
            class Unix(socketserver.ThreadingUnixStreamServer):
                daemon_threads = True
            self.server = Unix(unix, Handler)
            self.url = "http://localhost"
        else:
            class TCP(http.server.ThreadingHTTPServer):
                daemon_threads = True
            self.server = TCP(("127.0.0.1", 0), Handler)
            if tls is not None:
                self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made = []

    def make(**kwargs) -> Server:
        made.append(Server(**kwargs))
        return made[-1]
    yield make
    for server in made:
        server.close()


def test_post_json_carries_the_document_and_the_headers(servers):
    server = servers()
    client = Client(headers={"Accept": "application/json"})
    answer = client.post_json(server.url + "/api/generate", {"model": "llama3.1:8b", "keep_alive": 0}, Deadline(5),
                              1024, {"Authorization": "Bearer t"})
    assert (answer.status, answer.ok, answer.json()) == (200, True, {"ok": True})
    method, path, body, headers = server.requests[0]
    assert (method, path, json.loads(body)) == ("POST", "/api/generate", {"model": "llama3.1:8b", "keep_alive": 0})
    assert headers["Content-Type"] == "application/json" and headers["Authorization"] == "Bearer t"
    assert headers["Accept"] == "application/json" and headers["Accept-Encoding"] == "identity"
    client.close()


def test_unix_socket_and_keep_alive(servers):
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        server = servers(unix=f"{folder}/s.sock")
        client = Client(unix_socket=f"{folder}/s.sock")
        for _ in range(5):
            assert client.get("http://localhost/v1.41/info", Deadline(5), 1024).json() == {"ok": True}
        assert server.connections == 1 and [r[1] for r in server.requests] == ["/v1.41/info"] * 5
        assert len(client.idle_connections()) == 1
        client.close()
        assert client.idle_connections() == []


def test_nothing_there_is_not_running():
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        with pytest.raises(NotRunning) as missing:
            Client(unix_socket=f"{folder}/none.sock").get("http://localhost/", Deadline(2), 10)
    assert missing.value.missing and isinstance(missing.value, SourceNotRunning)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(NotRunning) as refused:
        Client().get(f"http://127.0.0.1:{port}/", Deadline(2), 10)
    assert str(refused.value) == "connection refused" and not refused.value.missing


def test_a_stale_kept_connection_is_replaced_once(servers):
    server = servers(close_after_answer=True)
    client = Client()
    assert client.get(server.url + "/a", Deadline(5), 1024).status == 200
    assert server.ended.wait(5)  # the server has closed the kept connection meanwhile
    assert client.get(server.url + "/b", Deadline(5), 1024).status == 200
    assert [r[1] for r in server.requests] == ["/a", "/b"] and server.connections == 2


def test_the_retry_is_once(servers):
    """A kept connection found closed is replaced once; when the new one fails too, the
    call fails (kind 'closed') instead of trying again."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            accepted.append(sock)
            if len(accepted) == 1:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += sock.recv(4096)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            sock.close()  # the first after its answer, the others without one
    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    client = Client()
    try:
        assert client.get(url, Deadline(5), 100).body == b"ok"
        time.sleep(0.2)
        with pytest.raises(HTTPError) as failed:
            client.get(url, Deadline(5), 100)
        assert failed.value.kind == "closed" and not failed.value.answered
        time.sleep(0.2)
        assert len(accepted) == 2 and client.idle_connections() == []
    finally:
        listener.close()


def test_the_body_cap_is_per_call(servers):
    server = servers(body=b"x" * 5000)
    client = Client()
    assert len(client.get(server.url + "/", Deadline(5), 5000).body) == 5000
    with pytest.raises(HTTPError) as refused:
        client.get(server.url + "/", Deadline(5), 4999)
    assert refused.value.kind == "too_large" and str(refused.value) == "answer larger than 4999 bytes"


def test_no_answer_ends_at_the_deadline_and_the_connection_is_closed(servers):
    server = servers(hang=True)
    client = Client()
    started = time.monotonic()
    with pytest.raises(HTTPError) as late:
        client.get(server.url + "/", Deadline(0.5), 1024)
    assert late.value.kind == "timeout" and 0.5 <= time.monotonic() - started < 0.8
    assert client.idle_connections() == []
    server.release.set()
    assert server.ended.wait(5)


def test_https_is_verified_against_the_ca_bundle(servers, tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = servers(tls=server_context)
    with pytest.raises(HTTPError) as untrusted:  # trustme's CA is in no bundle
        Client().get(server.url + "/", Deadline(5), 1024)
    assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    assert Client(tls=trusting).get(server.url + "/", Deadline(5), 1024).json() == {"ok": True}


# --- the Docker engine through the client ---------------------------------------------

def test_docker_over_tls_with_the_cli_certificate_files(servers, tmp_path):
    """DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the docker CLI reads them: the engine
    verified against ca.pem, the client known by cert.pem/key.pem (the stand-in requires it)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server = servers(tls=server_context, body=b'{"ApiVersion": "1.41"}')
    client_cert = ca.issue_cert("docker-client")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = server.url.rsplit(":", 1)[1]
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    engine = Engine(f"tcp://127.0.0.1:{port}", Deadline(5), env)
    assert engine.api_version == "1.41" and engine.base == f"https://127.0.0.1:{port}"
    assert engine.info(Deadline(5)) == {"ApiVersion": "1.41"}
    assert [r[1] for r in server.requests] == ["/version", "/v1.41/info"]
    engine.close()
    # No TLS variable: plain HTTP, as the CLI.
    assert tls_from_env({}, tmp_path) is None


def test_ssh_hosts_are_refused_with_the_way_round():
    with pytest.raises(UnsupportedHost) as refused:
        Engine("ssh://me@build-box", Deadline(1))
    assert "forward the engine's socket (ssh -nNT -L /tmp/docker.sock:/var/run/docker.sock me@build-box)" in str(
        refused.value)
    families = {}
    collector = DockerCollector(DockerSection(host="ssh://me@build-box"), 1)
    with pytest.raises(Exception) as failed:
        for family in collector.collect():
            families[family.name] = family
    assert families["aitools_docker_up"].samples[0].value == 0
    assert str(failed.value).startswith("cannot reach the Docker engine at ssh://me@build-box: ssh:// Docker hosts "
                                        "are not supported")


class TCPToUnix:
    """tcp://127.0.0.1:PORT relayed to the engine's unix socket, as a socket proxy does."""

    def __init__(self, socket_path: str):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socket_path = socket_path
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(self.socket_path)
            for source, sink in ((client, engine), (engine, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_docker_over_tcp_reads_what_the_unix_socket_reads(docker_engine):
    container = docker_engine.run("http-client-tcp", "postgres:15", hold_mb=20)
    relay = TCPToUnix(docker_engine.socket_path)
    try:
        def usage(host: str) -> dict:
            collector = DockerCollector(DockerSection(host=host), 5)
            collector.cgroup_root = None  # through the engine's stats API
            families = {family.name: family for family in collector.collect()}
            assert families["aitools_docker_up"].samples[0].value == 1
            return {s.labels["name"]: s.value for s in families["aitools_container_memory_usage_bytes"].samples}

        over_unix, over_tcp = usage(docker_engine.host), usage(f"tcp://127.0.0.1:{relay.port}")
        assert set(over_tcp) == set(over_unix) and "http-client-tcp" in over_tcp
        # The same container, read twice a moment apart: the same 20 MB it holds, give or take its runtime.
        assert abs(over_tcp["http-client-tcp"] - over_unix["http-client-tcp"]) < 4 * 2**20
        assert over_tcp["http-client-tcp"] >= 20 * 2**20
    finally:
        relay.close()
        docker_engine.client.api.remove_container(container, force=True)
