"""Connections kept across scrapes: the Node url targets' and the LLM servers' HTTP
connections and an inspector target's WebSocket are reused at the next scrape, and opened
again when they break; no thread is started per scrape."""

from __future__ import annotations

import threading

from exporter.collectors.llm import OllamaCollector
from exporter.collectors.node import NodeCollector
from exporter.config import Config, NodeSection, NodeTarget, OllamaSection
from exporter.scrape import Scraper


def node_values(collector) -> dict:
    return {sample.labels["target"]: sample.value
            for family in collector.collect() if family.name == "aitools_node_target_up" for sample in family.samples}


def idle_connections(pool) -> list:
    return pool.idle_connections()


def test_node_connections_and_the_websocket_are_kept_and_reopened_when_broken(node_steady):
    collector = NodeCollector(NodeSection(targets=(NodeTarget("json", url=node_steady.url("/memory")),
                                                   NodeTarget("prom", url=node_steady.url("/metrics")),
                                                   NodeTarget("debug", inspector=node_steady.inspector_address))))
    assert node_values(collector) == {"json": 1, "prom": 1, "debug": 1}
    session = collector._inspectors["debug"]

    def url_connections() -> list:
        """The url targets' kept connections: each target has its client (its own source)."""
        return [connection for client in collector._clients.values() for connection in idle_connections(client)]

    websocket, kept = session.sock, set(map(id, url_connections()))
    assert websocket is not None and len(kept) == 2  # one for each url target

    for _ in range(5):
        assert node_values(collector) == {"json": 1, "prom": 1, "debug": 1}
    assert session.sock is websocket  # the same WebSocket, five scrapes later
    assert set(map(id, url_connections())) == kept  # the same HTTP connections, none replaced

    # Broken under it (the target restarted, a proxy dropped it): the next scrape opens new ones.
    import socket
    session.sock.sock.shutdown(socket.SHUT_RDWR)
    for connection in url_connections():
        connection.sock.sock.shutdown(socket.SHUT_RDWR)
    assert node_values(collector) == {"json": 1, "prom": 1, "debug": 1}
    assert session.sock is not websocket


def test_llm_connection_is_kept_across_scrapes(ollama_standin):
    ollama_standin.load("llama3.1:8b", size=4_900_000_000)
    collector = OllamaCollector(OllamaSection(url=ollama_standin.url), timeout=2)
    list(collector.collect())
    [connection] = idle_connections(collector.http)
    for _ in range(5):
        list(collector.collect())
    assert idle_connections(collector.http) == [connection]
    # /api/ps and /api/tags at each of the 6 scrapes (and the model's /api/show once, for its
    # estimate: cached by digest), all on the one kept connection
    assert [path for path, _ in ollama_standin.requests] == ["/api/ps", "/api/tags", "/api/show"] + \
        ["/api/ps", "/api/tags"] * 5


def test_no_thread_is_started_per_scrape(node_steady, ollama_standin):
    config = Config(node=NodeSection(targets=(NodeTarget("json", url=node_steady.url("/memory")),
                                  NodeTarget("debug", inspector=node_steady.inspector_address))), ollama=OllamaSection(url=ollama_standin.url), timeout=2)
    scraper = Scraper([NodeCollector(config.node, config.timeout), OllamaCollector(config.ollama, config.timeout)], config.timeout)
    for _ in range(10):
        scraper.collect_once()
    started = threading.active_count()
    names = sorted(thread.name for thread in threading.enumerate())
    for _ in range(100):
        scraper.collect_once()
    assert threading.active_count() == started, (names, sorted(t.name for t in threading.enumerate()))
