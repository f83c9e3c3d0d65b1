"""The macOS path's cost per scrape, on a replay of the 64 GB Mac recording.

Not part of the pass/fail suite. Serves `aitools-exporter serve --replay
tests/recordings/mac-64gb-workstation` (every collector with macOS's logic: footprints,
vm_stat's figures, sysctl, the GPU, Docker Desktop's stats API, Ollama and LM Studio),
scrapes it N times over HTTP as Prometheus does, and prints the exporter's CPU per scrape,
its median scrape time and its RSS. On a real Mac the commands (one vm_stat, four sysctl,
one ioreg) are processes of their own on top of this: their cost is the machine's, not the
replay's.

    .venv/bin/python tests/benchmarks/replay_cost.py [--scrapes 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.parts.exporter_process import ExporterProcess  # noqa: E402

RECORDING = Path(__file__).resolve().parents[1] / "recordings" / "mac-64gb-workstation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()
    with ExporterProcess(args=("serve", "--replay", str(RECORDING))) as exporter:
        process = psutil.Process(exporter.process.pid)
        for _ in range(10):
            exporter.scrape()
        before = sum(process.cpu_times()[:2])
        took = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            answer = exporter.scrape(headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                              "Accept-Encoding": "gzip"})
            took.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200
        cpu = (sum(process.cpu_times()[:2]) - before) * 1000 / args.scrapes
        rss = process.memory_info().rss / 2**20
    print("| recording | scrapes | CPU ms/scrape | median ms | RSS MB |\n|---|---:|---:|---:|---:|")
    print(f"| {RECORDING.name} | {args.scrapes} | {cpu:.2f} | {statistics.median(took):.2f} | {rss:.1f} |")


if __name__ == "__main__":
    main()
