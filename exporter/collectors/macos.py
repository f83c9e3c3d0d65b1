"""The macOS tools the system and GPU collectors run: `sysctl -n KEY`, `ioreg`.

Each runs as a fixed argv found on PATH (never a shell), in the time left of the scrape's
deadline (the machine: collectors/machine.py). On any machine a stand-in on PATH can answer for it (the test
suite's recordings of real Macs). `sysctl -n KEY` prints one value, or fails ("sysctl:
unknown oid 'KEY'", exit 1) for a key the machine lacks (an Intel Mac has no iogpu.*, an
older macOS no kern.memorystatus_level): such a key gives None, and only the figure that
needs it is left out.
"""

from __future__ import annotations

import re

from exporter.collectors.base import Deadline
from exporter.collectors.machine import current

MAX_VALUE_BYTES = 4096  # one sysctl value: a number or vm.swapusage's line

_SWAP_FIELD = re.compile(r"\b(total|used|free)\s*=\s*(\d{1,15}(?:\.\d{1,6})?)([KMGT]?)(?![\d.])")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def sysctl(key: str, deadline: Deadline) -> str | None:
    """`sysctl -n KEY`'s value, stripped; None when sysctl is not on PATH, the key is unknown
    (a non-zero exit), it prints nothing, or the deadline has passed."""
    if deadline.passed():
        return None
    try:
        result = current().run(["sysctl", "-n", key], deadline, limit=MAX_VALUE_BYTES)
    except OSError:  # not on PATH (FileNotFoundError); TimeoutError is an OSError too
        return None
    if result.returncode != 0:
        return None
    value = result.stdout.decode("utf-8", "replace").strip()
    return value or None


def sysctl_int(key: str, deadline: Deadline, maximum: int = 2**63) -> int | None:
    """An integer sysctl (hw.memsize, kern.memorystatus_level...); None when absent or not
    a non-negative integer below `maximum`."""
    value = sysctl(key, deadline)
    if value is None or not value.isdigit() or len(value) > 20:
        return None
    number = int(value)
    return number if number < maximum else None


def parse_swapusage(text: str) -> dict[str, int]:
    """vm.swapusage (`total = 6144.00M  used = 4690.75M  free = 1453.25M  (encrypted)`, the
    format of sysctl's S_xswusage printer) as {total, used, free} in bytes; ValueError when
    total or used is missing."""
    fields = {name: round(float(number) * _UNITS[unit]) for name, number, unit in _SWAP_FIELD.findall(text)}
    if "total" not in fields or "used" not in fields:
        raise ValueError(f"not vm.swapusage's format: {text[:80]!r}")
    return fields
