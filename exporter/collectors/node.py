"""Node.js heap figures from the targets in `node.targets`.

A `url` target answers JSON holding a `process.memoryUsage()`-shaped object at any
depth, or prom-client text. An `inspector` target is a `node --inspect` address, read
over the DevTools protocol. All targets are read in parallel, on worker threads kept
across scrapes, over connections (and WebSockets) kept open across scrapes, all by the
scrape's deadline; one failing target costs only its own figures
(`aitools_node_target_up 0`), and the collector then raises `CollectorError` naming it
after yielding everything else.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus_text

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, SourceNotRunning, byte_count, gauge
from exporter.collectors.machine import current
from exporter.collectors.httpclient import Client, TimedSocket, connect
from exporter.config import DEFAULT_TIMEOUT_SECONDS, NodeSection, NodeTarget
from exporter.workers import Workers

# A hostile or broken target must not exhaust the exporter's memory.
MAX_BODY_BYTES = 4 * 2**20
# No Node heap or process is this large; a bigger figure is garbage, not a reading.
MAX_PLAUSIBLE_BYTES = 2**40
MAX_JSON_DEPTH = 32
# A target's read ends at the deadline itself; this is the hand-over of its outcome.
HAND_OVER_SECONDS = 0.05
MAX_PARALLEL_TARGETS = 32
MAX_HANDSHAKE_BYTES = 16 * 1024
ACCEPT = "application/json, text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.8, */*;q=0.5"

PROM_HEAP_USED = "nodejs_heap_size_used_bytes"
PROM_HEAP_TOTAL = "nodejs_heap_size_total_bytes"
PROM_RSS = "process_resident_memory_bytes"

# Side-effect free; each part on its own, so that an old Node without
# process.getBuiltinModule (< 20.16) still gives the rss.
INSPECTOR_EXTRAS_EXPRESSION = """(() => {
  const extras = {};
  try {
    extras.rss = process.memoryUsage.rss ? process.memoryUsage.rss() : process.memoryUsage().rss;
  } catch (error) {}
  try {
    const v8 = process.getBuiltinModule?.('v8') ?? process.mainModule?.require('v8') ?? globalThis.require?.('v8');
    if (v8) extras.heapSizeLimit = v8.getHeapStatistics().heap_size_limit;
  } catch (error) {}
  return JSON.stringify(extras);
})()"""


class TargetError(Exception):
    """One target could not be read; the message is the reason, in one line."""


class TargetNotRunning(TargetError):
    """Nothing listens at the target's address (connection refused): the server is stopped."""


@dataclass(frozen=True)
class HeapReading:
    heap_used: float
    heap_total: float
    heap_limit: float | None = None
    rss: float | None = None


def plausible_bytes(value: object) -> float | None:
    """The value as a byte count, or None when it is not a number a Node process could report."""
    if isinstance(value, float) and not value.is_integer() and 0 <= value <= MAX_PLAUSIBLE_BYTES:
        return value  # a fraction of a byte: some exporters average
    count = byte_count(value, MAX_PLAUSIBLE_BYTES + 1)
    return None if count is None else float(count)


def _required_bytes(value: object, name: str) -> float:
    checked = plausible_bytes(value)
    if checked is None:
        raise TargetError(f"{name} is not a plausible byte count: {value!r}"[:200])
    return checked


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _walk_objects(document: object) -> Iterator[dict]:
    """Every JSON object in the document, depth-first in document order, at most MAX_JSON_DEPTH deep."""
    stack = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            continue
        if isinstance(node, dict):
            yield node
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        stack.extend((child, depth + 1) for child in reversed(list(children)) if isinstance(child, (dict, list)))


def parse_memory_json(body: bytes) -> HeapReading:
    """Heap figures from JSON holding a process.memoryUsage()-shaped object at any depth."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise TargetError("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TargetError(f"malformed JSON: {exc}") from None

    memory = limit = None
    for node in _walk_objects(document):
        if memory is None and _is_number(node.get("heapUsed")) and _is_number(node.get("heapTotal")):
            memory = node
        if limit is None:
            limit = next((node[key] for key in ("heap_size_limit", "heapSizeLimit") if _is_number(node.get(key))), None)
        if memory is not None and limit is not None:
            break
    if memory is None:
        raise TargetError("no heapUsed/heapTotal in the JSON")
    return HeapReading(
        heap_used=_required_bytes(memory["heapUsed"], "heapUsed"),
        heap_total=_required_bytes(memory["heapTotal"], "heapTotal"),
        heap_limit=plausible_bytes(limit),
        rss=plausible_bytes(memory.get("rss")),
    )


def parse_metrics_text(text: str, openmetrics: bool = False) -> HeapReading:
    """Heap figures from prom-client text (Prometheus text format, or OpenMetrics)."""
    values: dict[str, float] = {}
    try:
        for family in (parse_openmetrics if openmetrics else parse_prometheus_text)(text):
            for sample in family.samples:
                values.setdefault(sample.name, sample.value)
    except Exception as exc:  # the parsers raise assorted exception types on bad input
        raise TargetError(f"malformed metrics text: {exc}"[:300]) from None

    def find(name: str) -> float | None:
        # prom-client's `prefix` option puts a prefix before every default metric name.
        if name in values:
            return values[name]
        return next((value for key, value in values.items() if key.endswith("_" + name)), None)

    used, total = find(PROM_HEAP_USED), find(PROM_HEAP_TOTAL)
    if used is None or total is None:
        raise TargetError(f"no {PROM_HEAP_USED}/{PROM_HEAP_TOTAL} in the metrics text")
    # prom-client publishes no heap size limit; the per-space totals are not one.
    return HeapReading(
        heap_used=_required_bytes(used, PROM_HEAP_USED),
        heap_total=_required_bytes(total, PROM_HEAP_TOTAL),
        rss=plausible_bytes(find(PROM_RSS)),
    )


def parse_http_answer(content_type: str, body: bytes) -> HeapReading:
    """Heap figures from a url target's answer: JSON or metrics text, by Content-Type, else by the body."""
    media_type = content_type.split(";")[0].strip().lower()
    if "json" in media_type:
        return parse_memory_json(body)
    if media_type != "application/openmetrics-text" and body.lstrip()[:1] in (b"{", b"["):
        return parse_memory_json(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise TargetError("the answer is neither JSON nor UTF-8 metrics text") from None
    openmetrics = media_type == "application/openmetrics-text" or text.rstrip().endswith("# EOF")
    return parse_metrics_text(text, openmetrics)


def _reason(exc: CollectorError) -> str:
    """A failed GET in this collector's words."""
    kind = getattr(exc, "kind", None)
    if kind == "timeout":
        return str(exc).replace("timed out after", "no answer within")
    return str(exc)


def http_get(http: Client, url: str, deadline: Deadline) -> tuple[str, bytes]:
    """(Content-Type, body) of a 2xx answer, at most MAX_BODY_BYTES decoded."""
    try:
        answer = http.get(url, deadline, MAX_BODY_BYTES)
    except SourceNotRunning:
        raise TargetNotRunning("connection refused") from None
    except CollectorError as exc:
        raise TargetError(_reason(exc)) from None
    if not 200 <= answer.status < 300:
        raise TargetError(f"HTTP {answer.status} {answer.reason}".strip())
    return answer.content_type, answer.body


def read_url_target(http: Client, url: str, deadline: Deadline) -> HeapReading:
    content_type, body = http_get(http, url, deadline)
    return parse_http_answer(content_type, body)


def _debugger_path(listing: bytes) -> str:
    """The WebSocket path of the Node target in an inspector's /json/list."""
    try:
        entries = json.loads(listing)
    except (ValueError, RecursionError):
        raise TargetError("/json/list is not JSON: not a node --inspect address?") from None
    if not isinstance(entries, list):
        raise TargetError("/json/list is not a list: not a node --inspect address?")
    debuggable = [e for e in entries if isinstance(e, dict) and isinstance(e.get("webSocketDebuggerUrl"), str)]
    if not debuggable:
        raise TargetError("/json/list names no webSocketDebuggerUrl")
    entry = next((e for e in debuggable if e.get("type") == "node"), debuggable[0])
    return urlsplit(entry["webSocketDebuggerUrl"]).path or "/"


class InspectorSession:
    """One `node --inspect` target's DevTools WebSocket, kept open across scrapes and opened
    again when it breaks. A minimal RFC 6455 client (text frames out, messages in, ping
    answered) whose every read and write keeps to the scrape's deadline and whose messages
    are capped at MAX_BODY_BYTES: a target trickling a frame ends at the deadline, one
    announcing an endless frame costs 4 MiB at most. (websocket-client, the well-kept
    library, reads whatever length a frame announces and times each socket call, not the
    whole: measured here, a target streaming one endless frame took it from 21 MB to 313 MB
    of RSS in 2 s with timeout=1.) It runs on the HTTP client's TimedSocket."""

    def __init__(self, address: str, http: Client):
        self.address = address
        self.http = http
        self.sock: TimedSocket | None = None
        self._buffer = bytearray()
        self._next_id = 0

    def read(self, deadline: Deadline) -> HeapReading:
        fresh = self.sock is None
        try:
            try:
                if fresh:
                    self._open(deadline)
                return self._read_heap(deadline)
            except (_Closed, ConnectionResetError, BrokenPipeError):
                if fresh:
                    raise
                self.close()  # the target restarted, or closed the session: once more on a new one
                self._open(deadline)
                return self._read_heap(deadline)
        except TargetError:
            self.close()
            raise
        except _Closed:
            self.close()
            raise TargetError("DevTools connection closed by the target") from None
        except TimeoutError:
            self.close()
            raise TargetError(f"no answer within {deadline.seconds:g}s") from None
        except OSError as exc:
            self.close()
            raise TargetError(f"DevTools connection failed: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self._buffer.clear()

    def _read_heap(self, deadline: Deadline) -> HeapReading:
        usage = self._call("Runtime.getHeapUsage", {}, deadline)
        rss = heap_limit = None
        try:
            result = self._call("Runtime.evaluate", {"expression": INSPECTOR_EXTRAS_EXPRESSION, "returnByValue": True,
                                                     "silent": True}, deadline)
            extras = json.loads(result["result"]["value"])
            rss, heap_limit = plausible_bytes(extras.get("rss")), plausible_bytes(extras.get("heapSizeLimit"))
        except (TargetError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return HeapReading(heap_used=_required_bytes(usage.get("usedSize"), "usedSize"),
                           heap_total=_required_bytes(usage.get("totalSize"), "totalSize"),
                           heap_limit=heap_limit, rss=rss)

    def _open(self, deadline: Deadline) -> None:
        try:
            _, listing = http_get(self.http, f"http://{self.address}/json/list", deadline)
        except TargetError as exc:
            raise type(exc)(f"/json/list: {exc}") from None
        # Connect to the configured address, not the host in webSocketDebuggerUrl: Node
        # writes there whatever it was bound to (0.0.0.0, a container's name).
        path = _debugger_path(listing)
        host, _, port = self.address.rpartition(":")
        self.sock = connect((host.strip("[]"), int(port)), deadline)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {self.address}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HANDSHAKE_BYTES:
                raise TargetError("DevTools handshake answer too long")
            self._fill()
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer[:] = rest
        status = head.split(b"\r\n", 1)[0]
        if status.split(b" ")[1:2] != [b"101"]:
            raise TargetError(f"DevTools handshake refused: {status[:100].decode('latin-1')}")

    def _call(self, method: str, params: dict, deadline: Deadline) -> dict:
        """Send one DevTools command and return its result, skipping events and other replies."""
        self.sock.deadline = deadline
        self._next_id += 1
        message_id = self._next_id
        self._send(json.dumps({"id": message_id, "method": method, "params": params}).encode())
        while True:
            raw = self._message()
            try:
                reply = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if not isinstance(reply, dict) or reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise TargetError(f"{method} failed: {reply['error']}"[:200])
            result = reply.get("result")
            if not isinstance(result, dict):
                raise TargetError(f"{method} answered no result")
            return result

    def _send(self, payload: bytes, opcode: int = 0x1) -> None:
        length = len(payload)
        if length < 126:
            header = bytes((0x80 | opcode, 0x80 | length))
        elif length < 2**16:
            header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (length // 4 + 1))[:length], "big")
                  ).to_bytes(length, "big") if length else b""
        self.sock.sendall(header + mask + masked)

    def _message(self) -> bytes:
        parts, size = [], 0
        while True:
            first, second = self._exact(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = int.from_bytes(self._exact(2), "big")
            elif length == 127:
                length = int.from_bytes(self._exact(8), "big")
            if size + length > MAX_BODY_BYTES:
                raise TargetError(f"DevTools message larger than {MAX_BODY_BYTES // 2**20} MiB")
            mask = self._exact(4) if second & 0x80 else None
            payload = self._exact(length)
            if mask:
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (length // 4 + 1))[:length], "big")
                           ).to_bytes(length, "big")
            if opcode == 0x8:
                raise _Closed()
            if opcode == 0x9:
                self._send(payload, 0xA)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            size += length
            if first & 0x80:
                return b"".join(parts)

    def _exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _Closed()
        self._buffer += chunk


class _Closed(Exception):
    """The target closed the DevTools connection."""


def describe(target: NodeTarget) -> str:
    """The target for a person, without a password the URL may hold (http://user:pass@host/)."""
    if target.url is None:
        return f"inspector {target.inspector}"
    parts = urlsplit(target.url)
    if parts.password is None:
        return target.url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:<secret>@{host}"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


class NotRunning(str):
    """The reason a target has no reading, when it is that nothing listens at its address."""


class NodeCollector(SourceCollector):
    name = "node"

    def __init__(self, section: NodeSection = NodeSection(), timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(timeout)
        self.section = section
        # Kept across scrapes: the connections to the url targets and the inspectors' WebSockets,
        # and the threads that read the targets in parallel.
        self.http = Client(headers={"Accept": ACCEPT})
        # Each url target's answers are its own source (recorded and replayed by its name).
        self._clients = {target.name: Client(headers={"Accept": ACCEPT}, source=f"node:{target.name}")
                         for target in section.targets if target.url is not None}
        self._inspectors = {target.name: InspectorSession(target.inspector, self.http)
                            for target in section.targets if target.inspector is not None}
        self._workers = Workers(min(len(section.targets), MAX_PARALLEL_TARGETS), "node-target")
        self._reading: dict[str, Future] = {}

    def collect(self, deadline: Deadline | None = None):
        deadline = self.deadline(deadline)
        targets = self.section.targets
        outcomes = self._read_all(targets, deadline)

        labels = ["target"]
        heap_used = gauge("aitools_node_heap_used_bytes", "V8 heapUsed of the Node target.", labels)
        heap_total = gauge("aitools_node_heap_total_bytes", "V8 heapTotal of the Node target.", labels)
        heap_limit = gauge("aitools_node_heap_limit_bytes", "V8 heap size limit, where the target tells it.", labels)
        rss = gauge("aitools_node_rss_bytes", "Resident set of the Node process, where the target tells it.", labels)
        up = gauge("aitools_node_target_up", "1 when the target answered with heap figures.", labels)
        running = gauge("aitools_node_target_running",
                        "0 when nothing listens at the target's address (connection refused: the server is stopped), "
                        "else 1.", labels)

        failures, not_running = [], 0
        for target in targets:
            outcome = outcomes[target.name]
            if isinstance(outcome, HeapReading):
                heap_used.add_metric([target.name], outcome.heap_used)
                heap_total.add_metric([target.name], outcome.heap_total)
                # The source's own figure (V8's heap_size_limit) where it tells it, else the config's.
                limit = outcome.heap_limit if outcome.heap_limit is not None else target.heap_limit
                if limit is not None:
                    heap_limit.add_metric([target.name], float(limit))
                if outcome.rss is not None:
                    rss.add_metric([target.name], outcome.rss)
                up.add_metric([target.name], 1.0)
                running.add_metric([target.name], 1.0)
            else:
                up.add_metric([target.name], 0.0)
                stopped = isinstance(outcome, NotRunning)
                not_running += stopped
                running.add_metric([target.name], 0.0 if stopped else 1.0)
                failures.append(f"target {target.name} ({describe(target)}): {_one_line(outcome)}")

        yield from (heap_used, heap_total, heap_limit, rss, up, running)
        # Only stopped targets (a dev server not started) and none failing: not running, normal.
        if failures and not_running == len(failures):
            raise SourceNotRunning("; ".join(failures))
        if failures:
            raise CollectorError("; ".join(failures))

    def read_target(self, target: NodeTarget, deadline: Deadline) -> HeapReading:
        if target.url is not None:
            return read_url_target(self._clients[target.name], target.url, deadline)
        if current().replaying:  # a DevTools session is not recorded (README "Record and replay")
            raise TargetNotRunning("an inspector target is not in a recording")
        return self._inspectors[target.name].read(deadline)

    def _read_all(self, targets: tuple[NodeTarget, ...], deadline: Deadline) -> dict[str, HeapReading | str]:
        """Each target's reading, or the reason it has none; by the deadline, on the kept workers."""
        futures: dict[str, Future] = {}
        outcomes: dict[str, HeapReading | str] = {}
        for target in targets:
            previous = self._reading.get(target.name)
            if previous is not None and not previous.done():
                outcomes[target.name] = "still busy with an earlier scrape"
                continue
            futures[target.name] = self._reading[target.name] = self._workers.submit(self.read_target, target, deadline)
        wait(futures.values(), timeout=deadline.left() + HAND_OVER_SECONDS)
        for name, future in futures.items():
            if not future.done():
                outcomes[name] = f"no answer within {deadline.seconds:g}s"
            elif isinstance(future.exception(), TargetNotRunning):
                outcomes[name] = NotRunning(future.exception())
            elif isinstance(future.exception(), TargetError):
                outcomes[name] = str(future.exception())
            elif future.exception() is not None:
                error = future.exception()
                outcomes[name] = f"unexpected {type(error).__name__}: {error}"
            else:
                outcomes[name] = future.result()
        return outcomes
