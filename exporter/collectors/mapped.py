"""A loaded model's memory: the model files an LLM server's processes have mapped (Linux).

llama.cpp (llama-server), Ollama's runner and LM Studio's engine map a model's weights
from its file (mmap) by default. Those pages are file pages: the kernel counts them as
page cache (`Cached` in /proc/meminfo, available memory), /proc/PID/statm as "shared",
so the apps' "resident less shared" leaves them out. To the user they are the model.

Here, for the processes of the LLM apps only (LLM_APPS, at most MAX_PROCESSES of them,
the largest first: the cost stays bounded whatever else runs), /proc/PID/smaps is read
and each model file's resident file pages are counted with the app of the process that
maps them:

- a model file is a regular file the process maps without executing any of it (the
  program and its libraries are left out) and that is either named like a model
  (MODEL_SUFFIXES, or an Ollama blob `sha256-...`) or mapped over MIN_MODEL_MAPPING
  bytes or more;
- its resident file pages in a mapping are the mapping's `Rss` less its `Anonymous`
  pages (copy-on-write pages of a private mapping are anonymous: already counted);
- a file mapped by several processes (by inode) is counted once, with the process that
  has the most of it resident;
- a process's smaps is read again only when its shared resident pages moved (see
  MappedModelReader): the kernel's walk of a large mapping is what costs.

macOS has no equivalent here: a process's physical footprint leaves clean file-backed
pages out, and the weights a Metal backend uses are wired by the GPU (see the README,
"How a loaded model's memory is counted").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exporter.collectors.base import Deadline
from exporter.collectors.machine import current

PROC = "/proc"
# The apps whose processes run models (exporter/config.py DEFAULT_APPS; a user's app of
# the same name counts too).
LLM_APPS = ("llamacpp", "ollama", "lmstudio")
MAX_PROCESSES = 32          # an LM Studio has a dozen processes, an Ollama a few runners
SMAPS_LIMIT = 16 * 2**20    # a runtime's smaps is tens of KB; a few thousand mappings fit
MODEL_SUFFIXES = (".gguf", ".ggml", ".safetensors", ".bin", ".mlmodelc", ".onnx")
OLLAMA_BLOB_PREFIX = "sha256-"
MIN_MODEL_MAPPING = 32 * 2**20  # a data file mapped this large by an LLM server is its model
NOT_FILES = ("/dev/", "/proc/", "/sys/", "/memfd:", "/SYSV")


@dataclass
class MappedFile:
    path: str
    size: int = 0            # bytes mapped (all its mappings in the process)
    resident: int = 0        # resident file pages, bytes
    executable: bool = False


def parse_smaps(text: bytes) -> dict[tuple[str, int], MappedFile]:
    """(device, inode) -> the file's mappings in one process, from /proc/PID/smaps."""
    files: dict[tuple[str, int], MappedFile] = {}
    current: MappedFile | None = None
    rss = anonymous = 0

    def close() -> None:
        if current is not None:
            current.resident += max(0, rss - anonymous) * 1024

    for line in text.split(b"\n"):
        head, _, rest = line.partition(b" ")
        if b"-" in head and not head.endswith(b":"):  # a mapping: start-end perms offset dev inode path
            close()
            current, rss, anonymous = None, 0, 0
            fields = rest.split(None, 4)
            if len(fields) < 5 or not fields[4].startswith(b"/"):
                continue  # anonymous, [heap], [stack], [vdso]...
            path = fields[4].decode("utf-8", "surrogateescape")
            if path.startswith(NOT_FILES):
                continue
            try:
                start, end = (int(part, 16) for part in head.split(b"-", 1))
                key = (fields[2].decode("ascii", "replace"), int(fields[3]))
            except ValueError:
                continue
            if key[1] == 0:
                continue
            current = files.setdefault(key, MappedFile(path))
            current.size += max(0, end - start)
            current.executable |= b"x" in fields[0]
        elif current is not None:
            if head == b"Rss:":
                rss = _kilobytes(rest)
            elif head == b"Anonymous:":
                anonymous = _kilobytes(rest)
    close()
    return files


def read_smaps(path: str) -> bytes:
    """The whole of a /proc/PID/smaps, at most SMAPS_LIMIT bytes: the kernel writes it a few
    mappings per read, so it is read to its end (not once, as the small kernel files)."""
    return current().read_to_end(path, SMAPS_LIMIT)


def _kilobytes(rest: bytes) -> int:
    try:
        return int(rest.split()[0])
    except (ValueError, IndexError):
        return 0


def is_model_file(file: MappedFile) -> bool:
    if file.executable:
        return False
    name = file.path.removesuffix(" (deleted)").rsplit("/", 1)[-1]
    return (name.lower().endswith(MODEL_SUFFIXES) or name.startswith(OLLAMA_BLOB_PREFIX)
            or file.size >= MIN_MODEL_MAPPING)


@dataclass
class MappedModels:
    by_app: dict[str, int]                 # app -> resident model file bytes, each file once
    files: dict[str, tuple[str, int]]      # path -> (app, bytes), for the logs and the tests
    unread: int = 0                        # LLM processes whose smaps could not be read


@dataclass
class _Kept:
    name: str
    shared: int | None     # the process's shared resident bytes when its smaps was read
    at: float
    models: dict[tuple[str, int], tuple[str, int]]  # inode -> (path, resident bytes)


class MappedModelReader:
    """The resident pages of the model files mapped by the processes of LLM_APPS.

    The kernel walks a mapping's pages to write its smaps: 15 ms for a llama-server holding
    a 390 MB model here, more for a larger one. A process's smaps is therefore read again
    only when its shared resident pages (statm, read at every scrape anyway: the mapped
    model's pages are among them) moved by more than REREAD_CHANGE, or after REREAD_SECONDS;
    a steady server costs nothing more per scrape."""

    REREAD_CHANGE = 2**20
    REREAD_SECONDS = 60.0

    def __init__(self, root: str = PROC) -> None:
        self.root = root
        self.smaps_reads = 0
        self._kept: dict[int, _Kept] = {}
        self._lock = threading.Lock()

    def read(self, processes: Iterable, app_of: Callable[[int], str | None], deadline: Deadline) -> MappedModels:
        """`processes`: objects with pid, name, rss (the whole resident set) and memory (its
        anonymous part), as exporter.collectors.proctable.Proc; `app_of(pid)`: its app."""
        with self._lock:
            return self._read(processes, app_of, deadline)

    def _read(self, processes, app_of, deadline: Deadline) -> MappedModels:
        candidates = [proc for proc in processes if app_of(proc.pid) in LLM_APPS]
        candidates.sort(key=lambda proc: -proc.resident)
        best: dict[tuple[str, int], tuple[int, str, str]] = {}  # inode -> (bytes, app, path)
        kept: dict[int, _Kept] = {}
        unread = max(0, len(candidates) - MAX_PROCESSES)
        now = time.monotonic()
        for proc in candidates[:MAX_PROCESSES]:
            shared = proc.resident - proc.memory if proc.resident > 0 else None  # unknown without the whole RSS
            reading = self._kept.get(proc.pid)
            if (reading is None or reading.name != proc.name or shared is None or reading.shared is None
                    or abs(reading.shared - shared) > self.REREAD_CHANGE or now - reading.at > self.REREAD_SECONDS):
                if deadline.passed():
                    unread += 1
                    continue
                try:
                    text = read_smaps(f"{self.root}/{proc.pid}/smaps")
                except OSError:  # ended, or not ours to read
                    unread += 1
                    continue
                self.smaps_reads += 1
                reading = _Kept(proc.name, shared, now, {key: (file.path, file.resident)
                                                         for key, file in parse_smaps(text).items()
                                                         if file.resident and is_model_file(file)})
            kept[proc.pid] = reading
            app = app_of(proc.pid)
            for key, (path, resident) in reading.models.items():
                if resident > best.get(key, (0,))[0]:
                    best[key] = (resident, app, path)
        self._kept = kept
        by_app: dict[str, int] = {}
        files: dict[str, tuple[str, int]] = {}
        for resident, app, path in best.values():
            by_app[app] = by_app.get(app, 0) + resident
            files[path] = (app, resident)
        return MappedModels(by_app, files, unread)
