"""Where the memory goes, as the user writes it: a tree built from one collection.

    Docker -> compose projects -> containers
    Node.js servers -> targets
    Swift compilation (Xcode) -> swift-frontend
    IDE
    LLM services -> Ollama / LM Studio -> loaded models
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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.budgets import MONITORING_PROJECT, SWIFT_BUILD_GROUP
from exporter.config import Config
from exporter.readings import Samples, app_memory, node_tracked_bytes, readings

# The apps of aitools_app_memory_bytes that have a place of their own in the tree; any
# other app (the user's own) becomes a top-level node of its own name, before Other.
KNOWN_APPS = ("docker", "node", "xcode", "ide", "ollama", "lmstudio", "python", "system", "other", "monitoring")
# The monitoring bundle's containers (compose project MONITORING_PROJECT) are shown as
# Monitoring, not under Docker, as the docker budget leaves them out.
NO_PROJECT = "(no compose project)"
_SAME = object()
SERVER_TITLES = {"ollama": "Ollama", "lmstudio": "LM Studio"}


@dataclass
class Node:
    name: str
    bytes: float | None
    budget: str | None = None
    budget_bytes: float | None = None
    counted_bytes: float | None = None  # what counts against the budget (not always `bytes`); None: not read
    children: list["Node"] = field(default_factory=list)
    note: str | None = None

    @property
    def share(self) -> float | None:
        if self.counted_bytes is None or not self.budget_bytes:
            return None
        return self.counted_bytes / self.budget_bytes

    def as_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "budget": self.budget, "budget_bytes": self.budget_bytes,
                "counted_bytes": self.counted_bytes, "share": self.share, "note": self.note,
                "children": [child.as_dict() for child in self.children]}

    def walk(self, depth: int = 0):
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


def _sum(values) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) if values else None


class _Breakdown:
    def __init__(self, config: Config, samples: Samples):
        self.config, self.samples = config, samples
        self.apps = app_memory(samples)  # as the totals count them (budgets.app_memory)
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
        for server, url in (("ollama", self.config.ollama.url), ("lmstudio", self.config.lmstudio.url)):
            if url is None:
                continue
            models = [Node(labels["model"], size) for labels, size in
                      sorted(self.samples.all("aitools_llm_model_loaded_bytes", server=server),
                             key=lambda item: item[0]["model"])]
            read = self.samples.value("aitools_collector_success", collector=server) == 1
            loaded = sum(child.bytes for child in models) if read else None
            figure = self.app(server) if server in self.apps else loaded
            node = Node(SERVER_TITLES[server], figure, children=models,
                        note=None if read else "not read (see the collectors that failed)")
            servers.append(self.budget(node, server, self.counted_against(server, loaded)))
        figure = _sum(child.bytes for child in servers)
        return Node("LLM services", figure, children=servers)

    def system(self) -> Node:
        if "system" in self.apps:
            return Node("System/OS", self.app("system"))
        wired = self.samples.value("aitools_system_memory_pages", state="wired")
        page = self.samples.value("aitools_system_page_size_bytes")
        figure = wired * page if wired is not None and page is not None else None
        return Node("System/OS", figure, note="wired kernel memory" if figure is not None else None)

    def build(self) -> tuple[Node, Node]:
        projects, monitoring_containers = self.containers()
        top = [self.docker(projects), self.node(), self.swift(),
               Node("IDE", self.app("ide")), self.llm(), Node("Python ML", self.app("python")), self.system()]
        top += [Node(app, value) for app, value in sorted(self.apps.items()) if app not in KNOWN_APPS]
        top.append(Node("Other", self.app("other")))
        total = self.samples.value("aitools_system_memory_total_bytes")
        available = self.samples.value("aitools_system_memory_available_bytes")
        used = total - available if total is not None and available is not None else None
        root = Node("Workstation (used memory)", used, children=top)
        total = self.config.total_budget_name
        self.budget(root, total, self.counted_against(total, None))
        return root, self.monitoring(monitoring_containers)


def build_tree(config: Config, samples: Samples) -> tuple[Node, Node]:
    """(the user's workstation, the monitoring bundle) from the samples of one collection."""
    return _Breakdown(config, samples).build()
