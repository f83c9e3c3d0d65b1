"""The cost of one refresh of `aitools-exporter top`, beside `snapshot`'s.

Not part of the pass/fail suite. On this machine's processes, with the default
configuration (sources that are not running answer "not running"):

- top, local: one refresh is LocalFeed.read() (the collectors, kept across refreshes, and
  the tree), measured over N refreshes after the first; CPU and wall time;
- top, --url: one refresh is RemoteFeed.read() of a served exporter (the page fetched and
  parsed; the exporter's own scrape is its cost, not the view's);
- snapshot: the whole command, a process of its own (start, one collection, print).

    .venv/bin/python tests/benchmarks/top_refresh.py [--refreshes 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from exporter.config import Config  # noqa: E402
from exporter.top import LocalFeed, RemoteFeed  # noqa: E402
from tests.parts.exporter_process import ExporterProcess  # noqa: E402


def measure(read, count: int) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) of `count` calls after a first one."""
    read()
    walls, cpu_start = [], time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        read()
        walls.append((time.perf_counter() - started) * 1000)
    return statistics.median(walls), (time.process_time() - cpu_start) * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=30)
    args = parser.parse_args()
    config = Config()
    rows = [("top, local (one refresh)",) + measure(LocalFeed(config).read, args.refreshes)]
    with ExporterProcess() as exporter:
        rows.append(("top --url (one refresh)",) + measure(RemoteFeed(exporter.url, config).read, args.refreshes))
    walls = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "exporter", "snapshot"], capture_output=True, check=True)
        walls.append((time.perf_counter() - started) * 1000)
    usage = subprocess.run([sys.executable, "-c", "import resource, subprocess, sys; "
                            "subprocess.run([sys.executable, '-m', 'exporter', 'snapshot'], capture_output=True); "
                            "r = resource.getrusage(resource.RUSAGE_CHILDREN); print((r.ru_utime + r.ru_stime) * 1000)"],
                           capture_output=True, text=True)
    rows.append(("snapshot (whole command)", statistics.median(walls), float(usage.stdout.strip() or "nan")))
    print("| what | median wall ms | CPU ms |\n|---|---:|---:|")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
