"""End to end, on loopback: from a container's memory to an Alertmanager notification.

A real Docker engine with containers that imitate the user's stack, real Node.js
processes (one steady, one leaking), real swift-frontend processes, stand-in Ollama and
LM Studio servers, the real exporter, and Debian's Prometheus and Alertmanager running
the bundled prometheus.yml, rules and alertmanager.yml with the documented override
(tests/parts/monitoring.py: addresses and intervals, every rule duration divided by 60).

Budgets are set from the measured figures, about 5 % under them, so that the expected
alerts cross their budgets while the overall efficiency score stays above its alert (at
105 % of a budget the score is 45).
"""

from __future__ import annotations

import contextlib
import json
import time

import psutil
import pytest
import yaml

from tests.conftest import missing_realpart
from tests.parts.exporter_process import ExporterProcess
from tests.parts.llm_standins import LMStudioStandin, OllamaStandin
from tests.parts.monitoring import (ROOT, Alertmanager, MissingBinary, Prometheus, WebhookReceiver,
                                    alertmanager_config, prometheus_config, temp_workdir, wait_until)
from tests.parts.node_processes import NodeStartError, start_node_process
from tests.parts.processes import NamedProcesses

MiB = 2**20
GB = 10**9

EXPECTED_ALERTS = {
    "AitoolsDuplicateService",          # supabase's postgres and a second postgres outside it
    "AitoolsContainerNearMemoryLimit",  # the cache container at ~90 % of its 32 MiB
    "AitoolsDockerOverBudget",          # all containers together ~10 % over the docker budget
    "AitoolsSwiftBuildMemoryHigh",      # two swift-frontend processes ~10 % over swift_build
    "AitoolsNodeHeapLeakSuspected",     # the leaking Node.js target
    "AitoolsLLMOverBudget",             # Ollama's loaded model over the ollama budget
}
ALL_ALERTS = {
    "AitoolsNodeHeapOverBudget", "AitoolsNodeHeapLeakSuspected", "AitoolsNodeHeapNearLimit",
    "AitoolsDockerOverBudget", "AitoolsContainerNearMemoryLimit", "AitoolsDuplicateService",
    "AitoolsLLMOverBudget", "AitoolsSwiftBuildMemoryHigh", "AitoolsTotalOverBudget",
    "AitoolsBudgetExhaustionPredicted", "AitoolsSystemMemoryLow", "AitoolsEfficiencyScoreLow",
    "AitoolsExporterDown", "AitoolsCollectorFailing",
}
SUPABASE = {  # name: (image, compose service, MiB held)
    "supabase-db": ("supabase/postgres:15.1.0.147", "db", 24),
    "supabase-realtime": ("supabase/realtime:v2.25.35", "realtime", 8),
    "supabase-studio": ("supabase/studio:20240101-8e4a094", "studio", 8),
    "supabase-analytics": ("supabase/logflare:1.4.0", "analytics", 8),
}
OLLAMA_MODEL, OLLAMA_SIZE = "llama3.1:8b", 4_920_000_000
LMSTUDIO_MODEL, LMSTUDIO_SIZE = "qwen2.5-7b-instruct", 4_680_000_000
# Installed, not loaded: Ollama is over its budget, so nothing more fits there; LM Studio
# has 11.3 GB of its budget left.
OLLAMA_INSTALLED, LMSTUDIO_DOWNLOADED = ("qwen2.5:0.5b", 397_821_319), ("mistral-7b-instruct-v0.3", 4_080_000_000)
CONTRACT_METRICS = (
    "aitools_node_heap_used_bytes", "aitools_node_heap_total_bytes", "aitools_node_heap_limit_bytes",
    "aitools_node_rss_bytes", "aitools_node_target_up", "aitools_container_memory_usage_bytes",
    "aitools_container_memory_limit_bytes", "aitools_docker_up", "aitools_llm_model_loaded_bytes",
    "aitools_llm_model_vram_bytes", "aitools_llm_server_up", "aitools_process_group_rss_bytes",
    "aitools_process_group_processes", "aitools_system_memory_pages", "aitools_system_page_size_bytes",
    "aitools_system_memory_total_bytes", "aitools_system_memory_available_bytes", "aitools_system_swap_used_bytes",
    "aitools_budget_bytes", "aitools_profile_info", "aitools_collector_success",
    "aitools_collector_duration_seconds", "aitools_build_info",
    # Additions (second round).
    "aitools_llm_model_installed_bytes",
)


def by_label(result: list[dict], label: str) -> dict[str, float]:
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


@pytest.fixture(scope="module")
def stack(docker_engine):
    with contextlib.ExitStack() as cleanup:
        try:
            workdir = temp_workdir("aitools-e2e-")
            # --- the workstation: containers, Node.js, swift-frontend, LLM servers
            container_ids = {}
            cleanup.callback(lambda: [docker_engine.client.api.remove_container(cid, force=True)
                                      for cid in container_ids.values()])
            for name, (image, service, held) in SUPABASE.items():
                repository, tag = image.rsplit(":", 1)
                docker_engine.client.api.tag("busybox:local", repository, tag)
                labels = {"com.docker.compose.project": "supabase", "com.docker.compose.service": service}
                container_ids[name] = docker_engine.run(name, image, hold_mb=held, labels=labels)
            container_ids["dev-postgres"] = docker_engine.run("dev-postgres", "postgres:15", hold_mb=16)
            container_ids["cache"] = docker_engine.run("cache", "redis:7", hold_mb=30, memory_limit="32m")

            try:
                steady = start_node_process(mode="steady")
                cleanup.callback(steady.stop)
                leaky = start_node_process(mode="leaky", leak_bytes_per_second=MiB)
                cleanup.callback(leaky.stop)
            except NodeStartError as exc:
                missing_realpart(f"node: {exc}")

            swift = NamedProcesses("swift-frontend")
            cleanup.callback(swift.close)
            swift_processes = [swift.start(hold_mb=60), swift.start(hold_mb=60)]

            ollama = cleanup.enter_context(OllamaStandin())
            ollama.load(OLLAMA_MODEL, size=OLLAMA_SIZE, size_vram=OLLAMA_SIZE)
            lmstudio = cleanup.enter_context(LMStudioStandin())
            lmstudio.load(LMSTUDIO_MODEL, size_bytes=LMSTUDIO_SIZE)
            ollama.install(OLLAMA_INSTALLED[0], size_on_disk=OLLAMA_INSTALLED[1])
            lmstudio.download(LMSTUDIO_DOWNLOADED[0], size_bytes=LMSTUDIO_DOWNLOADED[1])

            # --- budgets about 5 % under what is measured now, where an alert is expected
            docker_total = sum(docker_engine.memory_stats(cid)["usage"] - docker_engine.memory_stats(cid)["stats"]
                               ["total_inactive_file"] for cid in container_ids.values())
            swift_total = sum(p.memory_info().rss for p in swift_processes)
            budgets = {
                "docker": int(docker_total / 1.05),
                "swift_build": int(swift_total / 1.05),
                "ollama": int(OLLAMA_SIZE / 1.05),
                "lmstudio": 16 * GB,
                "node_heap": 1000 * MiB,
                "node_heap_growth": 8 * MiB,
                "development_total": 100 * GB,
                "production_total": 8 * GB,
            }
            config = {
                "profile": "development",
                "budgets": budgets,
                "node": {"targets": [{"name": "api", "url": steady.url("/nested")},
                                     {"name": "worker", "url": leaky.url("/nested")}]},
                "docker": {"host": docker_engine.host},
                "ollama": {"url": ollama.url},
                "lmstudio": {"url": lmstudio.url},
                "llamacpp": {"url": None},  # llama.cpp's server has its own real-part test (test_llamacpp_server)
                "timeout": "800ms",
            }
            exporter = ExporterProcess(yaml.safe_dump(config))
            cleanup.callback(exporter.stop)
            exporter.wait_ready()

            # --- the monitoring bundle
            webhook = WebhookReceiver()
            cleanup.callback(webhook.close)
            password_file = workdir / "smtp_password"
            password_file.write_text("unused")
            am_config = workdir / "alertmanager.yml"
            am_config.write_text(yaml.safe_dump(alertmanager_config(webhook.url, "127.0.0.1:9", password_file)))
            alertmanager = Alertmanager(am_config, workdir / "am")
            cleanup.callback(alertmanager.stop)
            prometheus = Prometheus(prometheus_config(workdir, exporter.address, alertmanager.address), workdir)
            cleanup.callback(prometheus.stop)
        except MissingBinary as exc:
            missing_realpart(str(exc))

        yield dict(prometheus=prometheus, alertmanager=alertmanager, webhook=webhook, exporter=exporter,
                   budgets=budgets, engine=docker_engine, containers=container_ids, swift=swift_processes,
                   steady=steady, leaky=leaky, instance=exporter.address)


# The figures only a Mac has (Docker Desktop's VM, the Apple GPU, Activity Monitor's memory,
# page-outs): their rules and panels are checked on the replay of the 64 GB Mac recording
# (tests/recordings), served by the real exporter and scraped by the same Prometheus setup.
MAC_RECORDING = ROOT / "tests" / "recordings" / "mac-64gb-workstation"
MAC_ONLY_RULES = {"aitools:docker_vm_overhead_bytes", "aitools:gpu_memory_explained_bytes",
                  "aitools:gpu_memory_room_bytes"}
MAC_ONLY_SERIES = ("aitools_gpu_", "aitools:gpu_", "aitools_docker_vm", "aitools:docker_vm", "aitools_system_memory_pressure",
                   "aitools_system_memory_free_ratio", "aitools_system_pageouts", "aitools_system_swapouts",
                   "stored_in_compressor", "compressed", "purgeable", "speculative")


@pytest.fixture(scope="module")
def mac():
    """Prometheus with the bundle's rules, scraping `serve --replay` of the 64 GB Mac."""
    with contextlib.ExitStack() as cleanup:
        workdir = temp_workdir("aitools-e2e-mac-")
        try:
            exporter = ExporterProcess(args=("serve", "--replay", str(MAC_RECORDING)))
            cleanup.callback(exporter.stop)
            exporter.wait_ready()
            prometheus = Prometheus(prometheus_config(workdir, exporter.address, None), workdir)
            cleanup.callback(prometheus.stop)
        except MissingBinary as exc:
            missing_realpart(str(exc))
        wait_until(lambda: prometheus.query("aitools:gpu_memory_room_bytes") and prometheus.query(
            "aitools:efficiency_score:overall"), 90, "the Mac replay's rules to have values", interval=1)
        yield prometheus


@pytest.fixture(scope="module")
def fired(stack):
    """Waits until the expected alerts fire (the leak needs ~45 s of history), then gives the stack."""
    prometheus = stack["prometheus"]
    try:
        wait_until(lambda: EXPECTED_ALERTS <= prometheus.firing(), 180, "the expected alerts to fire", interval=1)
    except TimeoutError:
        pytest.fail(f"firing: {sorted(prometheus.firing())}, expected {sorted(EXPECTED_ALERTS)}\n"
                    f"exporter log: {stack['exporter'].log()[-2000:]}")
    return stack


def test_every_contract_metric_is_ingested_with_its_value(fired):
    prometheus, budgets = fired["prometheus"], fired["budgets"]
    for name in CONTRACT_METRICS:
        assert prometheus.query(name), f"{name} is not in Prometheus"

    assert by_label(prometheus.query("aitools_budget_bytes"), "budget") == {k: float(v) for k, v in budgets.items()}
    assert by_label(prometheus.query("aitools_profile_info"), "profile") == {"development": 1.0}
    assert by_label(prometheus.query("aitools_collector_success"), "collector") == dict.fromkeys(
        ["node", "docker", "ollama", "lmstudio", "process", "system", "apps"], 1.0)
    assert all(v < 1 for v in by_label(prometheus.query("aitools_collector_duration_seconds"), "collector").values())
    assert prometheus.value("aitools_docker_up") == 1

    usage = by_label(prometheus.query("aitools_container_memory_usage_bytes"), "name")
    engine = fired["engine"]
    for name, container_id in fired["containers"].items():
        stats = engine.memory_stats(container_id)
        assert abs(usage[name] - (stats["usage"] - stats["stats"]["total_inactive_file"])) < 2 * MiB, name
    assert by_label(prometheus.query("aitools_container_memory_limit_bytes"), "name") == {"cache": 32.0 * MiB}
    families = {s["metric"]["name"]: s["metric"] for s in prometheus.query("aitools_container_memory_usage_bytes")}
    assert families["supabase-db"]["family"] == families["dev-postgres"]["family"] == "postgres"
    assert families["supabase-db"]["compose_project"] == "supabase"
    assert families["supabase-realtime"]["compose_service"] == "realtime"
    assert families["supabase-analytics"]["family"] == "logflare"

    loaded = {(s["metric"]["server"], s["metric"]["model"]): float(s["value"][1])
              for s in prometheus.query("aitools_llm_model_loaded_bytes")}
    assert loaded == {("ollama", OLLAMA_MODEL): OLLAMA_SIZE, ("lmstudio", LMSTUDIO_MODEL): LMSTUDIO_SIZE}
    assert by_label(prometheus.query("aitools_llm_model_vram_bytes"), "model") == {OLLAMA_MODEL: OLLAMA_SIZE}
    assert by_label(prometheus.query("aitools_llm_server_up"), "server") == {"ollama": 1.0, "lmstudio": 1.0}

    assert prometheus.value('aitools_process_group_processes{group="swift-frontend"}') == 2
    swift_rss = sum(p.memory_info().rss for p in fired["swift"])
    assert abs(prometheus.value('aitools_process_group_rss_bytes{group="swift-frontend"}') - swift_rss) < 8 * MiB

    assert by_label(prometheus.query("aitools_node_target_up"), "target") == {"api": 1.0, "worker": 1.0}
    for target, node in (("api", fired["steady"]), ("worker", fired["leaky"])):
        used = prometheus.value(f'aitools_node_heap_used_bytes{{target="{target}"}}')
        total = prometheus.value(f'aitools_node_heap_total_bytes{{target="{target}"}}')
        limit = prometheus.value(f'aitools_node_heap_limit_bytes{{target="{target}"}}')
        rss = prometheus.value(f'aitools_node_rss_bytes{{target="{target}"}}')
        assert 0 < used <= total < limit and rss > used, target
        assert limit == node.get_json("/last-served")["heapStatistics"]["heap_size_limit"]

    assert prometheus.value("aitools_system_memory_total_bytes") == psutil.virtual_memory().total
    assert prometheus.value("aitools_system_page_size_bytes") == 4096
    pages = by_label(prometheus.query("aitools_system_memory_pages"), "state")
    assert {"free", "active", "inactive", "wired", "file_backed", "anonymous"} <= set(pages)
    assert 0 < prometheus.value("aitools_system_memory_available_bytes") <= psutil.virtual_memory().total
    assert prometheus.value("aitools_system_swap_used_bytes") >= 0
    assert all(v == 0 for v in by_label(prometheus.query("aitools_collector_series_dropped"), "collector").values())


def test_every_recording_rule_has_a_value(fired, mac):
    prometheus, budgets, instance = fired["prometheus"], fired["budgets"], fired["instance"]
    names = set()
    for path in (ROOT / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    assert {"aitools:budget_usage_bytes", "aitools:budget_usage:ratio", "aitools:efficiency_score",
            "aitools:efficiency_score:overall"} <= names
    # Every source here runs and is read: none is failing or not running.
    for name in ("aitools:budget_source_failing", "aitools:budget_source_not_running"):
        assert prometheus.query(name) == [], name
    only_on_a_mac = set()
    for name in sorted(names - {"aitools:budget_source_failing", "aitools:budget_source_not_running"}):
        result = prometheus.query(name)
        if not result:
            only_on_a_mac.add(name)
            assert mac.query(name), f"recording rule {name} has no value, here nor on the Mac replay"
            continue
        assert all(series["metric"].get("instance") == instance for series in result), name
    assert only_on_a_mac == MAC_ONLY_RULES

    usage = {s["metric"]["budget"]: float(s["value"][1]) for s in prometheus.query("aitools:budget_usage_bytes")
             if "target" not in s["metric"]}
    containers = prometheus.value("sum(aitools_container_memory_usage_bytes)")
    assert usage["docker"] == pytest.approx(containers, rel=0.01)
    assert usage["ollama"] == OLLAMA_SIZE and usage["lmstudio"] == LMSTUDIO_SIZE
    assert set(usage) >= {"docker", "ollama", "lmstudio", "swift_build", "development_total"}
    assert "production_total" not in usage  # only the active profile's total
    ratio = {s["metric"]["budget"]: float(s["value"][1]) for s in prometheus.query("aitools:budget_usage:ratio")
             if "target" not in s["metric"]}
    assert ratio["ollama"] == pytest.approx(OLLAMA_SIZE / budgets["ollama"], rel=1e-6)
    assert 1.0 < ratio["docker"] < 1.3 and 1.0 < ratio["swift_build"] < 1.3

    scores = by_label(prometheus.query("aitools:efficiency_score"), "component")
    assert set(scores) == {"node", "docker", "llm", "system"}
    assert all(0 <= value <= 100 for value in scores.values())
    assert scores["node"] == 100  # both heaps far inside their budget
    assert scores["docker"] < 100 and scores["llm"] < 100
    overall = prometheus.value("aitools:efficiency_score:overall")
    assert 50 <= overall < 100


def test_which_installed_models_fit(fired):
    prometheus = fired["prometheus"]
    fits = {(s["metric"]["server"], s["metric"]["model"]): float(s["value"][1])
            for s in prometheus.query("aitools:llm_model_fits")}
    assert fits == {("ollama", OLLAMA_INSTALLED[0]): 0, ("lmstudio", LMSTUDIO_DOWNLOADED[0]): 1}
    installed = {(s["metric"]["server"], s["metric"]["model"]): float(s["value"][1])
                 for s in prometheus.query("aitools_llm_model_installed_bytes")}
    assert installed[("lmstudio", LMSTUDIO_DOWNLOADED[0])] == LMSTUDIO_DOWNLOADED[1]
    assert installed[("ollama", OLLAMA_INSTALLED[0])] == OLLAMA_INSTALLED[1]


def test_every_dashboard_panel_query_returns_data(fired, mac):
    from tests.test_dashboards import GRAFANA_BUILTINS, all_queries, substitute

    prometheus = fired["prometheus"]
    values = {"instance": fired["instance"], "datasource": "prometheus", "target": ".*", "project": ".*",
              **GRAFANA_BUILTINS}
    empty = []
    queries = all_queries()
    assert len(queries) > 30
    mac_values = {**values, "instance": mac.query("aitools_build_info")[0]["metric"]["instance"]}
    only_on_a_mac = []
    for dashboard, where, expr in queries:
        if prometheus.query(substitute(expr, values)):
            continue
        if mac.query(substitute(expr, mac_values)):
            only_on_a_mac.append(expr)  # a figure only a Mac has, with data on the Mac replay
        else:
            empty.append(f"{dashboard}: {where}: {expr}")
    assert not empty, "panel queries without data, here nor on the Mac replay:\n" + "\n".join(empty)
    assert all(any(name in expr for name in MAC_ONLY_SERIES) for expr in only_on_a_mac), only_on_a_mac


def test_expected_alerts_fire_and_the_others_stay_silent(fired):
    prometheus = fired["prometheus"]
    firing = prometheus.firing()
    assert firing & ALL_ALERTS == EXPECTED_ALERTS, f"firing: {sorted(firing)}"
    alerts = [a for a in prometheus.alerts() if a["state"] == "firing"]
    by_name = {}
    for alert in alerts:
        by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
    assert {a["labels"]["name"] for a in by_name["AitoolsContainerNearMemoryLimit"]} == {"cache"}
    assert {a["labels"]["family"] for a in by_name["AitoolsDuplicateService"]} == {"postgres"}
    assert {a["labels"]["target"] for a in by_name["AitoolsNodeHeapLeakSuspected"]} == {"worker"}
    assert {a["labels"].get("server") for a in by_name["AitoolsLLMOverBudget"]} == {"ollama"}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
        assert alert["labels"]["component"]
        for annotation in ("summary", "description", "action"):
            assert alert["annotations"].get(annotation), (alert["labels"]["alertname"], annotation)


def test_alertmanager_notifies_the_webhook_grouped_with_summary_description_and_action(fired):
    webhook = fired["webhook"]

    def notified():
        names = {a["labels"]["alertname"] for a in webhook.alerts() if a["status"] == "firing"}
        return EXPECTED_ALERTS <= names
    wait_until(notified, 60, "webhook notifications for every expected alert")
    for body in webhook.received:
        assert {"alertname", "instance"} <= set(body["groupLabels"]), body["groupLabels"]
        assert len({a["labels"]["alertname"] for a in body["alerts"]}) == 1  # grouped by alert name
    notes = {}
    for alert in webhook.alerts():
        if alert["status"] == "firing":
            notes.setdefault(alert["labels"]["alertname"], []).append(alert["annotations"])
    for name in EXPECTED_ALERTS:
        for texts in notes[name]:
            assert texts["summary"] and texts["description"] and texts["action"], name
    joined = {name: json.dumps(values) for name, values in notes.items()}
    assert "cache" in joined["AitoolsContainerNearMemoryLimit"] and "docker update" in joined["AitoolsContainerNearMemoryLimit"]
    assert "dev-postgres" in joined["AitoolsDuplicateService"] or "supabase-db" in joined["AitoolsDuplicateService"]
    assert "docker stop" in joined["AitoolsDuplicateService"]
    assert OLLAMA_MODEL in joined["AitoolsLLMOverBudget"] and "ollama stop" in joined["AitoolsLLMOverBudget"]
    assert "worker" in joined["AitoolsNodeHeapLeakSuspected"] and "heapsnapshot" in joined["AitoolsNodeHeapLeakSuspected"]
    assert "IDEBuildOperationMaxNumberOfConcurrentCompileTasks" in joined["AitoolsSwiftBuildMemoryHigh"]
    assert "GB" in joined["AitoolsDockerOverBudget"] or "MB" in joined["AitoolsDockerOverBudget"]


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_the_page_has_only_legacy_names_and_is_written_as_the_library_writes_it(stack):
    """Prometheus's OpenMetrics page (escaping=underscores), as prometheus_client writes it: the
    whole page of a full workstation (containers, Node targets, LLM servers, apps, process
    groups, budgets, own metrics) has only legacy names, and parsed and written again by the
    library it is the same under both escapings."""
    import re

    from prometheus_client.openmetrics import exposition as openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    answer = stack["exporter"].scrape(headers={"Accept": PROMETHEUS_ACCEPT})
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "escaping=underscores" in answer.headers["Content-Type"]
    families = list(text_string_to_metric_families(answer.text))
    samples = [sample for family in families for sample in family.samples]
    assert len(families) > 40 and len(samples) > 120
    assert {label for sample in samples for label in sample.labels} >= {"name", "compose_project", "app", "target", "model", "budget"}
    for sample in samples:
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", sample.name), sample.name
        for label in sample.labels:
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label), (sample.name, label)

    class Page:
        def collect(self):
            return families

    underscores = openmetrics.generate_latest(Page(), escaping=openmetrics.UNDERSCORES)
    assert openmetrics.generate_latest(Page(), escaping=openmetrics.ALLOWUTF8) == underscores
    assert underscores.decode().splitlines()[-1] == "# EOF"


# Last: it stops the exporter the other tests scrape.
def test_stopping_the_exporter_fires_exporter_down_and_inhibits_the_rest(fired):
    prometheus, alertmanager, webhook = fired["prometheus"], fired["alertmanager"], fired["webhook"]
    instance = fired["instance"]
    # What was firing for this workstation, as Alertmanager received it.
    active_before = [a for a in alertmanager.alerts(active="true") if a["labels"].get("instance") == instance]
    assert {a["labels"]["alertname"] for a in active_before} >= EXPECTED_ALERTS

    fired["exporter"].stop()
    wait_until(lambda: "AitoolsExporterDown" in prometheus.firing(), 60, "AitoolsExporterDown to fire", interval=1)
    wait_until(lambda: any(a["labels"]["alertname"] == "AitoolsExporterDown" and a["status"] == "firing"
                           for a in webhook.alerts()), 60, "the exporter-down notification")
    down = [a for a in alertmanager.alerts(active="true") if a["labels"]["alertname"] == "AitoolsExporterDown"]
    assert down and down[0]["labels"]["instance"] == instance and not down[0]["status"]["inhibitedBy"]

    # The other alerts of this workstation, sent again as a Prometheus that still had
    # them would: Alertmanager holds them back while the exporter is down.
    notified_before = len(webhook.received)
    alertmanager.post([{"labels": a["labels"], "annotations": a["annotations"], "generatorURL": a["generatorURL"]}
                       for a in active_before])
    def all_inhibited():
        current = [a for a in alertmanager.alerts() if a["labels"].get("instance") == instance
                   and a["labels"]["alertname"] != "AitoolsExporterDown"]
        return current and all(a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in current)
    wait_until(all_inhibited, 30, "the other alerts to be inhibited")
    time.sleep(4)  # two group intervals: nothing of them reaches the receiver
    later = [a for body in webhook.received[notified_before:] for a in body["alerts"]
             if a["status"] == "firing" and a["labels"]["alertname"] != "AitoolsExporterDown"]
    assert not later, later

