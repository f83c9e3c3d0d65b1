"""Hostile backends on 127.0.0.1, for the attack tests: a gzip bomb, trickling targets.

Each is a plain listening socket with a daemon thread per connection; stop() closes the
listener and every connection.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from pathlib import Path


def gzip_bomb(path: Path, decoded_bytes: int = 2 * 2**30) -> bytes:
    """A gzip member that unpacks to `decoded_bytes` of zeros (2 GiB: about 2 MB), cached in `path`."""
    if path.exists():
        return path.read_bytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(2**20)
    parts = [compressor.compress(block) for _ in range(decoded_bytes // len(block))]
    parts.append(compressor.flush())
    data = b"".join(parts)
    path.write_bytes(data)
    return data


class RawServer:
    """Accepts connections and runs `serve(connection)` for each, in a daemon thread."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self.accepted = 0
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.connections.append(connection)
            threading.Thread(target=self._serve_safely, args=(connection,), daemon=True).start()

    def _serve_safely(self, connection: socket.socket) -> None:
        try:
            self.serve(connection)
        except OSError:
            pass
        finally:
            connection.close()

    def serve(self, connection: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def wait(self, seconds: float) -> bool:
        return self._stopping.wait(seconds)

    def read_head(self, connection: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def stop(self) -> None:
        self._stopping.set()
        self.listener.close()
        for connection in self.connections:
            try:
                connection.close()
            except OSError:
                pass


class GzipBombServer(RawServer):
    """Answers every request with 200, Content-Encoding: gzip and the bomb, whatever was asked."""

    def __init__(self, bomb: bytes, content_type: str = "application/json"):
        self.bomb, self.content_type = bomb, content_type
        super().__init__()

    def serve(self, connection: socket.socket) -> None:
        while True:
            self.read_head(connection)
            connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\nContent-Encoding: gzip\r\n"
                               f"Content-Length: {len(self.bomb)}\r\n\r\n".encode())
            connection.sendall(self.bomb)


class TricklingServer(RawServer):
    """A Node target that trickles: `url` mode sends its answer's headers a byte at a time;
    `inspector` mode answers /json/list and the WebSocket upgrade properly, then trickles
    the frame of every reply a byte at a time."""

    def __init__(self, mode: str, interval: float = 0.05):
        self.mode, self.interval = mode, interval
        super().__init__()

    def trickle(self, connection: socket.socket, data: bytes) -> None:
        for index in range(len(data)):
            connection.sendall(data[index:index + 1])
            if self.wait(self.interval):
                return

    def serve(self, connection: socket.socket) -> None:
        head = self.read_head(connection)
        if self.mode == "url":
            body = json.dumps({"heapUsed": 1, "heapTotal": 2}).encode()
            self.trickle(connection, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            return
        if head.startswith(b"GET /json/list"):
            body = json.dumps([{"type": "node", "webSocketDebuggerUrl": f"ws://{self.address}/trickle"}]).encode()
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            return
        connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Accept: x\r\n\r\n")
        payload = json.dumps({"id": 1, "result": {"usedSize": 1, "totalSize": 2}}).encode()
        while not self._stopping.is_set():
            connection.recv(65536)  # a command
            self.trickle(connection, bytes((0x81, len(payload))) + payload)


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """The predicate's first true answer within the timeout; its last (false) answer after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()
