"""The exporter's own footprint on its own page, under the names every Prometheus exporter uses.

The process_* families of client_python's ProcessCollector (resident and virtual memory,
CPU, start time, open and maximum file descriptors) plus process_threads, read with psutil
on every system. One difference: client_python counts the open files by listing
/proc/self/fd, which costs a millisecond per scrape when the process walk keeps thousands
of /proc files open (KeptFiles); on Linux 6.2 and later the size of that folder is the
count, read with one stat(). Where it is not (older kernels, macOS), psutil counts them.
"""

from __future__ import annotations

import os
import resource

import psutil
from prometheus_client import gc_collector, platform_collector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


def open_files(process: psutil.Process) -> int | None:
    try:
        count = os.stat("/proc/self/fd").st_size
    except OSError:
        count = 0
    if count > 0:
        return count
    return process.num_fds() if hasattr(process, "num_fds") else None


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
            count = open_files(process)
            if count is not None:
                yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=count)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=soft)


def register_own_metrics(registry: CollectorRegistry) -> None:
    registry.register(OwnProcessCollector())
    platform_collector.PlatformCollector(registry=registry)
    gc_collector.GCCollector(registry=registry)


def raise_open_files_limit() -> None:
    """The soft limit of open files up to the hard one, as Go programs such as node_exporter
    do at start: the process walk keeps a few files per process open (KeptFiles keeps at
    most a quarter of the soft limit), and Linux's default soft limit of 1,024 would read most of
    them by path. Nothing changes where the hard limit is the soft one already."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass
