"""What a scrape of the exporter costs, beside node_exporter, process-exporter and the naive way.

One run on this machine starts everything itself, measures and cleans up:

- a real Docker engine (tests/parts/docker_engine.py) with 0, 10 and 50 running
  containers (busybox, --network none, a mix of the images and compose labels the
  tests use);
- about 500 extra processes (`sleep`), two processes named swift-frontend, a real Node
  process serving its memory (a `url` target) and the Ollama and LM Studio stand-ins
  with a model loaded each;
- our exporter as users run it (tests/parts/exporter_process.py), configured with all of
  those; Debian's prometheus-node-exporter with its default collectors; Debian's
  prometheus-process-exporter with the same process groups as ours (swift-frontend by
  name, as our zero configuration has it; with --cmdline-group both also have a
  python-ml group matched on command lines) and every other process grouped by its
  program's name (`{{.Comm}}`), as our apps breakdown puts every process in one app;
  without smaps and threads, which we do
  not report either; -children stays on, its default (off, it spends some 15 times the
  CPU here); all on free loopback ports, fresh for each container count;
- the naive way: the Docker SDK's defaults, `containers.list()` then
  `container.stats(stream=False)` container by container (naive_docker_stats.py, in a
  process of its own);
- our exporter once more with the engine's cgroup files hidden from it (an empty
  /sys/fs/cgroup in a mount namespace of its own), so that every container goes
  through the stats API as it does on macOS, where the engine runs in a VM.

--realistic is the workstation of issue 13: 50 containers, about 1,200 processes and four
Node targets (a JSON endpoint, a prom-client endpoint, an `--inspect` target and one that
is down) beside the Ollama and LM Studio stand-ins.

Each exporter is scraped over HTTP with Prometheus' own request headers (OpenMetrics
preferred, gzip), round-robin, back to back; latency is the time from the request to
the last byte of the answer. Resident memory (RSS) and CPU time (user + system) are
read with psutil from each exporter's pid: after start (before the first scrape), after
the 200th and after the last scrape; CPU per scrape = CPU time over the scrapes / the
number of scrapes. The naive way is measured the same way over fewer iterations (each
takes seconds per container). "Engine CPU" is what dockerd, containerd and the shims
spent meanwhile, per scrape, less what they spend idle (measured for 10 s before each
loop: 50 idle shims and the engine's housekeeping cost some 17 ms a second here, which a
loop slowed by process-exporter would otherwise count against our scrapes): the docker
work a scrape causes outside the exporter. Our exporter runs with the malloc tunables
that `service install`'s unit and the Dockerfile set (GLIBC_TUNABLES, exporter/service.py).

    .venv/bin/python tests/benchmarks/scrape_benchmark.py                 # the README table (~15 min)
    .venv/bin/python tests/benchmarks/scrape_benchmark.py --quick         # smoke run (~1 min)
    .venv/bin/python tests/benchmarks/scrape_benchmark.py --realistic     # issue 13's workstation (~8 min)
    .venv/bin/python tests/benchmarks/scrape_benchmark.py --containers 0,10,50 --scrapes 1000 \\
        --naive-iterations 5 --processes 500 --wait-quiet 600 --output /tmp/table.md
    ... --profile /tmp/prof     # also py-spy (pip install py-spy) our exporter: perturbs the figures

Needs root on Debian with docker.io, busybox-static, nodejs, prometheus-node-exporter and
prometheus-process-exporter installed (tests/install-deps.sh). The table goes to stdout
(Markdown); progress to stderr.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import http.client
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from exporter import __version__  # noqa: E402
from tests.parts.docker_engine import BASE_IMAGE, IMAGE_TAGS, DockerEngine  # noqa: E402
from exporter.service import MALLOC_TUNABLES  # noqa: E402
from tests.parts.exporter_process import ExporterProcess, free_port  # noqa: E402
from tests.parts.llm_standins import LMStudioStandin, OllamaStandin  # noqa: E402
from tests.parts.node_processes import start_node_process  # noqa: E402
from tests.parts.processes import NamedProcesses  # noqa: E402
from tests.benchmarks import apps_plugin  # noqa: E402  (the apps breakdown beside netdata apps.plugin)

HERE = Path(__file__).resolve().parent
NODE_EXPORTER = "prometheus-node-exporter"
PROCESS_EXPORTER = "prometheus-process-exporter"
RSS_CHECKPOINT = 200
# Prometheus 2.x asks for OpenMetrics first and accepts gzip.
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}
SWIFT_FRONTENDS = 2
SWIFT_FRONTEND_MB = 20
PYTHON_ML_REGEX = "python.*(uvicorn|torch)"
QUIET_LOAD = 0.7  # 1-minute load average under which the machine counts as quiet
MB = 10**6

_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- reading an exposition --------------------------------------------------------

def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample line; enough for Prometheus text and OpenMetrics gauges."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group(2) or ""))
            found.append((match.group(1), labels, float(match.group(3))))
    return found


def value(parsed, name: str, **labels) -> float | None:
    for sample_name, sample_labels, sample_value in parsed:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


# --- the measured things ----------------------------------------------------------

@dataclass
class Result:
    name: str
    containers: int
    latencies: list[float] = field(default_factory=list)
    rss_start: int = 0
    rss_checkpoint: int | None = None
    rss_end: int = 0
    cpu_seconds: float = 0.0
    engine_cpu_seconds: float | None = None
    note: str = ""
    threads_10: int | None = None  # OS threads after the 10th scrape
    threads_end: int | None = None

    @property
    def scrapes(self) -> int:
        return len(self.latencies)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    @property
    def cpu_per_scrape(self) -> float:
        return self.cpu_seconds / self.scrapes

    @property
    def engine_cpu_per_scrape(self) -> float | None:
        return None if self.engine_cpu_seconds is None else self.engine_cpu_seconds / self.scrapes


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class EngineMeter:
    """The engine's CPU time from now on, less what it spends idle: its rate measured first,
    for IDLE_SECONDS, with nobody asking it anything."""

    IDLE_SECONDS = 10.0

    def __init__(self, pids: list[int]):
        self.pids = pids
        before = cpu_seconds(pids)
        time.sleep(self.IDLE_SECONDS)
        self.idle_rate = (cpu_seconds(pids) - before) / self.IDLE_SECONDS
        self.cpu_before, self.started = cpu_seconds(pids), time.monotonic()

    def spent(self) -> float:
        busy = cpu_seconds(self.pids) - self.cpu_before
        return max(0.0, busy - self.idle_rate * (time.monotonic() - self.started))


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


class HTTPExporter:
    """An exporter process scraped over a keep-alive HTTP connection."""

    def __init__(self, name: str, pid: int, port: int, check):
        self.name, self.pid, self.port, self.check = name, pid, port, check
        self._connection: http.client.HTTPConnection | None = None

    def scrape(self) -> tuple[float, bytes, dict]:
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            start = time.perf_counter()
            try:
                self._connection.request("GET", "/metrics", headers=SCRAPE_HEADERS)
                response = self._connection.getresponse()
                body = response.read()
            except (http.client.HTTPException, ConnectionError):
                # The server closed the kept-alive connection; the next attempt opens a new one.
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise
                continue
            elapsed = time.perf_counter() - start
            if response.status != 200:
                raise RuntimeError(f"{self.name} answered /metrics with HTTP {response.status}: {body[:200]!r}")
            return elapsed, body, dict(response.getheaders())
        raise AssertionError("unreachable")

    def verify(self, body: bytes, headers: dict) -> None:
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        problem = self.check(samples(body.decode()))
        if problem:
            raise RuntimeError(f"{self.name}: the scrape does not show what it should: {problem}")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def wait_http(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout:g}s")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- the workload: containers, processes, targets -----------------------------------

class Workload:
    def __init__(self, stack: contextlib.ExitStack, extra_processes: int, cmdline_group: bool,
                 realistic: bool = False):
        self.stack = stack
        self.cmdline_group = cmdline_group
        self.realistic = realistic
        self.folder = Path(tempfile.mkdtemp(prefix="aitools-bench-"))
        stack.callback(shutil.rmtree, self.folder, ignore_errors=True)

        progress("starting dockerd and building the busybox images")
        self.engine = DockerEngine()
        self.engine.start()
        stack.callback(self.engine.close)
        self.container_ids: list[str] = []

        progress(f"starting {extra_processes} extra processes (sleep)")
        self.sleepers: list[subprocess.Popen] = []
        stack.callback(self._stop_sleepers)
        sleep = shutil.which("sleep")
        for _ in range(extra_processes):
            self.sleepers.append(subprocess.Popen([sleep, "86400"], stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        progress(f"starting {SWIFT_FRONTENDS} swift-frontend processes of {SWIFT_FRONTEND_MB} MB")
        self.swift = NamedProcesses("swift-frontend")
        stack.callback(self.swift.close)
        for _ in range(SWIFT_FRONTENDS):
            self.swift.start(hold_mb=SWIFT_FRONTEND_MB)

        progress("starting a Node target and the Ollama and LM Studio stand-ins")
        self.node = start_node_process(mode="steady", inspector=realistic)
        stack.callback(self.node.stop)
        self.down_url = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
        self.ollama = stack.enter_context(OllamaStandin())
        self.ollama.load("llama3.1:8b", size=4_900_000_000, size_vram=4_200_000_000)
        self.lmstudio = stack.enter_context(LMStudioStandin())
        self.lmstudio.load("qwen2.5-7b-instruct", size_bytes=4_680_000_000)

    def _stop_sleepers(self) -> None:
        for process in self.sleepers:
            process.kill()
        for process in self.sleepers:
            process.wait()
        self.sleepers.clear()

    def run_containers(self, count: int) -> None:
        images = (BASE_IMAGE,) + IMAGE_TAGS
        while len(self.container_ids) < count:
            number = len(self.container_ids)
            labels = {"com.docker.compose.project": "supabase", "com.docker.compose.service": f"svc{number}"} \
                if number % 3 == 0 else {}
            self.container_ids.append(self.engine.run(f"bench-{number:03d}", images[number % len(images)],
                                                      hold_mb=1, labels=labels))
            if len(self.container_ids) % 10 == 0:
                progress(f"  {len(self.container_ids)} containers running")

    def engine_pids(self) -> list[int]:
        """dockerd, containerd and the shims: every process whose command line names the engine's folder."""
        workdir = str(self.engine.workdir)
        return [process.pid for process in psutil.process_iter(["cmdline"])
                if any(workdir in part for part in process.info["cmdline"] or ())]

    # -- configurations --

    def our_config(self) -> str:
        config = f"""\
docker:
  host: {self.engine.host}
ollama:
  url: {self.ollama.url}
lmstudio:
  url: {self.lmstudio.url}
node:
  targets:
    - {{name: api, url: "{self.node.url('/memory')}"}}
"""
        if self.realistic:
            config += f"""\
    - {{name: prom, url: "{self.node.url('/metrics')}"}}
    - {{name: debug, inspector: "{self.node.inspector_address}"}}
    - {{name: down, url: "{self.down_url}"}}
"""
        if self.cmdline_group:  # added to the default swift-frontend group
            config += f"""\
process_groups:
  python-ml: {{cmdline: "{PYTHON_ML_REGEX}"}}
"""
        return config

    def process_exporter_config(self) -> Path:
        path = self.folder / "process-exporter.yml"
        config = """\
process_names:
  - name: swift-frontend
    comm: [swift-frontend]
"""
        if self.cmdline_group:
            config += f"""\
  - name: python-ml
    cmdline: ['{PYTHON_ML_REGEX}']
"""
        # Every other process in a group of its program's name, as our apps breakdown puts every
        # process of the machine in one app: process-exporter doing the same job.
        config += """\
  - name: "{{.Comm}}"
    cmdline: ['.+']
"""
        path.write_text(config)
        return path


def check_ours(containers: int, realistic: bool = False):
    def check(parsed) -> str | None:
        for collector in ("docker", "ollama", "lmstudio", "process", "system") + (() if realistic else ("node",)):
            if value(parsed, "aitools_collector_success", collector=collector) != 1:
                return f"collector {collector} did not succeed"
        targets = {"api": 1, "prom": 1, "debug": 1, "down": 0} if realistic else {"api": 1}
        for target, up in targets.items():
            if value(parsed, "aitools_node_target_up", target=target) != up:
                return f"node target {target} is not {'up' if up else 'down'}"
        shown = sum(1 for name, _, _ in parsed if name == "aitools_container_memory_usage_bytes")
        if shown != containers:
            return f"{shown} containers shown, {containers} running"
        # At least ours: test runs on the same machine may start more of them meanwhile.
        if (value(parsed, "aitools_process_group_processes", group="swift-frontend") or 0) < SWIFT_FRONTENDS:
            return "the swift-frontend group misses processes"
        return None
    return check


def check_node_exporter(parsed) -> str | None:
    return None if value(parsed, "node_memory_MemTotal_bytes") else "no node_memory_MemTotal_bytes"


def check_process_exporter(parsed) -> str | None:
    found = value(parsed, "namedprocess_namegroup_num_procs", groupname="swift-frontend")
    return None if (found or 0) >= SWIFT_FRONTENDS else f"swift-frontend group has {found} processes"


# --- one container count --------------------------------------------------------------

def measure_exporters(workload: Workload, containers: int, scrapes: int,
                      profile_dir: Path | None) -> list[Result]:
    with contextlib.ExitStack() as local:
        ours = ExporterProcess(workload.our_config(), env={"GLIBC_TUNABLES": MALLOC_TUNABLES})
        local.callback(ours.stop)
        ours.wait_ready(timeout=60)

        node_port = free_port()
        node_exporter = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        local.callback(stop_process, node_exporter)
        process_port = free_port()
        process_exporter = subprocess.Popen(
            [PROCESS_EXPORTER, "-config.path", str(workload.process_exporter_config()),
             "-web.listen-address", f"127.0.0.1:{process_port}",
             "-gather-smaps=false", "-threads=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        local.callback(stop_process, process_exporter)
        wait_http(node_port, process=node_exporter)
        wait_http(process_port, process=process_exporter)

        exporters = [
            HTTPExporter("aitools-exporter", ours.process.pid, ours.port, check_ours(containers, workload.realistic)),
            HTTPExporter("node_exporter", node_exporter.pid, node_port, check_node_exporter),
            HTTPExporter("process-exporter", process_exporter.pid, process_port, check_process_exporter),
        ]
        for exporter in exporters:
            local.callback(exporter.close)
        time.sleep(1.0)  # let them settle after start
        results = {e.name: Result(e.name, containers) for e in exporters}
        for exporter in exporters:
            results[exporter.name].rss_start = rss(exporter.pid)
        engine = EngineMeter(workload.engine_pids())
        cpu_before = {e.name: cpu_seconds([e.pid]) for e in exporters}

        profiler = None
        if profile_dir is not None:
            profiler = start_profiler(ours.process.pid, profile_dir / f"ours-{containers}-containers.txt")

        for number in range(1, scrapes + 1):
            shift = number % len(exporters)
            for exporter in exporters[shift:] + exporters[:shift]:
                elapsed, body, headers = exporter.scrape()
                results[exporter.name].latencies.append(elapsed)
                if number in (1, scrapes):
                    exporter.verify(body, headers)
            if number == RSS_CHECKPOINT:
                for exporter in exporters:
                    results[exporter.name].rss_checkpoint = rss(exporter.pid)
            if number == 10:
                for exporter in exporters:
                    results[exporter.name].threads_10 = psutil.Process(exporter.pid).num_threads()
            if number % 100 == 0:
                progress(f"  {number}/{scrapes} scrapes")

        if profiler is not None:
            stop_profiler(profiler)
        for exporter in exporters:
            result = results[exporter.name]
            result.rss_end = rss(exporter.pid)
            result.threads_end = psutil.Process(exporter.pid).num_threads()
            result.cpu_seconds = cpu_seconds([exporter.pid]) - cpu_before[exporter.name]
        # Only ours talks to the engine in this loop.
        results["aitools-exporter"].engine_cpu_seconds = engine.spent()
        return list(results.values())


def measure_api_path(workload: Workload, containers: int, scrapes: int) -> Result:
    """Our exporter where the engine's cgroup files are out of sight, as on macOS (Docker
    Desktop runs the engine in a VM): every container's memory through the stats API.
    An empty file system over /sys/fs/cgroup, in a mount namespace of its own, hides them."""
    result = Result("aitools-exporter, stats API path (as on macOS)", containers, note=f"{scrapes} scrapes")
    config = workload.folder / "api-path.yml"
    config.write_text(workload.our_config())
    port = free_port()
    log = open(workload.folder / "api-path.log", "wb")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs none /sys/fs/cgroup && exec "$0" "$@"',
         sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}", "--config.file", str(config)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES})
    exporter = HTTPExporter(result.name, process.pid, port, check_ours(containers, workload.realistic))
    try:
        wait_http(port, process=process)
        time.sleep(1.0)
        result.rss_start = rss(process.pid)
        engine = EngineMeter(workload.engine_pids())
        cpu_before = cpu_seconds([process.pid])
        for number in range(1, scrapes + 1):
            elapsed, body, headers = exporter.scrape()
            result.latencies.append(elapsed)
            if number in (1, scrapes):
                exporter.verify(body, headers)
        result.rss_end = rss(process.pid)
        result.cpu_seconds = cpu_seconds([process.pid]) - cpu_before
        result.engine_cpu_seconds = engine.spent()
    finally:
        exporter.close()
        stop_process(process)
        log.close()
    return result


def measure_naive(workload: Workload, containers: int, iterations: int) -> Result:
    result = Result("naive SDK loop", containers, note=f"{iterations} iterations")
    process = subprocess.Popen([sys.executable, str(HERE / "naive_docker_stats.py"), workload.engine.host],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the naive loop did not start")
        time.sleep(1.0)
        result.rss_start = rss(process.pid)
        engine = EngineMeter(workload.engine_pids())
        cpu_before = cpu_seconds([process.pid])
        for number in range(1, iterations + 1):
            start = time.perf_counter()
            process.stdin.write("scrape\n")
            process.stdin.flush()
            answer = process.stdout.readline().split()
            result.latencies.append(time.perf_counter() - start)
            if answer != ["done", str(containers)]:
                raise RuntimeError(f"the naive loop read {answer} instead of {containers} containers")
            progress(f"  naive iteration {number}/{iterations}: {result.latencies[-1]:.1f} s")
        result.rss_end = rss(process.pid)
        result.cpu_seconds = cpu_seconds([process.pid]) - cpu_before
        result.engine_cpu_seconds = engine.spent()
    finally:
        process.stdin.close()
        stop_process(process)
    return result


# --- profiling (optional) ---------------------------------------------------------------

def start_profiler(pid: int, output: Path) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(py_spy):
        progress("py-spy is not installed (pip install py-spy): no profile")
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    progress(f"  profiling the exporter with py-spy into {output}")
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                             "--nonblocking", "--threads", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen) -> None:
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


# --- the report ---------------------------------------------------------------------

def machine_description(engine: DockerEngine) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    debian = ""
    with contextlib.suppress(OSError):
        debian = f" (Debian {Path('/etc/debian_version').read_text().strip()})"
    engine_version = engine.client.version().get("Version", "?")
    tools = []
    for binary in (NODE_EXPORTER, PROCESS_EXPORTER):
        text = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout \
            + subprocess.run([binary, "--version"], capture_output=True, text=True).stderr
        match = re.search(r"revision: ([^)\s]+)", text) or re.search(r"version (\S+)", text)
        tools.append(f"{binary.removeprefix('prometheus-')} {match.group(1) if match else '?'}")
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, "
            f"Linux {platform.release()}{debian}, Python {platform.python_version()}, "
            f"Docker Engine {engine_version} (cgroup v{2 if os.path.exists('/sys/fs/cgroup/cgroup.controllers') else 1}), "
            f"node {node_version}, {', '.join(tools)}, aitools-exporter {__version__}")


def ms(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:,.0f} s" if seconds >= 100 else f"{seconds:.1f} s"
    return f"{seconds * 1000:.1f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def mb(size: int | None) -> str:
    return "–" if size is None else f"{size / MB:.1f}"


def ratio(theirs: float, ours: float) -> str:
    if ours <= 0:
        return "–"
    value = theirs / ours
    return f"×{value:,.0f}" if value >= 100 else f"×{value:.2g}" if value < 10 else f"×{value:.0f}"


def render(results: list[Result], description: str, scrapes: int, extra_processes: int, total_processes: int,
           loads: tuple[tuple, tuple], cmdline_group: bool, realistic: bool = False) -> str:
    groups = "swift-frontend by name" + (f" and python-ml by command line (`{PYTHON_ML_REGEX}`)" if cmdline_group else "")
    lines = [
        f"Machine: {description}.",
        f"Workload: {extra_processes} extra processes ({total_processes} in all), "
        f"{SWIFT_FRONTENDS} swift-frontend, "
        + ("4 Node targets (JSON, prom-client, `--inspect`, one down)" if realistic else "1 Node `url` target")
        + ", Ollama and LM Studio stand-ins with a model each; "
        f"process groups: {groups}. "
        f"Load average 1/5/15 min: {'/'.join(f'{x:.2f}' for x in loads[0])} at start, "
        f"{'/'.join(f'{x:.2f}' for x in loads[1])} at end.",
        "",
        "| containers | exporter | scrapes | median ms | p99 ms | RSS after start MB | "
        f"RSS after {RSS_CHECKPOINT} MB | RSS at end MB | CPU ms/scrape | engine CPU ms/scrape | "
        "threads at 10th / end | median vs ours | RSS vs ours | CPU vs ours |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_count = collections.defaultdict(list)
    for result in results:
        by_count[result.containers].append(result)
    for containers, group in sorted(by_count.items()):
        ours = next(r for r in group if r.name == "aitools-exporter")
        for result in group:
            engine = "–" if result.engine_cpu_per_scrape is None else f"{result.engine_cpu_per_scrape * 1000:.1f}"
            mine = result is ours
            name = result.name + (f" ({result.note})" if result.note else "")
            lines.append(
                f"| {containers} | {'**' + name + '**' if mine else name} | {result.scrapes} | {ms(result.median)} | "
                f"{ms(result.p99)} | {mb(result.rss_start)} | {mb(result.rss_checkpoint)} | {mb(result.rss_end)} | "
                f"{result.cpu_per_scrape * 1000:.2f} | {engine} | "
                f"{'–' if result.threads_10 is None else f'{result.threads_10} / {result.threads_end}'} | "
                f"{'1' if mine else ratio(result.median, ours.median)} | "
                f"{'1' if mine else ratio(result.rss_end, ours.rss_end)} | "
                f"{'1' if mine else ratio(result.cpu_per_scrape, ours.cpu_per_scrape)} |")
    lines += ["", *render_targets(by_count, scrapes)]
    return "\n".join(lines) + "\n"


def render_targets(by_count: dict[int, list[Result]], scrapes: int) -> list[str]:
    def find(containers: int, name: str) -> Result | None:
        return next((r for r in by_count.get(containers, []) if r.name == name), None)

    counts = sorted(by_count)
    largest = counts[-1]
    rows = []
    ours_largest = find(largest, "aitools-exporter")
    rows.append((f"median scrape with {largest} containers < 50 ms", f"{ms(ours_largest.median)} ms",
                 ours_largest.median < 0.05))
    api_path = find(largest, "aitools-exporter, stats API path (as on macOS)")
    if api_path is not None:
        rows.append((f"the same through the stats API, as on macOS ({api_path.scrapes} scrapes)",
                     f"{ms(api_path.median)} ms", api_path.median < 0.1))
    if len(counts) >= 2 and counts[-2] > 0:
        middle = counts[-2]
        ours_middle = find(middle, "aitools-exporter").median
        growth = ours_largest.median / ours_middle
        linear = largest / middle
        rows.append((f"far less than linear growth: median with {largest} containers over {middle} "
                     f"(×{linear:g} the containers; at most half of that counts)",
                     f"×{growth:.2f} ({ms(ours_middle)} → {ms(ours_largest.median)} ms)", growth <= linear / 2))
    for containers in counts:
        ours = find(containers, "aitools-exporter")
        rows.append((f"RSS after {ours.scrapes} scrapes < 40 MB ({containers} containers)", f"{mb(ours.rss_end)} MB",
                     ours.rss_end < 40 * MB))
        if ours.rss_checkpoint is not None:
            growth = ours.rss_end - ours.rss_checkpoint
            rows.append((f"no RSS growth from scrape {RSS_CHECKPOINT} to {ours.scrapes} ({containers} containers; "
                         "tolerance 0.5 MB)", f"{growth / MB:+.2f} MB", growth <= 0.5 * MB))
        process_exporter = find(containers, "process-exporter")
        rows.append((f"CPU/scrape < process-exporter's ({containers} containers)",
                     f"{ours.cpu_per_scrape * 1000:.2f} vs {process_exporter.cpu_per_scrape * 1000:.2f} ms",
                     ours.cpu_per_scrape < process_exporter.cpu_per_scrape))
        node_exporter = find(containers, "node_exporter")
        rows.append((f"CPU/scrape ≤ 1.5 × node_exporter's ({containers} containers)",
                     f"{ours.cpu_per_scrape * 1000:.2f} vs 1.5 × {node_exporter.cpu_per_scrape * 1000:.2f} ms",
                     ours.cpu_per_scrape <= 1.5 * node_exporter.cpu_per_scrape))
        rows.append((f"threads constant from the 10th scrape ({containers} containers)",
                     f"{ours.threads_10} → {ours.threads_end}", ours.threads_10 == ours.threads_end))
    if scrapes < 1000:
        rows.append((f"(only {scrapes} scrapes per exporter: the memory targets speak of 1,000)", "", None))
    out = ["| target | measured | met |", "|---|---|---|"]
    for target, measured, met in rows:
        out.append(f"| {target} | {measured} | {'–' if met is None else 'yes' if met else '**no**'} |")
    return out


# --- main ---------------------------------------------------------------------------

def wait_until_quiet(max_seconds: float) -> None:
    deadline = time.monotonic() + max_seconds
    while os.getloadavg()[0] > QUIET_LOAD and time.monotonic() < deadline:
        progress(f"waiting for a quiet machine: load average {os.getloadavg()[0]:.2f} > {QUIET_LOAD}")
        time.sleep(30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", default="0,10,50",
                        help="container counts, comma-separated (default 0,10,50)")
    parser.add_argument("--scrapes", type=int, default=1000,
                        help="scrapes of each exporter per container count (default 1000; the issue asks >= 200)")
    parser.add_argument("--naive-iterations", type=int, default=5,
                        help="iterations of the naive SDK loop per container count (default 5; 0 skips it)")
    parser.add_argument("--api-path-scrapes", type=int, default=30,
                        help="scrapes of our exporter with the cgroup files hidden, every container through the "
                             "stats API as on macOS (default 30: each takes about a second; 0 skips it)")
    parser.add_argument("--processes", type=int, default=500, help="extra sleep processes (default 500)")
    parser.add_argument("--cmdline-group", action="store_true",
                        help=f"add a group matched on command lines ({PYTHON_ML_REGEX!r}) to ours and process-exporter's")
    parser.add_argument("--realistic", action="store_true",
                        help="issue 13's workstation: 50 containers, ~1,200 processes, 4 Node targets "
                             "(JSON, prom-client, --inspect, one down)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: containers 0,3, 50 scrapes, 1 naive iteration, 50 processes")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help=f"first wait up to this long for a 1-minute load average under {QUIET_LOAD}")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy our exporter into DIR (collapsed stacks per container count); perturbs the figures")
    parser.add_argument("--output", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    if args.realistic:
        args.containers = "50"
        args.processes = max(0, 1200 - len(psutil.pids()) - 150)  # ~150: the containers, targets and exporters
    if args.quick:
        args.containers, args.scrapes, args.naive_iterations, args.processes = "0,3", 50, 1, 50
        args.api_path_scrapes = 3
    args.container_counts = sorted({int(n) for n in args.containers.split(",")})
    if args.scrapes < RSS_CHECKPOINT and not args.quick:
        progress(f"note: fewer than {RSS_CHECKPOINT} scrapes: no percentile or memory-growth figures worth quoting")
    return args


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for binary in (NODE_EXPORTER, PROCESS_EXPORTER, "node"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is not installed: apt-get install -y prometheus-node-exporter "
                     "prometheus-process-exporter nodejs (or bash tests/install-deps.sh)")
    # A SIGTERM ends the run through the same clean-up as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet)

    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        workload = Workload(stack, args.processes, args.cmdline_group, args.realistic)
        description = machine_description(workload.engine)
        load_start = os.getloadavg()
        for containers in args.container_counts:
            progress(f"{containers} containers")
            workload.run_containers(containers)
            total_processes = len(psutil.pids())
            progress(f"  exporters: {args.scrapes} scrapes each ({total_processes} processes on the machine)")
            results += measure_exporters(workload, containers, args.scrapes, args.profile)
            if args.api_path_scrapes and containers > 0:
                progress(f"  ours through the stats API: {args.api_path_scrapes} scrapes")
                results.append(measure_api_path(workload, containers, args.api_path_scrapes))
            if args.naive_iterations:
                progress(f"  naive SDK loop: {args.naive_iterations} iterations")
                results.append(measure_naive(workload, containers, args.naive_iterations))
        load_end = os.getloadavg()
        progress("apps breakdown beside netdata apps.plugin")
        apps_table = apps_plugin.render(apps_plugin.measure())
        progress("cleaning up")

    table = render(results, description, args.scrapes, args.processes, total_processes, (load_start, load_end),
                   args.cmdline_group, args.realistic)
    table += "\n" + apps_table
    print(table)
    if args.output:
        args.output.write_text(table)
    if args.profile:
        print_profile_summary(args.profile)
    return 0


def print_profile_summary(folder: Path, top: int = 25) -> None:
    """The functions where our exporter spent its samples, from py-spy's collapsed stacks."""
    for path in sorted(folder.glob("ours-*.txt")):
        inclusive: collections.Counter = collections.Counter()
        own: collections.Counter = collections.Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1] if " (" in frame else frame
                      for frame in stack.split(";")]
            if any("wait (threading.py" in f or "select (selectors.py" in f for f in frames[-2:]):
                continue  # idle threads
            total += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[frame] += int(count)
        print(f"\n{path.name}: {total} busy samples", file=sys.stderr)
        print("  self:", file=sys.stderr)
        for frame, count in own.most_common(top):
            print(f"    {100 * count / max(total, 1):5.1f}%  {frame}", file=sys.stderr)
        print("  inclusive:", file=sys.stderr)
        for frame, count in inclusive.most_common(top):
            print(f"    {100 * count / max(total, 1):5.1f}%  {frame}", file=sys.stderr)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
