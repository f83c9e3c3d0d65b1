"""The apps collector against real processes named like the user's applications, the real
/proc, a real Docker engine's containers, and the macOS reader run on Linux
(AITOOLS_PROCESS_SOURCE=macos, a stand-in vm_stat on PATH)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import docker
import psutil
import pytest

from exporter.collectors import apps as apps_module
from exporter.collectors import proctable
from exporter.collectors.apps import BUDGET_APPS, OTHER, TOP_PROGRAMS, AppsCollector, assign, budget_apps, kernel_memory_procfs
from exporter.collectors.base import Deadline
from exporter.collectors.system import parse_meminfo, parse_vm_stat
from exporter.config import App, Config, ConfigError, DEFAULT_APPS, DockerSection, SystemSection, parse_config

MiB = 2**20
DATA = Path(__file__).parent / "data"
# The sum of the apps against the machine's used memory (MemTotal - MemFree - Buffers -
# Cached - SReclaimable, procps free's "used"): within 10 % of it plus 128 MiB (README).
TOLERANCE_SHARE, TOLERANCE_BYTES = 0.10, 128 * MiB


def samples(collector):
    found = {}
    for family in collector.collect():
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def app_memory(result):
    return {dict(labels)["app"]: value for (name, labels), value in result.items() if name == "aitools_app_memory_bytes"}


def app_processes(result):
    return {dict(labels)["app"]: value for (name, labels), value in result.items() if name == "aitools_app_processes"}


def private(process: psutil.Process) -> int:
    """psutil's reading of a process's memory less shared pages (what the collector counts on Linux)."""
    info = process.memory_info()
    return info.rss - info.shared


def tree(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def install_vm_stat(folder: Path, recording: str) -> None:
    path = folder / "vm_stat"
    path.write_text(f"#!/bin/sh\ncat '{DATA / recording}'\n")
    path.chmod(0o755)


@pytest.fixture
def macos_reader(tmp_path, monkeypatch):
    """The macOS reader on this machine: psutil's processes, libproc absent (so each
    process's resident set, as on a Mac for another user's process), vm_stat a stand-in."""
    install_vm_stat(tmp_path, "vm_stat_apple_silicon.txt")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(proctable.SOURCE_ENV, "macos")


@pytest.fixture(params=["procfs", "macos"])
def source(request, monkeypatch):
    if request.param == "macos":
        request.getfixturevalue("macos_reader")
    else:
        monkeypatch.setenv(proctable.SOURCE_ENV, "procfs")
    return request.param


def expected_memory(process: psutil.Process, source: str) -> int:
    """What the reader of `source` counts of a process here: resident less shared from /proc;
    the resident set from the macOS reader without libproc."""
    return private(process) if source == "procfs" else process.memory_info().rss


@pytest.fixture
def user_stack(app_processes):
    """Cursor with its helpers (and an unnamed worker of theirs), an ML service in Python,
    two swift-frontend copies under an Xcode build service."""
    p = app_processes
    cursor = p.start("Cursor", 30, children=[
        p.command("Cursor Helper (Renderer)", 20),
        p.command("Cursor Helper (GPU)", 10, children=[p.command("indexer-worker", 15)]),
    ], expect=4)
    ml = p.start("python3", 25, tag="uvicorn embeddings_service:app")
    xcode = p.start("XCBBuildService", 5, children=[p.command("swift-frontend", 40), p.command("swift-frontend", 35)],
                    expect=3)
    return {"ide": cursor, "ml": ml, "xcode": xcode}


def test_each_app_is_what_psutil_reads_of_its_processes(user_stack, source):
    config = parse_config("apps:\n  ml-service: {cmdline: 'uvicorn embeddings_service'}\n")
    collector = AppsCollector(config.apps, config.docker, config.timeout)
    memory, count, processes, assignments, figures, _ = collector.read()
    for app, root in (("ide", user_stack["ide"]), ("xcode", user_stack["xcode"]), ("ml-service", user_stack["ml"])):
        members = tree(root)
        assert {assignments[m.pid].app for m in members} == {app}, app
        by_pid = {proc.pid: proc for proc in processes}
        # The collector's figure of each of its processes is psutil's reading of it...
        for member in members:
            assert abs(by_pid[member.pid].memory - expected_memory(member, source)) <= 2 * MiB, (app, member)
        # ...and the app's is the sum over its processes (other helpers on this machine may
        # run processes of the same apps: the app holds ours and theirs).
        of_app = [proc for proc in processes if assignments[proc.pid].app == app]
        assert memory[app] == sum(proc.memory for proc in of_app) and count[app] == len(of_app) >= len(members)
    # Values of the held memory: Cursor's tree holds 30+20+10+15 MiB, Xcode's 5+40+35.
    assert memory["ide"] >= 75 * MiB and count["ide"] >= 4
    assert memory["xcode"] >= 80 * MiB and count["xcode"] >= 3
    assert memory["ml-service"] >= 25 * MiB
    # The ML service's own claim (first in order) wins over the python app's name rule.
    assert assignments[user_stack["ml"].pid].app == "ml-service"


def test_the_macos_reader_puts_the_processes_in_the_apps_procfs_does(user_stack, monkeypatch, tmp_path):
    monkeypatch.setenv(proctable.SOURCE_ENV, "procfs")
    fast = AppsCollector().read()
    request_macos(monkeypatch, tmp_path)
    slow = AppsCollector().read()
    assert fast.figures.keys() == {"resident_less_shared"} and slow.figures.keys() == {"resident"}
    for app in ("ide", "xcode"):  # the processes' resident sets here: at least their private memory
        assert fast.memory[app] - 2 * MiB <= slow.memory[app], app
        assert fast.count[app] == slow.count[app], app
    common = set(fast.assignments) & set(slow.assignments)
    assert len(common) > 10
    assert all(fast.assignments[pid].app == slow.assignments[pid].app for pid in common
               if fast.assignments[pid].app is not None or slow.assignments[pid].app is not None
               if psutil.pid_exists(pid))


def request_macos(monkeypatch, folder: Path) -> None:
    install_vm_stat(folder, "vm_stat_apple_silicon.txt")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(proctable.SOURCE_ENV, "macos")


def test_every_process_is_in_exactly_one_app(user_stack, source):
    memory, count, processes, assignments, figures, _ = AppsCollector().read()
    pids = [proc.pid for proc in processes]
    assert len(pids) == len(set(pids))
    assert set(assignments) == set(pids)
    assert sum(count.values()) == len(processes)
    # The machine's processes, as psutil lists them (a few may come and go meanwhile).
    assert abs(len(processes) - len(psutil.pids())) <= 5
    # This test's own process is python's; the collector's process is monitoring's.
    assert count["monitoring"] >= 1
    # Each process's figure is told, and they add up to the processes.
    assert sum(figures.values()) == len(processes)
    assert set(figures) == ({"resident_less_shared"} if source == "procfs" else {"resident"})


def used_memory() -> int:
    fields = parse_meminfo(Path("/proc/meminfo").read_text())
    return fields["MemTotal"] - fields["MemFree"] - fields["Buffers"] - fields["Cached"] - fields["SReclaimable"]


def test_the_apps_add_up_to_the_used_memory_within_the_tolerance(user_stack):
    before = used_memory()
    result = samples(AppsCollector())
    after = used_memory()
    # The LLM apps hold the model files their servers map: page cache to the kernel, left out
    # of the used memory; the apps less those files are what the used memory counts.
    mapped = sum(value for (name, _), value in result.items() if name == "aitools_app_mapped_model_bytes")
    total = sum(app_memory(result).values()) - mapped
    used = (before + after) / 2
    print(f"apps {total / MiB:.1f} MiB (less {mapped / MiB:.1f} MiB of mapped model files), used {used / MiB:.1f} "
          f"MiB, difference {(used - total) / MiB:.1f} MiB ({(used - total) / used:.1%})")
    assert abs(total - used) <= TOLERANCE_SHARE * used + TOLERANCE_BYTES


def test_system_holds_the_kernels_memory():
    memory, count, processes, assignments, _, _ = AppsCollector().read()
    fields = parse_meminfo(Path("/proc/meminfo").read_text())
    kernel = sum(fields.get(name, 0) for name in apps_module.KERNEL_MEMINFO_FIELDS)
    processes_of_system = sum(proc.memory for proc in processes if assignments[proc.pid].app == "system")
    assert abs(memory["system"] - processes_of_system - kernel) <= 16 * MiB
    assert abs(kernel_memory_procfs(Deadline(5)) - kernel) <= 16 * MiB
    assert memory["system"] >= kernel - 16 * MiB and kernel > 0  # read a moment apart


def test_unclaimed_children_take_their_ancestors_app_but_not_systems(app_processes):
    root = app_processes.start("ollama", 5, children=[app_processes.command("runner-x", 12)], expect=2)
    memory, count, processes, assignments, _, _ = AppsCollector().read()
    child = root.children()[0]
    assert assignments[child.pid].app == "ollama"
    assert count["ollama"] == 2 and memory["ollama"] >= 17 * MiB
    # PID 1 here is claimed by system (or by nobody); system passes nothing on, so a
    # process with no claim of its own and no claimed ancestor keeps its own program name.
    assert all(a.app != "system" or proc.name in _system_names() or proc.ppid in (0, 2) or proc.pid in (1, 2)
               for proc in processes for a in [assignments[proc.pid]])


def test_the_apps_of_an_unchanged_process_table_are_kept_and_a_change_makes_them_anew(app_processes):
    """AppsCollector keeps the last assignment while the processes (pid, parent, name,
    command line), the apps and the bundle are the same; a new process makes it anew."""
    collector = AppsCollector()
    first = collector.read()[3]
    for _ in range(20):  # the machine's other processes may come and go: wait for a steady table
        again = collector.read()[3]
        if again is first:
            break
        first = again
    assert again is first
    root = app_processes.start("ollama", 5, children=[app_processes.command("runner-y", 6)], expect=2)
    _, _, processes, after, _, _ = collector.read()
    assert after is not first
    assert after[root.pid].app == after[root.children()[0].pid].app == "ollama"
    assert after == assign(processes, Config().apps, os.getpid(), collector._bundle)


def _system_names():
    system = next(app for app in DEFAULT_APPS if app.name == "system")
    return {name for name in system.names if not name.endswith("*")} | {
        proc.name for proc in AppsCollector().read()[2]
        if any(proc.name.startswith(prefix[:-1]) for prefix in system.names if prefix.endswith("*"))}


def test_labels_stay_bounded_with_a_thousand_differently_named_programs(tmp_path):
    # A thousand copies of sleep under a thousand names (links: the kernel names a process
    # after the file it runs), started by a shell that exits at once, so that they belong
    # to no claimed ancestor (not to this test's python).
    for index in range(1000):
        (tmp_path / f"prog{index:04d}").symlink_to("/bin/sleep")
    subprocess.run(["sh", "-c", f'for f in "{tmp_path}"/prog*; do "$f" 120 & done'], check=True, timeout=60)
    try:
        deadline = time.monotonic() + 30
        while len(programs := [p for p in psutil.process_iter(["name"]) if re.fullmatch(r"prog\d{4}", p.info["name"] or "")]) < 1000:
            assert time.monotonic() < deadline, "the thousand programs did not start"
            time.sleep(0.1)
        memory, count, processes, assignments, _, _ = AppsCollector().read()
        result = samples(AppsCollector())
        labels = set(app_memory(result))
        configured = {app.name for app in Config().apps}
        extra = labels - configured - {OTHER}
        assert configured | {OTHER} <= labels
        assert len(extra) <= TOP_PROGRAMS
        assert len(labels) <= len(configured) + TOP_PROGRAMS + 1
        counts = app_processes(result)
        # The thousand went to `other`, but for the few among the ten largest unclaimed programs.
        assert counts[OTHER] + sum(counts[label] for label in extra if label.startswith("prog")) >= 1000
        assert counts[OTHER] >= 1000 - TOP_PROGRAMS
    finally:
        for process in programs:
            process.kill()
        psutil.wait_procs(programs, timeout=10)


def test_top_programs_are_the_largest_unclaimed(app_processes):
    big = app_processes.start("bigprogram", 60, orphan=True)
    memory, count, processes, assignments, _, _ = AppsCollector().read()
    assert assignments[big.pid].app is None
    assert count["bigprogram"] == 1
    assert abs(memory["bigprogram"] - private(big)) <= 2 * MiB


# --- the macOS path, with stand-in data --------------------------------------------------

def test_macos_kernel_memory_is_wired_plus_compressor_from_vm_stat(macos_reader):
    page_size, pages = parse_vm_stat((DATA / "vm_stat_apple_silicon.txt").read_text())
    memory, count, processes, assignments, figures, _ = AppsCollector().read()
    of_processes = sum(proc.memory for proc in processes if assignments[proc.pid].app == "system")
    # Resident sets (no footprint read): the compressor's pages are in no process's figure.
    assert figures.get("footprint", 0) == 0
    assert memory["system"] - of_processes == (pages["wired"] + pages["compressed"]) * page_size
    # With footprints (they hold a process's compressed pages): wired only.
    assert apps_module.kernel_memory_vm_stat(Deadline(3.0), footprints=True) == pages["wired"] * page_size


def test_macos_footprints_are_the_apps_figure_and_the_compressor_is_left_to_them(macos_reader, app_processes,
                                                                                 monkeypatch):
    """With libproc's footprints (a stand-in with the real function's C signature), an app's
    memory is its processes' footprints; `system` holds wired pages only; the figures used
    are published for the snapshot."""
    from tests.test_proc_table import stand_in_libproc

    root = app_processes.start("ollama", 5, children=[app_processes.command("runner-z", 6)], expect=2)
    members = tree(root)
    footprints = {member.pid: (member.memory_info().rss, (100 + index) * MiB) for index, member in enumerate(members)}
    function, _ = stand_in_libproc(footprints, denied=set(), others=errno.EPERM)  # the others: not the user's
    monkeypatch.setattr(proctable.process_table(), "reader", proctable.MacReader(proctable.footprint_reader(function)))
    collector = AppsCollector()
    memory, count, processes, assignments, figures, _ = collector.read()
    assert count["ollama"] >= 2
    of_ollama = [proc for proc in processes if assignments[proc.pid].app == "ollama"]
    assert memory["ollama"] == sum(proc.memory for proc in of_ollama) >= (100 + 101) * MiB
    assert {proc.pid: proc.memory for proc in of_ollama if proc.pid in footprints} == {
        pid: figures_[1] for pid, figures_ in footprints.items()}
    page_size, pages = parse_vm_stat((DATA / "vm_stat_apple_silicon.txt").read_text())
    of_system = sum(proc.memory for proc in processes if assignments[proc.pid].app == "system")
    assert memory["system"] - of_system == pages["wired"] * page_size
    assert figures == {"footprint": len(footprints), "resident": len(processes) - len(footprints)}
    result = samples(collector)
    assert result[("aitools_app_memory_figure_processes", (("figure", "footprint"),))] == len(footprints)


def test_the_scrapes_one_vm_stat_serves_the_apps_and_the_system(macos_reader, tmp_path):
    """On macOS vm_stat runs once per scrape: the system collector and the apps share it."""
    from exporter.collectors.system import SystemCollector

    runs = tmp_path / "runs"
    (tmp_path / "vm_stat").write_text(f"#!/bin/sh\necho run >> '{runs}'\ncat '{DATA / 'vm_stat_apple_silicon.txt'}'\n")
    config = Config(system=SystemSection(source="vm_stat"))
    scrape = Deadline(3.0)
    list(SystemCollector(config.system, config.timeout).collect(scrape))
    AppsCollector(config.apps, config.docker, config.timeout).read(scrape)
    assert runs.read_text().count("run") == 1
    AppsCollector(config.apps, config.docker, config.timeout).read(Deadline(3.0))  # another scrape: run again
    assert runs.read_text().count("run") == 2


def test_macos_names_group_like_activity_monitor():
    from exporter.collectors.apps import Matcher

    matcher = Matcher(Config().apps)
    names = [app.name for app in Config().apps]
    for process, app in [("com.apple.Virtualization.VirtualMachine", "docker"), ("com.docker.krun", "docker"),
                         ("qemu-system-aarch64", "docker"), ("com.docker.hyperkit", "docker"),
                         ("com.docker.backend", "docker"), ("Docker Desktop Helper (Renderer)", "docker"),
                         ("Xcode", "xcode"), ("SourceKitService", "xcode"), ("XCBBuildService", "xcode"),
                         ("clang", "xcode"), ("ld", "xcode"), ("Cursor Helper (Plugin)", "ide"),
                         ("Code Helper (Renderer)", "ide"), ("ollama", "ollama"), ("LM Studio", "lmstudio"),
                         ("python3.11", "python"), ("kernel_task", "system"), ("WindowServer", "system"),
                         ("containerd-shim-runc-v2", "docker"), ("dockerd", "docker"), ("node", "node")]:
        assert names[matcher.claim(process, None)] == app, process
    assert matcher.claim("Safari", None) is None


def test_claims_are_remembered_per_name_and_command_line_within_bounds():
    """A process keeps its claim from one scrape to the next (the patterns are searched once
    per name and command line), and churn of long command lines never grows what is kept."""
    from exporter.collectors import apps as apps_module
    from exporter.collectors.apps import Matcher
    from exporter.patterns import CMDLINE_LIMIT

    matcher = Matcher(Config().apps)
    names = [app.name for app in Config().apps]
    lmstudio = "/Users/dev/.lmstudio/.internal/utils/node /Users/dev/.lmstudio/.internal/utils/llmworker.js"
    assert names[matcher.claim("node", lmstudio)] == "lmstudio"
    assert names[matcher.claim("node", lmstudio)] == "lmstudio"  # remembered
    assert names[matcher.claim("node", None)] == "node"
    assert matcher.claim("sleep", "sleep 60") is None
    long_line = "x" * CMDLINE_LIMIT
    for number in range(3 * apps_module.CLAIMS_TEXT // len(long_line)):
        assert matcher.claim("sleep", f"{number} {long_line}") is None
        assert len(matcher._claims) <= apps_module.CLAIMS_KEPT
        assert matcher._claims_text <= apps_module.CLAIMS_TEXT + len(long_line) + 16


# --- containers: a real Docker engine ----------------------------------------------------

def test_containers_are_docker_and_the_bundles_containers_are_monitoring(docker_engine):
    user = docker_engine.run("apps-user-db", "postgres:15")
    bundle = docker_engine.run("apps-bundle-prometheus", labels={"dev.aitools.app": "monitoring",
                                                                 "com.docker.compose.project": "aitools-monitoring"})
    # A Node server inside a container: a process named node whose ancestor is the shim.
    container = docker_engine.client.containers.run(
        "busybox:local", ["sh", "-c", "echo -n node > /proc/self/comm; echo renamed; sleep 1000000; true"],
        name="apps-node-in-container", detach=True, network_mode="none")
    try:
        deadline = time.monotonic() + 60
        while b"renamed" not in container.logs():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        config = Config(docker=DockerSection(host=docker_engine.host))
        memory, count, processes, assignments, _, _ = AppsCollector(config.apps, config.docker, config.timeout).read()
        by_pid = {proc.pid: proc for proc in processes}

        def members(container_id):
            shim = next(p for p in processes if p.name.startswith("containerd-shim") and container_id in (p.cmdline or ""))
            found = [shim.pid]
            changed = True
            while changed:
                changed = False
                for proc in processes:
                    if proc.ppid in found and proc.pid not in found:
                        found.append(proc.pid)
                        changed = True
            return found

        user_pids, bundle_pids, node_pids = members(user), members(bundle), members(container.id)
        assert len(user_pids) >= 2 and len(bundle_pids) >= 2 and len(node_pids) >= 2
        assert {assignments[pid].app for pid in user_pids} == {"docker"}
        assert {assignments[pid].app for pid in bundle_pids} == {"monitoring"}
        # The Node server in a container counts once, in docker, not in node.
        renamed = [pid for pid in node_pids if by_pid[pid].name == "node"]
        assert renamed and {assignments[pid].app for pid in node_pids} == {"docker"}
        assert count["node"] == sum(1 for proc in processes if proc.name == "node") - len(renamed)
        engine_pids = [proc.pid for proc in processes if proc.name in ("dockerd", "containerd")]
        assert engine_pids and {assignments[pid].app for pid in engine_pids} == {"docker"}
        # Values: docker is the engine, the shims and the user's containers, as psutil reads them.
        docker_pids = [pid for pid, a in assignments.items() if a.app == "docker"]
        expected = sum(private(psutil.Process(pid)) for pid in docker_pids if psutil.pid_exists(pid))
        assert abs(memory["docker"] - expected) <= 2 * MiB * len(docker_pids)
        # Without the engine's answer the bundle is not told apart: its containers count as docker.
        blind = AppsCollector(docker=DockerSection(host="unix:///nonexistent.sock")).read()[3]
        assert {blind[pid].app for pid in bundle_pids if pid in blind} == {"docker"}
        # The engine is asked again only when the containers' shims change (labels of a running
        # container cannot): a second bundle container started later is told apart at once.
        collector = AppsCollector(config.apps, config.docker, config.timeout)
        asked = []
        real_ask = collector._bundle_container_ids
        collector._bundle_container_ids = lambda deadline: asked.append(1) or real_ask(deadline)
        collector.read()
        collector.read()
        assert len(asked) == 1
        second = docker_engine.run("apps-bundle-grafana", labels={"dev.aitools.app": "monitoring"})
        _, _, processes, assignments, _, _ = collector.read()
        assert len(asked) == 2
        assert {assignments[pid].app for pid in members(second)} == {"monitoring"}
    finally:
        container.remove(force=True)
        for name in ("apps-user-db", "apps-bundle-prometheus", "apps-bundle-grafana"):
            try:
                docker_engine.client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass


# --- configuration -----------------------------------------------------------------------

def test_apps_config_orders_the_users_apps_first_and_null_removes_a_default():
    config = parse_config("apps:\n  api: {names: [api-server], cmdline: 'node .*server.js'}\n  lmstudio: null\n"
                          "  python: {names: [python3], children: false}\n")
    names = [app.name for app in config.apps]
    assert names[:2] == ["api", "python"]
    assert "lmstudio" not in names and "system" in names and "monitoring" in names
    api = config.apps[0]
    assert api.names == ("api-server",) and api.cmdline.search("node ./server.js") and api.children
    assert config.apps[1].children is False
    assert next(app for app in config.apps if app.name == "system").children is False
    assert budget_apps(config.apps)["development_total"][-1] == "api"
    assert "api" in budget_apps(config.apps)["production_total"]


@pytest.mark.parametrize("text, key, reason", [
    ("apps:\n  other: {names: [x]}\n", "apps.other", "exporter's own"),
    ("apps:\n  system: null\n", "apps.system", "cannot be removed"),
    ("apps:\n  x: {cmdline: '('}\n", "apps.x.cmdline", "not a valid regular expression"),
    ("apps:\n  x: {names: [1]}\n", "apps.x.names", "list of process names"),
    ("apps:\n  x: {}\n", "apps.x", "give names"),
    ("apps:\n  'bad name': {names: [x]}\n", "apps.bad name", "letters, digits"),
    ("apps:\n  x: {names: [x], kids: true}\n", "apps.x.kids", "unknown key"),
    ("apps: [x]\n", "apps", "must be a mapping"),
])
def test_bad_apps_config_names_the_key(text, key, reason):
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert error.value.key == key and reason in error.value.reason
    assert error.value.line == 2 or key == "apps"


def test_budget_info_publishes_which_apps_each_total_counts():
    result = samples(AppsCollector())
    info = {(dict(labels)["app"], dict(labels)["budget"]) for (name, labels), value in result.items()
            if name == "aitools_app_budget_info" and value == 1}
    assert info == {(app, budget) for budget, apps in BUDGET_APPS.items() for app in apps}
    assert ("ide", "development_total") in info and ("ide", "production_total") not in info
    assert not any(app in ("system", "monitoring", "other") for app, _ in info)


def test_a_docker_vm_process_is_docker_and_flags_the_containers_as_inside_it(app_processes, source):
    # Docker Desktop's VM (qemu-system-* on Intel Macs and Linux; a name longer than the
    # kernel keeps, read whole from the command line) with no container shims beside it.
    vm = app_processes.start("qemu-system-aarch64", 30, orphan=True)
    collector = AppsCollector()
    memory, count, processes, assignments, _, _ = collector.read()
    assert assignments[vm.pid].app == "docker"
    result = samples(collector)
    shims = any(proc.name.startswith("containerd-shim") for proc in processes)
    assert result[("aitools_app_docker_vm", ())] == (0 if shims else 1)


# --- the peer: netdata's apps.plugin on the same processes -------------------------------

def test_figures_match_netdata_apps_plugin_on_the_same_processes(app_processes):
    from tests.conftest import missing_realpart
    from tests.parts.apps_plugin import AppsPlugin, PluginUnavailable

    # A tree (a root, two helpers, a worker of one of them) and an ML service, under names
    # of this run only, so that both sides' groups hold exactly these processes whatever
    # other tests run on this machine. apps.plugin's groups match names exactly here.
    run = os.getpid() % 100000
    root, helper, gpu, worker, service = (f"{prefix}{run}" for prefix in ("edit", "helpr", "helpg", "work", "mlsvc"))
    p = app_processes
    tree_root = p.start(root, 30, children=[
        p.command(helper, 20), p.command(gpu, 10, children=[p.command(worker, 15)])], expect=4, orphan=True)
    # Both orphaned (their parent is init): apps.plugin gives an unclaimed parent with one
    # child that child's group (a wrapper shell's memory goes to what it runs); the apps
    # collector does not. This comparison leaves that difference out.
    ml = p.start(service, 25, orphan=True)
    try:
        plugin = AppsPlugin({"editor": [root, helper, gpu], "ml-service": [service]})
    except PluginUnavailable as exc:
        missing_realpart(str(exc))
    with plugin:
        theirs = plugin.passes(2)[-1]  # the first pass may miss what started during it
        config = parse_config(f"apps:\n  editor: {{names: [{root}, {helper}, {gpu}]}}\n  ml-service: {{names: [{service}]}}\n")
        memory, count, processes, assignments, _, _ = AppsCollector(config.apps, config.docker, config.timeout).read()
    # Both put the unnamed worker in its ancestors' group.
    assert {assignments[m.pid].app for m in tree(tree_root)} == {"editor"} and count["editor"] == 4
    # "real memory without shared" against resident less shared: the same pages.
    print(f"editor: ours {memory['editor'] / MiB:.1f} MiB, apps.plugin {theirs['editor'] / MiB:.1f} MiB; "
          f"ml: ours {memory['ml-service'] / MiB:.1f}, apps.plugin {theirs['ml-service'] / MiB:.1f}")
    assert abs(memory["editor"] - theirs["editor"]) <= 2 * MiB
    assert abs(memory["ml-service"] - theirs["ml-service"]) <= 1 * MiB
    assert theirs["editor"] >= 75 * MiB and theirs["ml-service"] >= 25 * MiB
    # Over the whole machine (processes only; apps.plugin has no kernel memory): both walk
    # the same process table a moment apart.
    ours_total = sum(proc.memory for proc in processes)
    theirs_total = sum(theirs.values())
    print(f"all processes: ours {ours_total / MiB:.1f} MiB, apps.plugin {theirs_total / MiB:.1f} MiB")
    assert abs(ours_total - theirs_total) <= 0.05 * theirs_total + 64 * MiB


def test_the_readmes_configuration_block_is_the_default_apps():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    apps = parse_config(block).apps
    assert [(app.name, app.names, app.children) for app in apps] == \
           [(app.name, app.names, app.children) for app in DEFAULT_APPS]


def test_the_default_apps_claim_lm_studios_node_and_the_model_servers_on_the_real_process_table(app_processes):
    # Real processes under the names and command lines the user's tools have on disk:
    # LM Studio's own node (~/.lmstudio/.internal/utils/node, lmstudio-bug-tracker#2105) is
    # lmstudio, not node; a plain node is node; Docker Model Runner's server (a name the
    # kernel cuts to 15 bytes) and an MLX server started through Python are llamacpp;
    # Swift Build's service is xcode.
    (app_processes.folder / ".lmstudio" / ".internal" / "utils").mkdir(parents=True)
    lmstudio_node = app_processes.start(".lmstudio/.internal/utils/node", 6, orphan=True)
    plain_node = app_processes.start("node", 6, orphan=True)
    model_runner = app_processes.start("com.docker.llama-server", 6, orphan=True)
    mlx = app_processes.start("python3", 6, tag="python -m mlx_lm.server --model mlx-community/Qwen3-4B-4bit",
                              orphan=True)
    build_service = app_processes.start("SWBBuildService", 6, orphan=True)
    _, _, processes, assignments, _, _ = AppsCollector().read()
    by_pid = {proc.pid: proc for proc in processes}
    assert by_pid[lmstudio_node.pid].name == "node"
    assert {name: assignments[process.pid].app for name, process in (
        ("lmstudio node", lmstudio_node), ("node", plain_node), ("model runner", model_runner), ("mlx", mlx),
        ("build service", build_service))} == {
        "lmstudio node": "lmstudio", "node": "node", "model runner": "llamacpp", "mlx": "llamacpp",
        "build service": "xcode"}
