"""The apps collector against real processes named like the user's applications, the real
/proc, a real Docker engine's containers, and the macOS (psutil) path forced on Linux."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import docker
import psutil
import pytest

from exporter.collectors.base import Deadline
from exporter.collectors import apps as apps_module
from exporter.collectors.apps import (BUDGET_APPS, OTHER, TOP_PROGRAMS, AppsCollector, assign, budget_apps,
                                      kernel_memory_procfs, process_memory)
from exporter.collectors.system import parse_meminfo, parse_vm_stat
from exporter.config import App, Config, ConfigError, DEFAULT_APPS, DockerSection, parse_config

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


@pytest.mark.parametrize("source", ["procfs", "psutil"])
def test_each_app_is_what_psutil_reads_of_its_processes(user_stack, source):
    config = parse_config("apps:\n  ml-service: {cmdline: 'uvicorn embeddings_service'}\n")
    collector = AppsCollector(config.apps, config.docker, config.timeout, source=source)
    memory, count, processes, assignments = collector.read()
    for app, root in (("ide", user_stack["ide"]), ("xcode", user_stack["xcode"]), ("ml-service", user_stack["ml"])):
        members = tree(root)
        assert {assignments[m.pid].app for m in members} == {app}, app
        by_pid = {proc.pid: proc for proc in processes}
        # The collector's figure of each of its processes is psutil's reading of it...
        for member in members:
            assert abs(by_pid[member.pid].memory - private(member)) <= 2 * MiB, (app, member)
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


def test_the_psutil_path_reads_what_procfs_reads(user_stack):
    fast, _, _, by_procfs = AppsCollector(source="procfs").read()
    slow, _, _, by_psutil = AppsCollector(source="psutil").read()
    for app in ("ide", "xcode"):
        assert abs(fast[app] - slow[app]) <= 2 * MiB, app
    common = set(by_procfs) & set(by_psutil)
    assert len(common) > 10
    assert all(by_procfs[pid].app == by_psutil[pid].app for pid in common
               if by_procfs[pid].app is not None or by_psutil[pid].app is not None
               if psutil.pid_exists(pid))


def test_the_switch_chooses_the_psutil_path(monkeypatch):
    monkeypatch.setenv(apps_module.SOURCE_ENV, "psutil")
    assert AppsCollector().source == "psutil"
    monkeypatch.setenv(apps_module.SOURCE_ENV, "procfs")
    assert AppsCollector().source == "procfs"
    monkeypatch.delenv(apps_module.SOURCE_ENV)
    assert AppsCollector().source == "procfs"  # Linux, /proc there
    assert AppsCollector(platform="darwin").source == "psutil"
    monkeypatch.setenv(apps_module.SOURCE_ENV, "ps")
    with pytest.raises(ValueError, match="procfs, psutil"):
        AppsCollector()


@pytest.mark.parametrize("source", ["procfs", "psutil"])
def test_every_process_is_in_exactly_one_app(user_stack, source):
    memory, count, processes, assignments = AppsCollector(source=source).read()
    pids = [proc.pid for proc in processes]
    assert len(pids) == len(set(pids))
    assert set(assignments) == set(pids)
    assert sum(count.values()) == len(processes)
    # The machine's processes, as psutil lists them (a few may come and go meanwhile).
    assert abs(len(processes) - len(psutil.pids())) <= 5
    # This test's own process is python's; the collector's process is monitoring's.
    assert count["monitoring"] >= 1


def used_memory() -> int:
    fields = parse_meminfo(Path("/proc/meminfo").read_text())
    return fields["MemTotal"] - fields["MemFree"] - fields["Buffers"] - fields["Cached"] - fields["SReclaimable"]


def test_the_apps_add_up_to_the_used_memory_within_the_tolerance(user_stack):
    before = used_memory()
    result = samples(AppsCollector())
    after = used_memory()
    total = sum(app_memory(result).values())
    used = (before + after) / 2
    print(f"apps {total / MiB:.1f} MiB, used {used / MiB:.1f} MiB, difference {(used - total) / MiB:.1f} MiB "
          f"({(used - total) / used:.1%})")
    assert abs(total - used) <= TOLERANCE_SHARE * used + TOLERANCE_BYTES


def test_system_holds_the_kernels_memory():
    memory, count, processes, assignments = AppsCollector().read()
    fields = parse_meminfo(Path("/proc/meminfo").read_text())
    kernel = sum(fields.get(name, 0) for name in apps_module.KERNEL_MEMINFO_FIELDS)
    processes_of_system = sum(proc.memory for proc in processes if assignments[proc.pid].app == "system")
    assert abs(memory["system"] - processes_of_system - kernel) <= 16 * MiB
    assert abs(kernel_memory_procfs() - kernel) <= 16 * MiB
    assert memory["system"] >= kernel - 16 * MiB and kernel > 0  # read a moment apart


def test_unclaimed_children_take_their_ancestors_app_but_not_systems(app_processes):
    root = app_processes.start("ollama", 5, children=[app_processes.command("runner-x", 12)], expect=2)
    memory, count, processes, assignments = AppsCollector().read()
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
    _, _, processes, after = collector.read()
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
        memory, count, processes, assignments = AppsCollector().read()
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
    memory, count, processes, assignments = AppsCollector().read()
    assert assignments[big.pid].app is None
    assert count["bigprogram"] == 1
    assert abs(memory["bigprogram"] - private(big)) <= 2 * MiB


# --- the macOS path, with stand-in data --------------------------------------------------

def test_process_memory_takes_the_footprint_where_psutil_gives_it():
    Extras = namedtuple("Extras", "peak_rss phys_footprint peak_footprint")
    Extended = namedtuple("Extended", "rss vms phys_footprint")
    Plain = namedtuple("Plain", "rss vms")

    class NeverFullInfo:
        def memory_info(self):
            return Plain(100 * MiB, 400 * MiB)

        def memory_full_info(self):  # pragma: no cover - must never be called
            raise AssertionError("memory_full_info() can hang on macOS")

    class Psutil8Process(NeverFullInfo):  # psutil 8 on macOS: memory_extras() has phys_footprint
        def memory_extras(self):
            return Extras(120 * MiB, 130 * MiB, 140 * MiB)

    class PreReleaseProcess(NeverFullInfo):  # psutil 8's pre-release name of it
        def memory_info_ex(self):
            return Extended(100 * MiB, 400 * MiB, 125 * MiB)

    assert process_memory(Psutil8Process(), footprint=True) == (130 * MiB, True)
    assert process_memory(PreReleaseProcess(), footprint=True) == (125 * MiB, True)
    assert process_memory(NeverFullInfo(), footprint=True) == (100 * MiB, False)  # psutil 7: RSS
    assert process_memory(Psutil8Process()) == (100 * MiB, False)  # Linux: no footprint asked
    me = psutil.Process()
    assert process_memory(me)[0] == pytest.approx(private(me), abs=4 * MiB)


def install_vm_stat(folder: Path, recording: str) -> None:
    path = folder / "vm_stat"
    path.write_text(f"#!/bin/sh\ncat '{DATA / recording}'\n")
    path.chmod(0o755)


def test_macos_kernel_memory_is_wired_plus_compressor_from_vm_stat(tmp_path, monkeypatch):
    install_vm_stat(tmp_path, "vm_stat_apple_silicon.txt")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    page_size, pages = parse_vm_stat((DATA / "vm_stat_apple_silicon.txt").read_text())
    memory, count, processes, assignments = AppsCollector(source="psutil", platform="darwin").read()
    of_processes = sum(proc.memory for proc in processes if assignments[proc.pid].app == "system")
    # psutil 7 reads RSS (no footprint): the compressor's pages are not in any process's figure.
    assert memory["system"] - of_processes == (pages["wired"] + pages["compressed"]) * page_size
    assert apps_module.kernel_memory_vm_stat(Deadline(3.0), footprints=True) == pages["wired"] * page_size


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
        memory, count, processes, assignments = AppsCollector(config.apps, config.docker, config.timeout).read()
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
        collector._bundle_container_ids = lambda: asked.append(1) or real_ask()
        collector.read()
        collector.read()
        assert len(asked) == 1
        second = docker_engine.run("apps-bundle-grafana", labels={"dev.aitools.app": "monitoring"})
        _, _, processes, assignments = collector.read()
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


def test_a_docker_vm_process_is_docker_and_flags_the_containers_as_inside_it(app_processes):
    # Docker Desktop's VM (qemu-system-* on Intel Macs and Linux; a name longer than the
    # kernel keeps, read whole from the command line) with no container shims beside it.
    vm = app_processes.start("qemu-system-aarch64", 30, orphan=True)
    for source in ("procfs", "psutil"):
        collector = AppsCollector(source=source)
        memory, count, processes, assignments = collector.read()
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
        memory, count, processes, assignments = AppsCollector(config.apps, config.docker, config.timeout).read()
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
