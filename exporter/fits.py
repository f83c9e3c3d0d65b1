"""Will a model fit, and what to unload first: the logic of `aitools:llm_model_fits`, of
`aitools-exporter fit`, of the snapshot's and landing page's model table, and of the
receiver's unload action.

prometheus/rules/aitools-llm.rules.yml computes the verdict in PromQL; this is the one
definition of the reserve, and tests/test_llm_fits.py checks that the rule's constant is
this one and that both give the same answers on the same samples.

A model's size is its estimated loaded size (aitools_llm_model_estimated_bytes: weights, KV
cache at the context the server would use, buffers; exporter/estimate.py), else its file
size where no estimate could be made. A model that is installed but not loaded fits now
when that size is within all three rooms:
  - the server's room: its budget (aitools_budget_bytes{budget=<server>}) less what the
    server has loaded now;
  - the machine's room: the available memory less MEMORY_RESERVE_FRACTION of the physical
    memory;
  - the GPU room, where the machine has a GPU ceiling (aitools_gpu_memory_limit_bytes, Apple
    silicon's Metal working-set limit, less aitools_gpu_memory_wired_bytes): past it the
    server splits the model onto the CPU, where it runs many times slower. Without those
    series there is no GPU limit.

When it does not fit, the plan is the smallest set of loaded models, across both servers,
whose unloading makes it fit: unloading a model gives its bytes back to the machine's room,
its GPU part (size_vram, else its size) to the GPU room, and its bytes to its own server's
room only. Fewest models first, then the fewest bytes unloaded. When even unloading every
candidate is not enough, it never fits: the figures against each limit say by how much.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from exporter.estimate import Estimate, NoEstimate, largest_context
from exporter.readings import Samples

# The memory kept free when asking whether a model fits: 10 % of physical memory (6.4 GB
# of 64 GB). It is where the AitoolsSystemMemoryLow warning starts, so a model that fits
# does not push the machine into that alert.
MEMORY_RESERVE_FRACTION = 0.1
# Past this many loaded candidates the plan is chosen largest first instead of by trying
# every set (2^12 sets at most).
MAX_EXHAUSTIVE_CANDIDATES = 12


@dataclass(frozen=True)
class Loaded:
    """A loaded model that a plan may unload."""
    server: str
    model: str
    bytes: float
    vram_bytes: float

    @property
    def name(self) -> str:
        return f"{self.server}/{self.model}"


@dataclass
class Rooms:
    server: float            # the server's budget less what it has loaded
    memory: float            # available memory less the reserve
    gpu: float | None        # the GPU ceiling less what is wired; None: no GPU limit

    def smallest(self) -> float:
        return min(room for room in (self.server, self.memory, self.gpu) if room is not None)

    def after(self, server: str, unloaded: tuple[Loaded, ...]) -> "Rooms":
        return Rooms(self.server + sum(m.bytes for m in unloaded if m.server == server),
                     self.memory + sum(m.bytes for m in unloaded),
                     None if self.gpu is None else self.gpu + sum(m.vram_bytes for m in unloaded))


def plan(server: str, need: float, rooms: Rooms, candidates: list[Loaded]) -> list[Loaded] | None:
    """The smallest set of `candidates` to unload for `need` bytes to fit: [] when it fits
    now, None when even unloading them all is not enough."""
    if need <= rooms.smallest():
        return []
    if need > rooms.after(server, tuple(candidates)).smallest():
        return None
    if len(candidates) <= MAX_EXHAUSTIVE_CANDIDATES:
        for count in range(1, len(candidates) + 1):
            sets = [chosen for chosen in itertools.combinations(candidates, count)
                    if need <= rooms.after(server, chosen).smallest()]
            if sets:
                best = min(sets, key=lambda chosen: (sum(m.bytes for m in chosen), [m.name for m in chosen]))
                return sorted(best, key=lambda m: (-m.bytes, m.name))
    chosen: list[Loaded] = []
    for model in sorted(candidates, key=lambda m: (-m.bytes, m.name)):
        chosen.append(model)
        if need <= rooms.after(server, tuple(chosen)).smallest():
            return chosen
    return None  # pragma: no cover - the check above says the whole set is enough


@dataclass
class ModelFit:
    server: str
    model: str
    size_bytes: float          # the estimated loaded size, else the file size
    fits: bool                 # fits now
    server_room_bytes: float
    memory_room_bytes: float
    gpu_room_bytes: float | None = None
    estimated: bool = True     # False: no estimate, the file size stands in
    context_length: float | None = None
    plan: list[Loaded] | None = field(default_factory=list)  # None: never fits
    budget_bytes: float = 0.0
    memory_limit_bytes: float = 0.0    # the machine's room with every candidate unloaded
    gpu_limit_bytes: float | None = None
    largest_context: int | None = None  # never fits: the largest context that would
    estimate: Estimate | str | None = None

    @property
    def unload_first(self) -> list[str]:
        return [m.name for m in self.plan or []]

    @property
    def room_bytes(self) -> float:
        return Rooms(self.server_room_bytes, self.memory_room_bytes, self.gpu_room_bytes).smallest()

    @property
    def outcome(self) -> str:
        """fits, after_plan or never."""
        return "fits" if self.fits else "after_plan" if self.plan else "never"

    @property
    def verdict(self) -> str:
        if self.fits:
            return "fits now"
        if self.plan:
            return "fits once " + ", ".join(self.unload_first) + " unloaded"
        limits = [f"{self.server} budget {self.budget_bytes / 1e9:.1f} GB",
                  f"memory {self.memory_limit_bytes / 1e9:.1f} GB"]
        if self.gpu_limit_bytes is not None:
            limits.append(f"GPU {self.gpu_limit_bytes / 1e9:.1f} GB")
        text = f"never fits: needs {self.size_bytes / 1e9:.1f} GB, at most " + ", ".join(limits)
        if self.largest_context:
            text += f"; a context of {self.largest_context} would fit"
        return text

    def as_dict(self) -> dict:
        estimate = self.estimate.as_dict() if isinstance(self.estimate, Estimate) else None
        return {"server": self.server, "model": self.model, "size_bytes": self.size_bytes,
                "estimated": self.estimated, "context_length": self.context_length, "fits": self.fits,
                "outcome": self.outcome, "room_bytes": self.room_bytes, "server_room_bytes": self.server_room_bytes,
                "memory_room_bytes": self.memory_room_bytes, "gpu_room_bytes": self.gpu_room_bytes,
                "unload_first": self.unload_first,
                "limits": {"budget_bytes": self.budget_bytes, "memory_bytes": self.memory_limit_bytes,
                           "gpu_bytes": self.gpu_limit_bytes},
                "largest_context": self.largest_context, "verdict": self.verdict, "estimate": estimate,
                "no_estimate_reason": self.estimate if isinstance(self.estimate, str) else None}


def memory_room(samples: Samples) -> float | None:
    total = samples.value("aitools_system_memory_total_bytes")
    available = samples.value("aitools_system_memory_available_bytes")
    if total is None or available is None:
        return None
    return available - MEMORY_RESERVE_FRACTION * total


def gpu_room(samples: Samples) -> float | None:
    """aitools:gpu_memory_room_bytes: the GPU ceiling less what is wired now; None without one."""
    limit = samples.value("aitools_gpu_memory_limit_bytes")
    wired = samples.value("aitools_gpu_memory_wired_bytes")
    return None if limit is None or wired is None else limit - wired


def loaded_models(samples: Samples) -> list[Loaded]:
    found = []
    for labels, size in samples.all("aitools_llm_model_loaded_bytes"):
        vram = samples.value("aitools_llm_model_vram_bytes", server=labels["server"], model=labels["model"])
        found.append(Loaded(labels["server"], labels["model"], size, size if vram is None else vram))
    return sorted(found, key=lambda m: m.name)


def model_fit(samples: Samples, server: str, model: str, estimates: dict | None = None,
              candidates: list[Loaded] | None = None) -> ModelFit | None:
    """The verdict for one installed, not loaded model; None without the figures it needs
    (no memory figures, no budget, or the model not installed there). `candidates`: the
    loaded models a plan may unload (default: every loaded model)."""
    machine_room = memory_room(samples)
    budget = samples.value("aitools_budget_bytes", budget=server)
    installed = samples.value("aitools_llm_model_installed_bytes", server=server, model=model)
    if machine_room is None or budget is None or installed is None:
        return None
    estimated = samples.value("aitools_llm_model_estimated_bytes", server=server, model=model)
    loaded = loaded_models(samples)
    rooms = Rooms(budget - sum(m.bytes for m in loaded if m.server == server), machine_room, gpu_room(samples))
    need = estimated if estimated is not None else installed
    candidates = loaded if candidates is None else candidates
    chosen = plan(server, need, rooms, candidates)
    everything = rooms.after(server, tuple(candidates))
    found = (estimates or {}).get((server, model))
    fit = ModelFit(server, model, need, chosen == [], rooms.server, rooms.memory, rooms.gpu,
                   estimated is not None,
                   samples.value("aitools_llm_model_context_length", server=server, model=model),
                   chosen, budget, everything.memory, everything.gpu, estimate=found)
    if chosen is None and isinstance(found, Estimate) and found.shape is not None:
        limit = everything.smallest()
        try:
            fit.largest_context = largest_context(found.shape, found.weights_bytes, limit, found.parallel,
                                                  found.cache_type, found.flash_attention)
        except NoEstimate:
            fit.largest_context = None
    return fit


def model_fits(samples: Samples, estimates: dict | None = None) -> list[ModelFit]:
    """Every installed, not loaded model of every server that answered, with its verdict;
    empty without the system's memory figures (as the rule: no verdict then)."""
    fits: list[ModelFit] = []
    for server in sorted({labels["server"] for labels, _ in samples.all("aitools_llm_server_up")}):
        loaded = {labels["model"] for labels, _ in samples.all("aitools_llm_model_loaded_bytes", server=server)}
        for labels, _ in sorted(samples.all("aitools_llm_model_installed_bytes", server=server),
                                key=lambda found: found[0]["model"]):
            if labels["model"] in loaded:
                continue
            fit = model_fit(samples, server, labels["model"], estimates)
            if fit is not None:
                fits.append(fit)
    return fits
