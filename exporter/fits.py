"""Which installed LLM models would fit now: the logic of `aitools:llm_model_fits`.

prometheus/rules/aitools-llm.rules.yml computes the same in PromQL; this is the one
definition of the reserve, and tests/test_llm_fits.py checks that the rule's constant is
this one and that both give the same answers on the same samples.

A model that is installed in a server but not loaded fits when its installed size is
within both
  - the server's room: its budget (aitools_budget_bytes{budget=<server>}) less what the
    server has loaded now, and
  - the machine's room: the available memory less MEMORY_RESERVE_FRACTION of the
    physical memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.readings import Samples

# The memory kept free when asking whether a model fits: 10 % of physical memory (6.4 GB
# of 64 GB). It is where the AitoolsSystemMemoryLow warning starts, so a model that fits
# does not push the machine into that alert; it also covers what a model takes beyond its
# file once loaded (its context cache, the runtime).
MEMORY_RESERVE_FRACTION = 0.1


@dataclass
class ModelFit:
    server: str
    model: str
    size_bytes: float
    fits: bool
    server_room_bytes: float   # the server's budget less what it has loaded
    memory_room_bytes: float   # available memory less the reserve
    # When it does not fit now: the loaded models of the same server to unload first
    # (largest first) for it to fit; empty when even unloading them all is not enough.
    unload_first: list[str] = field(default_factory=list)

    @property
    def room_bytes(self) -> float:
        return min(self.server_room_bytes, self.memory_room_bytes)

    @property
    def verdict(self) -> str:
        if self.fits:
            return "fits now"
        if self.unload_first:
            return "needs " + ", ".join(self.unload_first) + " unloaded first"
        return "does not fit, even with every model of " + self.server + " unloaded"


def memory_room(samples: Samples) -> float | None:
    total = samples.value("aitools_system_memory_total_bytes")
    available = samples.value("aitools_system_memory_available_bytes")
    if total is None or available is None:
        return None
    return available - MEMORY_RESERVE_FRACTION * total


def model_fits(samples: Samples) -> list[ModelFit]:
    """Every installed, not loaded model of every server that answered, with its verdict;
    empty without the system's memory figures (as the rule: no verdict then)."""
    machine_room = memory_room(samples)
    if machine_room is None:
        return []
    servers = sorted({labels["server"] for labels, _ in samples.all("aitools_llm_server_up")})
    fits: list[ModelFit] = []
    for server in servers:
        budget = samples.value("aitools_budget_bytes", budget=server)
        if budget is None:
            continue
        loaded = {labels["model"]: size for labels, size in samples.all("aitools_llm_model_loaded_bytes", server=server)}
        server_room = budget - sum(loaded.values())
        for labels, size in sorted(samples.all("aitools_llm_model_installed_bytes", server=server),
                                   key=lambda found: found[0]["model"]):
            model = labels["model"]
            if model in loaded:
                continue
            fit = ModelFit(server, model, size, size <= min(server_room, machine_room), server_room, machine_room)
            if not fit.fits:
                fit.unload_first = _to_unload(size, loaded, server_room, machine_room)
            fits.append(fit)
    return fits


def _to_unload(size: float, loaded: dict[str, float], server_room: float, machine_room: float) -> list[str]:
    """The loaded models to unload, largest first, until `size` fits; [] when it never does.
    Unloading a model gives its bytes back to both the server's room and the machine's."""
    chosen: list[str] = []
    for model, freed in sorted(loaded.items(), key=lambda item: (-item[1], item[0])):
        chosen.append(model)
        server_room += freed
        machine_room += freed
        if size <= min(server_room, machine_room):
            return chosen
    return []
