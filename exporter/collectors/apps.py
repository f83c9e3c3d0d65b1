"""Where the memory goes: every process of the machine in exactly one application.

Each scrape walks the whole process table once and gives each process one app:

1. the exporter itself, and the processes of the bundle's own containers (label
   `dev.aitools.app=monitoring`, see compose.monitoring.yml), are `monitoring`;
   kernel threads are `system`;
2. everything under a container shim (`containerd-shim*`) belongs to the app of the shim
   (`docker`): a container's processes are the container's, whatever their names (a Node
   server or an Ollama in a container is counted once, in `docker`);
3. else the first app of `apps:` (in order) that claims the process by name or command line;
4. else the app of its nearest claimed ancestor, when that app passes on to children
   (`children: true`, all but `system`): Cursor's helpers, Ollama's runners, a dev
   server's workers, as Activity Monitor groups them;
5. else its own program name: the ten largest such programs get a label of their own,
   the rest go to `other`.

A process's memory comes from the process table (collectors/proctable.py: one walk per
scrape, shared with the process collector): on Linux its resident set less its shared
pages (/proc/PID/statm resident - shared: anonymous memory, netdata apps.plugin's "real
memory without shared"); on macOS its physical footprint (libproc's proc_pid_rusage, the
figure Activity Monitor shows), its resident set only where the footprint cannot be read.
`system` also holds the kernel's own memory: unreclaimable slab, page tables and kernel
stacks on Linux; wired pages (plus the compressor's pages when no process's figure is a
footprint, which holds a process's compressed pages) on macOS, from the scrape's one
`vm_stat`.
An LLM app (llamacpp, ollama, lmstudio) also holds the model files its processes map, each
file once (exporter/collectors/mapped.py; Linux).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from exporter.collectors.base import CollectorError, Deadline, SourceCollector, gauge
from exporter.collectors.machine import current
from exporter.collectors.mapped import LLM_APPS, MappedModelReader, MappedModels
from exporter.collectors.proctable import FOOTPRINT, SHIM_PREFIX, Proc, process_table, wants_cmdlines
from exporter.collectors.system import read_meminfo, read_vm_stat
from exporter.config import DEFAULT_APPS, DEFAULT_TIMEOUT_SECONDS, App, DockerSection

TOP_PROGRAMS = 10
OTHER, SYSTEM, MONITORING = "other", "system", "monitoring"
BUNDLE_LABEL = "dev.aitools.app=monitoring"
# The processes of a VM that runs the containers (Docker Desktop on macOS, and on Linux):
# the containers, the bundle's among them, are inside its memory, not processes of their own.
DOCKER_VM_PREFIXES = ("com.apple.Virtualization.VirtualMachine", "com.docker.krun", "com.docker.hyperkit",
                      "qemu-system-")
# Linux: the kernel's own memory, held by no process and not reclaimable: slab, page tables,
# kernel stacks, vmalloc and per-CPU areas.
KERNEL_MEMINFO_FIELDS = ("SUnreclaim", "PageTables", "SecPageTables", "KernelStack", "VmallocUsed", "Percpu")

# Which apps each profile's total counts, each byte once (README "Which apps each total
# counts"). development: everything the user runs to develop, IDE and Xcode included;
# production: the services only. Never counted: `system` (the OS's), `monitoring` (this
# tool's own), `other` and the unclaimed programs. Apps of the user's own configuration
# count in both.
BUDGET_APPS: dict[str, tuple[str, ...]] = {
    "development_total": ("docker", "node", "xcode", "ide", "ollama", "lmstudio", "llamacpp", "python"),
    "production_total": ("docker", "node", "ollama", "lmstudio", "llamacpp", "python"),
}
NEVER_COUNTED = (SYSTEM, MONITORING, OTHER)


def budget_apps(apps: Iterable[App]) -> dict[str, list[str]]:
    """budget -> the configured apps its total counts."""
    configured = [app.name for app in apps]
    defaults = {app.name for app in DEFAULT_APPS}
    own = [name for name in configured if name not in defaults and name not in NEVER_COUNTED]
    return {budget: [name for name in configured if name in counted] + own for budget, counted in BUDGET_APPS.items()}


CLAIMS_KEPT = 8192
CLAIMS_TEXT = 8 * 2**20


class Matcher:
    """The first app (in configuration order) that claims a process by its name or command line."""

    def __init__(self, apps: tuple[App, ...]):
        self.apps = apps
        self.exact: dict[str, int] = {}
        self.prefixes: list[tuple[int, tuple[str, ...]]] = []
        self.cmdlines = [(index, app.cmdline) for index, app in enumerate(apps) if app.cmdline is not None]
        for index, app in enumerate(apps):
            prefixes = tuple(name[:-1] for name in app.names if name.endswith("*"))
            if prefixes:
                self.prefixes.append((index, prefixes))
            for name in app.names:
                if not name.endswith("*"):
                    self.exact.setdefault(name, index)

        # The claims of the (name, command line) pairs seen: a machine's processes keep theirs
        # from one scrape to the next, and the patterns are searched once per pair. Emptied
        # when it holds CLAIMS_KEPT pairs or CLAIMS_TEXT characters of command lines.
        self._claims: dict[tuple[str, str | None], int | None] = {}
        self._claims_text = 0

    def claim(self, name: str, cmdline: str | None) -> int | None:
        key = (name, cmdline)
        try:
            return self._claims[key]
        except KeyError:
            pass
        best = self.exact.get(name)
        for index, prefixes in self.prefixes:
            if best is not None and index >= best:
                break
            if name.startswith(prefixes):
                best = index
                break
        for index, pattern in self.cmdlines:
            if best is not None and index >= best:
                break
            if cmdline and pattern.search(cmdline):
                best = index
                break
        if len(self._claims) >= CLAIMS_KEPT or self._claims_text >= CLAIMS_TEXT:
            self._claims.clear()  # thousands of processes have come and gone: start again
            self._claims_text = 0
        self._claims[key] = best
        self._claims_text += len(cmdline or "")
        return best


def kernel_memory_procfs(deadline: Deadline) -> int:
    """Linux: the kernel's own memory (KERNEL_MEMINFO_FIELDS) from the scrape's /proc/meminfo."""
    fields = read_meminfo(deadline)
    return sum(fields.get(name, 0) for name in KERNEL_MEMINFO_FIELDS)


def kernel_memory_vm_stat(deadline: Deadline, footprints: bool) -> int:
    """macOS: wired pages, and the compressor's pages unless the footprints hold them, from
    the scrape's one vm_stat."""
    page_size, pages, _ = read_vm_stat(deadline)
    return (pages.get("wired", 0) + (0 if footprints else pages.get("compressed", 0))) * page_size


# --- grouping ------------------------------------------------------------------------

class Assignment(NamedTuple):
    app: str | None   # None: nobody claims it (its program name decides)
    passes_on: bool   # its children without a claim of their own take it
    sealed: bool = False  # inside a container: every descendant takes it


@functools.lru_cache(maxsize=4)
def matcher_for(apps: tuple[App, ...]) -> Matcher:
    """One Matcher per configuration, kept across scrapes with what it has learnt of names."""
    return Matcher(apps)


def assign(processes: list[Proc], apps: tuple[App, ...], own_pid: int,
           bundle_ids: frozenset[str]) -> dict[int, Assignment]:
    matcher = matcher_for(apps)
    by_pid = {proc.pid: proc for proc in processes}
    kernel_parent = 2 if by_pid.get(2) is not None and by_pid[2].name == "kthreadd" else None
    # One Assignment per outcome, shared by the processes that have it.
    claimed = [Assignment(app.name, app.children) for app in apps]
    in_container = [Assignment(app.name, True, sealed=True) for app in apps]
    own_process, kernel, bundle, unclaimed = (Assignment(MONITORING, True), Assignment(SYSTEM, False),
                                              Assignment(MONITORING, True, sealed=True), Assignment(None, False))
    result: dict[int, Assignment] = {}

    def own(proc: Proc, parent: Assignment | None) -> Assignment:
        if parent is not None and parent.sealed:
            return parent
        if proc.pid == own_pid:
            return own_process
        if kernel_parent is not None and (proc.pid == kernel_parent or proc.ppid == kernel_parent):
            return kernel
        index = matcher.claim(proc.name, proc.cmdline)
        if proc.name.startswith(SHIM_PREFIX):
            text = proc.cmdline or ""
            if any(container_id in text for container_id in bundle_ids):
                return bundle
            if index is not None:
                return in_container[index]
        if index is not None:
            return claimed[index]
        if parent is not None and parent.passes_on and parent.app is not None:
            return parent  # (app, passes on, not sealed): what its children take
        return unclaimed

    for proc in processes:
        if proc.pid in result:
            continue
        above = result.get(proc.ppid)
        if above is not None:  # most often: the parent came first (a lower pid)
            result[proc.pid] = own(proc, above)
            continue
        chain: list[Proc] = []
        current: Proc | None = proc
        while current is not None:
            if current.pid in result:
                above = result[current.pid]
                break
            chain.append(current)
            if current.ppid == current.pid or len(chain) > len(by_pid):
                break
            current = by_pid.get(current.ppid)
        for member in reversed(chain):
            above = own(member, above)
            result[member.pid] = above
    return result


def breakdown(processes: list[Proc], assignments: dict[int, Assignment], apps: tuple[App, ...],
              kernel_bytes: int) -> tuple[dict[str, int], dict[str, int]]:
    """(memory, processes) by label: every configured app (0 when empty), the ten largest
    unclaimed programs, and `other`."""
    memory = {app.name: 0 for app in apps}
    count = {app.name: 0 for app in apps}
    programs_memory: dict[str, int] = {}
    programs_count: dict[str, int] = {}
    for proc in processes:
        app = assignments[proc.pid].app
        if app is not None:
            memory[app] += proc.memory
            count[app] += 1
        else:
            name = proc.name.encode("utf-8", "replace").decode("utf-8") or "unnamed"
            programs_memory[name] = programs_memory.get(name, 0) + proc.memory
            programs_count[name] = programs_count.get(name, 0) + 1
    memory[SYSTEM] = memory.get(SYSTEM, 0) + kernel_bytes
    count.setdefault(SYSTEM, 0)
    memory[OTHER], count[OTHER] = 0, 0
    candidates = sorted((name for name in programs_memory if name not in memory),
                        key=lambda name: (-programs_memory[name], name))
    top = set(candidates[:TOP_PROGRAMS])
    for name in programs_memory:
        label = name if name in top else OTHER
        memory[label] = memory.get(label, 0) + programs_memory[name]
        count[label] = count.get(label, 0) + programs_count[name]
    return memory, count


class AppsReading(NamedTuple):
    memory: dict[str, int]       # app -> bytes
    count: dict[str, int]        # app -> processes
    processes: list[Proc]
    assignments: dict[int, Assignment]
    figures: dict[str, int]      # what each process's memory is (proctable's figures) -> processes
    models: MappedModels         # the mapped model files counted in the LLM apps' memory


class AppsCollector(SourceCollector):
    name = "apps"

    def __init__(self, apps: tuple[App, ...] = DEFAULT_APPS, docker: DockerSection = DockerSection(),
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, cmdlines: bool | None = None):
        """`docker`: where the bundle's containers are asked for; `cmdlines`: whether the
        process table reads every command line (the Exporter passes whether any app or process
        group matches them); by default whether an app does."""
        super().__init__(timeout)
        self.apps, self.docker = apps, docker
        self.cmdlines = wants_cmdlines(apps) if cmdlines is None else cmdlines
        self._engine = None
        self._shims: frozenset[str] | None = None  # the shims' command lines of the last answer
        self._bundle: frozenset[str] = frozenset()
        self._assigned: tuple[tuple, dict[int, Assignment]] | None = None  # the last inputs and their apps
        self._models = MappedModelReader()  # the LLM apps' mapped model files (issue 25)

    def read(self, deadline: Deadline | None = None) -> AppsReading:
        deadline = self.deadline(deadline)
        apps = self.apps
        scan = process_table().scan(deadline, self.cmdlines)
        processes, figures = scan.processes, scan.figures()
        try:
            if scan.platform == "darwin":
                kernel = kernel_memory_vm_stat(deadline, footprints=figures.get(FOOTPRINT, 0) > 0)
            else:
                kernel = kernel_memory_procfs(deadline)
        except (OSError, ValueError) as exc:
            raise CollectorError(f"cannot read the kernel's memory: {exc}") from None
        # The bundle's containers, asked of the engine only when the containers' shims have
        # changed: a running container's labels cannot change.
        shims = frozenset(proc.cmdline or "" for proc in processes if proc.name.startswith(SHIM_PREFIX))
        if shims != self._shims:
            bundle = self._bundle_container_ids(deadline) if shims else frozenset()
            self._shims, self._bundle = (shims, bundle) if bundle is not None else (None, frozenset())
        # The same processes (pid, parent, name, command line) as the scrape before, under the
        # same configuration and bundle: the same apps (most scrapes, on a steady machine).
        inputs = ([(proc.pid, proc.ppid, proc.name, proc.cmdline) for proc in processes], apps, self._bundle)
        if self._assigned is not None and self._assigned[0] == inputs:
            assignments = self._assigned[1]
        else:
            assignments = assign(processes, apps, current().own_pid, self._bundle)
            self._assigned = (inputs, assignments)
        memory, count = breakdown(processes, assignments, apps, kernel)
        # A loaded model's mapped weights count with its server's app (issue 25).
        models = self._mapped_models(processes, assignments, scan.platform, deadline)
        for app, size in models.by_app.items():
            memory[app] = memory.get(app, 0) + size
        return AppsReading(memory, count, processes, assignments, figures, models)

    def _mapped_models(self, processes: list[Proc], assignments: dict[int, Assignment], platform: str,
                       deadline: Deadline) -> MappedModels:
        """Linux: the model files the LLM apps' processes map; macOS: none (the footprint
        leaves clean file pages out; the README says what covers them)."""
        if platform != "linux":
            return MappedModels({}, {})
        return self._models.read(processes, lambda pid: assignments[pid].app, deadline)

    def collect(self, deadline: Deadline | None = None):
        memory, count, processes, assignments, figures, models = self.read(deadline)
        memory_family = gauge("aitools_app_memory_bytes",
                              "Memory of the application's processes, each process in exactly one app.", ["app"])
        count_family = gauge("aitools_app_processes", "How many processes the application has now.", ["app"])
        for app in memory:
            memory_family.add_metric([app], float(memory[app]))
            count_family.add_metric([app], float(count[app]))
        info = gauge("aitools_app_budget_info", "1 for each app that the total budget counts.", ["app", "budget"])
        for budget, names in budget_apps(self.apps).items():
            for name in names:
                info.add_metric([name, budget], 1.0)
        in_vm = not any(proc.name.startswith(SHIM_PREFIX) for proc in processes) and any(
            proc.name.startswith(DOCKER_VM_PREFIXES) and assignments[proc.pid].app == "docker" for proc in processes)
        vm = gauge("aitools_app_docker_vm",
                   "1 when the containers run inside a VM counted in the docker app (Docker Desktop): the "
                   "rules then move the bundle's containers from docker to monitoring.")
        vm.add_metric([], 1.0 if in_vm else 0.0)
        figure = gauge("aitools_app_memory_figure_processes",
                       "How many processes' memory is which figure: resident_less_shared (Linux), footprint "
                       "(macOS), resident (macOS, where the footprint cannot be read).", ["figure"])
        for name, number in sorted(figures.items()):
            figure.add_metric([name], float(number))
        mapped = gauge("aitools_app_mapped_model_bytes",
                       "The part of an LLM app's memory that is model files its processes map (Linux: "
                       "resident file pages, page cache to the kernel), each file counted once.", ["app"])
        for app in memory:
            if app in LLM_APPS:
                mapped.add_metric([app], float(models.by_app.get(app, 0)))
        yield memory_family
        yield count_family
        yield mapped
        yield info
        yield vm
        yield figure

    def _bundle_container_ids(self, deadline: Deadline) -> frozenset[str] | None:
        """The ids of the running containers of the monitoring bundle, from the engine; none
        when Docker is disabled, None when the engine does not answer (their processes then
        count as docker this scrape, and it is asked again at the next)."""
        if not self.docker.enabled:
            return frozenset()
        from exporter.collectors.docker import resolve_docker_host
        from exporter.collectors.docker_api import Engine

        # At most a second of the scrape's time: the figures do not wait for the labels.
        deadline = Deadline(min(self.timeout, 1.0), at=min(deadline.at, time.monotonic() + 1.0))
        try:
            if self._engine is None:
                host = self.docker.host or resolve_docker_host(os.environ, Path.home(), sys.platform)
                self._engine = Engine(host, deadline)
            listed = self._engine.containers(deadline, filters={"label": [BUNDLE_LABEL], "status": ["running"]})
            return frozenset(item["Id"] for item in listed if isinstance(item, dict) and isinstance(item.get("Id"), str))
        except Exception:  # noqa: BLE001 - any engine trouble: the bundle is not told apart this scrape
            if self._engine is not None:
                self._engine.close()
                self._engine = None
            return None
