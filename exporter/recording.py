"""Recordings: everything one scrape reads from a machine, to run the exporter on anywhere.

`aitools-exporter record DIR` writes DIR/recording.json on the user's machine;
`serve --replay DIR` and `snapshot --replay DIR` run every collector on it, with the logic
of the platform it was recorded on. The suite holds recordings of real Macs
(tests/recordings/, each with the sources of its figures).

Format 1, one JSON document (at most MAX_BYTES):

    {"format": 1, "platform": "darwin" | "linux", "machine": "...", "recorded": "ISO time",
     "arch": "arm64", "config": "<the configuration file's text>" | null, "own_pid": <its pid>,
     "commands":  {"vm_stat": {"stdout": "...", "stderr": "", "returncode": 0},
                   "sysctl -n vm.swapusage": {...}, ...},       # program base name and arguments
     "processes": [{"pid": 1, "ppid": 0, "name": "launchd", "cmdline": ["/sbin/launchd"],
                    "footprint": 123, "rss": 456},               # macOS: footprint, or null
                   {"pid": 2, "ppid": 1, "name": "bash", "cmdline": [...],
                    "anonymous": 789, "rss": 900}, ...],          # Linux: resident less shared
     "http":      {"docker GET /containers/json": {"status": 200, "body": <JSON or text>},
                   "ollama GET /api/ps": {...}, ...},             # source, method, path (no query)
     "files":     {"/proc/meminfo": "..."},
     "environment": {"<pid>": {"OLLAMA_CONTEXT_LENGTH": "8192"}},
     "expected":  {...}}                                          # free-form: what the Mac showed

What a recording keeps of a command line (`redact_arguments`): the program (argv[0], the
home folder written `~`), and of the other arguments those a configured app or process
group's pattern matches, each only if it does not look like a secret (the value of a
flag named like a token, key, secret, password, auth, credential, cookie or session; a
`NAME=value` with such a name; a word of 20 or more letters and digits mixed, a token's
shape). Every other argument is written `<redacted>`. Of the environment, only the names
in KEPT_ENVIRONMENT (what the model-fit estimate reads), with short plain values. Of the
Docker engine's answers, only the fields the collectors read (`prune_docker`); of a Node
target's JSON, its numbers (strings are emptied). Nothing of a request (headers, tokens)
is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.patterns import span

FORMAT = 1
FILE_NAME = "recording.json"
MAX_BYTES = 64 * 2**20
MAX_ITEMS = 100_000
PLATFORMS = ("darwin", "linux")
REDACTED = "<redacted>"
KEPT_ENVIRONMENT = ("OLLAMA_CONTEXT_LENGTH", "OLLAMA_NUM_PARALLEL", "OLLAMA_KV_CACHE_TYPE",
                    "OLLAMA_FLASH_ATTENTION", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_KEEP_ALIVE")
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{0,32}$")
_SECRET_NAME = re.compile(r"token|key|secret|passw|auth|credential|cookie|session", re.IGNORECASE)
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_\-+/=]{20,}")
_DOCKER_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")
# The fields of the Docker engine's answers the collectors read.
DOCKER_FIELDS = {
    "/containers/json": ("Id", "Names", "Image", "ImageID", "Labels", "State", "Status", "Created"),
    "/info": ("MemTotal", "NCPU", "OperatingSystem", "OSType", "ServerVersion", "CgroupVersion", "CgroupDriver",
              "KernelVersion", "Containers", "ContainersRunning"),
}
DOCKER_LABELS = ("com.docker.compose.project", "com.docker.compose.service", "dev.aitools.app")


class RecordingError(ValueError):
    """A recording that cannot be used: where in it, and why."""


@dataclass
class Command:
    stdout: str
    stderr: str = ""
    returncode: int = 0


@dataclass
class Answer:
    status: int
    body: Any  # the parsed JSON document, or text


@dataclass
class Process:
    pid: int
    ppid: int
    name: str
    cmdline: list[str] | None
    rss: int
    footprint: int | None = None   # macOS: the physical footprint, None where it could not be read
    anonymous: int | None = None   # Linux: resident less shared


@dataclass
class Recording:
    platform: str
    machine: str = ""
    recorded: str = ""
    arch: str = ""                   # the processor (platform.machine(): arm64 is Apple silicon)
    config_text: str | None = None   # the configuration file it was recorded with (its paths, no secrets)
    own_pid: int | None = None       # the recording exporter's own pid (its process is `monitoring`)
    commands: dict[str, Command] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    http: dict[str, Answer] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    environment: dict[int, dict[str, str]] = field(default_factory=dict)
    expected: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "format": FORMAT, "platform": self.platform, "machine": self.machine, "recorded": self.recorded,
            "arch": self.arch, "config": self.config_text, "own_pid": self.own_pid,
            "commands": {key: {"stdout": c.stdout, "stderr": c.stderr, "returncode": c.returncode}
                         for key, c in self.commands.items()},
            "processes": [{key: value for key, value in (
                ("pid", p.pid), ("ppid", p.ppid), ("name", p.name), ("cmdline", p.cmdline), ("rss", p.rss),
                ("footprint", p.footprint), ("anonymous", p.anonymous)) if key != "anonymous" or value is not None}
                for p in self.processes],
            "http": {key: {"status": a.status, "body": a.body} for key, a in self.http.items()},
            "files": dict(self.files),
            "environment": {str(pid): names for pid, names in self.environment.items()},
            "expected": self.expected,
        }


# --------------------------------------------------------------------------- keys

def command_key(argv: list[str]) -> str:
    """A command's key: the program's base name and its arguments, joined by spaces."""
    return " ".join([os.path.basename(argv[0]), *argv[1:]])


def http_key(source: str, method: str, path: str) -> str:
    """An answer's key: the source, the method and the path without its query (and, for the
    Docker engine, without the API version prefix: /v1.41/info is /info)."""
    path = path.split("?", 1)[0] or "/"
    if source == "docker":
        path = _DOCKER_VERSION.sub("", path)
    return f"{source} {method.upper()} {path}"


# --------------------------------------------------------------------------- redaction

def _secret_like(word: str, after_secret_flag: bool) -> bool:
    if after_secret_flag:
        return True
    name, equals, _ = word.partition("=")
    if equals and _SECRET_NAME.search(name):
        return True
    return any(re.search(r"[A-Za-z]", run) and re.search(r"\d", run) for run in _TOKEN_SHAPE.findall(word)) \
        and "/" not in word


def redact_arguments(argv: list[str], patterns=(), home: str | None = None) -> list[str]:
    """The command line a recording keeps (module docstring): argv[0] with the home folder
    as `~`, and the arguments a pattern's match covers that do not look like secrets."""
    if not argv:
        return []
    home = home if home is not None else os.path.expanduser("~")

    def homeless(text: str) -> str:
        return "~" + text[len(home):] if home and home != "/" and text.startswith(home) else text

    text = " ".join(argv)
    spans = [found for pattern in patterns if (found := span(pattern, text)) is not None]
    kept, position, secret_flag = [homeless(argv[0])], len(argv[0].encode("utf-8", "surrogateescape")) + 1, False
    for word in argv[1:]:
        start, end = position, position + len(word.encode("utf-8", "surrogateescape"))
        position = end + 1
        covered = any(start < stop and end > begin for begin, stop in spans)
        flag_name = word.lstrip("-") if word.startswith("-") and "=" not in word else ""
        kept.append(homeless(word) if covered and not _secret_like(word, secret_flag) else REDACTED)
        secret_flag = bool(flag_name and _SECRET_NAME.search(flag_name))
    return kept


def kept_environment(environ: dict[str, str]) -> dict[str, str]:
    return {name: value for name in KEPT_ENVIRONMENT
            if isinstance(value := environ.get(name), str) and _PLAIN_VALUE.match(value)}


def prune_docker(path: str, body: Any) -> Any:
    """Of a Docker engine answer, the fields the collectors read (DOCKER_FIELDS; container
    labels: the compose project and service and the bundle's label)."""
    path = _DOCKER_VERSION.sub("", path.split("?", 1)[0])
    fields = DOCKER_FIELDS.get(path)
    if fields is None:
        if path.endswith("/stats") and isinstance(body, dict):
            return {key: body[key] for key in ("id", "name", "read", "memory_stats") if key in body}
        return body
    def prune(item: Any) -> Any:
        if not isinstance(item, dict):
            return item
        kept = {key: item[key] for key in fields if key in item}
        if isinstance(kept.get("Labels"), dict):
            kept["Labels"] = {k: v for k, v in kept["Labels"].items() if k in DOCKER_LABELS}
        return kept
    return [prune(item) for item in body] if isinstance(body, list) else prune(body)


def numbers_only(document: Any) -> Any:
    """A JSON document with every string emptied (a Node target's JSON may hold anything;
    the collector reads only its numbers)."""
    if isinstance(document, dict):
        return {str(key): numbers_only(value) for key, value in document.items()}
    if isinstance(document, list):
        return [numbers_only(value) for value in document]
    return "" if isinstance(document, str) else document


# --------------------------------------------------------------------------- reading

def _need(condition: bool, where: str, reason: str) -> None:
    if not condition:
        raise RecordingError(f"{FILE_NAME}: {where}: {reason}")


def _int(value: Any, where: str, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    _need(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63, where,
          "must be a whole number from 0" + (" or null" if nullable else ""))
    return value


def _text(value: Any, where: str) -> str:
    _need(isinstance(value, str), where, "must be text")
    return value


def _mapping(value: Any, where: str) -> dict:
    _need(isinstance(value, dict), where, "must be an object")
    _need(len(value) <= MAX_ITEMS, where, f"more than {MAX_ITEMS} entries")
    return value


def parse(document: Any) -> Recording:
    """A Recording from the parsed JSON, or RecordingError naming the bad key."""
    top = _mapping(document, "(top)")
    _need(top.get("format") == FORMAT, "format", f"must be {FORMAT} (this exporter reads format {FORMAT})")
    platform = top.get("platform")
    _need(platform in PLATFORMS, "platform", f"must be one of {', '.join(PLATFORMS)}")
    recording = Recording(platform, str(top.get("machine", "")), str(top.get("recorded", "")))
    config = top.get("config")
    _need(config is None or isinstance(config, str), "config", "must be the configuration file's text, or null")
    recording.config_text = config
    recording.arch = str(top.get("arch") or ("arm64" if platform == "darwin" else ""))
    recording.own_pid = _int(top.get("own_pid"), "own_pid", nullable=True)
    for key, value in _mapping(top.get("commands", {}), "commands").items():
        where = f"commands[{key!r}]"
        item = _mapping(value, where)
        recording.commands[key] = Command(_text(item.get("stdout", ""), where + ".stdout"),
                                          _text(item.get("stderr", ""), where + ".stderr"),
                                          _int(item.get("returncode", 0), where + ".returncode"))
    processes = top.get("processes", [])
    _need(isinstance(processes, list) and len(processes) <= MAX_ITEMS, "processes",
          f"must be a list of at most {MAX_ITEMS} processes")
    for index, value in enumerate(processes):
        where = f"processes[{index}]"
        item = _mapping(value, where)
        cmdline = item.get("cmdline")
        _need(cmdline is None or (isinstance(cmdline, list) and all(isinstance(a, str) for a in cmdline)),
              where + ".cmdline", "must be a list of text or null")
        recording.processes.append(Process(
            _int(item.get("pid"), where + ".pid"), _int(item.get("ppid", 0), where + ".ppid"),
            _text(item.get("name", ""), where + ".name"), cmdline, _int(item.get("rss", 0), where + ".rss"),
            _int(item.get("footprint"), where + ".footprint", nullable=True),
            _int(item.get("anonymous"), where + ".anonymous", nullable=True)))
    for key, value in _mapping(top.get("http", {}), "http").items():
        where = f"http[{key!r}]"
        item = _mapping(value, where)
        _need(len(key.split(" ", 2)) == 3, where, "the key must be 'SOURCE METHOD /path'")
        recording.http[key] = Answer(_int(item.get("status", 200), where + ".status"), item.get("body"))
    for key, value in _mapping(top.get("files", {}), "files").items():
        recording.files[key] = _text(value, f"files[{key!r}]")
    for key, value in _mapping(top.get("environment", {}), "environment").items():
        _need(key.isdigit(), f"environment[{key!r}]", "the key must be a pid")
        names = _mapping(value, f"environment[{key!r}]")
        recording.environment[int(key)] = {name: _text(v, f"environment[{key!r}][{name!r}]")
                                           for name, v in names.items() if name in KEPT_ENVIRONMENT}
    recording.expected = top.get("expected", {}) if isinstance(top.get("expected", {}), dict) else {}
    return recording


def load(folder: str | Path) -> Recording:
    """The recording in FOLDER (FOLDER/recording.json, or FOLDER itself when it is the file)."""
    path = Path(folder)
    if path.is_dir():
        path = path / FILE_NAME
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise RecordingError(f"{path}: larger than {MAX_BYTES // 2**20} MiB: not a recording of one scrape")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"{path}: not JSON: {exc}") from None
    return parse(document)


def save(recording: Recording, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(recording.as_json(), indent=1, ensure_ascii=False, sort_keys=False) + "\n",
                         encoding="utf-8")
    os.replace(temporary, path)
    return path
