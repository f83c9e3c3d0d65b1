"""The fixes `aitools-exporter receive` may run for an alert, each allowed to do one thing.

- unload_idle_model (AitoolsLLMOverBudget, AitoolsTotalOverBudget, AitoolsBudgetExhaustionPredicted
  of the ollama/lmstudio budgets): unloads one loaded model through its server's own API: the
  largest of the smallest set of idle models whose unloading brings the budget back within
  bounds (exporter/fits.py plan, the planner of `aitools-exporter fit`); never a model that
  served a request in the last IDLE_WINDOW_SECONDS. Ollama: POST /api/generate
  {"model": m, "keep_alive": 0}; LM Studio 0.4+: POST /api/v1/models/unload {"instance_id": i}.
- stop_duplicate_container (AitoolsDuplicateService): stops (the engine's "docker stop") the
  duplicate copy of a service. Never removes a container, never touches a volume or image.
- node_heap_snapshot (AitoolsNodeHeapLeakSuspected): sends SIGUSR2 to a Node.js target that
  runs with --heapsnapshot-signal=SIGUSR2, so that it writes a heap snapshot; once an hour
  per target at most.

Nothing in a payload is trusted: every decision re-reads the current state through the
exporter's own collectors and acts only when that state confirms the alert; otherwise it
is `refused`. Every decision is one JSON line in the audit log and counted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from exporter.app import Exporter
from exporter.collectors.base import Deadline
from exporter.collectors.httpclient import Client
from exporter.config import Config, NodeTarget
from exporter.readings import Samples, readings

log = logging.getLogger(__name__)

GROUP_COOLDOWN_SECONDS = 15 * 60      # one fix per alert group in this time
HEAP_SNAPSHOT_INTERVAL_SECONDS = 3600  # one heap snapshot per target in this time
PREDICTION_CONFIRM_RATIO = 0.8         # a predicted exhaustion is confirmed from 80 % of the budget on
IDLE_WINDOW_SECONDS = 60               # a model that served a request this recently is never unloaded
OLLAMA_DEFAULT_KEEP_ALIVE = 300.0      # Ollama's keep-alive without OLLAMA_KEEP_ALIVE (envconfig)
MAX_PIDFILE_BYTES = 64
AUDIT_TAIL_BYTES = 256 * 1024          # read back at start for the cool-downs
STOP_SECONDS = 10                      # `docker stop`'s own grace before the kill
MAX_ANSWER_BYTES = 2**20               # an unload request's answer, at most

ACTION_FOR_ALERT = {
    "AitoolsLLMOverBudget": "unload_idle_model",
    "AitoolsTotalOverBudget": "unload_idle_model",
    "AitoolsBudgetExhaustionPredicted": "unload_idle_model",
    "AitoolsDuplicateService": "stop_duplicate_container",
    "AitoolsNodeHeapLeakSuspected": "node_heap_snapshot",
}
RESULTS = ("done", "dry_run", "refused", "error")
LLM_SERVERS = ("ollama", "lmstudio")


@dataclass
class Decision:
    alert: str
    action: str
    target: str
    result: str         # done, dry_run, refused, error
    reason: str
    command: str = ""   # what the user would run for the same fix

    def sentence(self) -> str:
        """How the notification tells it."""
        if self.result == "done":
            return f"Done: {self.command}" if self.command else f"Done: {self.reason}"
        if self.result == "dry_run":
            return f"Dry run, would run: {self.command}"
        if self.result == "error":
            return f"Failed: {self.reason}" + (f"; by hand: {self.command}" if self.command else "")
        return f"Not done: {self.reason}" + (f"; to do it yourself: {self.command}" if self.command else "")


class StateError(Exception):
    """The current state could not be read: nothing is confirmed."""


# --------------------------------------------------------------------------- duplicates

@dataclass(frozen=True)
class Container:
    name: str
    image: str
    family: str
    project: str   # compose project; "" outside any
    service: str
    usage_bytes: float


def containers_from(samples: Samples) -> list[Container]:
    return [Container(labels.get("name", ""), labels.get("image", ""), labels.get("family", ""),
                      labels.get("compose_project", ""), labels.get("compose_service", ""), value)
            for labels, value in samples.all("aitools_container_memory_usage_bytes")]


def is_duplicated(copies: list[Container]) -> bool:
    """The family runs in more than one compose project, or outside any project beside another
    copy. Replicas and siblings inside one project are not duplicates."""
    projects = {c.project for c in copies if c.project}
    outside = [c for c in copies if not c.project]
    return len(projects) > 1 or (bool(outside) and len(copies) > 1)


def duplicates_to_stop(copies: list[Container], keep_projects: tuple[str, ...]) -> tuple[list[Container], str]:
    """(the copies to stop, why); no copies when the family is no duplicate or no rule decides."""
    if not is_duplicated(copies):
        return [], "no duplicate now"
    kept = [c for c in copies if c.project and c.project in keep_projects]
    if kept:
        others = [c for c in copies if c not in kept]
        if others:
            return others, f"compose project {kept[0].project} is kept (actions.keep_projects)"
        return [], "every copy belongs to a kept project"
    outside = [c for c in copies if not c.project]
    inside = [c for c in copies if c.project]
    if outside and inside:
        return outside, "a copy outside any compose project is the duplicate"
    return [], "neither keep_projects nor the outside-any-project rule decides which copy is kept"


# --------------------------------------------------------------------------- the engine

class Actions:
    """Decides and runs the fixes of the alerts of one notification (one alert group)."""

    def __init__(self, exporter: Exporter | None, config: Config, audit_path: Path | None, counters=None,
                 clock=time.time):
        """`exporter`: the exporter's own collectors, which re-read the state before a fix (None
        when no fix is enabled)."""
        self.exporter = exporter
        self.config = config
        self.audit_path = audit_path
        self.counters = counters  # callable(action, result)
        self.clock = clock
        self._lock = threading.Lock()
        self._group_done: dict[str, float] = {}
        self._snapshot_done: dict[str, float] = {}
        self._restore_from_audit()

    # -- the entry point

    def handle(self, group_key: str, alerts: list[dict]) -> list[Decision]:
        """The decisions for the firing alerts of one group (resolved ones never act)."""
        wanted = [(alert, ACTION_FOR_ALERT.get(alert["labels"].get("alertname", "")))
                  for alert in alerts if alert["status"] == "firing"]
        wanted = [(alert, action) for alert, action in wanted if action in self.config.actions.enabled]
        if not wanted:
            return []
        decisions: list[Decision] = []
        with self._lock:
            now = self.clock()
            last = self._group_done.get(group_key)
            if last is not None and now - last < GROUP_COOLDOWN_SECONDS:
                for alert, action in wanted:
                    decisions.append(Decision(alert["labels"].get("alertname", ""), action, _target_of(alert, action),
                                              "refused", f"this alert group was acted on {int(now - last)}s ago "
                                                         f"(cool-down {GROUP_COOLDOWN_SECONDS // 60} min)"))
            else:
                try:
                    samples = self.exporter.collect()
                except Exception as exc:  # the collectors guard themselves; this is the last line
                    samples, failure = None, f"the current state could not be read: {exc}"
                unloaded = False
                for alert, action in wanted:
                    alertname = alert["labels"].get("alertname", "")
                    if samples is None:
                        decision = Decision(alertname, action, _target_of(alert, action), "refused", failure)
                    elif action == "unload_idle_model" and unloaded:
                        decision = Decision(alertname, action, _target_of(alert, action), "refused",
                                            "one model per alert group: another alert of this group unloaded one")
                    else:
                        decision = self._decide(alert, action, samples)
                        unloaded = unloaded or (action == "unload_idle_model" and decision.result in ("done", "dry_run"))
                    decisions.append(decision)
                if any(d.result != "refused" for d in decisions):
                    self._group_done[group_key] = now
            for decision in decisions:
                self._record(decision, group_key)
        return decisions

    def _decide(self, alert: dict, action: str, samples: Samples) -> Decision:
        try:
            if action == "stop_duplicate_container":
                return self._stop_duplicate(alert, samples)
            if action == "unload_idle_model":
                return self._unload_model(alert, samples)
            return self._heap_snapshot(alert, samples)
        except StateError as exc:
            return Decision(alert["labels"].get("alertname", ""), action, _target_of(alert, action), "refused", str(exc))
        except Exception as exc:  # an action failing must not take the receiver down
            log.exception("action %s failed", action)
            return Decision(alert["labels"].get("alertname", ""), action, _target_of(alert, action), "error",
                            f"{type(exc).__name__}: {exc}")

    # -- stop_duplicate_container

    def _stop_duplicate(self, alert: dict, samples: Samples) -> Decision:
        alertname, action = alert["labels"]["alertname"], "stop_duplicate_container"
        family = alert["labels"].get("family", "")
        if samples.value("aitools_collector_success", collector="docker") != 1:
            raise StateError("Docker could not be read now: nothing is confirmed")
        copies = [c for c in containers_from(samples) if c.family == family and family]
        to_stop, why = duplicates_to_stop(copies, self.config.actions.keep_projects)
        if not to_stop:
            names = ", ".join(f"{c.name} ({c.project or 'no compose project'})" for c in copies) or "none running"
            command = ""
            if is_duplicated(copies):
                command = " or ".join(f"`docker stop {c.name}`" for c in copies)
                why += "; set actions.keep_projects to decide"
            return Decision(alertname, action, family or "(no family)", "refused",
                            f"{family or 'the alert'}: {why} (running: {names})", command)
        command = " ".join(["docker", "stop", *(c.name for c in to_stop)])
        target = ",".join(c.name for c in to_stop)
        if self.config.actions.dry_run:
            return Decision(alertname, action, target, "dry_run", why, command)
        from exporter.collectors.docker_api import Engine

        host = self.exporter.docker_host()
        if host is None:
            raise StateError("the Docker host is not known")
        # Each container gets STOP_SECONDS to end before it is killed, and the engine the rest.
        deadline = Deadline(STOP_SECONDS * len(to_stop) + max(30.0, self.config.timeout))
        engine = Engine(host, deadline)
        try:
            for container in to_stop:
                engine.stop(container.name, deadline, timeout=STOP_SECONDS)
        finally:
            engine.close()
        return Decision(alertname, action, target, "done", why, command)

    # -- unload_idle_model

    def _unload_model(self, alert: dict, samples: Samples) -> Decision:
        labels = alert["labels"]
        alertname, action = labels["alertname"], "unload_idle_model"
        if alertname == "AitoolsTotalOverBudget":
            servers = [s for s in LLM_SERVERS if self.exporter.enabled(s)]
            total = next((r for r in readings(self.config, samples) if r.area == "total"), None)
            if total is None or total.ratio is None or total.ratio <= 1:
                raise StateError(f"everything tracked is within the {self.config.total_budget_name} budget now")
        else:
            server = labels.get("server") or labels.get("budget", "")
            if server not in LLM_SERVERS:
                raise StateError(f"the alert names no LLM server (budget {labels.get('budget', '')!r})")
            if not self.exporter.enabled(server):
                raise StateError(f"{server} is disabled in the configuration")
            if samples.value("aitools_collector_success", collector=server) != 1:
                raise StateError(f"{server} could not be read now: nothing is confirmed")
            used = samples.total("aitools_llm_model_loaded_bytes", server=server)
            budget = self.config.budgets[server]
            needed = budget if alertname == "AitoolsLLMOverBudget" else budget * PREDICTION_CONFIRM_RATIO
            if used <= needed:
                raise StateError(f"{server} models use {used / 1e9:.1f} GB now, not over "
                                 f"{needed / 1e9:.1f} GB of the {server} budget")
            servers = [server]
        model = labels.get("model")
        chosen, why = self._plan_unload(servers, model, alertname, samples)
        server, name, instance = chosen
        command = f"ollama stop {name}" if server == "ollama" else f"lms unload {instance}"
        if self.config.actions.dry_run:
            return Decision(alertname, action, f"{server}/{instance}", "dry_run", why, command)
        self._post_unload(server, name, instance)
        return Decision(alertname, action, f"{server}/{instance}", "done", why, command)

    def _plan_unload(self, servers: list[str], model: str | None, alertname: str,
                     samples: Samples) -> tuple[tuple[str, str, str], str]:
        """((server, model, instance), why) of the model to unload: the first (largest) of the
        smallest set of idle loaded models whose unloading brings the alert's budget back
        within bounds, the plan of exporter/fits.py; one model per alert group."""
        from exporter.fits import Loaded, Rooms, plan

        idle = self._idle_models(servers, model)
        if not idle:
            where = " or ".join(servers) or "no enabled LLM server"
            if model is not None:
                raise StateError(f"model {model} is not loaded (and idle) in {where} now")
            raise StateError(f"no idle model is loaded in {where} now")
        candidates = [Loaded(server, instance, size, size) for server, _, instance, size in idle]
        if alertname == "AitoolsTotalOverBudget":
            total = next(r for r in readings(self.config, samples) if r.area == "total")
            rooms, target = Rooms(float("inf"), total.budget_bytes - total.used_bytes, None), "*"
        else:
            target = servers[0]
            used = samples.total("aitools_llm_model_loaded_bytes", server=target)
            budget = self.config.budgets[target]
            limit = budget if alertname == "AitoolsLLMOverBudget" else budget * PREDICTION_CONFIRM_RATIO
            rooms = Rooms(limit - used, float("inf"), None)
        chosen = plan(target, 0.0, rooms, candidates)
        by_instance = {(server, instance): (server, name, instance) for server, name, instance, _ in idle}
        if chosen == []:
            raise StateError("the budget is within bounds now: nothing to unload")
        if chosen is None:
            largest = max(candidates, key=lambda m: (m.bytes, m.name))
            return by_instance[(largest.server, largest.model)], (
                "even every idle model unloaded would not be enough: the largest idle one first")
        rest = [m.name for m in chosen[1:]]
        why = (f"the smallest set of idle models to unload is {', '.join(m.name for m in chosen)}"
               + (f"; {', '.join(rest)} at the next alert" if rest else "")
               + f" (idle: no request for {IDLE_WINDOW_SECONDS}s or more)")
        return by_instance[(chosen[0].server, chosen[0].model)], why

    def _idle_models(self, servers: list[str], model: str | None) -> list[tuple[str, str, str, int]]:
        """(server, model, instance, size) of each loaded model that served no request in the
        idle window. Ollama: /api/ps `expires_at` is the end of the last request plus the
        keep-alive (OLLAMA_KEEP_ALIVE of the server process, else Ollama's 5 minutes); one in
        the past is a model answering a long request now. LM Studio tells no last use: every
        loaded instance counts as idle."""
        from exporter.collectors.base import Deadline
        from exporter.collectors.llm import LMSTUDIO_V1_MODELS, Unreadable, is_unknown_endpoint

        found: list[tuple[str, str, str, int]] = []
        now = datetime.now(timezone.utc)
        for server in servers:
            collector = self.exporter.llm_server(server)
            deadline = Deadline(self.config.timeout)
            try:
                path = "/api/ps" if server == "ollama" else LMSTUDIO_V1_MODELS
                payload = collector.get_json(path, deadline)
            except Unreadable as exc:
                raise StateError(f"{server} could not be read now: {exc.reason}") from None
            if server == "lmstudio" and is_unknown_endpoint(payload):
                raise StateError("LM Studio before 0.4 has no unload API (/api/v1/models/unload)")
            if server == "ollama":
                keep_alive = ollama_keep_alive()
                for name, size, expires in ollama_loaded(payload):
                    if expires is None or expires <= now:
                        continue  # answering a request now
                    if (now - (expires - keep_alive)).total_seconds() < IDLE_WINDOW_SECONDS:
                        continue  # served a request within the idle window
                    found.append((server, name, name, size))
            else:
                found += [(server, name, instance, size) for name, instance, size in lmstudio_loaded(payload)]
        return [entry for entry in found if model is None or entry[1] == model]

    def _post_unload(self, server: str, name: str, instance: str) -> None:
        url, body, headers = self.exporter.llm_server(server).unload_request(name, instance)
        client = Client()
        try:
            answer = client.post_json(url, body, Deadline(max(10.0, self.config.timeout)), MAX_ANSWER_BYTES, headers)
        finally:
            client.close()
        if not answer.ok:
            raise RuntimeError(f"{server} answered HTTP {answer.status} to the unload request")

    # -- node_heap_snapshot

    def _heap_snapshot(self, alert: dict, samples: Samples) -> Decision:
        import psutil

        alertname, action = alert["labels"]["alertname"], "node_heap_snapshot"
        name = alert["labels"].get("target", "")
        target = next((t for t in self.config.node.targets if t.name == name), None)
        if target is None:
            raise StateError(f"no Node.js target {name!r} in the configuration")
        if target.heapsnapshot_signal is None:
            raise StateError(f"target {name} has no heapsnapshot_signal and pid/pidfile in the configuration")
        if samples.value("aitools_node_target_up", target=name) != 1:
            raise StateError(f"target {name} does not answer now: nothing is confirmed")
        pid = target_pid(target)
        command = f"kill -USR2 {pid}"
        now = self.clock()
        last = self._snapshot_done.get(name)
        if last is not None and now - last < HEAP_SNAPSHOT_INTERVAL_SECONDS:
            raise StateError(f"a heap snapshot of {name} was taken {int((now - last) / 60)} min ago (one an hour)")
        try:
            process = psutil.Process(pid)
            cmdline = process.cmdline()
            try:
                node_options = process.environ().get("NODE_OPTIONS", "")
            except (psutil.AccessDenied, OSError):
                node_options = ""
        except psutil.NoSuchProcess:
            raise StateError(f"process {pid} of target {name} is not running") from None
        except psutil.AccessDenied:
            raise StateError(f"process {pid} of target {name} belongs to another user") from None
        if not runs_with_heapsnapshot_signal(cmdline, node_options, target.heapsnapshot_signal):
            # Without the flag SIGUSR2 would end the process.
            raise StateError(f"process {pid} does not run with --heapsnapshot-signal={target.heapsnapshot_signal} "
                             "(the signal would end it)")
        if self.config.actions.dry_run:
            return Decision(alertname, action, name, "dry_run", "heap snapshot", command)
        os.kill(pid, getattr(signal, target.heapsnapshot_signal))
        self._snapshot_done[name] = now
        return Decision(alertname, action, name, "done",
                        f"heap snapshot: Heap.*.heapsnapshot in the working folder of process {pid}", command)

    # -- the audit log

    def _record(self, decision: Decision, group_key: str) -> None:
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "alert": decision.alert,
                 "action": decision.action, "target": decision.target, "result": decision.result,
                 "reason": decision.reason, "command": decision.command, "group_key": group_key,
                 "dry_run": self.config.actions.dry_run}
        if self.counters is not None:
            self.counters(decision.action, decision.result)
        log.info("action %s for %s on %s: %s (%s)", decision.action, decision.alert, decision.target,
                 decision.result, decision.reason)
        if self.audit_path is None:
            return
        try:
            self.audit_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.audit_path, "a", encoding="utf-8") as audit:
                audit.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.audit_path, exc)

    def _restore_from_audit(self) -> None:
        """Cool-downs survive a restart: read them back from the end of the audit log."""
        if self.audit_path is None or not self.audit_path.is_file():
            return
        try:
            with open(self.audit_path, "rb") as audit:
                audit.seek(max(0, audit.seek(0, os.SEEK_END) - AUDIT_TAIL_BYTES))
                lines = audit.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
                moment = datetime.fromisoformat(entry["time"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if entry.get("result") in ("done", "dry_run", "error"):
                key = entry.get("group_key", "")
                self._group_done[key] = max(self._group_done.get(key, 0.0), moment)
            if entry.get("action") == "node_heap_snapshot" and entry.get("result") == "done":
                self._snapshot_done[entry.get("target", "")] = moment


def _target_of(alert: dict, action: str) -> str:
    labels = alert["labels"]
    if action == "stop_duplicate_container":
        return labels.get("family", "")
    if action == "node_heap_snapshot":
        return labels.get("target", "")
    return labels.get("server") or labels.get("budget", "")


def ollama_keep_alive() -> timedelta:
    """The keep-alive the Ollama server runs with: OLLAMA_KEEP_ALIVE of its process ("5m",
    "300", "1h30m"), else 5 minutes; a negative or unreadable one counts as 5 minutes."""
    import re

    text = ""
    try:
        from exporter.collectors.llm import ollama_server_environment
        text = ollama_server_environment().get("OLLAMA_KEEP_ALIVE", "").strip()
    except Exception:  # the process table is only a hint here
        text = ""
    seconds = OLLAMA_DEFAULT_KEEP_ALIVE
    if re.fullmatch(r"\d{1,9}", text):
        seconds = float(text)
    elif parts := re.fullmatch(r"(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6})s)?", text):
        if text:
            seconds = int(parts[1] or 0) * 3600 + int(parts[2] or 0) * 60 + int(parts[3] or 0)
    return timedelta(seconds=seconds)


def ollama_loaded(payload: Any) -> list[tuple[str, int, datetime | None]]:
    """(name, size, expires_at) of each model in Ollama's /api/ps answer."""
    from exporter.collectors.llm import byte_count, model_name

    entries = payload.get("models") if isinstance(payload, dict) else None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        name = model_name(entry.get("name")) or model_name(entry.get("model"))
        size = byte_count(entry.get("size"))
        if name is None or size is None:
            continue
        found.append((name, size, _parse_time(entry.get("expires_at"))))
    return found


def lmstudio_loaded(payload: Any) -> list[tuple[str, str, int]]:
    """(model key, instance id, size) of each loaded instance in LM Studio's /api/v1/models answer."""
    from exporter.collectors.llm import byte_count, model_name

    entries = payload.get("models") if isinstance(payload, dict) else None
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("loaded_instances"), list):
            continue
        key, size = model_name(entry.get("key")), byte_count(entry.get("size_bytes"))
        if key is None or size is None:
            continue
        for instance in entry["loaded_instances"]:
            instance_id = model_name(instance.get("id")) if isinstance(instance, dict) else None
            if instance_id is not None:
                found.append((key, instance_id, size))
    return found


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time as Go writes it (nanoseconds, Z or an offset)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # Python reads at most microseconds
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def target_pid(target: NodeTarget) -> int:
    if target.pid is not None:
        return target.pid
    try:
        with open(target.pidfile, "rb") as pidfile:
            text = pidfile.read(MAX_PIDFILE_BYTES).decode("ascii", errors="replace").strip()
    except OSError as exc:
        raise StateError(f"cannot read the pidfile {target.pidfile}: {exc.strerror or exc}") from None
    if not text.isdigit() or int(text) <= 1:
        raise StateError(f"the pidfile {target.pidfile} holds no pid")
    return int(text)


def runs_with_heapsnapshot_signal(cmdline: list[str], node_options: str, signal_name: str) -> bool:
    """True when node was started with --heapsnapshot-signal=<signal_name> (argument or NODE_OPTIONS)."""
    words = list(cmdline) + node_options.split()
    for index, word in enumerate(words):
        if word == f"--heapsnapshot-signal={signal_name}":
            return True
        if word == "--heapsnapshot-signal" and index + 1 < len(words) and words[index + 1] == signal_name:
            return True
    return False
