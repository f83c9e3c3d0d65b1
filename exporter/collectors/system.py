"""System memory: page counts by state, total, available and swap.

Linux reads /proc/meminfo; macOS runs `vm_stat` (the user's own tool) and asks psutil
for total, available and swap. `system.source: vm_stat` forces the macOS path on any
machine, so it is tested everywhere with a stand-in `vm_stat` on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import psutil

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, gauge, read_small_file, run_bounded
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
}
_VM_STAT_HEADER = re.compile(r"page size of (\d+) bytes")
_VM_STAT_LINE = re.compile(r'^"?([^":]+)"?:\s+(\d+)\.?\s*$')
_MEMINFO_LINE = re.compile(r"^([A-Za-z0-9_()]+):\s+(\d+)(?:\s+kB)?\s*$")
MAX_PAGE_SIZE = 2**30


def parse_vm_stat(text: str) -> tuple[int, dict[str, int]]:
    """(page size, {state: pages}) from vm_stat's output; ValueError when it is not vm_stat's."""
    lines = text.splitlines()
    header = _VM_STAT_HEADER.search(lines[0]) if lines else None
    if not header:
        raise ValueError("no 'page size of N bytes' header")
    page_size = int(header.group(1))
    if not 0 < page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise ValueError(f"implausible page size {page_size}")
    pages: dict[str, int] = {}
    for line in lines[1:]:
        match = _VM_STAT_LINE.match(line.strip())
        if match and match.group(1).strip() in VM_STAT_STATES:
            pages[VM_STAT_STATES[match.group(1).strip()]] = int(match.group(2))
    if not pages:
        raise ValueError("no page counts")
    return page_size, pages


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

    def collect(self, deadline: Deadline | None = None):
        deadline = self.deadline(deadline)
        source = self.section.source
        if source == "auto":
            source = "vm_stat" if sys.platform == "darwin" else "procfs"
        if source == "vm_stat":
            page_size, pages, total, available, swap_used = self._read_vm_stat(deadline)
        else:
            page_size, pages, total, available, swap_used = self._read_procfs()

        pages_family = gauge("aitools_system_memory_pages", "Memory pages by state.", ["state"])
        for state, count in pages.items():
            pages_family.add_metric([state], float(count))
        yield pages_family
        yield _single("aitools_system_page_size_bytes", "The page size the page counts use.", page_size)
        yield _single("aitools_system_memory_total_bytes", "Physical memory.", total)
        yield _single("aitools_system_memory_available_bytes", "Memory available without swapping.", available)
        yield _single("aitools_system_swap_used_bytes", "Swap in use.", swap_used)
        pressure = self._memory_pressure(deadline) if source == "vm_stat" else None
        if pressure is not None:
            yield _single("aitools_system_memory_pressure_level",
                          "macOS kern.memorystatus_vm_pressure_level: 1 normal, 2 warn, 4 critical.", pressure)

    def _read_procfs(self):
        try:
            fields = parse_meminfo(read_small_file(MEMINFO_PATH, 8192).decode("ascii", "replace"))
        except OSError as exc:
            raise CollectorError(f"cannot read {MEMINFO_PATH}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CollectorError(f"{MEMINFO_PATH} is not in the expected format: {exc}") from None
        page_size = os.sysconf("SC_PAGE_SIZE")
        available = fields.get("MemAvailable", fields["MemFree"])
        swap_used = max(0, fields.get("SwapTotal", 0) - fields.get("SwapFree", 0))
        return page_size, meminfo_pages(fields, page_size), fields["MemTotal"], available, swap_used

    def _read_vm_stat(self, deadline: Deadline):
        path = shutil.which("vm_stat")
        if path is None:
            raise CollectorError("vm_stat not found on PATH (system.source is vm_stat)")
        try:
            result = run_bounded([path], deadline)
        except TimeoutError:
            raise CollectorError(f"vm_stat did not finish within {deadline.seconds:g}s") from None
        except OSError as exc:
            raise CollectorError(f"vm_stat failed: {exc}") from None
        if result.returncode != 0:
            raise CollectorError(f"vm_stat failed: Command '{path}' returned non-zero exit status {result.returncode}.")
        output = result.stdout.decode("utf-8", "replace")
        try:
            page_size, pages = parse_vm_stat(output)
        except ValueError as exc:
            raise CollectorError(f"vm_stat printed something unexpected: {exc}") from None
        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        return page_size, pages, memory.total, memory.available, swap.used

    def _memory_pressure(self, deadline: Deadline) -> int | None:
        """The pressure level, in the time vm_stat left of the deadline (None when there is none left)."""
        path = shutil.which("sysctl")
        if path is None:
            return None
        try:
            result = run_bounded([path, "-n", "kern.memorystatus_vm_pressure_level"], deadline)
            level = int(result.stdout.strip())
        except (OSError, ValueError):  # TimeoutError is an OSError
            return None
        return level if result.returncode == 0 and level in (1, 2, 4) else None


def _single(name: str, documentation: str, value: float):
    family = gauge(name, documentation)
    family.add_metric([], float(value))
    return family
