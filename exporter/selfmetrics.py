"""The exporter's own footprint on its own page, under the names every Prometheus exporter uses.

The process_* families of client_python's ProcessCollector (resident and virtual memory,
CPU, start time, open and maximum file descriptors) plus process_threads, read with psutil
on every system.
"""

from __future__ import annotations

import logging
import resource
import subprocess

import psutil
from prometheus_client import gc_collector, platform_collector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.notify import current_platform

log = logging.getLogger(__name__)


class OwnProcessCollector(Collector):
    def __init__(self) -> None:
        self.process = psutil.Process()

    def collect(self):
        process = self.process
        with process.oneshot():
            memory, times = process.memory_info(), process.cpu_times()
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=memory.vms)
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", value=memory.rss)
            yield GaugeMetricFamily("process_start_time_seconds",
                                    "Start time of the process since unix epoch in seconds.", value=process.create_time())
            yield CounterMetricFamily("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                                      value=times.user + times.system)
            yield GaugeMetricFamily("process_threads", "Number of OS threads in the process.", value=process.num_threads())
            if hasattr(process, "num_fds"):  # not on Windows
                yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                        value=process.num_fds())
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=soft)


def register_own_metrics(registry: CollectorRegistry) -> None:
    registry.register(OwnProcessCollector())
    platform_collector.PlatformCollector(registry=registry)
    gc_collector.GCCollector(registry=registry)


def raise_open_files_limit() -> None:
    """The soft limit of open files up to what the platform allows, as Go programs such as
    node_exporter do at start: the hard limit, and on macOS no more than
    `sysctl -n kern.maxfilesperproc` (setrlimit refuses more there, whatever the hard limit
    says). A failure is logged and the process goes on with the limit it has."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if current_platform() == "darwin":
            done = subprocess.run(["sysctl", "-n", "kern.maxfilesperproc"], capture_output=True, text=True,
                                  timeout=5, stdin=subprocess.DEVNULL)
            target = min(target, int(done.stdout.strip()))
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("could not raise the open-files limit (kept %s): %s",
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0], exc)

