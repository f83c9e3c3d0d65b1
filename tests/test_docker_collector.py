"""The Docker collector against a real engine (tests/parts/docker_engine.py), against a
stand-in engine for the failures a real one will not produce on demand, and its pure
parts: image family, usage arithmetic and host discovery."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from exporter.collectors.base import CollectorError, SourceNotRunning
from exporter.collectors.docker import DockerCollector, image_family, memory_usage, resolve_docker_host
from exporter.config import Config, DockerSection
from exporter.scrape import Scraper
from tests.conftest import missing_realpart
from tests.parts.docker_engine import DockerEngine, EngineUnavailable

MiB = 2**20
USAGE = "aitools_container_memory_usage_bytes"
LIMIT = "aitools_container_memory_limit_bytes"


def compose(project: str, service: str) -> dict[str, str]:
    return {"com.docker.compose.project": project, "com.docker.compose.service": service}


def collect(collector: DockerCollector) -> tuple[dict[str, list], CollectorError | None]:
    """Samples by family name, and the CollectorError the collector ended with (if any)."""
    families, error = [], None
    try:
        for family in collector.collect():
            families.append(family)
    except CollectorError as exc:
        error = exc
    return {family.name: family.samples for family in families}, error


def by_container(samples: list) -> dict[str, tuple[dict, float]]:
    return {sample.labels["name"]: (sample.labels, sample.value) for sample in samples}


def docker_up(families: dict[str, list]) -> float:
    [sample] = families["aitools_docker_up"]
    return sample.value


# --- against a real engine ----------------------------------------------------------

# name: what the container runs (DockerEngine.run arguments) and the labels it must get
CONTAINERS = {
    "supabase-db": dict(
        run=dict(image="supabase/postgres:15.1.0.147", hold_mb=30, memory_limit="64m", labels=compose("supabase", "db")),
        labels=dict(image="supabase/postgres:15.1.0.147", family="postgres", compose_project="supabase", compose_service="db")),
    "supabase-realtime": dict(
        run=dict(image="busybox:local", hold_mb=10, labels=compose("supabase", "realtime")),
        labels=dict(image="busybox:local", family="busybox", compose_project="supabase", compose_service="realtime")),
    "dev-postgres": dict(
        run=dict(image="postgres:15", hold_mb=20),
        labels=dict(image="postgres:15", family="postgres", compose_project="", compose_service="")),
    "cache": dict(
        run=dict(image="redis:7", hold_mb=5, file_cache_mb=20),
        labels=dict(image="redis:7", family="redis", compose_project="", compose_service="")),
    "llm": dict(
        run=dict(image="ollama/ollama:latest", hold_mb=40),
        labels=dict(image="ollama/ollama:latest", family="ollama", compose_project="", compose_service="")),
}


@pytest.fixture(scope="module")
def containers(docker_engine):
    """The containers above, running and holding their memory, plus one that has exited."""
    ids = {name: docker_engine.run(name, **spec["run"]) for name, spec in CONTAINERS.items()}
    exited = docker_engine.client.containers.run("busybox:local", ["true"], name="exited",
                                                 network_mode="none", detach=True)
    exited.wait(timeout=30)
    ids["exited"] = exited.id
    yield ids
    for container_id in ids.values():
        docker_engine.client.api.remove_container(container_id, force=True)


@pytest.fixture(params=["cgroup files", "stats API"])
def collector(request, docker_engine):
    """Both ways of reading: the cgroup files where visible, and the engine's stats API."""
    collector = DockerCollector(DockerSection(host=docker_engine.host), timeout=3)
    if request.param == "stats API":
        collector.cgroup_root = None
    elif collector.cgroup_root is None:
        missing_realpart("no /sys/fs/cgroup on this machine")
    return collector


def engine_figures(engine: DockerEngine, ids: dict[str, str]) -> dict[str, int]:
    """What `docker stats` shows, from the engine's raw numbers (cgroup v1 here). Asked all
    at once: one by one, each costs up to a second of the engine's stats loop."""
    def figure(container_id: str) -> int:
        memory = engine.memory_stats(container_id)
        return memory["usage"] - memory["stats"]["total_inactive_file"]
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        return dict(zip(ids, pool.map(figure, ids.values())))


def test_engine_answering_gives_docker_up_1(containers, collector):
    families, error = collect(collector)
    assert error is None
    assert docker_up(families) == 1


def test_usage_is_the_engines_usage_less_inactive_file(docker_engine, containers, collector):
    ours = {name: containers[name] for name in CONTAINERS}
    before = engine_figures(docker_engine, ours)
    families, error = collect(collector)
    after = engine_figures(docker_engine, ours)
    assert error is None
    usage = by_container(families[USAGE])
    for name, spec in CONTAINERS.items():
        _, value = usage[name]
        assert min(before[name], after[name]) <= value <= max(before[name], after[name]), name
        held = spec["run"]["hold_mb"] * MiB
        assert held <= value <= held + 8 * MiB, f"{name} holds {held} bytes, reported {value}"


def test_file_cache_is_left_out_of_usage(docker_engine, containers, collector):
    families, _ = collect(collector)
    _, value = by_container(families[USAGE])["cache"]
    memory = docker_engine.memory_stats(containers["cache"])
    # The 20 MiB file sits in the page cache, which the engine's usage includes (room is
    # left for the kernel reclaiming some of it).
    assert memory["stats"]["total_inactive_file"] >= 10 * MiB, memory
    assert value <= memory["usage"] - 10 * MiB, (value, memory)


def test_the_engines_machine_memory_is_its_info_memtotal(docker_engine, containers, collector):
    # Docker Desktop's VM limit on a Mac; here the engine's host: the same /info field.
    families, error = collect(collector)
    assert error is None
    [sample] = families["aitools_docker_vm_memory_limit_bytes"]
    assert sample.value == docker_engine.client.info()["MemTotal"] > 0


def test_limit_is_exact_and_absent_without_one(containers, collector):
    families, _ = collect(collector)
    limits = by_container(families[LIMIT])
    assert {name: value for name, (_, value) in limits.items() if name in CONTAINERS} == {"supabase-db": 64 * MiB}


def test_labels_name_image_family_and_compose(containers, collector):
    families, _ = collect(collector)
    usage = by_container(families[USAGE])
    for name, spec in CONTAINERS.items():
        labels, _ = usage[name]
        assert labels == {"name": name, **spec["labels"]}
    limit_labels, _ = by_container(families[LIMIT])["supabase-db"]
    assert limit_labels == usage["supabase-db"][0]


def test_two_postgres_images_are_one_family(containers, collector):
    families, _ = collect(collector)
    postgres = sorted(name for name, (labels, _) in by_container(families[USAGE]).items()
                      if labels["family"] == "postgres")
    assert postgres == ["dev-postgres", "supabase-db"]


def test_containers_that_are_not_running_are_left_out(containers, collector):
    families, _ = collect(collector)
    assert "exited" not in by_container(families[USAGE])


def test_host_found_from_docker_host_when_not_configured(docker_engine, containers, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    collector = DockerCollector(timeout=3)
    families, error = collect(collector)
    assert error is None and docker_up(families) == 1
    assert collector.host == docker_engine.host
    assert set(CONTAINERS) <= set(by_container(families[USAGE]))


def test_stopped_engine_gives_docker_up_0_and_a_clear_error():
    engine = DockerEngine()
    try:
        engine.start(build_images=False)
    except EngineUnavailable as exc:
        from tests.conftest import missing_realpart
        missing_realpart(f"cannot start a Docker engine: {exc}")
    host = engine.host
    try:
        collector = DockerCollector(DockerSection(host=host), timeout=2)
        families, error = collect(collector)
        assert error is None and docker_up(families) == 1
        assert families[USAGE] == []
    finally:
        engine.close()
    started = time.monotonic()
    families, error = collect(collector)
    assert time.monotonic() - started < 2
    assert docker_up(families) == 0
    assert str(error) == f"cannot reach the Docker engine at {host}: no socket there (is the engine running?)"
    assert USAGE not in families


# --- failures, against a stand-in engine ---------------------------------------------

HOST_MEMORY = 16 * 2**30
HANG = object()  # the stand-in takes the request and never answers


def summary(container_id: str, name: str, image: str = "postgres:15", labels: dict | None = None) -> dict:
    return {"Id": container_id, "Names": [f"/{name}"], "Image": image, "Labels": labels or {}, "State": "running"}


def stats_v1(usage: int, inactive_file: int, limit: int = HOST_MEMORY) -> dict:
    return {"memory_stats": {"usage": usage, "limit": limit,
                             "stats": {"total_inactive_file": inactive_file, "inactive_file": inactive_file}}}


class StandInEngine:
    """Answers the engine's endpoints from `answers` (path without API version or query:
    (status, JSON document or raw bytes), or HANG) on a unix socket."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="aitools-fake-docker-", dir="/tmp")
        self.socket_path = f"{self.folder}/docker.sock"
        self.host = f"unix://{self.socket_path}"
        self.requests: list[str] = []
        self.connections = 0
        self.released = threading.Event()
        self.answers: dict[str, object] = {
            "/version": (200, {"ApiVersion": "1.41", "Version": "20.10.24"}),
            "/info": (200, {"MemTotal": HOST_MEMORY}),
            "/containers/json": (200, [summary("a" * 64, "db"), summary("b" * 64, "cache", "redis:7")]),
            f"/containers/{'a' * 64}/stats": (200, stats_v1(usage=30 * MiB, inactive_file=2 * MiB, limit=64 * MiB)),
            f"/containers/{'b' * 64}/stats": (200, stats_v1(usage=10 * MiB, inactive_file=0)),
        }
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real engine

            def setup(self):
                super().setup()
                engine.connections += 1

            def do_GET(self):
                path = re.sub(r"^/v[0-9.]+/", "/", urlsplit(self.path).path)
                engine.requests.append(path)
                answer = engine.answers.get(path, (404, {"message": f"no such container: {path}"}))
                if answer is HANG:
                    engine.released.wait(30)
                    self.close_connection = True
                    return
                status, body = answer
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingUnixStreamServer):
            request_queue_size = 128  # many stats at once, as dockerd takes them
            daemon_threads = True

        self.server = Server(self.socket_path, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def stand_in():
    engine = StandInEngine()
    yield engine
    engine.close()


def stand_in_collector(engine: StandInEngine, timeout: float = 2) -> DockerCollector:
    return DockerCollector(DockerSection(host=engine.host), timeout=timeout)


def test_stand_in_readings(stand_in):
    families, error = collect(stand_in_collector(stand_in))
    assert error is None
    assert {name: value for name, (_, value) in by_container(families[USAGE]).items()} == {
        "db": 28 * MiB, "cache": 10 * MiB}
    assert {name: value for name, (_, value) in by_container(families[LIMIT]).items()} == {"db": 64 * MiB}
    assert [sample.value for sample in families["aitools_docker_vm_memory_limit_bytes"]] == [HOST_MEMORY]


def test_cgroup_v2_stats_subtract_inactive_file(stand_in):
    stand_in.answers[f"/containers/{'b' * 64}/stats"] = (200, {"memory_stats": {
        "usage": 100 * MiB, "limit": HOST_MEMORY, "stats": {"inactive_file": 30 * MiB, "active_file": 5 * MiB}}})
    families, _ = collect(stand_in_collector(stand_in))
    assert by_container(families[USAGE])["cache"][1] == 70 * MiB
    assert "cache" not in by_container(families[LIMIT])


def test_only_the_read_only_endpoints_are_called_and_the_client_is_reused(stand_in):
    collector = stand_in_collector(stand_in)
    _, error = collect(collector)
    assert error is None
    connections_of_first_scrape = stand_in.connections
    for _ in range(2):
        _, error = collect(collector)
        assert error is None
    one_scrape = ["/containers/json", f"/containers/{'a' * 64}/stats", f"/containers/{'b' * 64}/stats"]
    assert sorted(stand_in.requests) == sorted(["/version", "/info"] + 3 * one_scrape)
    # Kept across scrapes: one connection per call in flight at once (the two stats calls
    # may or may not overlap), never one per request (11 requests here).
    assert 1 <= connections_of_first_scrape <= stand_in.connections <= 2


def test_many_containers_are_read_at_once(stand_in):
    ids = [f"{index:064x}" for index in range(40)]
    stand_in.answers["/containers/json"] = (200, [summary(cid, f"c{index}") for index, cid in enumerate(ids)])
    stand_in.answers.update({f"/containers/{cid}/stats": (200, stats_v1(index * MiB, 0)) for index, cid in enumerate(ids)})
    families, error = collect(stand_in_collector(stand_in))
    assert error is None
    assert {name: value for name, (_, value) in by_container(families[USAGE]).items()} == {
        f"c{index}": index * MiB for index in range(40)}


def test_container_gone_between_list_and_stats_is_skipped(stand_in):
    del stand_in.answers[f"/containers/{'a' * 64}/stats"]  # the stand-in answers 404, as the engine does
    families, error = collect(stand_in_collector(stand_in))
    assert error is None
    assert list(by_container(families[USAGE])) == ["cache"]


def test_container_stopped_between_list_and_stats_is_skipped(stand_in):
    stand_in.answers[f"/containers/{'a' * 64}/stats"] = (200, {"memory_stats": {}, "name": "/db"})
    families, error = collect(stand_in_collector(stand_in))
    assert error is None
    assert list(by_container(families[USAGE])) == ["cache"]


def test_engine_error_500(stand_in):
    stand_in.answers["/containers/json"] = (500, {"message": "containerd is not running"})
    families, error = collect(stand_in_collector(stand_in))
    assert docker_up(families) == 0
    assert str(error) == (f"the Docker engine at {stand_in.host} answered GET /containers/json "
                          "with HTTP 500: containerd is not running")


def test_malformed_container_list(stand_in):
    stand_in.answers["/containers/json"] = (200, b'[{"Id": "aaa", "Names": [')
    families, error = collect(stand_in_collector(stand_in))
    assert docker_up(families) == 0
    assert str(error).startswith(f"the Docker engine at {stand_in.host} sent a malformed answer to GET /containers/json: ")


def test_container_list_of_the_wrong_shape(stand_in):
    stand_in.answers["/containers/json"] = (200, {"containers": []})
    families, error = collect(stand_in_collector(stand_in))
    assert docker_up(families) == 0
    assert str(error) == (f"the Docker engine at {stand_in.host} sent a malformed answer: "
                          "GET /containers/json did not give a list of containers")


def test_malformed_stats_fail_the_collector_but_the_engine_is_up(stand_in):
    stand_in.answers[f"/containers/{'b' * 64}/stats"] = (200, b"{not json")
    families, error = collect(stand_in_collector(stand_in))
    assert docker_up(families) == 1
    assert USAGE not in families
    assert str(error).startswith(f"the Docker engine at {stand_in.host} sent a malformed answer to "
                                 f"GET /containers/{'b' * 12}/stats: ")


def test_no_answer_ends_within_the_timeout(stand_in):
    stand_in.answers["/version"] = HANG
    started = time.monotonic()
    families, error = collect(stand_in_collector(stand_in, timeout=1))
    assert time.monotonic() - started < 1.3
    assert docker_up(families) == 0
    assert str(error) == f"the Docker engine at {stand_in.host} did not answer GET /version within 1s"


def test_stats_without_answer_end_within_the_timeout(stand_in):
    stand_in.answers[f"/containers/{'a' * 64}/stats"] = HANG
    started = time.monotonic()
    families, error = collect(stand_in_collector(stand_in, timeout=1))
    assert time.monotonic() - started < 1.3
    assert docker_up(families) == 1
    assert str(error) == f"the Docker engine at {stand_in.host} did not answer GET /containers/{{id}}/stats within 1s"


def test_client_is_made_anew_after_a_failure(stand_in):
    collector = stand_in_collector(stand_in)
    stand_in.answers["/containers/json"], working_list = (500, {"message": "restarting"}), stand_in.answers["/containers/json"]
    _, error = collect(collector)
    assert error is not None
    stand_in.answers["/containers/json"] = working_list
    families, error = collect(collector)
    assert error is None and docker_up(families) == 1
    assert stand_in.requests.count("/version") == 2


def test_nothing_listening_on_the_socket():
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        path = f"{folder}/docker.sock"
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(path)  # the file exists; nobody accepts
        families, error = collect(DockerCollector(DockerSection(host=f"unix://{path}"), timeout=1))
    assert docker_up(families) == 0
    assert str(error) == f"cannot reach the Docker engine at unix://{path}: connection refused"
    assert isinstance(error, SourceNotRunning)  # Docker Desktop quit: not running, not failing


def test_no_socket_at_the_path(tmp_path):
    host = f"unix://{tmp_path}/docker.sock"
    families, error = collect(DockerCollector(DockerSection(host=host), timeout=1))
    assert docker_up(families) == 0
    assert str(error) == f"cannot reach the Docker engine at {host}: no socket there (is the engine running?)"
    assert isinstance(error, SourceNotRunning)
    scraper = Scraper([DockerCollector(DockerSection(host=host), timeout=1)], timeout=1)
    samples = {(s.name, tuple(s.labels.items())): s.value for f in scraper.collect_once() for s in f.samples}
    assert samples[("aitools_collector_success", (("collector", "docker"),))] == 0
    assert samples[("aitools_collector_source_running", (("collector", "docker"),))] == 0


def test_scrape_publishes_docker_up_0_when_the_engine_is_unreachable(tmp_path):
    """The orchestrator keeps what a collector yielded before its CollectorError."""
    scraper = Scraper([DockerCollector(DockerSection(host=f"unix://{tmp_path}/docker.sock"), timeout=1)], timeout=1)
    samples = {sample.name: sample for family in scraper.collect_once() for sample in family.samples}
    assert samples["aitools_docker_up"].value == 0
    assert samples["aitools_collector_success"].labels == {"collector": "docker"}
    assert samples["aitools_collector_success"].value == 0


# --- pure parts ---------------------------------------------------------------------

@pytest.mark.parametrize("image, family", [
    ("postgres", "postgres"),
    ("postgres:15", "postgres"),
    ("supabase/postgres:15.1.0.147", "postgres"),
    ("registry.example.com:5000/org/postgres@sha256:" + "0" * 64, "postgres"),
    ("registry.example.com:5000/org/postgres:15@sha256:" + "0" * 64, "postgres"),
    ("localhost:5000/redis", "redis"),
    ("ghcr.io/open-webui/open-webui:main", "open-webui"),
    ("ollama/ollama:latest", "ollama"),
    ("sha256:" + "ab" * 32, ""),  # the list gives the image ID when the tag has moved on
    ("ab" * 32, ""),
])
def test_image_family(image, family):
    assert image_family(image) == family


@pytest.mark.parametrize("memory_stats, expected", [
    ({"usage": 100, "stats": {"total_inactive_file": 30, "inactive_file": 10}}, 70),  # cgroup v1: the hierarchical total
    ({"usage": 100, "stats": {"inactive_file": 30}}, 70),  # cgroup v2
    ({"usage": 100, "stats": {}}, 100),
    ({"usage": 100}, 100),
    ({"usage": 100, "stats": {"inactive_file": 100}}, 100),  # as the docker CLI: never subtracted to 0 or below
    ({"usage": 100, "stats": {"inactive_file": 150}}, 100),
])
def test_memory_usage_as_docker_stats(memory_stats, expected):
    assert memory_usage(memory_stats) == expected


def write_json(path: Path, document) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def add_context(config_dir: Path, name: str, host: str) -> None:
    # The CLI names the folder after the SHA-256 of the context name; any folder name will do here.
    write_json(config_dir / "contexts" / "meta" / f"folder-of-{name}" / "meta.json",
               {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}})


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_docker_host_comes_first(home):
    write_json(home / ".docker" / "config.json", {"currentContext": "colima"})
    add_context(home / ".docker", "colima", "unix:///colima.sock")
    assert resolve_docker_host({"DOCKER_HOST": "tcp://127.0.0.1:2375"}, home, "darwin") == "tcp://127.0.0.1:2375"


def test_current_context_of_the_config_file(home):
    write_json(home / ".docker" / "config.json", {"auths": {}, "currentContext": "colima"})
    add_context(home / ".docker", "desktop-linux", f"unix://{home}/.docker/run/docker.sock")
    add_context(home / ".docker", "colima", f"unix://{home}/.colima/default/docker.sock")
    assert resolve_docker_host({}, home, "darwin") == f"unix://{home}/.colima/default/docker.sock"


def test_docker_context_variable_overrides_the_config_file(home):
    write_json(home / ".docker" / "config.json", {"currentContext": "colima"})
    add_context(home / ".docker", "colima", "unix:///colima.sock")
    add_context(home / ".docker", "rootless", "unix:///run/user/1000/docker.sock")
    assert resolve_docker_host({"DOCKER_CONTEXT": "rootless"}, home, "linux") == "unix:///run/user/1000/docker.sock"


def test_docker_config_moves_the_config_folder(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_json(elsewhere / "config.json", {"currentContext": "remote"})
    add_context(elsewhere, "remote", "tcp://10.0.0.5:2376")
    write_json(home / ".docker" / "config.json", {"currentContext": "ignored"})
    assert resolve_docker_host({"DOCKER_CONFIG": str(elsewhere)}, home, "linux") == "tcp://10.0.0.5:2376"


@pytest.mark.parametrize("config", [
    {"currentContext": "default"},
    {"currentContext": "gone"},  # no meta.json names it
    {},
    "not json {",
    ["a", "list"],
])
def test_no_usable_context_falls_back_to_the_socket(home, tmp_path, config):
    config_file = home / ".docker" / "config.json"
    if isinstance(config, str):
        config_file.parent.mkdir(parents=True)
        config_file.write_text(config)
    else:
        write_json(config_file, config)
    add_context(home / ".docker", "other", "unix:///other.sock")
    system_socket = tmp_path / "var-run-docker.sock"
    assert resolve_docker_host({}, home, "linux", str(system_socket)) == f"unix://{system_socket}"


def test_malformed_context_meta_is_ignored(home, tmp_path):
    write_json(home / ".docker" / "config.json", {"currentContext": "broken"})
    write_json(home / ".docker" / "contexts" / "meta" / "x" / "meta.json", {"Name": "broken", "Endpoints": ["no"]})
    system_socket = tmp_path / "docker.sock"
    assert resolve_docker_host({}, home, "linux", str(system_socket)) == f"unix://{system_socket}"


def test_macos_prefers_the_docker_desktop_socket(home, tmp_path):
    desktop = home / ".docker" / "run" / "docker.sock"
    desktop.parent.mkdir(parents=True)
    desktop.touch()
    system_socket = tmp_path / "var-run-docker.sock"
    system_socket.touch()
    assert resolve_docker_host({}, home, "darwin", str(system_socket)) == f"unix://{desktop}"


def test_macos_older_docker_desktop_socket(home, tmp_path):
    system_socket = tmp_path / "var-run-docker.sock"
    system_socket.touch()
    assert resolve_docker_host({}, home, "darwin", str(system_socket)) == f"unix://{system_socket}"


def test_macos_without_any_socket_names_docker_desktops(home, tmp_path):
    assert (resolve_docker_host({}, home, "darwin", str(tmp_path / "none.sock"))
            == f"unix://{home}/.docker/run/docker.sock")


def test_linux_system_socket_first(home, tmp_path):
    system_socket = tmp_path / "var-run-docker.sock"
    system_socket.touch()
    runtime = tmp_path / "run-user-1000"
    (runtime / "docker.sock").parent.mkdir()
    (runtime / "docker.sock").touch()
    assert resolve_docker_host({"XDG_RUNTIME_DIR": str(runtime)}, home, "linux", str(system_socket)) == f"unix://{system_socket}"


def test_linux_rootless_socket(home, tmp_path):
    runtime = tmp_path / "run-user-1000"
    runtime.mkdir()
    (runtime / "docker.sock").touch()
    assert (resolve_docker_host({"XDG_RUNTIME_DIR": str(runtime)}, home, "linux", str(tmp_path / "none.sock"))
            == f"unix://{runtime}/docker.sock")


def test_linux_without_any_socket_names_the_system_one(home):
    assert resolve_docker_host({}, home, "linux", "/nonexistent/docker.sock") == "unix:///nonexistent/docker.sock"


def test_windows_named_pipe(home):
    assert resolve_docker_host({}, home, "win32") == "npipe:////./pipe/docker_engine"


# --- the cgroup fast path ------------------------------------------------------------

def test_cgroup_files_give_the_engines_figures(docker_engine, containers):
    """Where the engine's cgroups are visible (here), they answer; the API path must agree."""
    from exporter.collectors.docker import CGROUP_ROOT, cgroup_memory

    ours = {name: containers[name] for name in CONTAINERS}
    found = {name: cgroup_memory(CGROUP_ROOT, container_id) for name, container_id in ours.items()}
    if any(figures is None for figures in found.values()):
        missing_realpart("the engine's memory cgroups are not visible under /sys/fs/cgroup")
    fast = DockerCollector(DockerSection(host=docker_engine.host), timeout=3)
    through_api = DockerCollector(DockerSection(host=docker_engine.host), timeout=3)
    through_api.cgroup_root = None
    fast_usage = by_container(collect(fast)[0][USAGE])
    api_usage = by_container(collect(through_api)[0][USAGE])
    for name, spec in CONTAINERS.items():
        held = spec["run"]["hold_mb"] * MiB
        assert held <= fast_usage[name][1] <= held + 8 * MiB, name
        assert abs(fast_usage[name][1] - api_usage[name][1]) <= 2 * MiB, name
        assert fast_usage[name][0] == api_usage[name][0]  # same labels
    assert found["supabase-db"][1] == 64 * MiB and found["dev-postgres"][1] is None
    assert by_container(collect(fast)[0][LIMIT]).keys() & CONTAINERS.keys() == {"supabase-db"}


def test_cgroup_figures_follow_a_container_and_a_stopped_one_is_gone(docker_engine, containers):
    """The cgroup files are read anew at every scrape: the figures follow the container's
    memory as it changes, and a container that stopped is gone at the next scrape."""
    from exporter.collectors.docker import CGROUP_ROOT, cgroup_memory

    if cgroup_memory(CGROUP_ROOT, containers["supabase-realtime"]) is None:
        missing_realpart("the engine's memory cgroups are not visible under /sys/fs/cgroup")
    collector = DockerCollector(DockerSection(host=docker_engine.host), timeout=3)
    before = by_container(collect(collector)[0][USAGE])["supabase-realtime"][1]
    container = docker_engine.client.containers.get(containers["supabase-realtime"])
    container.exec_run(["sh", "-c", "dd if=/dev/zero of=/dev/shm/more bs=1M count=20 2>/dev/null"])
    after = by_container(collect(collector)[0][USAGE])["supabase-realtime"][1]
    assert 12 * MiB <= after - before <= 22 * MiB  # 20 MiB more in /dev/shm, less what the kernel reclaimed
    assert abs(after - cgroup_memory(CGROUP_ROOT, containers["supabase-realtime"])[0]) < MiB
    container.stop(timeout=1)
    assert "supabase-realtime" not in by_container(collect(collector)[0][USAGE])


def test_cgroup_v2_files(tmp_path):
    from exporter.collectors.docker import cgroup_memory

    container_id = "a" * 64
    directory = tmp_path / "system.slice" / f"docker-{container_id}.scope"
    directory.mkdir(parents=True)
    (directory / "memory.current").write_text("104857600\n")
    (directory / "memory.max").write_text("max\n")
    (directory / "memory.stat").write_text("anon 80000000\nfile 20000000\ninactive_file 4857600\nactive_file 1\n")
    assert cgroup_memory(tmp_path, container_id) == (100_000_000, None)
    (directory / "memory.max").write_text("268435456\n")
    assert cgroup_memory(tmp_path, container_id) == (100_000_000, 256 * MiB)
    assert cgroup_memory(tmp_path, "b" * 64) is None
    assert cgroup_memory(tmp_path, "../../etc") is None
    (directory / "memory.stat").write_text("garbage")
    assert cgroup_memory(tmp_path, container_id) == (104857600, 256 * MiB)
    (directory / "memory.current").write_text("not a number")
    assert cgroup_memory(tmp_path, container_id) is None
