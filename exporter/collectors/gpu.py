"""The Apple silicon GPU's memory: its ceiling and what it holds wired now.

On Apple silicon the GPU has no memory of its own: Metal wires pages of the unified memory
for it, up to a ceiling (Metal's `recommendedMaxWorkingSetSize`). Models that Ollama, LM
Studio or llama.cpp load onto the GPU are such wired pages.

- `aitools_gpu_memory_limit_bytes`: `sysctl -n iogpu.wired_limit_mb` (read at every scrape:
  the user may change it) when set (non-zero: Metal's working set follows it, as
  antirez/ds4#893 measured: 112.00 GiB with iogpu.wired_limit_mb = 114688), else the
  system's default for the machine's memory (`hw.memsize`), `default_gpu_limit` below.
- `aitools_gpu_memory_wired_bytes`: the "In use system memory" of every IOAccelerator's
  PerformanceStatistics (`ioreg -r -d 1 -w 0 -c IOAccelerator`, no root needed; the figure
  public Mac monitors read for the GPU's memory), summed over accelerators; not the
  "In use system memory (driver)" variant beside it.

A machine without `ioreg`, or whose accelerators publish no "In use system memory" (Linux,
a Mac without such a GPU), has no such GPU: the collector reports its source as not running,
not as failing. Without the iogpu sysctl (an older macOS) the default ceiling stands.
"""

from __future__ import annotations

import re

from exporter.collectors.base import Deadline, SourceCollector, SourceNotRunning, single
from exporter.collectors.machine import ToolMissing, run_tool
from exporter.collectors.macos import sysctl_int
from exporter.config import DEFAULT_TIMEOUT_SECONDS

IOREG_ARGV = ("ioreg", "-r", "-d", "1", "-w", "0", "-c", "IOAccelerator")
# `"In use system memory"=N`: the closing quote right after "memory" leaves the "(driver)" variant out.
_IN_USE = re.compile(rb'"In use system memory"\s*=\s*(\d{1,20})\b')
MAX_IOREG_BYTES = 2**20
GiB = 2**30


def default_gpu_limit(memory_bytes: int) -> int:
    """Metal's recommendedMaxWorkingSetSize on Apple silicon when iogpu.wired_limit_mb is 0, as
    llama.cpp's `ggml_metal_init: recommendedMaxWorkingSetSize` lines report it:
    two thirds of memory up to 32 GiB (16 GiB: 10922.67 MiB, ise-uiuc/magicoder#19,
    abetlen/llama-cpp-python#687; 32 GiB: 21845.34 MiB, ollama/ollama#434,
    ggml-org/llama.cpp#2011), three quarters above (64 GiB: 49152.00 MiB, ggml-org/llama.cpp#1870;
    96 GiB: 73728.00 MB, ggml-org/llama.cpp#3213). On 128 GiB and larger machines macOS 26
    gives more (107.52 GiB of 128, antirez/ds4#893): three quarters there is the lower,
    earlier figure; set iogpu.wired_limit_mb to have the exact one."""
    return memory_bytes * 2 // 3 if memory_bytes <= 32 * GiB else memory_bytes * 3 // 4


def parse_in_use(output: bytes) -> int | None:
    """The sum of "In use system memory" over the accelerators ioreg printed; None when none has it."""
    found = [int(value) for value in _IN_USE.findall(output)]
    return sum(found) if found else None


class GPUCollector(SourceCollector):
    name = "gpu"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(timeout)
        self._memsize: int | None = None  # hw.memsize, read until it answers once (it never changes)

    def collect(self, deadline: Deadline | None = None):
        deadline = self.deadline(deadline)
        try:
            output = run_tool(list(IOREG_ARGV), deadline, limit=MAX_IOREG_BYTES)
        except ToolMissing as exc:
            raise SourceNotRunning(f"no Apple GPU here: {exc}") from None
        wired = parse_in_use(output)
        if wired is None:
            raise SourceNotRunning("no Apple GPU here: no IOAccelerator with \"In use system memory\"")
        setting = sysctl_int("iogpu.wired_limit_mb", deadline, maximum=2**43)
        if setting:
            limit = setting * 2**20
        else:
            if self._memsize is None:
                self._memsize = sysctl_int("hw.memsize", deadline)
            limit = default_gpu_limit(self._memsize) if self._memsize else None

        yield single("aitools_gpu_memory_wired_bytes",
                     "Memory the GPU holds wired now (Apple silicon: IOAccelerator's \"In use system memory\").", wired)
        if limit is not None:
            yield single("aitools_gpu_memory_limit_bytes",
                         "The most memory the GPU may wire: Metal's working-set ceiling "
                         "(iogpu.wired_limit_mb when set, else the system's default for this machine).", limit)
