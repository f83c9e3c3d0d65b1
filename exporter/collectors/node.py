"""Node.js heap figures from the targets in `node.targets`.

A `url` target answers JSON holding a `process.memoryUsage()`-shaped object at any
depth, or prom-client text. An `inspector` target is a `node --inspect` address, read
over the DevTools protocol. All targets are read in parallel; one failing target costs
only its own figures (`aitools_node_target_up 0`), and the collector then raises
`CollectorError` naming it after yielding everything else.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus_text

from exporter.collectors.base import CollectorError, SourceCollector, SourceNotRunning, gauge
from exporter.collectors.tls import tls_verify
from exporter.config import NodeTarget

if TYPE_CHECKING:
    import websocket  # imported where an inspector target is read: url targets need none of it

# A hostile or broken target must not exhaust the exporter's memory.
MAX_BODY_BYTES = 4 * 2**20
# No Node heap or process is this large; a bigger figure is garbage, not a reading.
MAX_PLAUSIBLE_BYTES = 2**40
MAX_JSON_DEPTH = 32
# The wait for all targets together beyond the timeout: thread start-up and hand-over.
COLLECT_MARGIN_SECONDS = 0.2
MAX_PARALLEL_TARGETS = 32

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
    if not _is_number(value):
        return None
    value = float(value)
    if math.isnan(value) or not 0 <= value <= MAX_PLAUSIBLE_BYTES:
        return None
    return value


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


def _remaining(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TargetError(f"no answer within {timeout:g}s")
    return left


def http_get(url: str, deadline: float, timeout: float) -> tuple[str, bytes]:
    """(Content-Type, body) of a 2xx answer, reading at most MAX_BODY_BYTES."""
    try:
        # trust_env=False: targets are local processes, never reached through a proxy from the environment.
        with httpx.Client(timeout=_remaining(deadline, timeout), trust_env=False, verify=tls_verify(url)) as client:
            headers = {
                "Accept": "application/json, text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.8, */*;q=0.5",
                # A compressed answer could inflate far beyond MAX_BODY_BYTES within one chunk.
                "Accept-Encoding": "identity",
            }
            with client.stream("GET", url, headers=headers) as response:
                if not response.is_success:
                    raise TargetError(f"HTTP {response.status_code} {response.reason_phrase}".strip())
                chunks, size = [], 0
                for chunk in response.iter_bytes(64 * 1024):
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise TargetError(f"answer larger than {MAX_BODY_BYTES // 2**20} MiB")
                    chunks.append(chunk)
                    _remaining(deadline, timeout)
                return response.headers.get("content-type", ""), b"".join(chunks)
    except httpx.TimeoutException:
        raise TargetError(f"no answer within {timeout:g}s") from None
    except httpx.RemoteProtocolError:
        # Not httpx's text: it counts the bytes received, which differ from answer to answer,
        # and a reason that changes at every scrape would be logged at every scrape.
        raise TargetError("connection closed before the whole answer arrived") from None
    except httpx.ConnectError as exc:
        if "refused" in str(exc).lower():
            raise TargetNotRunning("connection refused") from None
        raise TargetError(f"cannot connect: {exc}") from None
    except httpx.HTTPError as exc:
        raise TargetError(f"{type(exc).__name__}: {exc}") from None


def read_url_target(url: str, deadline: float, timeout: float) -> HeapReading:
    content_type, body = http_get(url, deadline, timeout)
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
    return urlsplit(entry["webSocketDebuggerUrl"]).path


def _cdp_call(connection: websocket.WebSocket, message_id: int, method: str, params: dict,
              deadline: float, timeout: float) -> dict:
    """Send one DevTools command and return its result, skipping events and other replies."""
    connection.send(json.dumps({"id": message_id, "method": method, "params": params}))
    while True:
        connection.settimeout(_remaining(deadline, timeout))
        raw = connection.recv()
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


def _inspector_extras(connection: websocket.WebSocket, deadline: float, timeout: float) -> tuple[float | None, float | None]:
    """(rss, heap limit) by evaluating an expression in the target; (None, None) when that fails."""
    import websocket

    try:
        result = _cdp_call(connection, 2, "Runtime.evaluate",
                           {"expression": INSPECTOR_EXTRAS_EXPRESSION, "returnByValue": True, "silent": True},
                           deadline, timeout)
        extras = json.loads(result["result"]["value"])
        return plausible_bytes(extras.get("rss")), plausible_bytes(extras.get("heapSizeLimit"))
    except (TargetError, websocket.WebSocketException, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None


def read_inspector_target(address: str, deadline: float, timeout: float) -> HeapReading:
    import websocket

    try:
        _, listing = http_get(f"http://{address}/json/list", deadline, timeout)
    except TargetError as exc:
        raise type(exc)(f"/json/list: {exc}") from None
    # Connect to the configured address, not the host in webSocketDebuggerUrl: Node
    # writes there whatever it was bound to (0.0.0.0, a container's name).
    ws_url = f"ws://{address}{_debugger_path(listing)}"
    host = address.rsplit(":", 1)[0].strip("[]")
    connection = None
    try:
        connection = websocket.create_connection(
            ws_url, timeout=_remaining(deadline, timeout), suppress_origin=True, http_no_proxy=[host])
        usage = _cdp_call(connection, 1, "Runtime.getHeapUsage", {}, deadline, timeout)
        rss, heap_limit = _inspector_extras(connection, deadline, timeout)
    except (websocket.WebSocketTimeoutException, TimeoutError):
        raise TargetError(f"no answer within {timeout:g}s") from None
    except (websocket.WebSocketException, OSError) as exc:
        raise TargetError(f"DevTools connection failed: {type(exc).__name__}: {exc}") from None
    finally:
        if connection is not None:
            connection.close()
    return HeapReading(
        heap_used=_required_bytes(usage.get("usedSize"), "usedSize"),
        heap_total=_required_bytes(usage.get("totalSize"), "totalSize"),
        heap_limit=heap_limit,
        rss=rss,
    )


def read_target(target: NodeTarget, deadline: float, timeout: float) -> HeapReading:
    if target.url is not None:
        return read_url_target(target.url, deadline, timeout)
    return read_inspector_target(target.inspector, deadline, timeout)


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

    def collect(self):
        targets = self.config.node_targets
        outcomes = self._read_all(targets)

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

    def _read_all(self, targets: tuple[NodeTarget, ...]) -> dict[str, HeapReading | str]:
        """Each target's reading, or the reason it has none (a NotRunning for a target nothing listens at);
        returns within the timeout and a small margin."""
        if not targets:
            return {}
        timeout = self.config.timeout
        deadline = time.monotonic() + timeout
        pool = ThreadPoolExecutor(max_workers=min(len(targets), MAX_PARALLEL_TARGETS), thread_name_prefix="node-target")
        futures = {target.name: pool.submit(read_target, target, deadline, timeout) for target in targets}
        wait(futures.values(), timeout=timeout + COLLECT_MARGIN_SECONDS)
        # Don't wait for a target stuck past the deadline: its own timeouts end its thread soon.
        pool.shutdown(wait=False, cancel_futures=True)

        outcomes: dict[str, HeapReading | str] = {}
        for name, future in futures.items():
            if not future.done() or future.cancelled():
                outcomes[name] = f"no answer within {timeout:g}s"
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
