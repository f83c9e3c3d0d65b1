"""How long one scrape of container memory takes, by the way stats are asked for.

Starts a real Docker engine (tests/parts/docker_engine.py), runs N containers and
times each way of reading their stats:

    .venv/bin/python tests/benchmarks/docker_stats_speed.py --containers 1 10 50

Ways:
  stream=False, one by one     the SDK's plain `stats(stream=False)`: the engine waits
                               for two samples of its 1 s stats loop per call
  stream=False, 8 in parallel  the same in a pool of 8
  one-shot, 8 in parallel      `stream=False, one_shot=True` in a pool of 8
  one-shot, all in parallel    one request per container at once
  DockerCollector.collect()    the collector as shipped (list + one-shot, all in parallel)

Each way is timed twice: after the engine's stats loop has been idle for 3 s (the
first scrape of a quiet engine), and straight after the previous reading (Prometheus
scraping every second keeps the loop busy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from exporter.collectors.docker import DockerCollector  # noqa: E402
from exporter.config import DockerSection  # noqa: E402
from tests.parts.docker_engine import DockerEngine  # noqa: E402

IDLE_SECONDS = 3.0
SEQUENTIAL_MAX_CONTAINERS = 10  # one by one costs about 2 s per container


def read_all(engine: DockerEngine, ids: list[str], workers: int, one_shot: bool | None) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda cid: engine.client.api.stats(cid, stream=False, one_shot=one_shot), ids))


def timed(function, rounds: int) -> tuple[float, float]:
    """Seconds of the first call after an idle engine, and the median of back-to-back calls."""
    time.sleep(IDLE_SECONDS)
    start = time.perf_counter()
    function()
    idle = time.perf_counter() - start
    busy = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        busy.append(time.perf_counter() - start)
    return idle, statistics.median(busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--rounds", type=int, default=3, help="back-to-back scrapes per way (median shown)")
    args = parser.parse_args()

    with DockerEngine() as engine:
        ids: list[str] = []
        collector = DockerCollector(DockerSection(host=engine.host), timeout=30)
        print(f"{'containers':>10}  {'way':<30} {'idle engine':>12} {'busy engine':>12}")
        for count in sorted(args.containers):
            while len(ids) < count:
                ids.append(engine.run(f"bench-{len(ids)}", hold_mb=1))
            ways = {
                "one-shot, all in parallel": lambda: read_all(engine, ids, len(ids), True),
                "one-shot, 8 in parallel": lambda: read_all(engine, ids, 8, True),
                "stream=False, 8 in parallel": lambda: read_all(engine, ids, 8, None),
                "DockerCollector.collect()": lambda: list(collector.collect()),
            }
            if count <= SEQUENTIAL_MAX_CONTAINERS:
                ways["stream=False, one by one"] = lambda: read_all(engine, ids, 1, None)
            for way, function in ways.items():
                idle, busy = timed(function, args.rounds)
                print(f"{count:>10}  {way:<30} {idle:>11.3f}s {busy:>11.3f}s", flush=True)


if __name__ == "__main__":
    main()
