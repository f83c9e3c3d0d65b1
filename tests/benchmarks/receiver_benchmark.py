"""The receiver's cost: RSS, the time to answer a webhook, and a 10 MB body refused.

Not part of the pass/fail suite. Starts `aitools-exporter receive` (no desktop here, so
notifications go to its log; no fix enabled), posts N small webhooks one after the other on
one kept-alive connection, declares a 10 MB body, and prints the figures:

    .venv/bin/python tests/benchmarks/receiver_benchmark.py [--posts 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BODY = json.dumps({"version": "4", "status": "firing", "groupKey": "k", "receiver": "webhook", "alerts": [
    {"status": "firing", "labels": {"alertname": "AitoolsDuplicateService", "family": "postgres"},
     "annotations": {"summary": "2 postgres containers run at once", "description": "supabase_db 1.2GB, stray 300MB",
                     "action": "`docker stop stray`"}}]}).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="aitools-receiver-bench-"))
    (folder / "token").write_text("bench-token")
    (folder / "config.yml").write_text("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"
                                       f"receiver: {{token_file: {folder / 'token'}}}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "exporter", "receive", "--config.file", str(folder / "config.yml"),
                                "--web.listen-address", f"127.0.0.1:{port}", "--audit.file", str(folder / "audit.jsonl"),
                                "--log.level", "warn"],
                               env={**os.environ, "HOME": str(folder), "AITOOLS_PLATFORM": "linux"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rss_start = rss_mib(process.pid)
        times, statuses = [], {}
        with httpx.Client(headers={"Authorization": "Bearer bench-token"}) as client:
            for _ in range(args.posts):
                started = time.perf_counter()
                status = client.post(url + "/", content=BODY).status_code
                times.append((time.perf_counter() - started) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        time.sleep(2)
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bench-token\r\n"
                         b"Content-Length: 10000000\r\n\r\n" + b" " * 65536)
            first_line = sock.recv(200).split(b"\r\n")[0].decode()
        refused_ms = (time.perf_counter() - started) * 1000
        print(f"RSS after start: {rss_start:.1f} MiB, after {args.posts} webhooks: {rss_mib(process.pid):.1f} MiB")
        print(f"webhook answered: median {statistics.median(times):.2f} ms, "
              f"p99 {sorted(times)[int(len(times) * 0.99) - 1]:.2f} ms; answers {statuses} "
              "(503: more than 32 notifications waiting, Alertmanager retries them)")
        print(f"10 MB declared: {first_line} after {refused_ms:.1f} ms")
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
