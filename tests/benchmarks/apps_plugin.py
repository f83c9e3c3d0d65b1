"""The apps breakdown's cost beside netdata's apps.plugin, on the same processes.

Both walk every process of the machine and group them:
- ours: the apps collector (exporter/collectors/apps.py) with its default apps, in a
  Python process of its own that runs nothing else: `passes` breakdowns back to back;
  CPU per pass = its CPU time over the passes / passes; RSS after the passes, and
  what the breakdown adds to that process (RSS after less RSS before the first pass);
- netdata's apps.plugin (Debian's netdata-core) with its stock apps_groups.conf, every
  second for `passes` seconds; CPU per pass the same way (from /proc/PID/stat); RSS
  after the passes. It also reads CPU times, I/O, file descriptors and more per process
  (it draws some 30 charts per group), so its pass does more than ours.
Both see the same processes; the totals of the processes' memory are printed beside
each other (ours: resident less shared, apps.plugin: "real memory without shared").

    .venv/bin/python tests/benchmarks/apps_plugin.py [--passes 30] [--processes 500]

scrape_benchmark.py calls measure() and render() on its own workload.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.parts.apps_plugin import AppsPlugin  # noqa: E402

OURS = """
import json, os, sys, time
from exporter.collectors.apps import AppsCollector
from exporter.config import DockerSection

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

passes = int(sys.argv[1])
collector = AppsCollector(docker=DockerSection(enabled=False))
before = rss()
start_cpu, start = time.process_time(), time.monotonic()
for _ in range(passes):
    memory, count, processes, assignments, *_ = collector.read()
cpu, wall = time.process_time() - start_cpu, time.monotonic() - start
print(json.dumps({"cpu_ms": 1000 * cpu / passes, "wall_ms": 1000 * wall / passes, "rss": rss(),
                  "rss_added": rss() - before, "processes": len(processes),
                  "total": sum(proc.memory for proc in processes), "labels": len(memory)}))
"""


def measure(passes: int = 30) -> dict:
    root = str(Path(__file__).resolve().parents[2])
    ours = json.loads(subprocess.run([sys.executable, "-c", OURS, str(passes)], capture_output=True, text=True,
                                     check=True, cwd=root, timeout=600).stdout)
    with AppsPlugin(None, update_every=1) as plugin:  # its stock groups
        plugin.passes(2)  # started, first full pass done
        cpu_before = plugin.cpu_seconds()
        figures = plugin.passes(passes)
        cpu = plugin.cpu_seconds() - cpu_before
        theirs = {"cpu_ms": 1000 * cpu / passes, "rss": plugin.rss_bytes(), "total": sum(figures[-1].values()),
                  "labels": len(figures[-1])}
    return {"ours": ours, "theirs": theirs, "passes": passes, "load": os.getloadavg()}


def render(result: dict) -> str:
    ours, theirs = result["ours"], result["theirs"]
    mb = lambda size: f"{size / 1e6:.1f}"  # noqa: E731
    load = "/".join(f"{value:.2f}" for value in result["load"])
    return "\n".join([
        f"Apps breakdown beside netdata apps.plugin: {ours['processes']} processes, {result['passes']} passes each; "
        f"load average after: {load}.",
        "",
        "| | CPU ms/pass | wall ms/pass | RSS MB | processes' memory MB | labels |",
        "|---|---:|---:|---:|---:|---:|",
        f"| aitools apps breakdown (own process; it adds {mb(ours['rss_added'])} MB) | {ours['cpu_ms']:.1f} | "
        f"{ours['wall_ms']:.1f} | {mb(ours['rss'])} | {mb(ours['total'])} | {ours['labels']} |",
        f"| netdata apps.plugin 1.37 (stock groups, every 1 s) | {theirs['cpu_ms']:.1f} | – | {mb(theirs['rss'])} | "
        f"{mb(theirs['total'])} | {theirs['labels']} |",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--processes", type=int, default=500, help="extra sleep processes (default 500)")
    args = parser.parse_args(argv)
    sleep = shutil.which("sleep")
    sleepers = [subprocess.Popen([sleep, "3600"], stdin=subprocess.DEVNULL) for _ in range(args.processes)]
    try:
        time.sleep(1)
        print(render(measure(args.passes)))
    finally:
        for process in sleepers:
            process.kill()
        for process in sleepers:
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
