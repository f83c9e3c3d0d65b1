"""Where the memory goes, as the user writes it: a tree built from one collection.

    Docker -> compose projects -> containers
    Node.js servers -> targets
    Swift compilation (Xcode) -> swift-frontend
    IDE
    LLM services -> Ollama / LM Studio / llama.cpp -> (GPU-wired memory ->) loaded models
    Python ML
    System/OS
    <the user's own apps>
    Other
and, apart, Monitoring (this tool's own footprint).

Each node has its memory and, where a budget applies, the budget and the share of it in
use. The share is what counts against the budget (exporter/readings.py `readings`), which
is not always the node's memory: the docker budget counts the containers, while the Docker
app on macOS is the whole VM; the node_heap budget counts heapUsed, the node's memory is
its RSS.

A node's memory is the apps collector's `aitools_app_memory_bytes{app}` when the samples
have it (every process counted once), else the source readings: the containers' usage,
the Node targets' RSS (or heapUsed), the swift-frontend group, the loaded models, the
system's wired pages. A node with neither has no figure (None).

On Apple silicon the models on the GPU are wired memory, which the apps collector counts
in `system`: budgets.app_memory moves the part the servers' loaded models explain to those
servers (as the rules do), and here it is a slice of its own under each server ("GPU-wired
memory", its models under it). Under Docker Desktop the Docker node also shows the VM's
memory beyond its containers (aitools:docker_vm_overhead_bytes) and the VM's limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.budgets import MONITORING_PROJECT, SWIFT_BUILD_GROUP
from exporter.collectors.system import activity_monitor
from exporter.config import Config
from exporter.readings import Samples, app_memory, gpu_explained, node_tracked_bytes, readings, share_of

# The apps of aitools_app_memory_bytes that have a place of their own in the tree; any
# other app (the user's own) becomes a top-level node of its own name, before Other.
KNOWN_APPS = ("docker", "node", "xcode", "ide", "ollama", "lmstudio", "llamacpp", "python", "system", "other",
              "monitoring")
# The monitoring bundle's containers (compose project MONITORING_PROJECT) are shown as
# Monitoring, not under Docker, as the docker budget leaves them out.
NO_PROJECT = "(no compose project)"
_SAME = object()
SERVER_TITLES = {"ollama": "Ollama", "lmstudio": "LM Studio", "llamacpp": "llama.cpp"}


@dataclass
class Node:
    name: str
    bytes: float | None
    budget: str | None = None
    budget_bytes: float | None = None
    counted_bytes: float | None = None  # what counts against the budget (not always `bytes`); None: not read
    children: list["Node"] = field(default_factory=list)
    note: str | None = None
    # What `bytes` is, in words, where it is not obvious: the note names it when the node
    # shows its parts' sum instead (never_below_children).
    figure: str | None = None

    @property
    def share(self) -> float | None:
        return share_of(self.counted_bytes, self.budget_bytes)

    def as_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "budget": self.budget, "budget_bytes": self.budget_bytes,
                "counted_bytes": self.counted_bytes, "share": self.share, "note": self.note, "figure": self.figure,
                "children": [child.as_dict() for child in self.children]}

    def walk(self, depth: int = 0):
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


def human_bytes(value: float | None) -> str:
    """Decimal units, as the budgets are written (200MB = 200 * 10^6 bytes)."""
    if value is None:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def never_below_children(node: Node) -> Node:
    """No node shows less than its children together: where its own figure (the apps'
    processes, the used memory) is smaller than its parts' sum (a model's size as its
    server reports it, the apps with their mapped model files), the node shows the sum and
    its note says which figure it shows and why. Children first, so the sums are final."""
    for child in node.children:
        never_below_children(child)
    parts = _sum(child.bytes for child in node.children)
    if parts is None or (node.bytes is not None and node.bytes >= parts):
        return node
    own = "no figure of its own" if node.bytes is None else f"{node.figure or 'its own figure'} is {human_bytes(node.bytes)}"
    why = f"shows its parts' sum; {own}"
    node.note = f"{why} ({node.note})" if node.note else why
    node.bytes = parts
    return node


def _sum(values) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) if values else None


class _Breakdown:
    def __init__(self, config: Config, samples: Samples):
        self.config, self.samples = config, samples
        self.apps = app_memory(samples)  # as the totals count them (budgets.app_memory)
        self.gpu = gpu_explained(samples, self.apps)  # server -> its models' GPU-wired memory
        # What counts against each budget, as budgets.readings() defines it (the one
        # definition); per-item budgets (node_heap per target, container limits) aside.
        self.counted = {row.budget: row.used_bytes for row in readings(config, samples)
                        if row.budget in config.budgets and row.budget != "node_heap"}

    def app(self, name: str) -> float | None:
        return self.apps.get(name)

    def counted_against(self, budget: str, fallback: float | None) -> float | None:
        return self.counted[budget] if budget in self.counted else fallback

    def budget(self, node: Node, name: str, counted: float | None | object = _SAME) -> Node:
        """Sets the budget that applies to the node and what counts against it (default: the node's memory)."""
        node.budget, node.budget_bytes = name, self.config.budgets.get(name)
        node.counted_bytes = node.bytes if counted is _SAME else counted
        return node

    # --- docker and monitoring
    def containers(self) -> tuple[dict[str, list[Node]], list[Node]]:
        """(user's containers by compose project, the monitoring bundle's containers)."""
        projects: dict[str, list[tuple[dict, float]]] = {}
        for labels, used in self.samples.all("aitools_container_memory_usage_bytes"):
            projects.setdefault(labels.get("compose_project") or NO_PROJECT, []).append((labels, used))
        users: dict[str, list[Node]] = {}
        monitoring: list[Node] = []
        for project, found in sorted(projects.items()):
            nodes = []
            for labels, used in sorted(found, key=lambda item: item[0].get("name", "")):
                limit = self.samples.value("aitools_container_memory_limit_bytes", name=labels.get("name", ""))
                node = Node(labels.get("name", "?"), used)
                if limit is not None:
                    node.budget, node.budget_bytes, node.counted_bytes = "container limit", limit, used
                nodes.append(node)
            if project == MONITORING_PROJECT:
                monitoring += nodes
            else:
                users[project] = nodes
        return users, monitoring

    def docker(self, projects: dict[str, list[Node]]) -> Node:
        children = [Node(project, _sum(child.bytes for child in nodes), children=nodes)
                    for project, nodes in projects.items()]
        containers = _sum(child.bytes for child in children)
        node = Node("Docker", self.app("docker") if "docker" in self.apps else containers, children=children)
        if "docker" in self.apps and self.samples.value("aitools_app_docker_vm") == 1:
            # Docker Desktop: the VM holds memory beyond its containers (aitools:docker_vm_overhead_bytes).
            overhead = max(self.samples.value("aitools_app_memory_bytes", app="docker") - (containers or 0.0), 0.0)
            limit = self.samples.value("aitools_docker_vm_memory_limit_bytes")
            children.append(Node("VM beyond its containers", overhead,
                                 note=f"Docker Desktop's VM, limit {limit / 2**30:.1f} GiB" if limit else
                                 "Docker Desktop's VM"))
        if self.config.docker.enabled:
            self.budget(node, "docker", self.counted_against("docker", containers))
        return node

    def monitoring(self, containers: list[Node]) -> Node:
        figure = self.app("monitoring") if "monitoring" in self.apps else _sum(child.bytes for child in containers)
        return Node("Monitoring (this tool)", figure, children=containers,
                    note="the monitoring bundle's own footprint, left out of the user's figures")

    # --- node
    def node(self) -> Node:
        children = []
        for labels, up in sorted(self.samples.all("aitools_node_target_up"), key=lambda item: item[0]["target"]):
            target = labels["target"]
            heap = self.samples.value("aitools_node_heap_used_bytes", target=target)
            child = Node(target, node_tracked_bytes(self.samples, target), note=None if up else "down")
            self.budget(child, "node_heap", heap)
            children.append(child)
        figure = self.app("node") if "node" in self.apps else _sum(child.bytes for child in children)
        return Node("Node.js servers", figure, children=children)

    # --- xcode
    def swift(self) -> Node:
        """With the apps collector: the xcode app, the swift-frontend group under it against
        swift_build. Without: the node is the swift-frontend group itself."""
        name = "Swift compilation (Xcode)"
        rss = self.samples.value("aitools_process_group_rss_bytes", group=SWIFT_BUILD_GROUP)
        if "xcode" not in self.apps:
            node = Node(name, rss)
            return self.budget(node, "swift_build", self.counted_against("swift_build", rss)) if rss is not None else node
        children = []
        if rss is not None:
            count = self.samples.value("aitools_process_group_processes", group=SWIFT_BUILD_GROUP)
            child = Node(f"swift-frontend ({int(count or 0)} processes)", rss)
            children.append(self.budget(child, "swift_build", self.counted_against("swift_build", rss)))
        return Node(name, self.app("xcode"), children=children)

    # --- llm
    def llm(self) -> Node:
        servers = []
        for server, url in (("ollama", self.config.ollama.url), ("lmstudio", self.config.lmstudio.url),
                            ("llamacpp", self.config.llamacpp.url)):
            if url is None:  # not asked for its models; its processes still hold memory
                if server in self.apps:
                    servers.append(Node(SERVER_TITLES[server], self.app(server), children=self.on_gpu(server, []),
                                        note="its server is not watched (url: null)"))
                continue
            models = [Node(labels["model"], size) for labels, size in
                      sorted(self.samples.all("aitools_llm_model_loaded_bytes", server=server),
                             key=lambda item: item[0]["model"])]
            read = self.samples.value("aitools_collector_success", collector=server) == 1
            loaded = sum(child.bytes for child in models) if read else None
            figure = self.app(server) if server in self.apps else loaded
            node = Node(SERVER_TITLES[server], figure, children=self.on_gpu(server, models),
                        note=None if read else "its server is not running" if self.samples.value(
                            "aitools_collector_source_running", collector=server) == 0
                        else "not read (see the collectors that failed)")
            if server in self.apps:
                node.figure = "its processes' memory"
                if loaded is not None and loaded > (figure or 0):
                    # The server's own size of its models: pages not yet read in, or held by the GPU.
                    node.note = (f"the models' size as {SERVER_TITLES[server]} reports it; its processes hold "
                                 f"{human_bytes(figure)} now (weights not yet read in from the file, or wired by the GPU)")
                    node.bytes = loaded
            if server in self.config.budgets:
                self.budget(node, server, self.counted_against(server, loaded))
            servers.append(node)
        figure = _sum(child.bytes for child in servers)
        return Node("LLM services", figure, children=servers)

    def on_gpu(self, server: str, models: list[Node]) -> list[Node]:
        """A server's children: its models, under the GPU-wired memory they explain where they do."""
        if server not in self.gpu:
            return models
        return [Node("GPU-wired memory", self.gpu[server], children=models,
                     note="the models on the GPU (Apple silicon: wired pages, not in System/OS)")]

    def system(self) -> Node:
        if "system" in self.apps:
            return Node("System/OS", self.app("system"),
                        note="less the GPU memory of the LLM servers' models" if self.gpu else None)
        wired = self.samples.value("aitools_system_memory_pages", state="wired")
        page = self.samples.value("aitools_system_page_size_bytes")
        figure = wired * page if wired is not None and page is not None else None
        return Node("System/OS", figure, note="wired kernel memory" if figure is not None else None)

    def used_memory(self) -> float | None:
        """macOS (vm_stat's page states): Activity Monitor's Memory Used (App Memory + Wired
        Memory + Compressed); elsewhere physical memory less the available memory."""
        page = self.samples.value("aitools_system_page_size_bytes")
        pages = {labels["state"]: int(count) for labels, count in self.samples.all("aitools_system_memory_pages")}
        if page and "stored_in_compressor" in pages:  # a state only vm_stat has
            used = activity_monitor(int(page), pages).get("memory_used")
            if used is not None:
                return used
        total = self.samples.value("aitools_system_memory_total_bytes")
        available = self.samples.value("aitools_system_memory_available_bytes")
        return total - available if total is not None and available is not None else None

    def build(self) -> tuple[Node, Node]:
        projects, monitoring_containers = self.containers()
        top = [self.docker(projects), self.node(), self.swift(),
               Node("IDE", self.app("ide")), self.llm(), Node("Python ML", self.app("python")), self.system()]
        top += [Node(app, value) for app, value in sorted(self.apps.items()) if app not in KNOWN_APPS]
        top.append(Node("Other", self.app("other")))
        root = Node("Workstation (used memory)", self.used_memory(), children=top,
                    figure="the used memory (macOS: Activity Monitor's Memory Used; elsewhere physical less "
                           "available; mapped model files are page cache to the kernel)")
        total = self.config.total_budget_name
        self.budget(root, total, self.counted_against(total, None))
        return never_below_children(root), never_below_children(self.monitoring(monitoring_containers))


def build_tree(config: Config, samples: Samples) -> tuple[Node, Node]:
    """(the user's workstation, the monitoring bundle) from the samples of one collection."""
    return _Breakdown(config, samples).build()
