"""The receiver's fixes against real parts: a real Docker engine, the Ollama and LM Studio
stand-ins (with their documented unload requests, tests/parts/llm_unload.py), a real node
started with --heapsnapshot-signal=SIGUSR2. Forged and stale alerts are refused and
nothing is done; every decision is one JSON line in the audit log and counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker.errors
import pytest

from exporter.actions import Container, duplicates_to_stop, is_duplicated
from exporter.config import parse_config
from exporter.notify import Notifier
from exporter.receiver import Receiver, start_receiver
from tests.conftest import missing_realpart
from tests.parts.docker_engine import BASE_IMAGE
from tests.parts.llm_unload import LMStudioWithUnload, OllamaWithUnload
from tests.parts.recorders import Recorders
from tests.test_receiver import TOKEN, Running, alert, payload

NODE_SERVER = Path(__file__).parent / "parts" / "node" / "memory_server.js"
GB = 10**9


@pytest.fixture
def recorders(tmp_path) -> Recorders:
    return Recorders(tmp_path / "bin", ("notify-send",))


@pytest.fixture
def receiver_for(tmp_path, recorders):
    """receiver_for(config_text) -> a running receiver with that config and the token."""
    started = []

    def make(config_text: str) -> Running:
        (tmp_path / "token").write_text(TOKEN)
        config = parse_config(config_text + f"receiver: {{token_file: {tmp_path / 'token'}}}\n")
        env = {"PATH": str(recorders.folder), "DISPLAY": ":0", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}
        receiver = Receiver(config, tmp_path / "audit.jsonl", notifier=Notifier("linux", env))
        running = Running(receiver, start_receiver("127.0.0.1:0", receiver))
        started.append(running)
        return running

    yield make
    for running in started:
        running.server.shutdown()
        running.server.server_close()


def audit(tmp_path: Path) -> list[dict]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def notified(recorders: Recorders) -> list[str]:
    return [call[4] for call in recorders.calls("notify-send")]


# ------------------------------------------------------------------ the duplicate rule

def copies(*specs: tuple[str, str]) -> list[Container]:
    return [Container(name, "postgres:15", "postgres", project, "db", 1.0) for name, project in specs]


def test_duplicate_rule_as_rules10_defines_it():
    # Replicas or siblings inside one compose project are no duplicates.
    assert not is_duplicated(copies(("a-db-1", "a"), ("a-db-2", "a")))
    assert not is_duplicated(copies(("lonely", "")))
    # Two projects, or one outside any project beside another, are.
    assert is_duplicated(copies(("supabase_db", "supabase"), ("uat-postgres", "universal-ai-tools")))
    assert is_duplicated(copies(("supabase_db", "supabase"), ("stray", "")))
    assert is_duplicated(copies(("stray-1", ""), ("stray-2", "")))


def test_which_copy_is_the_duplicate():
    stop, _ = duplicates_to_stop(copies(("supabase_db", "supabase"), ("stray", "")), ())
    assert [c.name for c in stop] == ["stray"]
    stop, _ = duplicates_to_stop(copies(("supabase_db", "supabase"), ("uat", "universal-ai-tools")), ("supabase",))
    assert [c.name for c in stop] == ["uat"]
    stop, why = duplicates_to_stop(copies(("supabase_db", "supabase"), ("uat", "universal-ai-tools")), ())
    assert stop == [] and "neither keep_projects nor" in why
    stop, why = duplicates_to_stop(copies(("stray-1", ""), ("stray-2", "")), ())
    assert stop == []
    stop, why = duplicates_to_stop(copies(("a-db-1", "a"), ("a-db-2", "a")), ("b",))
    assert stop == [] and why == "no duplicate now"


# ------------------------------------------------------------------ a real Docker engine

@pytest.fixture
def engine(docker_engine):
    docker_engine.stop_all()
    yield docker_engine
    docker_engine.stop_all()
    for volume in docker_engine.client.volumes.list():
        if volume.name.startswith("aitools-test-"):
            volume.remove(force=True)


def run(engine, name: str, image: str, project: str | None = None, volume: str | None = None):
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": "db"} if project else {}
    volumes = {volume: {"bind": "/data", "mode": "rw"}} if volume else None
    return engine.client.containers.run(image, ["sleep", "1000000"], name=name, detach=True, network_mode="none",
                                        labels=labels, volumes=volumes)


def status(engine, name: str) -> str:
    container = engine.client.containers.get(name)
    return container.status


def docker_config(engine, keep: str = "[]", dry_run: str = "false") -> str:
    return (f"docker: {{host: '{engine.host}'}}\nollama: {{url: null}}\nlmstudio: {{url: null}}\n"
            f"actions: {{enabled: [stop_duplicate_container], dry_run: {dry_run}, keep_projects: {keep}}}\n")


def duplicate_alert(family: str = "postgres") -> dict:
    return alert("AitoolsDuplicateService", family=family, component="docker",
                 summary=f"2 {family} containers run at once")


def test_the_stray_copy_is_stopped_the_compose_one_untouched_its_volume_kept(engine, receiver_for, recorders, tmp_path):
    run(engine, "supabase_db_app", "supabase/postgres:15.1.0.147", project="supabase", volume="aitools-test-supabase-db")
    run(engine, "stray-postgres", "postgres:15")
    running = receiver_for(docker_config(engine))
    assert running.post(payload([duplicate_alert()])).status_code == 200
    running.settle()

    assert status(engine, "stray-postgres") == "exited"          # stopped...
    assert engine.client.containers.get("stray-postgres")        # ...not removed
    assert status(engine, "supabase_db_app") == "running"
    assert engine.client.volumes.get("aitools-test-supabase-db").name == "aitools-test-supabase-db"
    (entry,) = audit(tmp_path)
    assert {k: entry[k] for k in ("alert", "action", "target", "result")} == {
        "alert": "AitoolsDuplicateService", "action": "stop_duplicate_container", "target": "stray-postgres",
        "result": "done"}
    assert entry["command"] == "docker stop stray-postgres" and entry["dry_run"] is False
    datetime.fromisoformat(entry["time"])
    assert running.metric("aitools_receiver_actions_total", action="stop_duplicate_container", result="done") == 1
    assert "Done: docker stop stray-postgres" in notified(recorders)[0]


def test_keep_projects_decides_between_two_compose_projects(engine, receiver_for, tmp_path):
    run(engine, "supabase_db_app", "supabase/postgres:15.1.0.147", project="supabase")
    run(engine, "universal-ai-tools-postgres", "postgres:15", project="universal-ai-tools")
    running = receiver_for(docker_config(engine, keep="[supabase]"))
    running.post(payload([duplicate_alert()]))
    running.settle()
    assert status(engine, "universal-ai-tools-postgres") == "exited"
    assert status(engine, "supabase_db_app") == "running"
    assert audit(tmp_path)[0]["result"] == "done"


def test_undecidable_does_nothing_and_names_the_command(engine, receiver_for, recorders, tmp_path):
    run(engine, "supabase_db_app", "supabase/postgres:15.1.0.147", project="supabase")
    run(engine, "universal-ai-tools-postgres", "postgres:15", project="universal-ai-tools")
    running = receiver_for(docker_config(engine))
    running.post(payload([duplicate_alert()]))
    running.settle()
    assert status(engine, "universal-ai-tools-postgres") == "running"
    assert status(engine, "supabase_db_app") == "running"
    (entry,) = audit(tmp_path)
    assert entry["result"] == "refused" and "neither keep_projects nor" in entry["reason"]
    (text,) = notified(recorders)
    assert "Not done: postgres: neither keep_projects nor the outside-any-project rule decides" in text
    assert "to do it yourself: `docker stop " in text and "universal-ai-tools-postgres`" in text


def test_forged_or_stale_duplicate_alerts_are_refused(engine, receiver_for, tmp_path):
    run(engine, "supabase_db_app", "supabase/postgres:15.1.0.147", project="supabase")
    run(engine, "redis-lonely", "redis:7")
    running = receiver_for(docker_config(engine))
    # A family that runs once (redis), one that does not run at all (mysql), a resolved alert.
    running.post(payload([duplicate_alert("redis"), duplicate_alert("mysql")], group="g1"))
    running.post(payload([dict(duplicate_alert("postgres"), status="resolved")], group="g2"))
    running.settle()
    assert status(engine, "redis-lonely") == "running" and status(engine, "supabase_db_app") == "running"
    entries = audit(tmp_path)
    assert [(e["target"], e["result"]) for e in entries] == [("redis", "refused"), ("mysql", "refused")]
    assert all("no duplicate now" in e["reason"] for e in entries)
    assert running.metric("aitools_receiver_actions_total", action="stop_duplicate_container", result="refused") == 2


def test_dry_run_by_default_says_what_it_would_do(engine, receiver_for, recorders, tmp_path):
    run(engine, "supabase_db_app", "supabase/postgres:15.1.0.147", project="supabase")
    run(engine, "stray-postgres", "postgres:15")
    running = receiver_for(f"docker: {{host: '{engine.host}'}}\nollama: {{url: null}}\nlmstudio: {{url: null}}\n"
                           "actions: {enabled: [stop_duplicate_container]}\n")
    running.post(payload([duplicate_alert()]))
    running.settle()
    assert status(engine, "stray-postgres") == "running"
    assert audit(tmp_path)[0]["result"] == "dry_run"
    assert "Dry run, would run: docker stop stray-postgres" in notified(recorders)[0]
    # One action per alert group per cool-down: the same group again is refused.
    running.post(payload([duplicate_alert()]))
    running.settle()
    assert audit(tmp_path)[1]["result"] == "refused" and "cool-down" in audit(tmp_path)[1]["reason"]


# ------------------------------------------------------------------ Ollama and LM Studio

@pytest.fixture
def ollama():
    with OllamaWithUnload() as standin:
        yield standin


@pytest.fixture
def lmstudio():
    with LMStudioWithUnload() as standin:
        yield standin


def llm_config(ollama=None, lmstudio=None, dry_run="false", budgets="{ollama: 4GB, lmstudio: 4GB}") -> str:
    return (f"docker: {{enabled: false}}\nollama: {{url: {ollama.url if ollama else 'null'}}}\n"
            f"lmstudio: {{url: {lmstudio.url if lmstudio else 'null'}}}\nbudgets: {budgets}\n"
            f"actions: {{enabled: [unload_idle_model], dry_run: {dry_run}}}\n")


def llm_alert(server: str = "ollama", **labels) -> dict:
    return alert("AitoolsLLMOverBudget", server=server, budget=server, component="llm", **labels)


def test_ollama_least_recently_used_model_is_unloaded_with_the_documented_request(ollama, receiver_for, tmp_path):
    now = datetime.now(timezone.utc)
    ollama.load("llama3.1:8b", size=3 * GB)
    ollama.load("qwen2.5-coder:7b", size=2 * GB)
    ollama.set_expiry("llama3.1:8b", now + timedelta(minutes=4))        # used a minute ago
    ollama.set_expiry("qwen2.5-coder:7b", now + timedelta(seconds=30))  # used four and a half minutes ago
    running = receiver_for(llm_config(ollama))
    running.post(payload([llm_alert()]))
    running.settle()
    assert [(path, body) for path, body, _ in ollama.posts] == [
        ("/api/generate", {"model": "qwen2.5-coder:7b", "keep_alive": 0})]
    assert list(ollama.running) == ["llama3.1:8b"]
    (entry,) = audit(tmp_path)
    assert (entry["target"], entry["result"], entry["command"]) == ("ollama/qwen2.5-coder:7b", "done",
                                                                   "ollama stop qwen2.5-coder:7b")


def test_ollama_model_whose_keep_alive_ran_out_is_not_chosen(ollama, receiver_for, tmp_path):
    """Ollama sets expires_at only when a request ends (server/sched.go): an expiry in the past
    is a model answering a long request now (or leaving anyway), never the one unloaded."""
    now = datetime.now(timezone.utc)
    ollama.load("busy:8b", size=3 * GB)
    ollama.load("idle:7b", size=2 * GB)
    ollama.set_expiry("busy:8b", now - timedelta(seconds=20))
    ollama.set_expiry("idle:7b", now + timedelta(minutes=3))
    running = receiver_for(llm_config(ollama))
    running.post(payload([llm_alert()]))
    running.settle()
    assert [body for _, body, _ in ollama.posts] == [{"model": "idle:7b", "keep_alive": 0}]


def test_ollama_model_that_served_a_request_in_the_idle_window_is_never_unloaded(ollama, receiver_for, tmp_path):
    """The plan (exporter/fits.py, as `aitools-exporter fit`) would free the fewest bytes with
    recent:1b, but it answered a request 10 s ago (keep-alive 5 minutes, expiring in 4:50):
    the smallest set of idle models is idle:8b."""
    now = datetime.now(timezone.utc)
    ollama.load("recent:1b", size=int(1.5 * GB))
    ollama.load("idle:8b", size=3 * GB)
    ollama.set_expiry("recent:1b", now + timedelta(minutes=4, seconds=50))
    ollama.set_expiry("idle:8b", now + timedelta(minutes=2))
    running = receiver_for(llm_config(ollama))
    running.post(payload([llm_alert()], group="g1"))
    running.settle()
    assert [body for _, body, _ in ollama.posts] == [{"model": "idle:8b", "keep_alive": 0}]
    assert "smallest set of idle models to unload is ollama/idle:8b" in audit(tmp_path)[0]["reason"]
    # Only the recently used model is left, over the budget with a new one: nothing idle to unload.
    ollama.load("busy:8b", size=3 * GB)
    ollama.set_expiry("busy:8b", now + timedelta(minutes=4, seconds=55))
    running.post(payload([llm_alert()], group="g2"))
    running.settle()
    assert len(ollama.posts) == 1
    assert audit(tmp_path)[-1]["result"] == "refused" and "no idle model" in audit(tmp_path)[-1]["reason"]


def test_lmstudio_instance_is_unloaded_with_the_documented_request(lmstudio, receiver_for, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_API_TOKEN", "lm-token")
    lmstudio.required_token = "lm-token"
    lmstudio.load("qwen/qwen3-8b", size_bytes=5 * GB, instances=2)
    lmstudio.load("google/gemma-3-1b", size_bytes=1 * GB)
    running = receiver_for(llm_config(lmstudio=lmstudio))
    running.post(payload([llm_alert("lmstudio")]))
    running.settle()
    assert [(path, body) for path, body, _ in lmstudio.posts] == [("/api/v1/models/unload", {"instance_id": "qwen/qwen3-8b"})]
    assert lmstudio.posts[0][2]["Authorization"] == "Bearer lm-token"
    assert [i["id"] for i in lmstudio.models["qwen/qwen3-8b"]["loaded_instances"]] == ["qwen/qwen3-8b:2"]
    assert audit(tmp_path)[0]["command"] == "lms unload qwen/qwen3-8b"


def test_forged_llm_alerts_are_refused_and_nothing_unloaded(ollama, receiver_for, tmp_path):
    ollama.load("llama3.1:8b", size=3 * GB)
    ollama.set_expiry("llama3.1:8b", datetime.now(timezone.utc) + timedelta(minutes=4))
    running = receiver_for(llm_config(ollama))
    # Under the budget (3 GB of 4 GB); a model that is not loaded; a resolved alert; no LLM server.
    running.post(payload([llm_alert()], group="g1"))
    running.post(payload([llm_alert(model="not-loaded:70b")], group="g2",
                         ))
    running.post(payload([dict(llm_alert(), status="resolved")], group="g3"))
    running.post(payload([alert("AitoolsBudgetExhaustionPredicted", budget="docker")], group="g4"))
    running.settle()
    assert ollama.posts == []
    entries = audit(tmp_path)
    assert [e["result"] for e in entries] == ["refused", "refused", "refused"]
    assert "not over 4.0 GB of the ollama budget" in entries[0]["reason"]
    ollama.load("big:70b", size=3 * GB)  # now over the budget, but the alert names a model not loaded
    running.post(payload([llm_alert(model="not-loaded:70b")], group="g5"))
    running.settle()
    assert ollama.posts == []
    assert "model not-loaded:70b is not loaded" in audit(tmp_path)[-1]["reason"]
    assert running.metric("aitools_receiver_actions_total", action="unload_idle_model", result="refused") == 4


def test_total_over_budget_unloads_one_model(ollama, receiver_for, tmp_path, swift_frontend):
    # The total is measured on the apps: a real swift-frontend holding 40 MB puts the
    # development total (xcode counts in it) over a 10 MB budget.
    swift_frontend.start(hold_mb=40)
    ollama.load("llama3.1:8b", size=3 * GB)
    ollama.set_expiry("llama3.1:8b", datetime.now(timezone.utc) + timedelta(minutes=4))
    running = receiver_for(llm_config(ollama, budgets="{development_total: 10MB}"))
    running.post(payload([alert("AitoolsTotalOverBudget", budget="development_total", severity="critical")]))
    running.settle()
    assert [body for _, body, _ in ollama.posts] == [{"model": "llama3.1:8b", "keep_alive": 0}]


# ------------------------------------------------------------------ a real node

@pytest.fixture
def node_with_signal(tmp_path):
    """node --heapsnapshot-signal=SIGUSR2 serving its memoryUsage(), working folder tmp_path/node."""
    if not shutil_which("node"):
        missing_realpart("node is not installed")
    folder = tmp_path / "node"
    folder.mkdir()
    started = []

    def start(flag: bool = True):
        argv = ["node"] + (["--heapsnapshot-signal=SIGUSR2"] if flag else []) + [str(NODE_SERVER), "--mode=steady"]
        process = subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, env={**os.environ, "NODE_OPTIONS": ""})
        started.append(process)
        ready = json.loads(process.stdout.readline())
        return process, f"http://127.0.0.1:{ready['httpPort']}/memory"

    yield folder, start
    for process in started:
        process.kill()
        process.wait(10)


def shutil_which(name):
    import shutil
    return shutil.which(name)


def node_config(url: str, pidfile: Path) -> str:
    return ("docker: {enabled: false}\nollama: {url: null}\nlmstudio: {url: null}\n"
            f"node: {{targets: [{{name: api, url: '{url}', heapsnapshot_signal: SIGUSR2, pidfile: '{pidfile}'}}]}}\n"
            "actions: {enabled: [node_heap_snapshot], dry_run: false}\n")


def leak_alert(target: str = "api") -> dict:
    return alert("AitoolsNodeHeapLeakSuspected", target=target, component="node")


def test_node_heap_snapshot_is_written_once_an_hour_at_most(node_with_signal, receiver_for, recorders, tmp_path):
    folder, start = node_with_signal
    process, url = start()
    pidfile = tmp_path / "api.pid"
    pidfile.write_text(f"{process.pid}\n")
    running = receiver_for(node_config(url, pidfile))
    running.post(payload([leak_alert()], group="g1"))
    running.settle()
    deadline = time.monotonic() + 120
    while not list(folder.glob("Heap.*.heapsnapshot")) or process_has_open_snapshot(process.pid):
        assert time.monotonic() < deadline, "no heap snapshot was written"
        time.sleep(0.2)
    (snapshot,) = folder.glob("Heap.*.heapsnapshot")
    with open(snapshot) as written:
        assert json.load(written)["snapshot"]["meta"]["node_fields"]
    assert process.poll() is None  # still running
    assert audit(tmp_path)[0]["result"] == "done" and audit(tmp_path)[0]["command"] == f"kill -USR2 {process.pid}"
    # Another notification (another group) within the hour: refused, no second snapshot.
    running.post(payload([leak_alert()], group="g2"))
    running.settle()
    assert audit(tmp_path)[1]["result"] == "refused" and "one an hour" in audit(tmp_path)[1]["reason"]
    time.sleep(1)
    assert len(list(folder.glob("Heap.*.heapsnapshot"))) == 1


def process_has_open_snapshot(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".heapsnapshot") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_a_node_without_the_flag_is_never_signalled(node_with_signal, receiver_for, tmp_path):
    folder, start = node_with_signal
    process, url = start(flag=False)
    pidfile = tmp_path / "api.pid"
    pidfile.write_text(str(process.pid))
    running = receiver_for(node_config(url, pidfile))
    running.post(payload([leak_alert(), leak_alert("unknown-target")]))
    running.settle()
    time.sleep(0.5)
    assert process.poll() is None  # SIGUSR2 would have ended it
    entries = audit(tmp_path)
    assert [e["result"] for e in entries] == ["refused", "refused"]
    assert "does not run with --heapsnapshot-signal=SIGUSR2" in entries[0]["reason"]
    assert "no Node.js target 'unknown-target'" in entries[1]["reason"]
    assert list(folder.glob("Heap.*")) == []
