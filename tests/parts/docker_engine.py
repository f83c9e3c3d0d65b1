"""A real Docker engine for tests and benchmarks (../shared/TESTING.md).

`DockerEngine` starts Debian's dockerd on its own unix socket in a temporary folder,
with no networking of its own, and builds a busybox image under the names the tests
need. Usable outside pytest:

    with DockerEngine() as engine:
        engine.run("db", "postgres:15", hold_mb=20)
        ...  # talk to engine.host

The session fixture `docker_engine` below shares one engine across the test run.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import socket
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import docker.errors
import psutil
import pytest

BASE_IMAGE = "busybox:local"
IMAGE_TAGS = ("postgres:15", "supabase/postgres:15.1.0.147", "redis:7", "ollama/ollama:latest")
BUSYBOX = "/bin/busybox"
START_TIMEOUT_SECONDS = 90.0  # dockerd can take a while on a busy 2-core machine
RUN_TIMEOUT_SECONDS = 60.0
MiB = 2**20
_TEMP_PREFIX = "aitools-dockerd-"


class EngineUnavailable(RuntimeError):
    """dockerd cannot run here; the message says why."""


class DockerEngine:
    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.client: docker.DockerClient | None = None

    @property
    def socket_path(self) -> str:
        assert self.workdir is not None, "start() the engine first"
        return str(self.workdir / "docker.sock")

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    def __enter__(self) -> DockerEngine:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self, build_images: bool = True) -> None:
        if os.geteuid() != 0:
            raise EngineUnavailable("dockerd needs root")
        if shutil.which("dockerd") is None:
            raise EngineUnavailable("dockerd is not installed (apt-get install docker.io)")
        if build_images and not os.path.exists(BUSYBOX):
            raise EngineUnavailable(f"{BUSYBOX} is missing (apt-get install busybox-static)")
        _sweep_stale_workdirs()
        # A short path under /tmp: unix socket paths are limited to 108 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir="/tmp"))
        atexit.register(self.close)
        (self.workdir / "daemon.json").write_text("{}")  # ignore the machine's /etc/docker/daemon.json
        log = open(self.workdir / "dockerd.log", "wb")
        self.process = subprocess.Popen(
            ["dockerd", "--host", self.host, "--config-file", str(self.workdir / "daemon.json"),
             "--data-root", str(self.workdir / "data"), "--exec-root", str(self.workdir / "exec"),
             "--pidfile", str(self.workdir / "dockerd.pid"),
             "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # a Ctrl-C of the test run reaches us, not dockerd; close() stops it
        log.close()
        try:
            self.client = self._wait_until_answering()
            if build_images:
                self._build_images()
        except BaseException:
            self.close()
            raise

    def _wait_until_answering(self) -> docker.DockerClient:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise EngineUnavailable(f"dockerd exited with {self.process.returncode}: {self._log_tail()}")
            try:
                client = docker.DockerClient(base_url=self.host, version="auto", timeout=30)
                if client.ping():
                    return client
            except docker.errors.DockerException:
                pass
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"dockerd did not answer /_ping within {START_TIMEOUT_SECONDS:g}s: {self._log_tail()}")
            time.sleep(0.2)

    def _build_images(self) -> None:
        """`docker import` of a busybox root file system, tagged with every test name."""
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for folder in ("bin", "dev", "dev/shm", "proc", "sys", "tmp"):
                info = tarfile.TarInfo(folder)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if folder == "tmp" else 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, arcname="bin/busybox")
            for applet in applets:
                if applet != "busybox":
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(link)
        repository, tag = BASE_IMAGE.split(":")
        self.client.api.import_image_from_data(archive.getvalue(), repository=repository, tag=tag)
        for name in IMAGE_TAGS:
            repository, tag = name.rsplit(":", 1)
            self.client.api.tag(BASE_IMAGE, repository, tag)

    def run(self, name: str, image: str = BASE_IMAGE, hold_mb: int = 0,
            memory_limit: str | int | None = None, labels: dict[str, str] | None = None,
            file_cache_mb: int = 0) -> str:
        """Starts a container that holds hold_mb MiB in /dev/shm (which counts against its
        cgroup) and then sleeps; returns its ID once the memory is held.

        file_cache_mb writes a file of that size too: clean page cache, which the engine
        counts in the usage and `docker stats` leaves out (inactive_file)."""
        steps = []
        if hold_mb:
            steps.append(f"dd if=/dev/zero of=/dev/shm/held bs=1M count={hold_mb} 2>/dev/null")
        if file_cache_mb:
            steps.append(f"dd if=/dev/zero of=/tmp/cache bs=1M count={file_cache_mb} 2>/dev/null && sync")
        steps += ["echo held", "exec sleep 1000000"]
        container = self.client.containers.run(
            image, ["sh", "-c", " && ".join(steps)],
            name=name, detach=True, network_mode="none", labels=labels or {}, mem_limit=memory_limit,
            shm_size=f"{hold_mb + 16}m")  # the default 64m /dev/shm would cap what a container can hold
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while b"held" not in container.logs():
            container.reload()
            if container.status not in ("created", "running"):
                raise RuntimeError(f"container {name} ended ({container.status}) before holding "
                                   f"{hold_mb} MiB: {container.logs()!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"container {name} did not hold {hold_mb} MiB within {RUN_TIMEOUT_SECONDS:g}s")
            time.sleep(0.05)
        return container.id

    def memory_stats(self, container: str) -> dict:
        """The engine's own memory figures for a container (GET /containers/{id}/stats)."""
        return self.client.api.stats(container, stream=False, one_shot=True)["memory_stats"]

    def stop_all(self) -> None:
        """Removes every container, running or not."""
        if self.client is None:
            return
        for container in self.client.containers.list(all=True):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass

    def close(self) -> None:
        """Removes the containers, stops dockerd and cleans up after it. Safe to call twice."""
        if self.client is not None:
            try:
                self.stop_all()
            except docker.errors.DockerException:
                pass  # dockerd is stopped below either way
            self.client.close()
            self.client = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.workdir is not None:
            _clean_up_workdir(self.workdir)
            self.workdir = None

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.workdir / "dockerd.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])


def _processes_using(workdir: Path) -> list[psutil.Process]:
    """The processes this engine started: its containerd and shims, whose command lines
    name the engine's unique temporary folder, and the containers' processes under them."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(workdir) in part for part in process.info["cmdline"] or ()):
            found.append(process)
            try:
                found.extend(process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
    return found


def _clean_up_workdir(workdir: Path) -> None:
    """Ends what dockerd left running, unmounts what it left mounted, removes the folder."""
    leftovers = _processes_using(workdir)
    for process in leftovers:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=10)
    _unmount_under(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def _unmount_under(folder: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        mount_points = [line.split()[1] for line in mounts]
    for mount_point in sorted(mount_points, key=len, reverse=True):  # deepest first
        if mount_point == str(folder) or mount_point.startswith(f"{folder}/"):
            subprocess.run(["umount", "-l", mount_point], capture_output=True)


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def _sweep_stale_workdirs() -> None:
    """Removes what an earlier, killed test run left behind: folders whose dockerd is gone
    and that no process uses any more."""
    for workdir in Path("/tmp").glob(f"{_TEMP_PREFIX}*"):
        try:
            if time.time() - workdir.stat().st_mtime < START_TIMEOUT_SECONDS:
                continue  # perhaps an engine still starting
            pid = int((workdir / "dockerd.pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and psutil.pid_exists(pid):
            continue  # a running engine, perhaps of a parallel test run
        if _socket_answers(workdir / "docker.sock"):
            continue  # an engine whose pid this run cannot see (another PID namespace)
        if not _processes_using(workdir):
            _unmount_under(workdir)
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_engine():
    """One real Docker engine for the whole test run; containers are the tests' to remove."""
    from tests.conftest import missing_realpart  # conftest loads this module as a plugin

    engine = DockerEngine()
    try:
        engine.start()
    except EngineUnavailable as exc:
        missing_realpart(f"cannot start a Docker engine: {exc}")
    yield engine
    engine.close()
