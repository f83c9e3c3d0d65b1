"""The configuration file: defaults, parsing and validation.

Every key is optional; an absent file is the zero-configuration default. Errors name
the key (as a dotted path), the line in the file and the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.patterns import Pattern, PatternError, compile_pattern

PROFILES = ("development", "production")
SYSTEM_SOURCES = ("auto", "procfs", "vm_stat")

DEFAULT_BUDGETS: dict[str, int] = {
    "node_heap": 200 * 10**6,
    "node_heap_growth": 50 * 10**6,
    "docker": 5 * 10**9,
    "ollama": 8 * 10**9,
    "lmstudio": 16 * 10**9,
    "swift_build": 6 * 10**9,
    "development_total": 20 * 10**9,
    "production_total": 8 * 10**9,
}

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
DEFAULT_LMSTUDIO_URL = "http://127.0.0.1:1234"
# llama-server's own default port; a program there that does not answer as llama.cpp is
# "not running" (exporter/collectors/llamacpp.py).
DEFAULT_LLAMACPP_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_SECONDS = 3.0
MAX_TIMEOUT_SECONDS = 60.0

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_LABEL_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HOST_PORT_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
# The receiver's fixes (exporter/actions.py), by the names `actions.enabled` takes.
ACTIONS = ("unload_idle_model", "stop_duplicate_container", "node_heap_snapshot")
HEAPSNAPSHOT_SIGNALS = ("SIGUSR2",)


class ConfigError(ValueError):
    """A bad configuration: which key, on which line, and why."""

    def __init__(self, key: str, reason: str, line: int | None = None, path: str | None = None):
        self.key, self.reason, self.line, self.path = key, reason, line, path
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else f"line {line}: " if line else ""
        super().__init__(f"{where}{key}: {reason}" if key else f"{where}{reason}")


def parse_size(value: Any) -> int:
    """Bytes from a plain number or a '200MB' (10^6) / '200MiB' (2^20) style size."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like 200MB or 200MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        if not value >= 0 or value == float("inf"):
            raise ValueError("a size must be a finite number of bytes, not negative")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("a size must be a number of bytes or a string like 200MB or 200MiB")
    match = _SIZE_RE.match(value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size: use bytes, or a number with KB/MB/GB/TB (10^3) or KiB/MiB/GiB/TiB (2^10)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """Seconds from a number or a '3s' / '500ms' / '1m' string."""
    if isinstance(value, bool):
        raise ValueError("a duration must be like 3s, 500ms or 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or ""]
    else:
        raise ValueError(f"{value!r} is not a duration: use a form like 3s, 500ms or 1m")
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g}s")
    return seconds


@dataclass(frozen=True)
class NodeTarget:
    name: str
    url: str | None = None
    inspector: str | None = None  # host:port of `node --inspect`
    heapsnapshot_signal: str | None = None  # the node_heap_snapshot action: the signal of --heapsnapshot-signal
    pid: int | None = None  # the node_heap_snapshot action: the process to signal...
    pidfile: str | None = None  # ...or a file holding its pid
    heap_limit: int | None = None  # bytes: the V8 heap limit it runs with, where the source does not tell it


@dataclass(frozen=True)
class ProcessGroup:
    name: str
    names: tuple[str, ...] = ()
    cmdline: Pattern | None = None  # RE2, see exporter/patterns.py


@dataclass(frozen=True)
class App:
    """An application of the `apps:` breakdown: the processes it claims by name (exact, or
    a prefix when the name ends in `*`) or by a regular expression searched in the command
    line. `children`: whether processes that nobody claims belong to it when it claims an
    ancestor of theirs (false for `system`: everything descends from init / launchd)."""
    name: str
    names: tuple[str, ...] = ()
    cmdline: Pattern | None = None  # RE2, see exporter/patterns.py
    children: bool = True


# Apps whose label is the exporter's own: `other` takes what nobody claims; `system` also
# holds the kernel's memory and `monitoring` the bundle itself, so neither can be removed.
RESERVED_APPS = ("other",)
REQUIRED_APPS = ("system", "monitoring")

# The default applications, in the order they claim processes: exporter/default_apps.yml,
# read through the parser of the user's `apps:` (each name there with its public source).
# Loaded at the end of this module (_default_apps); a Config made before reads it then.
DEFAULT_APPS_FILE = "default_apps.yml"


MAX_FILE_BYTES = 256 * 1024  # a configuration file is a few hundred bytes; this is plenty
MAX_DEPTH = 32  # mappings and lists nested deeper than this are refused
# Keys, values and list items: a configuration has a few hundred. PyYAML parses in Python,
# some 20-50 µs a node: this bounds a file's cost, where its size alone would allow 130,000.
MAX_NODES = 10_000


def _dotted(path: list[str]) -> str:
    return "".join(part if part.startswith("[") or not index else f".{part}" for index, part in enumerate(path))


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, made strict and bounded for files a user writes by hand:
    no aliases (`*name`: the "billion laughs" expand them), at most MAX_DEPTH levels
    (deeper is refused before Python's recursion limit), at most MAX_NODES nodes, no
    duplicate keys (as Prometheus's loader), and every key's dotted path noted with its line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.path: list[str] = []
        self.lines: dict[str, int] = {}
        self.depth = 0  # open mappings and lists (a key can be one too: `{{{`)
        self.nodes = 0

    def refuse(self, reason: str, mark) -> ConfigError:
        return ConfigError(_dotted(self.path), reason, mark.line + 1 if mark else None)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise self.refuse("aliases (*name) are not allowed: write the value out", self.peek_event().start_mark)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.refuse(f"more than {MAX_NODES} keys, values and list items: not a configuration file",
                              self.peek_event().start_mark)
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        if self.depth >= MAX_DEPTH:
            raise self.refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_mapping_node(self, anchor):
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(yaml.MappingNode, None, start.implicit)
        node = yaml.MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        seen: set[str] = set()
        while not self.check_event(yaml.MappingEndEvent):
            key = self.compose_node(node, None)
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            self.path.append(name)
            try:
                if isinstance(key, yaml.ScalarNode):
                    if name in seen:
                        raise self.refuse("duplicate key (each key may appear once in a mapping)", key.start_mark)
                    seen.add(name)
                self.lines.setdefault(_dotted(self.path), key.start_mark.line + 1)
                value = self.compose_node(node, key)
            finally:
                self.path.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node

    def compose_sequence_node(self, anchor):
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(yaml.SequenceNode, None, start.implicit)
        node = yaml.SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        while not self.check_event(yaml.SequenceEndEvent):
            self.path.append(f"[{len(node.value)}]")
            try:
                self.lines.setdefault(_dotted(self.path), self.peek_event().start_mark.line + 1)
                node.value.append(self.compose_node(node, len(node.value)))
            finally:
                self.path.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # an int of 5,000 digits, a date like 2024-13-45
            line = node.start_mark.line + 1
            keys = [key for key, at in self.lines.items() if at == line]
            raise ConfigError(keys[-1] if keys else "", f"cannot read the value {str(node.value)[:40]!r}: {exc}",
                              line) from None


def load_yaml(text: str, path: str | None = None) -> tuple[Any, dict[str, int]]:
    """The document of a YAML file and the line of each dotted key path, strictly and in
    bounded time and memory (see _StrictLoader); errors name the key and the line."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError("", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB: not a configuration file", None, path)
    loader = None
    try:
        loader = _StrictLoader(text)
        root = loader.get_single_node()
        document = loader.construct_document(root) if root is not None else None
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.reason, exc.line, path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(_dotted(loader.path) if loader else "", f"not valid YAML: {reason}", line, path) from None
    finally:
        if loader is not None:
            loader.dispose()
    return document, loader.lines


def url_problem(url: str) -> str | None:
    """Why urllib cannot use a URL (no host, a port that is not 1-65535, spaces or
    control characters), or None when it can."""
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        return "it contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return str(exc)
    if not parts.hostname:
        return "it names no host"
    if port == 0:
        return "port 0 cannot be connected to"
    return None


class _Reader:
    """Validates the loaded document, raising ConfigError with the key's line."""

    def __init__(self, lines: dict[str, int], path: str | None):
        self.lines, self.path = lines, path

    def error(self, key: str, reason: str) -> ConfigError:
        line = self.lines.get(key)
        probe = key
        while line is None and ("." in probe or "[" in probe):
            shorter = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
            if shorter == probe:  # a key of the file's own with "[" in it: no parent to name
                break
            probe = shorter
            line = self.lines.get(probe)
        return ConfigError(key, reason, line, self.path)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, not {type(value).__name__}")
        for name in value:
            if not isinstance(name, str):
                raise self.error(key, f"keys must be strings, not {name!r}")
            if allowed is not None and name not in allowed:
                raise self.error(f"{key}.{name}" if key else name,
                                 f"unknown key; expected one of: {', '.join(allowed)}")
        return value

    def url(self, value: Any, key: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
            raise self.error(key, f"must be an http:// or https:// URL or null, not {value!r}")
        problem = url_problem(value)
        if problem:
            raise self.error(key, f"{value!r} is not a usable URL: {problem}")
        return value.rstrip("/")

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value


# --------------------------------------------------------------------------- the sections
# Each section of the file is a frozen dataclass with the section's keys as its fields; a
# field's `read` metadata checks and converts the value given for it (reader, value, dotted
# key) and raises the reader's ConfigError naming the key and its line. `_section` reads
# any of them: unknown keys refused, absent keys left at their defaults.

def _boolean(reader: _Reader, value: Any, key: str) -> bool:
    return reader.boolean(value, key)


def _url(reader: _Reader, value: Any, key: str) -> str | None:
    return reader.url(value, key)


def _docker_host(reader: _Reader, host: Any, key: str) -> str | None:
    if host is None:
        return None
    if not isinstance(host, str) or not re.match(r"^(unix|tcp|npipe|ssh|http|https)://", host):
        raise reader.error(key, f"must be a Docker host like unix:///var/run/docker.sock or tcp://127.0.0.1:2375, not {host!r}")
    problem = url_problem(host) if host.startswith(("tcp://", "http://", "https://")) else None
    if problem:
        raise reader.error(key, f"{host!r} is not a usable Docker host: {problem}")
    return host


def _system_source(reader: _Reader, value: Any, key: str) -> str:
    return reader.choice(value, key, SYSTEM_SOURCES)


def _token_file(reader: _Reader, token_file: Any, key: str) -> str | None:
    if token_file is None:
        return None
    if not isinstance(token_file, str) or not token_file.strip():
        raise reader.error(key, f"must be the path of a file holding the token, not {token_file!r}")
    return str(Path(token_file).expanduser())


def _context_length(reader: _Reader, length: Any, key: str) -> int | None:
    if length is None:
        return None
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 2**24:
        raise reader.error(key, f"must be a whole number of tokens from 1 to {2**24}, not {length!r}")
    return length


def _action_names(reader: _Reader, enabled: Any, key: str) -> tuple[str, ...]:
    enabled = enabled or []
    if not isinstance(enabled, list) or not all(isinstance(name, str) for name in enabled):
        raise reader.error(key, f"must be a list of: {', '.join(ACTIONS)}")
    for index, name in enumerate(enabled):
        if name not in ACTIONS:
            raise reader.error(f"{key}[{index}]", f"unknown action {name!r}; one of: {', '.join(ACTIONS)}")
    return tuple(dict.fromkeys(enabled))


def _project_names(reader: _Reader, keep: Any, key: str) -> tuple[str, ...]:
    keep = keep or []
    if not isinstance(keep, list) or not all(isinstance(name, str) and name for name in keep):
        raise reader.error(key, "must be a list of compose project names")
    return tuple(keep)


def _targets(reader: _Reader, value: Any, key: str) -> tuple[NodeTarget, ...]:
    return _node_targets(reader, value)


def _read(check) -> dict:
    return {"read": check}


@dataclass(frozen=True)
class NodeSection:
    targets: tuple[NodeTarget, ...] = field(default=(), metadata=_read(_targets))


@dataclass(frozen=True)
class DockerSection:
    enabled: bool = field(default=True, metadata=_read(_boolean))
    host: str | None = field(default=None, metadata=_read(_docker_host))  # None: DOCKER_HOST, the context, the socket


@dataclass(frozen=True)
class OllamaSection:
    url: str | None = field(default=DEFAULT_OLLAMA_URL, metadata=_read(_url))  # None disables
    # null: the server's environment (OLLAMA_CONTEXT_LENGTH), else its default
    context_length: int | None = field(default=None, metadata=_read(_context_length))


@dataclass(frozen=True)
class LMStudioSection:
    url: str | None = field(default=DEFAULT_LMSTUDIO_URL, metadata=_read(_url))  # None disables
    # read at each use (a rotated token works); else LM_API_TOKEN
    token_file: str | None = field(default=None, metadata=_read(_token_file))


@dataclass(frozen=True)
class LlamaCppSection:
    url: str | None = field(default=DEFAULT_LLAMACPP_URL, metadata=_read(_url))  # None disables


@dataclass(frozen=True)
class SystemSection:
    source: str = field(default="auto", metadata=_read(_system_source))


@dataclass(frozen=True)
class ReceiverSection:
    token_file: str | None = field(default=None, metadata=_read(_token_file))


@dataclass(frozen=True)
class ActionsSection:
    dry_run: bool = field(default=True, metadata=_read(_boolean))
    enabled: tuple[str, ...] = field(default=(), metadata=_read(_action_names))
    keep_projects: tuple[str, ...] = field(default=(), metadata=_read(_project_names))


DEFAULT_PROCESS_GROUPS: tuple[ProcessGroup, ...] = (ProcessGroup("swift-frontend", names=("swift-frontend",)),)


@dataclass(frozen=True)
class Config:
    """The configuration file's sections, as typed as the file is nested."""

    profile: str = "development"
    budgets: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    node: NodeSection = NodeSection()
    docker: DockerSection = DockerSection()
    ollama: OllamaSection = OllamaSection()
    lmstudio: LMStudioSection = LMStudioSection()
    llamacpp: LlamaCppSection = LlamaCppSection()
    process_groups: tuple[ProcessGroup, ...] = DEFAULT_PROCESS_GROUPS
    system: SystemSection = SystemSection()
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    receiver: ReceiverSection = ReceiverSection()
    actions: ActionsSection = ActionsSection()
    # DEFAULT_APPS is read at the end of this module (_default_apps): looked up when a Config is made.
    apps: tuple[App, ...] = field(default_factory=lambda: DEFAULT_APPS)

    @property
    def total_budget_name(self) -> str:
        return f"{self.profile}_total"


SECTIONS = {"node": NodeSection, "docker": DockerSection, "ollama": OllamaSection, "lmstudio": LMStudioSection,
            "llamacpp": LlamaCppSection, "system": SystemSection, "receiver": ReceiverSection, "actions": ActionsSection}


def _section(reader: _Reader, cls, raw: Any, key: str):
    """A section of the file as its dataclass: each key given read by its field's check."""
    given = reader.mapping(raw, key, tuple(f.name for f in fields(cls)))
    return cls(**{f.name: f.metadata["read"](reader, given[f.name], f"{key}.{f.name}")
                  for f in fields(cls) if f.name in given})


def parse_config(text: str, path: str | None = None) -> Config:
    document, lines = load_yaml(text, path)
    reader = _Reader(lines, path)
    top = reader.mapping(document, "", tuple(f.name for f in fields(Config)))

    values: dict[str, Any] = {}
    if "profile" in top:
        values["profile"] = reader.choice(top["profile"], "profile", PROFILES)
    budgets = dict(DEFAULT_BUDGETS)
    for name, raw in reader.mapping(top.get("budgets"), "budgets", tuple(DEFAULT_BUDGETS)).items():
        try:
            budgets[name] = parse_size(raw)
        except ValueError as exc:
            raise reader.error(f"budgets.{name}", str(exc)) from None
    values["budgets"] = budgets
    for name in ("node", "docker", "ollama", "lmstudio", "llamacpp"):
        values[name] = _section(reader, SECTIONS[name], top.get(name), name)
    values["process_groups"] = _process_groups(reader, top.get("process_groups"))
    values["system"] = _section(reader, SystemSection, top.get("system"), "system")
    values["apps"] = _apps(reader, top.get("apps"))
    if "timeout" in top:
        try:
            values["timeout"] = parse_duration(top["timeout"])
        except ValueError as exc:
            raise reader.error("timeout", str(exc)) from None
    for name in ("receiver", "actions"):
        values[name] = _section(reader, SECTIONS[name], top.get(name), name)
    if values["actions"].enabled and values["receiver"].token_file is None:
        raise reader.error("actions.enabled" if "actions" in top else "actions",
                           "receiver.token_file is required when any action is enabled: "
                           "the receiver must know the request comes from your Alertmanager")
    return Config(**values)


def _heapsnapshot_keys(reader: _Reader, item: dict, key: str) -> dict[str, Any]:
    """A node target's `heapsnapshot_signal` with `pid` or `pidfile` (the node_heap_snapshot action)."""
    found: dict[str, Any] = {}
    signal_name = item.get("heapsnapshot_signal")
    if signal_name is not None:
        found["heapsnapshot_signal"] = reader.choice(signal_name, f"{key}.heapsnapshot_signal", HEAPSNAPSHOT_SIGNALS)
    if "pid" in item:
        pid = item["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
            raise reader.error(f"{key}.pid", f"must be a process id (a number above 1), not {pid!r}")
        found["pid"] = pid
    if "pidfile" in item:
        pidfile = item["pidfile"]
        if not isinstance(pidfile, str) or not pidfile.strip():
            raise reader.error(f"{key}.pidfile", f"must be the path of a file holding the pid, not {pidfile!r}")
        found["pidfile"] = str(Path(pidfile).expanduser())
    if "pid" in found and "pidfile" in found:
        raise reader.error(key, "give pid or pidfile, not both")
    if signal_name is not None and "pid" not in found and "pidfile" not in found:
        raise reader.error(f"{key}.heapsnapshot_signal", "needs the target's pid or pidfile")
    if signal_name is None and ("pid" in found or "pidfile" in found):
        raise reader.error(key, "pid and pidfile are for heapsnapshot_signal: set it too "
                                "(the process must run with --heapsnapshot-signal=SIGUSR2)")
    return found


def _node_targets(reader: _Reader, raw: Any) -> tuple[NodeTarget, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise reader.error("node.targets", "must be a list of {name, url} or {name, inspector}")
    targets: list[NodeTarget] = []
    for index, item in enumerate(raw):
        key = f"node.targets[{index}]"
        item = reader.mapping(item, key, ("name", "url", "inspector",
                                          "heapsnapshot_signal", "pid", "pidfile", "heap_limit"))
        snapshot_keys = _heapsnapshot_keys(reader, item, key)
        name = item.get("name")
        if not isinstance(name, str) or not _LABEL_SAFE_NAME.match(name):
            raise reader.error(f"{key}.name" if "name" in item else key,
                               "each target needs a name of letters, digits, '_', '-', '.' or ':' (at most 64)")
        if any(target.name == name for target in targets):
            raise reader.error(f"{key}.name", f"duplicate target name {name!r}")
        if ("url" in item) == ("inspector" in item):
            raise reader.error(key, "give exactly one of url or inspector")
        heap_limit = None
        if item.get("heap_limit") is not None:
            try:
                heap_limit = parse_size(item["heap_limit"])
            except ValueError as exc:
                raise reader.error(f"{key}.heap_limit", str(exc)) from None
            if heap_limit <= 0:
                raise reader.error(f"{key}.heap_limit", "must be a size above 0, like 4GiB (--max-old-space-size=4096)")
        if "url" in item:
            targets.append(NodeTarget(name, url=reader.url(item["url"], f"{key}.url"), heap_limit=heap_limit, **snapshot_keys))
        else:
            inspector = item["inspector"]
            if not isinstance(inspector, str) or not _HOST_PORT_RE.match(inspector) or not 0 < int(inspector.rsplit(":", 1)[1]) < 65536:
                raise reader.error(f"{key}.inspector", f"must be host:port of `node --inspect`, like 127.0.0.1:9229, not {inspector!r}")
            targets.append(NodeTarget(name, inspector=inspector, heap_limit=heap_limit, **snapshot_keys))
    return tuple(targets)


def _process_groups(reader: _Reader, raw: Any) -> tuple[ProcessGroup, ...]:
    """Groups from the file are merged over the default swift-frontend group; `name: null` removes one."""
    groups = {group.name: group for group in DEFAULT_PROCESS_GROUPS}
    for name, spec in reader.mapping(raw, "process_groups").items():
        key = f"process_groups.{name}"
        if not _LABEL_SAFE_NAME.match(name):
            raise reader.error(key, "a group name is letters, digits, '_', '-', '.' or ':' (at most 64)")
        if spec is None:
            groups.pop(name, None)
            continue
        spec = reader.mapping(spec, key, ("names", "cmdline"))
        names, pattern = _names_and_cmdline(reader, spec, key, "must be a list of process names")
        if not names and pattern is None:
            raise reader.error(key, "give names (exact process names) or cmdline (a regular expression)")
        groups[name] = ProcessGroup(name, tuple(names), pattern)
    return tuple(groups.values())


def _names_and_cmdline(reader: _Reader, spec: dict, key: str, names_reason: str) -> tuple[list[str], Pattern | None]:
    """`names` (a list of process names, or one) and `cmdline` (an RE2 expression) of a
    process group or an app."""
    names = spec.get("names", [])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise reader.error(f"{key}.names", names_reason)
    pattern = None
    if spec.get("cmdline") is not None:
        if not isinstance(spec["cmdline"], str):
            raise reader.error(f"{key}.cmdline", "must be a regular expression string")
        try:
            pattern = compile_pattern(spec["cmdline"])
        except PatternError as exc:
            raise reader.error(f"{key}.cmdline", f"not a valid regular expression: {exc}") from None
    return names, pattern


def _apps(reader: _Reader, raw: Any, defaults: tuple[App, ...] | None = None) -> tuple[App, ...]:
    """The apps of the file first, in their order (the first claim wins, so they claim before
    the defaults), then the default apps they do not name; `name: null` removes a default."""
    remaining = {app.name: app for app in (DEFAULT_APPS if defaults is None else defaults)}
    mine: dict[str, App] = {}
    for name, spec in reader.mapping(raw, "apps").items():
        key = f"apps.{name}"
        if not _LABEL_SAFE_NAME.match(name):
            raise reader.error(key, "an app name is letters, digits, '_', '-', '.' or ':' (at most 64)")
        if name in RESERVED_APPS:
            raise reader.error(key, f"{name!r} is the exporter's own: it takes every process no app claims")
        remaining.pop(name, None)
        if spec is None:
            if name in REQUIRED_APPS:
                raise reader.error(key, f"{name!r} cannot be removed (it also holds "
                                        f"{'the kernel memory' if name == 'system' else 'the bundle itself'})")
            continue
        spec = reader.mapping(spec, key, ("names", "cmdline", "children"))
        names, pattern = _names_and_cmdline(reader, spec, key,
                                            "must be a list of process names (a name ending in * is a prefix)")
        if "*" in names:
            raise reader.error(f"{key}.names", "must be a list of process names (a name ending in * is a prefix)")
        children = reader.boolean(spec["children"], f"{key}.children") if "children" in spec else name != "system"
        if not names and pattern is None and name not in REQUIRED_APPS:
            raise reader.error(key, "give names (process names) or cmdline (a regular expression)")
        mine[name] = App(name, tuple(names), pattern, children)
    return (*mine.values(), *remaining.values())


def _default_apps() -> tuple[App, ...]:
    """The packaged default apps (exporter/default_apps.yml), parsed as a user's `apps:`
    over no defaults; every required app must be there."""
    from importlib.resources import files

    path = files("exporter").joinpath(DEFAULT_APPS_FILE)
    document, lines = load_yaml(path.read_text(encoding="utf-8"), str(path))
    reader = _Reader(lines, str(path))
    top = reader.mapping(document, "", ("apps",))
    apps = _apps(reader, top.get("apps"), defaults=())
    missing = [name for name in REQUIRED_APPS if name not in {app.name for app in apps}]
    if missing:
        raise ConfigError("apps", f"the default apps lack {', '.join(missing)}", None, str(path))
    return apps


def load_config(path: str | Path | None) -> Config:
    """The configuration from a file, or the built-in defaults when path is None."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # a larger file (or /dev/zero) is refused, not read
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError("", f"the file is larger than {MAX_FILE_BYTES // 1024} KiB: not a configuration file", None, str(path))
        text = data.decode("utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read the configuration file: {exc.strerror or exc}", None, str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("", "the configuration file is not UTF-8 text", None, str(path)) from None
    return parse_config(text, str(path))


DEFAULT_APPS: tuple[App, ...] = _default_apps()
