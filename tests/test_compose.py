"""compose.monitoring.yml, the Dockerfile and the Docker socket proxy.

- the file validates with a real compose implementation (Debian's docker-compose);
- every published port is bound to 127.0.0.1, every service has a memory limit and a
  health check, images are pinned, data lives in named volumes, no secret has a default;
- every file it mounts exists in the repository;
- the socket proxy (compose/docker-proxy/nginx.conf, run by a real nginx in front of a
  real Docker engine) lets the exporter's list, stats, version and info calls through
  and refuses everything else before it reaches the engine; the real exporter, wired
  up as in the compose file (DOCKER_HOST, AITOOLS_CONFIG_FILE,
  AITOOLS_WEB_LISTEN_ADDRESS), reads its containers through it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing_realpart

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.monitoring.yml"
PROXY_CONFIG = ROOT / "compose" / "docker-proxy" / "nginx.conf"
EXPORTER_CONFIG = ROOT / "compose" / "exporter.yml"
PROFILE = "linux"
EXPORTER_SERVICE = "aitools-exporter"
PROXY_SERVICE = "docker-proxy"
MONITORING_SERVICES = ("prometheus", "alertmanager", "grafana")
# The monitoring stack keeps its own memory small: no service above this.
MAX_MEMORY_LIMIT = 512 * 2**20
# Environment variables that carry secrets.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK|CREDENTIAL", re.IGNORECASE)
# Every variable the file needs, set for validation (values are placeholders).
TEST_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}
MiB = 2**20


def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        missing_realpart("docker-compose is not installed (apt-get install docker-compose)")
    return binary


def run_compose(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """docker-compose with only the given variables: an empty --env-file, so that no .env
    of the developer's leaks in."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("GRAFANA_", "AITOOLS_", "ALERTMANAGER_", "COMPOSE_", "LM_API"))}
    return subprocess.run([compose_binary(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                          capture_output=True, text=True, env={**clean, **env}, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """The configuration as docker-compose resolves it, the linux profile included."""
    tmp = tmp_path_factory.mktemp("compose")
    result = run_compose("--profile", PROFILE, "config", env=TEST_ENV, tmp_path=tmp)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def size_bytes(value) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", str(value).lower())
    assert match, value
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2)]


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    """(host address, host port) of every published port, short or long syntax."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip"), str(port.get("published"))))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 3:
            found.append((parts[0], parts[1]))
        elif len(parts) == 2:
            found.append((None, parts[0]))
        else:
            found.append((None, parts[0]))  # container port only: a random host port on all addresses
    return found


def command_line(service: dict) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def host_path(service: dict, container_path: str) -> Path | None:
    """The repository path a container path of the service comes from, through its bind mounts."""
    for source, target, _ in bind_mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / Path(container_path).relative_to(target)).resolve()
    return None


def bind_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of the bind mounts of a service in the raw file."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                found.append((volume["source"], volume["target"], "ro" if volume.get("read_only") else "rw"))
            continue
        # A source given as ${VARIABLE:-default}: its default.
        parts = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")
        source = parts[0]
        if source.startswith((".", "/")):
            found.append((source, parts[1], parts[2] if len(parts) > 2 else "rw"))
    return found


# --- docker-compose validates the file ----------------------------------------------------

def test_compose_file_validates_with_docker_compose(tmp_path):
    for args in ((), ("--profile", PROFILE)):
        result = run_compose(*args, "config", "--quiet", env=TEST_ENV, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
    services = run_compose("--profile", PROFILE, "config", "--services", env=TEST_ENV, tmp_path=tmp_path)
    assert sorted(services.stdout.split()) == sorted([*MONITORING_SERVICES, EXPORTER_SERVICE, PROXY_SERVICE])
    # Without the linux profile only the monitoring stack starts (macOS: the exporter runs
    # natively). docker-compose 1.29 lists every service here; the profiles are checked below.


def test_grafana_admin_password_has_no_default(tmp_path):
    result = run_compose("config", "--quiet", env={}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr
    grafana = raw()["services"]["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", grafana["GF_SECURITY_ADMIN_PASSWORD"])


def test_secrets_come_from_the_environment(resolved):
    for name, service in raw()["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                # ${VAR:?message} (required) or ${VAR:-} (optional, empty): never a value.
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*|:-)\}", str(value)), f"{name}: {key} has a default: {value!r}"
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == TEST_ENV["GRAFANA_ADMIN_PASSWORD"]


# --- properties of every service -------------------------------------------------------

def test_every_published_port_is_bound_to_localhost(resolved):
    published = 0
    for name, service in resolved["services"].items():
        for host_ip, port in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name}: port {port} is published on {host_ip or 'every address'}"
            published += 1
    assert published == 3, "Prometheus, Alertmanager and Grafana are reachable from the Mac's browser"
    for name in (EXPORTER_SERVICE, PROXY_SERVICE):
        assert not resolved["services"][name].get("ports"), f"{name} is reachable on the compose network only"
    assert {p for s in resolved["services"].values() for _, p in published_ports(s)} == {"9090", "9093", "3000"}


def test_every_service_has_a_small_memory_limit_and_a_health_check(resolved):
    total = 0
    for name, service in resolved["services"].items():
        assert "mem_limit" in service, f"{name}: mem_limit"
        limit = size_bytes(service["mem_limit"])
        assert 16 * MiB <= limit <= MAX_MEMORY_LIMIT, f"{name}: {service['mem_limit']}"
        total += limit
        healthcheck = service.get("healthcheck", {})
        assert healthcheck.get("test") and healthcheck["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck"
        assert not healthcheck.get("disable"), name
        command = " ".join(healthcheck["test"][1:])
        assert "127.0.0.1" in command, f"{name}: the health check asks the service itself"
    assert total <= 1024 * MiB, f"the whole stack stays under 1 GiB ({total / MiB:.0f} MiB)"


def test_images_are_pinned(resolved):
    for name, service in resolved["services"].items():
        image = service.get("image", "")
        if "build" in service:
            assert name == EXPORTER_SERVICE and image.endswith(":local")
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+(-alpine)?", tag), f"{name}: {image} is not pinned"


def test_data_lives_in_named_volumes():
    document = raw()
    named = set(document["volumes"])
    expected = {"prometheus": "/prometheus", "alertmanager": "/alertmanager", "grafana": "/var/lib/grafana"}
    for name, target in expected.items():
        volumes = [v.split(":") for v in document["services"][name]["volumes"]]
        sources = [source for source, mounted, *_ in volumes if mounted == target]
        assert len(sources) == 1 and sources[0] in named, f"{name}: {target} in a named volume"
    data_paths = [f"--storage.tsdb.path={expected['prometheus']}", f"--storage.path={expected['alertmanager']} "]
    commands = command_line(document["services"]["prometheus"]) + " " + command_line(document["services"]["alertmanager"])
    assert all(flag in commands + " " for flag in data_paths)


def test_every_mounted_file_exists_in_the_repository():
    mounts = 0
    for name, service in raw()["services"].items():
        for source, target, mode in bind_mounts(service):
            if source.startswith("/"):
                allowed = {PROXY_SERVICE: "/var/run/docker.sock", EXPORTER_SERVICE: "/sys/fs/cgroup"}
                assert allowed.get(name) == source and mode == "ro", f"{name}: host path {source}"
                continue
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name}: {source} does not exist"
            assert ROOT in path.parents, f"{name}: {source} is outside the repository"
            assert mode == "ro", f"{name}: {source} is mounted read-only"
            mounts += 1
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert (context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")).exists()
    assert mounts >= 7
    # The files the bundled configuration loads from the mounted folders.
    assert (ROOT / "prometheus" / "prometheus.yml").is_file()
    assert list((ROOT / "prometheus" / "rules").glob("*.yml"))
    assert (ROOT / "alertmanager" / "alertmanager.yml").is_file()
    prometheus_config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    for pattern in prometheus_config.get("rule_files", []):
        assert list((ROOT / "prometheus").glob(pattern)), f"prometheus.yml loads {pattern}"
    # The --config.file of Prometheus and Alertmanager is the bundled file.
    for name, bundled in (("prometheus", "prometheus/prometheus.yml"), ("alertmanager", "alertmanager/alertmanager.yml")):
        service = raw()["services"][name]
        config_path = re.search(r"--config\.file=(\S+)", command_line(service)).group(1)
        assert host_path(service, config_path) == (ROOT / bundled).resolve(), name
    # Alertmanager's templates are mounted where its configuration looks for them.
    alertmanager = raw()["services"]["alertmanager"]
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    for pattern in config.get("templates", []):
        folder = host_path(alertmanager, str(Path("/etc/alertmanager") / pattern).rsplit("/", 1)[0])
        assert folder is not None and list(folder.glob(pattern.rsplit("/", 1)[1])), pattern


def test_prometheus_scrapes_the_exporter_where_compose_runs_it(resolved):
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for group in jobs["aitools"]["static_configs"] for t in group["targets"]}
    # Linux: the exporter service on the compose network; macOS: the native exporter on the Mac.
    assert f"{EXPORTER_SERVICE}:8730" in targets
    assert "host.docker.internal:8730" in targets
    exporter = resolved["services"][EXPORTER_SERVICE]
    assert exporter["environment"]["AITOOLS_WEB_LISTEN_ADDRESS"] == "0.0.0.0:8730"
    alertmanagers = [t for a in config["alerting"]["alertmanagers"] for g in a["static_configs"] for t in g["targets"]]
    assert alertmanagers == ["alertmanager:9093"]
    assert "--web.listen-address=0.0.0.0:9093" in command_line(resolved["services"]["alertmanager"])


def test_the_containerised_exporter_is_wired_as_documented(resolved):
    exporter = resolved["services"][EXPORTER_SERVICE]
    proxy = resolved["services"][PROXY_SERVICE]
    assert exporter["profiles"] == [PROFILE] and proxy["profiles"] == [PROFILE]
    for name in MONITORING_SERVICES:
        assert not resolved["services"][name].get("profiles"), f"{name} always runs"
    assert exporter["pid"] == "host", "the host's processes"
    environment = exporter["environment"]
    assert environment["DOCKER_HOST"] == f"tcp://{PROXY_SERVICE}:2375"
    assert exporter["depends_on"][PROXY_SERVICE]["condition"] == "service_healthy"
    config_target = environment["AITOOLS_CONFIG_FILE"]
    mounts = {target: source for source, target, _ in bind_mounts(raw()["services"][EXPORTER_SERVICE])}
    assert mounts[config_target] == "./compose/exporter.yml"
    assert exporter["build"]["context"] == str(ROOT)
    # Only the proxy sees the Docker socket, read-only.
    for name, service in raw()["services"].items():
        sockets = [m for m in bind_mounts(service) if "docker.sock" in m[0]]
        if name == PROXY_SERVICE:
            assert sockets == [("/var/run/docker.sock", "/var/run/docker.sock", "ro")]
        else:
            assert not sockets, f"{name} must not mount the Docker socket"
    assert "2375" in [str(p) for p in proxy.get("expose", [])]
    assert proxy["read_only"] is True and exporter["read_only"] is True


def test_dockerfile_installs_the_package_and_runs_the_exporter():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    # Pure Python: one stage, no compiler, the package installed from its source.
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 1
    assert re.search(r"^RUN pip install /src\b", dockerfile, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["aitools-exporter"\]', dockerfile, re.MULTILINE)
    from exporter.service import MALLOC_TUNABLES  # glibc reads them at start: the image sets them as the unit does
    assert re.search(rf"^ENV GLIBC_TUNABLES={re.escape(MALLOC_TUNABLES)}$", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root|0\b)", dockerfile, re.MULTILINE), "not root"
    for copied in re.findall(r"^COPY (?!--from=)(.+) \S+$", dockerfile, re.MULTILINE):
        for source in copied.split():
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}"
    # The build context is only what the image needs (not .venv or .git).
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*" and {"!pyproject.toml", "!README.md", "!exporter/"} <= set(rules)


def test_shipped_exporter_config_is_valid():
    result = subprocess.run([sys.executable, "-m", "exporter", "check-config", "--config.file", str(EXPORTER_CONFIG)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(EXPORTER_CONFIG.read_text())
    assert config["docker"]["host"] is None, "DOCKER_HOST from compose decides"


def test_alertmanager_takes_its_smtp_password_from_the_environment(tmp_path):
    """The compose entrypoint, run for real (container paths moved under tmp_path) with
    Debian's Alertmanager and the bundled configuration."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        missing_realpart("Alertmanager is not installed (apt-get install prometheus-alertmanager)")
    service = raw()["services"]["alertmanager"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    assert service["environment"]["ALERTMANAGER_SMTP_PASSWORD"] == "${ALERTMANAGER_SMTP_PASSWORD:-}"
    script = command_line(service).replace("$$", "$")  # compose's escape of a literal $
    bundled = ROOT / "alertmanager" / "alertmanager.yml"
    password_file = yaml.safe_load(bundled.read_text())["global"]["smtp_auth_password_file"]
    assert f"> {password_file} " in script
    # The file is on a tmpfs of its own, outside the read-only mounts.
    tmpfs = [entry.split(":")[0] for entry in service["tmpfs"]]
    assert str(Path(password_file).parent) in tmpfs
    assert host_path(service, password_file) is None

    etc, secrets = tmp_path / "etc", tmp_path / "secrets"
    etc.mkdir()
    secrets.mkdir()
    secrets_folder = str(Path(password_file).parent)
    (etc / "alertmanager.yml").write_text(bundled.read_text().replace(secrets_folder, str(secrets)))
    shutil.copytree(ROOT / "alertmanager" / "templates", etc / "templates")
    port = _free_port()
    for old, new in ((secrets_folder, str(secrets)), ("/etc/alertmanager", str(etc)),
                     ("exec /bin/alertmanager", f"exec {binary}"),
                     ("--storage.path=/alertmanager", f"--storage.path={tmp_path / 'data'}"),
                     ("--web.listen-address=0.0.0.0:9093", f"--web.listen-address=127.0.0.1:{port}")):
        assert old in script, old
        script = script.replace(old, new)
    secret = "s3cret 'with' \"quotes\" and $HOME"
    env = {"PATH": os.environ["PATH"], "ALERTMANAGER_SMTP_PASSWORD": secret}
    process = subprocess.Popen(["/bin/sh", "-c", script], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "alertmanager.log", "wb"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/status", timeout=5) as answer:
                    status = json.load(answer)
                break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Alertmanager did not start: {(tmp_path / 'alertmanager.log').read_text()[-2000:]}")
            time.sleep(0.2)
        written = secrets / Path(password_file).name
        assert written.read_text() == secret
        assert written.stat().st_mode & 0o777 == 0o600
        assert str(written) in status["config"]["original"], "the bundled configuration reads that file"
        assert secret not in status["config"]["original"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the socket proxy in front of a real engine -------------------------------------------

ALLOWED_PATHS = (r"/version", r"/info", r"/containers/json", r"/containers/{id}/stats")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def proxy(docker_engine, tmp_path_factory):
    """compose/docker-proxy/nginx.conf run by a real nginx, in front of the real engine.
    Only the socket path, the listen address and the scratch paths are changed."""
    nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not nginx:
        missing_realpart("nginx is not installed (apt-get install nginx-light)")
    workdir = tmp_path_factory.mktemp("docker-proxy")
    port = _free_port()
    text = PROXY_CONFIG.read_text()
    replacements = {
        "unix:/var/run/docker.sock": f"unix:{docker_engine.socket_path}",
        "listen 2375;": f"listen 127.0.0.1:{port};",
        "/tmp/nginx": f"{workdir}/nginx",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config = workdir / "nginx.conf"
    config.write_text(text)
    test = subprocess.run([nginx, "-t", "-c", str(config), "-p", str(workdir)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    process = subprocess.Popen([nginx, "-c", str(config), "-p", str(workdir), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "stderr.log", "wb"),
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _request(port, "GET", "/version")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not answer: {(workdir / 'stderr.log').read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def held_container(docker_engine):
    container = docker_engine.run("proxy-test-db", "postgres:15", hold_mb=24,
                                  labels={"com.docker.compose.project": "supabase",
                                          "com.docker.compose.service": "db"})
    yield container
    docker_engine.client.containers.get(container).remove(force=True)


def test_proxy_allows_the_calls_of_the_docker_collector(proxy, held_container):
    import docker

    client = docker.APIClient(base_url=f"tcp://127.0.0.1:{proxy}", version="auto", timeout=30)
    try:
        assert re.fullmatch(r"1\.\d+", client.api_version)  # GET /version negotiated through the proxy
        assert client.info()["MemTotal"] > 0
        listed = client.containers(filters={"status": "running"})
        assert held_container in [c["Id"] for c in listed]
        stats = client.stats(held_container, stream=False, one_shot=True)
        assert stats["memory_stats"]["usage"] >= 24 * MiB
        # Also with an explicit API version prefix, as every docker client sends.
        status, body = _request(proxy, "GET", f"/v{client.api_version}/containers/json?all=1")
        assert status == 200 and held_container.encode() in body
    finally:
        client.close()


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/containers/create?name=evil", b'{"Image": "postgres:15", "Cmd": ["sleep", "1"]}'),
    ("POST", "/v1.41/containers/create?name=evil", b'{"Image": "postgres:15"}'),
    ("POST", "/containers/{id}/stop", None),
    ("POST", "/containers/{id}/kill", None),
    ("DELETE", "/containers/{id}?force=1", None),
    ("POST", "/containers/{id}/exec", b'{"Cmd": ["cat", "/etc/shadow"]}'),
    ("GET", "/containers/{id}/json", None),
    ("GET", "/containers/{id}/logs?stdout=1", None),
    ("GET", "/containers/{id}/export", None),
    ("GET", "/containers/{id}/archive?path=/", None),
    ("GET", "/containers/{id}/top", None),
    ("GET", "/images/json", None),
    ("GET", "/volumes", None),
    ("GET", "/networks", None),
    ("GET", "/events?until=1", None),
    ("GET", "/_ping", None),
    ("HEAD", "/containers/json", None),
    ("PUT", "/containers/json", b"{}"),
    # Paths that only look allowed: the proxy matches and forwards the normalised path.
    ("GET", "/containers/json/../{id}/json", None),
    ("GET", "/containers/{id}/stats/../json", None),
    ("GET", "/containers/{id}%2Fjson", None),
    ("GET", "/containers/json%3Fall=1", None),
    ("GET", "/containers/{id}/stats/../../../images/json", None),
    ("GET", "//containers/{id}/logs", None),
    ("GET", "/v1.41/containers/{id}/logs", None),
    ("GET", "/version/../containers/{id}/json", None),
])
def test_proxy_refuses_everything_else(proxy, held_container, docker_engine, method, path, body):
    status, _ = _request(proxy, method, path.replace("{id}", held_container), body)
    assert status == 403, f"{method} {path} answered {status}"
    # The engine never saw it: the container runs and nothing was created.
    container = docker_engine.client.containers.get(held_container)
    assert container.status == "running"
    assert [c.name for c in docker_engine.client.containers.list(all=True) if c.name == "evil"] == []


def test_exporter_reads_containers_through_the_proxy(proxy, held_container, tmp_path):
    """The exporter configured as compose configures it, DOCKER_HOST pointing at the proxy."""
    config = tmp_path / "config.yml"
    config.write_text("ollama: {url: null}\nlmstudio: {url: null}\ndocker: {host: null}\n")
    port = _free_port()
    env = {**os.environ, "DOCKER_HOST": f"tcp://127.0.0.1:{proxy}", "AITOOLS_CONFIG_FILE": str(config),
           "AITOOLS_WEB_LISTEN_ADDRESS": f"127.0.0.1:{port}"}
    env.pop("DOCKER_TLS_VERIFY", None)
    process = subprocess.Popen([sys.executable, "-m", "exporter"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "exporter.log", "wb"))
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as answer:
                    text = answer.read().decode()
                if f'name="proxy-test-db"' in text:
                    break
            except OSError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.5)
        assert re.search(r"^aitools_docker_up 1(\.0)?$", text, re.MULTILINE), \
            text[-2000:] + (tmp_path / "exporter.log").read_text()[-2000:]
        usage = re.search(r'^aitools_container_memory_usage_bytes\{([^}]*name="proxy-test-db"[^}]*)\} (\S+)$',
                          text, re.MULTILINE)
        assert usage, text[-3000:]
        assert 'compose_project="supabase"' in usage.group(1) and 'family="postgres"' in usage.group(1)
        assert float(usage.group(2)) >= 24 * MiB
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


PARALLEL_CONTAINERS = 40  # more than the 32 calls nginx carried at worker_connections 64


def test_parallel_stats_calls_of_the_exporter_go_through_the_real_proxy(proxy, held_container, docker_engine):
    """The docker collector's stats calls, all at once, through compose's nginx: every one answered."""
    from exporter.collectors.docker import MAX_PARALLEL_STATS, DockerCollector
    from exporter.config import Config, DockerSection

    names = [f"proxy-parallel-{index}" for index in range(PARALLEL_CONTAINERS)]
    started = [docker_engine.run(name, "redis:7") for name in names]
    try:
        collector = DockerCollector(DockerSection(host=f"tcp://127.0.0.1:{proxy}"), timeout=30)
        collector.cgroup_root = None  # as in the exporter's container: every figure through the stats API
        families = {family.name: family for family in collector.collect()}
        usage = {sample.labels["name"]: sample.value
                 for sample in families["aitools_container_memory_usage_bytes"].samples}
    finally:
        for container in started:
            docker_engine.client.containers.get(container).remove(force=True)
    assert PARALLEL_CONTAINERS < MAX_PARALLEL_STATS
    assert set(names) <= set(usage) and "proxy-test-db" in usage
    assert all(usage[name] > 0 for name in names)
