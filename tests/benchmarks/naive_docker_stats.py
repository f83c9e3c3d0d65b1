"""The naive way to read container memory, for scrape_benchmark.py to measure.

What a first exporter would do with the Docker SDK's defaults: list the running
containers, then ask each for `container.stats(stream=False)`, one after another.
Runs as a process of its own so that its memory and CPU time can be read from its pid
like an exporter's:

    python naive_docker_stats.py unix:///path/to/docker.sock

prints `ready` once connected, then for each `scrape` line on stdin reads every
container's stats and prints `done N` (N containers read); ends at end of input.
"""

from __future__ import annotations

import sys

import docker


def main() -> None:
    client = docker.DockerClient(base_url=sys.argv[1])  # the SDK's defaults: version negotiation, 60 s timeout
    client.ping()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "scrape":
            continue
        read = 0
        for container in client.containers.list():
            stats = container.stats(stream=False)
            read += "usage" in stats.get("memory_stats", {})
        print(f"done {read}", flush=True)


if __name__ == "__main__":
    main()
