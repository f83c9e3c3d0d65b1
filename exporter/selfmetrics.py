"""The exporter's own footprint on its own page, under the names every Prometheus exporter uses.

On Linux client_python's ProcessCollector reads /proc/self (process_resident_memory_bytes,
process_cpu_seconds_total, process_open_fds, ...); it has no thread count and nothing on
macOS, so this adds process_threads everywhere and, where /proc is missing, the same
process_* figures from psutil.
"""

from __future__ import annotations

import os

import psutil
from prometheus_client import gc_collector, platform_collector, process_collector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


class OwnProcessCollector(Collector):
    def __init__(self, with_proc: bool):
        self.with_proc = with_proc
        self.process = psutil.Process()

    def collect(self):
        process = self.process
        with process.oneshot():
            yield GaugeMetricFamily("process_threads", "Number of OS threads in the process.", value=process.num_threads())
            if self.with_proc:
                return
            memory, times = process.memory_info(), process.cpu_times()
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", value=memory.rss)
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=memory.vms)
            yield CounterMetricFamily("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                                      value=times.user + times.system)
            yield GaugeMetricFamily("process_start_time_seconds",
                                    "Start time of the process since unix epoch in seconds.", value=process.create_time())
            if hasattr(process, "num_fds"):
                yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=process.num_fds())


def register_own_metrics(registry: CollectorRegistry) -> None:
    with_proc = os.path.isdir("/proc/self")
    if with_proc:
        process_collector.ProcessCollector(registry=registry)
    registry.register(OwnProcessCollector(with_proc))
    platform_collector.PlatformCollector(registry=registry)
    gc_collector.GCCollector(registry=registry)
