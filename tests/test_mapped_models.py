"""A loaded model's mapped weights count with its server's app (exporter/collectors/mapped.py).

Real processes named `llama-server` (copies of the Python interpreter, as the other apps
tests do) map a model file from disk and read it in, as llama.cpp does with its weights;
the apps collector must count its resident file pages with the `llamacpp` app, once
however many processes map it. The real llama.cpp server is in tests/test_llamacpp_server.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from exporter.collectors.apps import AppsCollector
from exporter.collectors.base import Deadline
from exporter.collectors.mapped import MappedFile, MappedModelReader, is_model_file, parse_smaps
from tests.parts.app_processes import readable

MiB = 2**20

# Maps the file named on its command line read-only (as llama.cpp maps weights), reads
# every page in, holds `anon` MiB of its own, says ready, sleeps.
MAPPER = """
import mmap, os, sys, time
path, anon = sys.argv[1], int(sys.argv[2])
with open(path, "rb") as handle:
    mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
total = sum(mapped[offset] for offset in range(0, len(mapped), 4096))
held = bytearray(b"\\x01") * (anon * 2**20)
os.write(1, b"ready\\n")
time.sleep(600)
"""


def start_mapper(app_processes, name: str, path, anon: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONHOME=sys.base_prefix)
    process = subprocess.Popen([app_processes.binary(name), "-c", MAPPER, str(path), str(anon)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    app_processes.leaders.append(process)
    if not readable(process.stdout.fileno(), 120) or process.stdout.readline() != b"ready\n":
        raise RuntimeError(f"{name} did not start: {process.stderr.read().decode(errors='replace')}")
    return process


def file_pages(pid: int, path) -> int:
    """The process's resident pages of that file, from its own smaps (Rss less Anonymous)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as handle:
        for line in handle:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                inside = line.rstrip("\n").endswith(str(path))
            elif inside and head == "Rss:":
                total += int(line.split()[1]) * 1024
            elif inside and head == "Anonymous:":
                total -= int(line.split()[1]) * 1024
    return total


def test_a_mapped_model_counts_with_its_server_once(app_processes, tmp_path):
    model = tmp_path / "weights.gguf"
    with open(model, "wb") as handle:
        handle.write(os.urandom(96 * MiB))
    first = start_mapper(app_processes, "llama-server", model, anon=8)
    second = start_mapper(app_processes, "llama-server", model, anon=8)  # a second server on the same file
    collector = AppsCollector()
    memory, count, processes, assignments, _, models = collector.read()
    assert assignments[first.pid].app == assignments[second.pid].app == "llamacpp"
    resident = max(file_pages(first.pid, model), file_pages(second.pid, model))
    assert resident >= 90 * MiB  # read in by the mapper
    # The file once, with the llamacpp app, at its resident size.
    assert models.files[str(model)] == ("llamacpp", pytest.approx(resident, abs=2 * MiB))
    # (Other developers' llama-servers on this machine may add their own models.)
    assert models.by_app["llamacpp"] >= models.files[str(model)][1]
    anonymous = sum(proc.memory for proc in processes if assignments[proc.pid].app == "llamacpp")
    assert memory["llamacpp"] == anonymous + models.by_app["llamacpp"]
    # Each process alone would count it too: a file mapped twice is not counted twice.
    assert memory["llamacpp"] < anonymous + 2 * resident - 32 * MiB
    # The published gauge says which part is mapped files.
    families = {family.name: family for family in collector.collect()}
    mapped = {s.labels["app"]: s.value for s in families["aitools_app_mapped_model_bytes"].samples}
    assert mapped["llamacpp"] == models.by_app["llamacpp"]
    assert set(mapped) >= {"llamacpp", "ollama", "lmstudio"}


def test_processes_outside_the_llm_apps_are_not_read(app_processes, tmp_path):
    model = tmp_path / "weights.gguf"
    with open(model, "wb") as handle:
        handle.write(os.urandom(40 * MiB))
    editor = start_mapper(app_processes, "Cursor", model, anon=4)
    collector = AppsCollector()
    memory, count, processes, assignments, _, models = collector.read()
    assert assignments[editor.pid].app == "ide"
    assert str(model) not in models.files  # the IDE's mapped file is page cache, as before


SMAPS = b"""55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1001                       /opt/llama.cpp/bin/llama-server
Rss:                 900 kB
Anonymous:             0 kB
55d0c0b00000-55d0c0b10000 r--p 00100000 08:01 1001                       /opt/llama.cpp/bin/llama-server
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0019a00000 r--s 00000000 08:01 2002                       /models/my model.gguf
Size:             420864 kB
Rss:              418000 kB
Shared_Clean:          0 kB
Anonymous:             0 kB
VmFlags: rd sh mr mw me ms sd
7f1000000000-7f1000400000 rw-p 00000000 00:00 0
Rss:                4096 kB
Anonymous:          4096 kB
7f2000000000-7f2000200000 r--p 00000000 08:01 3003                       /usr/lib/locale/locale-archive
Rss:                 120 kB
Anonymous:             0 kB
7f3000000000-7f3000010000 r--p 00000000 08:01 4004                       /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                  64 kB
7f3000010000-7f3000100000 r-xp 00010000 08:01 4004                       /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 800 kB
7f4000000000-7f4004000000 r--p 00000000 08:01 5005                       /root/.ollama/models/blobs/sha256-6a0746a1 (deleted)
Rss:                2048 kB
Anonymous:           512 kB
"""


def test_smaps_gives_each_files_resident_file_pages():
    files = parse_smaps(SMAPS)
    model = files[("08:01", 2002)]
    assert (model.path, model.resident, model.size, model.executable) == (
        "/models/my model.gguf", 418000 * 1024, 0x19a00000, False)
    assert is_model_file(model)
    assert files[("08:01", 1001)].executable and not is_model_file(files[("08:01", 1001)])  # the program
    assert not is_model_file(files[("08:01", 4004)])  # a library: it has an executable mapping
    assert not is_model_file(files[("08:01", 3003)])  # a small data file, named like none
    blob = files[("08:01", 5005)]
    assert is_model_file(blob) and blob.resident == (2048 - 512) * 1024  # copy-on-write pages are anonymous
    assert ("00:00", 0) not in files
    assert is_model_file(MappedFile("/data/weights", size=64 * MiB))  # large, whatever its name


def test_garbage_smaps_costs_nothing():
    assert parse_smaps(b"") == {}
    assert parse_smaps(b"zz-yy r--p 0 08:01 12 /x.gguf\nRss: many kB\n" + b"\xff" * 1000) == {}
    files = parse_smaps(b"1000-2000 r--p 0 08:01 12 /x.gguf\nRss: many kB\nAnonymous: 4 kB\n")
    assert files[("08:01", 12)].resident == 0


class Seen:
    """A process as the apps collector sees it: pid, name, whole resident set, anonymous part."""

    def __init__(self, pid: int, name: str = "llama-server", shared: int | None = None):
        status = {line.split(":")[0]: int(line.split()[1]) * 1024
                  for line in open(f"/proc/{pid}/status") if line.split()[-1:] == ["kB"]}
        self.pid, self.name = pid, name
        self.memory = status["RssAnon"]
        self.resident = self.memory + (status["RssFile"] + status["RssShmem"] if shared is None else shared)


def test_the_read_stops_at_the_deadline(app_processes, tmp_path):
    model = tmp_path / "weights.gguf"
    with open(model, "wb") as handle:
        handle.write(os.urandom(8 * MiB))
    server = start_mapper(app_processes, "llama-server", model, anon=1)
    expired = Deadline(0.0)
    time.sleep(0.01)
    found = MappedModelReader().read([Seen(server.pid)], lambda pid: "llamacpp", expired)
    assert found.by_app == {} and found.unread == 1
    found = MappedModelReader().read([Seen(server.pid)], lambda pid: "llamacpp", Deadline(5))
    assert found.files[str(model)][0] == "llamacpp" and found.unread == 0


def test_smaps_is_read_again_only_when_the_shared_pages_move(app_processes, tmp_path, monkeypatch):
    model = tmp_path / "weights.gguf"
    with open(model, "wb") as handle:
        handle.write(os.urandom(48 * MiB))
    server = start_mapper(app_processes, "llama-server", model, anon=1)
    reader = MappedModelReader()
    first = reader.read([Seen(server.pid)], lambda pid: "llamacpp", Deadline(5))
    assert reader.smaps_reads == 1 and first.files[str(model)][1] >= 46 * MiB
    # The same shared pages: the same reading, without the kernel's walk.
    again = reader.read([Seen(server.pid)], lambda pid: "llamacpp", Deadline(5))
    assert reader.smaps_reads == 1 and again.files == first.files
    # Its shared pages moved by more than a MiB (pages evicted or read in): read again.
    seen = Seen(server.pid)
    seen.resident -= 8 * MiB
    reader.read([seen], lambda pid: "llamacpp", Deadline(5))
    assert reader.smaps_reads == 2
    # Too old, or another program under the same pid: read again.
    monkeypatch.setattr(MappedModelReader, "REREAD_SECONDS", 0.0)
    reader.read([seen], lambda pid: "llamacpp", Deadline(5))
    assert reader.smaps_reads == 3
    monkeypatch.setattr(MappedModelReader, "REREAD_SECONDS", 60.0)
    reader.read([Seen(server.pid, name="ollama")], lambda pid: "ollama", Deadline(5))
    assert reader.smaps_reads == 4
