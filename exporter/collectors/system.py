"""System memory: page counts by state, total, available and swap.

Linux reads /proc/meminfo. macOS runs `vm_stat` (the user's own tool) and `sysctl -n` for
the pressure level, kern.memorystatus_level, hw.memsize and vm.swapusage (psutil only where
sysctl cannot answer total or swap). `system.source: vm_stat` forces the macOS path on any
machine, so it is tested everywhere with stand-ins on PATH (tests/recordings: Macs assembled
from public outputs).

The figures of Activity Monitor's Memory tab, from vm_stat's counts (`activity_monitor`),
as the public monitors that match it compute them (exelban/stats Modules/RAM/readers.swift:
used = active + inactive + speculative + wired + compressed - purgeable - external, app =
used - wired - compressed; and active + inactive + speculative = anonymous + file-backed):
  App Memory    = anonymous - purgeable
  Wired Memory  = wired
  Compressed    = occupied by compressor
  Cached Files  = file-backed + purgeable
  Memory Used   = App Memory + Wired Memory + Compressed
Available memory on macOS is what the kernel hands out without compressing or swapping
anything: free + cached files (free + file-backed + purgeable). psutil's free + inactive
(psutil/_psosx.py virtual_memory(), after Zabbix) counts inactive anonymous pages, which
must be compressed first, and misses file-backed active ones. The kernel's own wider
figure, which drives the pressure level (XNU osfmk/vm/vm_page.h: on macOS VM_CHECK_MEMORYSTATUS publishes
AVAILABLE_NON_COMPRESSED_MEMORY = active + inactive + free + speculative pages as
memorystatus_available_pages, and kern.memorystatus_level is that in percent of memory), is
aitools_system_memory_free_ratio.

`vm_stat` runs once per scrape (`read_vm_stat`): the apps collector takes the kernel's wired
pages from the same reading.
"""

from __future__ import annotations

import os
import re
import threading
from typing import NamedTuple

import psutil

from prometheus_client.metrics_core import CounterMetricFamily

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, gauge, single
from exporter.collectors.machine import current, run_tool
from exporter.collectors.macos import parse_swapusage, sysctl, sysctl_int
from exporter.config import DEFAULT_TIMEOUT_SECONDS, SystemSection

MEMINFO_PATH = "/proc/meminfo"

# vm_stat label -> contract state.
VM_STAT_STATES = {
    "Pages free": "free",
    "Pages active": "active",
    "Pages inactive": "inactive",
    "Pages speculative": "speculative",
    "Pages wired down": "wired",
    "Pages purgeable": "purgeable",
    "Pages occupied by compressor": "compressed",
    "File-backed pages": "file_backed",
    "Anonymous pages": "anonymous",
    "Pages stored in compressor": "stored_in_compressor",
}
# vm_stat's counters since boot -> the counter they are published as.
VM_STAT_COUNTERS = {"Pageouts": "pageouts", "Swapouts": "swapouts"}
_VM_STAT_HEADER = re.compile(r"page size of (\d+) bytes")
_VM_STAT_LINE = re.compile(r'^"?([^":]+)"?:\s+(\d+)\.?\s*$')
_MEMINFO_LINE = re.compile(r"^([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?\s*$")
MAX_PAGE_SIZE = 2**30


def parse_vm_stat(text: str) -> tuple[int, dict[str, int]]:
    """(page size, {state: pages}) from vm_stat's output; ValueError when it is not vm_stat's."""
    page_size, pages, _ = parse_vm_stat_counts(text)
    return page_size, pages


def parse_vm_stat_counts(text: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """(page size, {state: pages}, {counter: count since boot}) from vm_stat's output."""
    lines = text.splitlines()
    header = _VM_STAT_HEADER.search(lines[0]) if lines else None
    if not header:
        raise ValueError("no 'page size of N bytes' header")
    page_size = int(header.group(1))
    if not 0 < page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise ValueError(f"implausible page size {page_size}")
    pages: dict[str, int] = {}
    counters: dict[str, int] = {}
    for line in lines[1:]:
        match = _VM_STAT_LINE.match(line.strip())
        if match:
            label = match.group(1).strip()
            if label in VM_STAT_STATES:
                pages[VM_STAT_STATES[label]] = int(match.group(2))
            elif label in VM_STAT_COUNTERS:
                counters[VM_STAT_COUNTERS[label]] = int(match.group(2))
    if not pages:
        raise ValueError("no page counts")
    return page_size, pages, counters


def activity_monitor(page_size: int, pages: dict[str, int]) -> dict[str, int]:
    """Activity Monitor's Memory figures in bytes, from vm_stat's page counts (the module's
    docstring says how and where from): app_memory, wired, compressed, cached_files,
    memory_used, and available (free + cached files). Only the figures whose counts vm_stat
    printed."""
    figures: dict[str, int] = {}
    if "wired" in pages:
        figures["wired"] = pages["wired"]
    if "compressed" in pages:
        figures["compressed"] = pages["compressed"]
    purgeable = pages.get("purgeable", 0)
    if "anonymous" in pages:
        figures["app_memory"] = max(0, pages["anonymous"] - purgeable)
    if "file_backed" in pages:
        figures["cached_files"] = pages["file_backed"] + purgeable
        if "free" in pages:
            figures["available"] = pages["free"] + figures["cached_files"]
    if all(name in figures for name in ("app_memory", "wired", "compressed")):
        figures["memory_used"] = figures["app_memory"] + figures["wired"] + figures["compressed"]
    return {name: count * page_size for name, count in figures.items()}


class _PerScrape:
    """A reading made once per scrape: the collectors that ask with the same deadline (the
    scrape's) share one reading, its failure too; an ask with another deadline reads anew.
    The reading is shared: its callers read it, never change it."""

    def __init__(self, read) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._last: tuple[Deadline, object] | None = None

    def __call__(self, deadline: Deadline):
        with self._lock:
            if self._last is None or self._last[0] is not deadline:
                try:
                    reading = self._read(deadline)
                except CollectorError as exc:
                    reading = exc
                self._last = (deadline, reading)
            reading = self._last[1]
        if isinstance(reading, CollectorError):
            raise CollectorError(str(reading))
        return reading


def _run_vm_stat(deadline: Deadline) -> tuple[int, dict[str, int], dict[str, int]]:
    output = run_tool(["vm_stat"], deadline)
    try:
        return parse_vm_stat_counts(output.decode("utf-8", "replace"))
    except ValueError as exc:
        raise CollectorError(f"vm_stat printed something unexpected: {exc}") from None


def _read_meminfo(deadline: Deadline) -> dict[str, int]:
    try:
        return parse_meminfo(current().read_file(MEMINFO_PATH, 8192).decode("ascii", "replace"))
    except OSError as exc:
        raise CollectorError(f"cannot read {MEMINFO_PATH}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CollectorError(f"{MEMINFO_PATH} is not in the expected format: {exc}") from None


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: bytes}."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        match = _MEMINFO_LINE.match(line.strip())
        if match:
            unit = 1024 if line.rstrip().endswith("kB") else 1
            fields[match.group(1)] = int(match.group(2)) * unit
    for required in ("MemTotal", "MemFree"):
        if required not in fields:
            raise ValueError(f"no {required} line")
    return fields


def meminfo_pages(fields: dict[str, int], page_size: int) -> dict[str, int]:
    """Linux's nearest equivalents of the macOS page states, in pages."""
    def total(*names: str) -> int | None:
        present = [fields[name] for name in names if name in fields]
        return sum(present) // page_size if present else None

    states = {
        "free": total("MemFree"),
        "active": total("Active"),
        "inactive": total("Inactive"),
        # Memory the kernel cannot page out: its own slabs, stacks and page tables, and mlocked pages.
        "wired": total("Unevictable", "SUnreclaim", "KernelStack", "PageTables"),
        "compressed": total("Zswap"),
        "file_backed": total("Active(file)", "Inactive(file)"),
        "anonymous": total("AnonPages"),
    }
    return {state: pages for state, pages in states.items() if pages is not None}


class SystemCollector(SourceCollector):
    name = "system"

    def __init__(self, section: SystemSection = SystemSection(), timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(timeout)
        self.section = section
        self._memsize: int | None = None  # hw.memsize, read until it answers once (it never changes)

    def collect(self, deadline: Deadline | None = None):
        deadline = self.deadline(deadline)
        source = self.section.source
        if source == "auto":
            source = "vm_stat" if current().platform == "darwin" else "procfs"
        reading = self._read_vm_stat(deadline) if source == "vm_stat" else self._read_procfs(deadline)

        pages_family = gauge("aitools_system_memory_pages", "Memory pages by state.", ["state"])
        for state, count in reading.pages.items():
            pages_family.add_metric([state], float(count))
        yield pages_family
        yield single("aitools_system_page_size_bytes", "The page size the page counts use.", reading.page_size)
        yield single("aitools_system_memory_total_bytes", "Physical memory.", reading.total)
        yield single("aitools_system_memory_available_bytes", "Memory available without swapping.",
                      reading.available)
        yield single("aitools_system_swap_used_bytes", "Swap in use.", reading.swap_used)
        if reading.swap_total is not None:
            yield single("aitools_system_swap_total_bytes",
                          "Swap space in existence (macOS grows it on demand).", reading.swap_total)
        if reading.pressure is not None:
            yield single("aitools_system_memory_pressure_level",
                          "macOS kern.memorystatus_vm_pressure_level: 1 normal, 2 warn, 4 critical.", reading.pressure)
        if reading.free_ratio is not None:
            yield single("aitools_system_memory_free_ratio",
                          "macOS kern.memorystatus_level / 100: the kernel's own free share that drives pressure.",
                          reading.free_ratio)
        for counter, help_text in (("pageouts", "Pages written out by the pager, since boot."),
                                   ("swapouts", "Pages written out to swap, since boot.")):
            if counter in reading.counters:
                family = CounterMetricFamily(f"aitools_system_{counter}", help_text)
                family.add_metric([], float(reading.counters[counter]))
                yield family

    def _read_procfs(self, deadline: Deadline) -> "Reading":
        fields = read_meminfo(deadline)
        page_size = os.sysconf("SC_PAGE_SIZE")
        available = fields.get("MemAvailable", fields["MemFree"])
        swap_used = max(0, fields.get("SwapTotal", 0) - fields.get("SwapFree", 0))
        return Reading(page_size, meminfo_pages(fields, page_size), fields["MemTotal"], available, swap_used,
                       swap_total=fields.get("SwapTotal"))

    def _read_vm_stat(self, deadline: Deadline) -> "Reading":
        page_size, pages, counters = read_vm_stat(deadline)
        # In the time vm_stat left, in this order (the pressure level matters most); a key the
        # machine lacks, or one the deadline cut, leaves its figure out.
        pressure = sysctl_int("kern.memorystatus_vm_pressure_level", deadline)
        level = sysctl_int("kern.memorystatus_level", deadline)
        if self._memsize is None:
            self._memsize = sysctl_int("hw.memsize", deadline)
        total = self._memsize
        swap = sysctl("vm.swapusage", deadline)
        try:
            swap_fields = parse_swapusage(swap) if swap is not None else None
        except ValueError:
            swap_fields = None
        if total is None or swap_fields is None:  # psutil asks the kernel for the same figures
            memory, swap_memory = psutil.virtual_memory(), psutil.swap_memory()
            total = memory.total if total is None else total
            swap_fields = swap_fields or {"used": swap_memory.used, "total": swap_memory.total}
        available = activity_monitor(page_size, pages).get("available")
        if available is None:  # a vm_stat without file-backed pages (before OS X 10.9)
            available = psutil.virtual_memory().available
        return Reading(page_size, pages, total, available, swap_fields["used"], swap_total=swap_fields["total"],
                       pressure=pressure if pressure in (1, 2, 4) else None,
                       free_ratio=level / 100 if level is not None and level <= 100 else None,
                       counters=counters)


class Reading(NamedTuple):
    page_size: int
    pages: dict[str, int]
    total: int
    available: int
    swap_used: int
    swap_total: int | None = None
    pressure: int | None = None
    free_ratio: float | None = None
    counters: dict[str, int] = {}


# vm_stat's (page size, {state: pages}, {counter: count}) and /proc/meminfo's {field: bytes},
# each read once per scrape: the system and apps collectors share them.
read_vm_stat = _PerScrape(_run_vm_stat)
read_meminfo = _PerScrape(_read_meminfo)
