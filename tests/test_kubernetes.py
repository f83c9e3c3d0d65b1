"""Production on Kubernetes: the rules of prometheus/kubernetes/ and their PrometheusRule manifest.

- the plain rule file and the manifest are what prometheus/build.py renders from
  prometheus/k8s.py, and carry the same groups;
- promtool (Debian's 2.42) checks the rules and runs their unit tests, whose series have the
  label sets cAdvisor and kube-state-metrics publish (sources cited in the test file);
- the manifest is valid against the Prometheus Operator's published CRD schema
  (tests/data/prometheus-operator/), read strictly: a field the schema does not know is an
  error here, since the API server would silently prune it;
- the budget is the exporter's production_total where one publishes it, else the rendered value.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import UNDER_CI, missing_realpart

try:
    import jsonschema  # the test extra of pyproject.toml
except ImportError:
    if UNDER_CI:
        raise
    pytest.skip("jsonschema is not installed: pip install -e '.[test]'", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "prometheus" / "kubernetes"
RULES = K8S_DIR / "aitools-k8s.rules.yml"
MANIFEST = K8S_DIR / "aitools-prometheusrule.yaml"
UNIT_TESTS = K8S_DIR / "tests" / "k8s.test.yml"
CRD = ROOT / "tests" / "data" / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml"

CONTRACT_RECORDINGS = {"aitools:k8s_namespace_memory_bytes"}
CONTRACT_ALERTS = {"AitoolsProductionOverBudget": ("critical", "10m"),
                   "AitoolsPodNearMemoryLimit": ("warning", "5m"),
                   "AitoolsPodMemoryLimitMissing": ("info", "15m")}
# The standard series the rules may read: cAdvisor, kube-state-metrics, and the exporter's budget.
STANDARD_SERIES = {"container_memory_working_set_bytes", "kube_pod_container_resource_limits",
                   "kube_pod_container_resource_requests", "kube_pod_container_status_running",
                   "aitools_budget_bytes"}
PROMQL_WORDS = {"by", "on", "without", "group_left", "group_right", "and", "or", "unless", "sum", "max", "min",
                "clamp", "vector", "count", "ignoring", "bool"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_realpart("promtool is not installed (Debian package prometheus; tests/install-deps.sh)")
    return path


def k8s_module():
    sys.path.insert(0, str(ROOT / "prometheus"))
    try:
        import k8s
    finally:
        sys.path.remove(str(ROOT / "prometheus"))
    return k8s


def plain_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


# --- rendered from one source ------------------------------------------------------------

def test_committed_files_are_what_build_py_renders():
    out = subprocess.run([sys.executable, str(ROOT / "prometheus" / "build.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_manifest_carries_the_plain_rule_files_groups():
    assert manifest()["spec"]["groups"] == plain_groups()
    from exporter.config import DEFAULT_BUDGETS

    assert plain_groups() == k8s_module().groups(DEFAULT_BUDGETS["production_total"])


def test_the_rendered_budget_is_production_total_unless_an_exporter_publishes_one():
    from exporter.config import DEFAULT_BUDGETS

    default = DEFAULT_BUDGETS["production_total"]
    text = RULES.read_text()
    assert f'max(aitools_budget_bytes{{budget="production_total"}}) or vector({default})' in text
    # --production-total renders another fallback (the same function build.py calls).
    rendered = yaml.safe_dump(k8s_module().groups(6 * 10**9))
    assert "vector(6000000000)" in rendered and f"vector({default})" not in rendered
    # A bad size is refused with a clear message, and writes nothing.
    out = subprocess.run([sys.executable, str(ROOT / "prometheus" / "build.py"), "--check", "--production-total", "lots"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--production-total" in out.stderr


def test_contract_names_labels_and_annotations():
    rules = [rule for group in plain_groups() for rule in group["rules"]]
    assert CONTRACT_RECORDINGS <= {rule["record"] for rule in rules if "record" in rule}
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert set(alerts) == set(CONTRACT_ALERTS)
    for name, (severity, duration) in CONTRACT_ALERTS.items():
        rule = alerts[name]
        assert rule["labels"] == {"severity": severity, "component": "kubernetes"}
        assert rule["for"] == duration
        assert {"summary", "description", "action"} == set(rule["annotations"])


def test_rules_read_only_standard_series_and_exclude_the_sandboxes():
    own = {rule["record"] for group in plain_groups() for rule in group["rules"] if "record" in rule}
    for group in plain_groups():
        for rule in group["rules"]:
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)', " ",
                          rule["expr"])
            names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS
            names = {n for n in names if not re.fullmatch(r"e\d*", n)}
            assert names <= STANDARD_SERIES | own, (rule.get("record") or rule.get("alert"), names)
            if "container_memory_working_set_bytes" in rule["expr"]:
                for matcher in ('container!=""', 'container!="POD"', 'image!=""'):
                    assert matcher in rule["expr"], matcher
                assert "max by (namespace, pod, container)" in rule["expr"]


# --- promtool ----------------------------------------------------------------------------

def test_promtool_check_rules():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


def test_promtool_unit_tests_fire_exactly_on_their_scenarios():
    out = subprocess.run([promtool(), "test", "rules", UNIT_TESTS.name], cwd=UNIT_TESTS.parent,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_unit_tests_cover_every_alert_firing_and_quiet():
    fires = {name: 0 for name in CONTRACT_ALERTS}
    quiet = dict(fires)
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            if case["exp_alerts"]:
                fires[case["alertname"]] += 1
            else:
                quiet[case["alertname"]] += 1
    assert all(fires.values()) and all(quiet.values()), (fires, quiet)


def test_a_broken_expectation_fails(tmp_path):
    """The unit tests can fail: the same scenario expecting the alert too early is refused."""
    document = yaml.safe_load(UNIT_TESTS.read_text())
    document["rule_files"] = [str(RULES)]
    case = next(c for c in document["tests"][0]["alert_rule_test"]
                if c["alertname"] == "AitoolsProductionOverBudget" and c["exp_alerts"])
    case["eval_time"] = "40m"  # still pending then
    path = tmp_path / "early.test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    out = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "AitoolsProductionOverBudget" in out.stdout + out.stderr


# --- the PrometheusRule against the operator's CRD schema --------------------------------

def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "PrometheusRule"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    return version["schema"]["openAPIV3Schema"]


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the known ones (the API server
    prunes unknown fields of a structural schema without a word: a misspelt `for` would vanish)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # metadata is `type: object` in the CRD; the API server checks it as ObjectMeta.
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                                "maxLength": 253},
                       "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        "additionalProperties": False}
    return schema


def validation_errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(strict(crd_schema()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    # x-kubernetes-list-type: map with key `name`: group names are unique.
    names = [group.get("name") for group in document.get("spec", {}).get("groups", [])]
    if len(names) != len(set(names)):
        errors.append("spec/groups: duplicate group names")
    if document.get("apiVersion") != "monitoring.coreos.com/v1" or document.get("kind") != "PrometheusRule":
        errors.append("apiVersion/kind: not monitoring.coreos.com/v1 PrometheusRule")
    return errors


def test_the_manifest_is_valid_against_the_operators_crd_schema():
    document = manifest()
    assert validation_errors(document) == []
    assert document["metadata"]["name"] == "aitools-memory-budgets"
    assert "namespace" not in document["metadata"], "kubectl apply -n chooses the namespace"


@pytest.mark.parametrize("change,expected", [
    (lambda d: d["spec"]["groups"][1]["rules"][0].__setitem__("for", "10 minutes"), "does not match"),
    (lambda d: d["spec"]["groups"][1]["rules"][0].__setitem__("fro", "10m"), "Additional properties"),
    (lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr"), "'expr' is a required property"),
    (lambda d: d["spec"]["groups"][1]["rules"][0]["labels"].__setitem__("severity", 2), "is not of type 'string'"),
    (lambda d: d["spec"]["groups"][1].__setitem__("name", d["spec"]["groups"][0]["name"]), "duplicate group names"),
    (lambda d: d["metadata"].__setitem__("name", "Aitools_Rules"), "does not match"),
    (lambda d: d["spec"].__setitem__("group", []), "Additional properties"),
], ids=["duration", "unknown-field", "no-expr", "label-not-string", "duplicate-group", "bad-name", "misplaced-key"])
def test_the_schema_check_refuses_broken_manifests(change, expected):
    document = manifest()
    change(document)
    errors = validation_errors(document)
    assert any(expected in error for error in errors), errors


# --- the namespace dashboard (grafana/dashboards/k8s-namespace.json) ----------------------

def beyond_dashboard(name: str) -> dict:
    import json

    try:
        import grafana_foundation_sdk  # noqa: F401  (the test extra of pyproject.toml)
    except ImportError:
        if UNDER_CI:
            raise
        pytest.skip("grafana-foundation-sdk is not installed: pip install -e '.[test]'")

    from grafana.dashboards_src import OUTPUT_DIR

    return json.loads((OUTPUT_DIR / name).read_text())


def dashboard_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every panel target, and the alerts annotation."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["refId"], target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            found.append(("annotation", annotation["name"], annotation["expr"]))
    return found


def assert_panels_well_formed(dashboard: dict, selector: str, unselected: set[str] = frozenset()):
    """What every bundled panel has (tests/test_dashboards.py), with this dashboard's selector
    in place of the workstation's instance; `unselected`: exprs that concern no selection."""
    from grafana.dashboards_src import lib
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard
    import json

    register_default_plugins()
    assert json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder)) == dashboard
    assert lib.TAG in dashboard["tags"]
    panels = [inner for panel in dashboard["panels"] for inner in (panel.get("panels") or [panel])
              if inner["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"].strip() and "\n" not in panel["description"], panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit") in lib.UNITS, panel["title"]
        assert defaults.get("thresholds", {}).get("steps"), panel["title"]
        for target in panel["targets"]:
            assert target["legendFormat"].strip() and target["legendFormat"] != "__auto", panel["title"]
            assert selector in target["expr"] or target["expr"] in unselected, (panel["title"], target["expr"])


def test_namespace_dashboard_panels():
    dashboard = beyond_dashboard("k8s-namespace.json")
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "namespace"]
    assert_panels_well_formed(dashboard, 'namespace="$namespace"', {"aitools:k8s_production_budget_bytes"})


# The cluster's series as the kubelet's cAdvisor and kube-state-metrics publish them (the
# label sets of prometheus/kubernetes/tests/k8s.test.yml; Prometheus adds job and instance).
CLUSTER_METRICS = """\
container_memory_working_set_bytes{container="web",id="/kubepods.slice/pod1a2b.slice/cri-containerd-aa11.scope",image="registry.example/shop/web:1.4.2",name="aa11",namespace="shop",pod="web-0"} 4e9
container_memory_working_set_bytes{container="",id="/kubepods.slice/pod1a2b.slice",image="",name="",namespace="shop",pod="web-0"} 4.2e9
container_memory_working_set_bytes{container="",id="/kubepods.slice/pod1a2b.slice/cri-containerd-bb22.scope",image="registry.k8s.io/pause:3.9",name="bb22",namespace="shop",pod="web-0"} 1e6
container_memory_working_set_bytes{container="worker",id="/kubepods/burstable/pod3c4d/cc33",image="registry.example/shop/worker:1.4.2",name="k8s_worker_worker-0_shop_3c4d_0",namespace="shop",pod="worker-0"} 4.5e9
container_memory_working_set_bytes{container="POD",id="/kubepods/burstable/pod3c4d/dd44",image="k8s.gcr.io/pause:3.2",name="k8s_POD_worker-0_shop_3c4d_0",namespace="shop",pod="worker-0"} 6e5
container_memory_working_set_bytes{container="",id="/kubepods",image="",name="",namespace="",pod=""} 9e9
kube_pod_container_resource_limits{container="web",namespace="shop",node="worker-1",pod="web-0",resource="memory",uid="1a2b",unit="byte"} 8589934592
kube_pod_container_resource_requests{container="web",namespace="shop",node="worker-1",pod="web-0",resource="memory",uid="1a2b",unit="byte"} 4294967296
kube_pod_container_resource_limits{container="worker",namespace="shop",node="worker-2",pod="worker-0",resource="cpu",uid="3c4d",unit="core"} 2
kube_pod_container_resource_requests{container="worker",namespace="shop",node="worker-2",pod="worker-0",resource="memory",uid="3c4d",unit="byte"} 2e9
kube_pod_container_status_running{container="web",namespace="shop",pod="web-0",uid="1a2b"} 1
kube_pod_container_status_running{container="worker",namespace="shop",pod="worker-0",uid="3c4d"} 1
"""


@pytest.fixture(scope="module")
def cluster_prometheus(tmp_path_factory):
    """Debian's Prometheus with the Kubernetes rules, scraping the cluster's series from a stand-in."""
    from tests.parts.monitoring import MetricsStandin, MissingBinary, Prometheus, wait_until

    workdir = tmp_path_factory.mktemp("cluster-prometheus")
    standin = MetricsStandin(CLUSTER_METRICS)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "kubelet", "static_configs": [
                  {"targets": [standin.address]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    try:
        prometheus = Prometheus(workdir / "prometheus.yml", workdir)
    except MissingBinary as exc:
        standin.close()
        missing_realpart(str(exc))
    try:
        wait_until(lambda: prometheus.query("aitools:k8s_production_score"), 60, "the production score")
        time.sleep(2)
        yield prometheus
    finally:
        prometheus.stop()
        standin.close()


def test_every_namespace_dashboard_query_returns_its_figures(cluster_prometheus):
    dashboard = beyond_dashboard("k8s-namespace.json")
    results = {}
    for title, ref, expr in dashboard_queries(dashboard):
        result = cluster_prometheus.query(expr.replace("$namespace", "shop"))
        if title != "annotation":  # no alert has fired in these few seconds
            assert result, f"{title} / {ref}: {expr}"
        results[(title, ref)] = result

    def values(title, ref="A", label=None):
        return {(s["metric"].get(label) if label else None): float(s["value"][1]) for s in results[(title, ref)]}

    assert values("Namespace working set against production_total") == {None: 8.5e9}
    assert values("Namespace working set against production_total", "B") == {None: 8e9}
    assert values("Production budget used") == {None: 8.5e9 / 8e9}
    assert values("Production score") == {None: 43.75}
    assert values("Working set per pod", label="pod") == {"web-0": 4e9, "worker-0": 4.5e9}
    assert [s["metric"]["container"] for s in results[("Containers without a memory limit", "A")]] == ["worker"]
    table = "Containers against their limits"
    assert values(table, "A", "container") == {"web": 4e9, "worker": 4.5e9}
    assert values(table, "B", "container") == {"web": 4294967296, "worker": 2e9}
    assert values(table, "C", "container") == {"web": 8589934592}
    assert values(table, "D", "container") == {"web": 4e9 / 8589934592}


def test_beyond_dashboards_have_uids_and_titles_of_their_own():
    import json

    beyond_dashboard("team.json")  # skips without the SDK, as the others
    from grafana.dashboards_src import BEYOND_ONE_MACHINE, OUTPUT_DIR

    dashboards = [json.loads(path.read_text()) for path in sorted(OUTPUT_DIR.glob("*.json"))]
    assert len({d["uid"] for d in dashboards}) == len({d["title"] for d in dashboards}) == len(dashboards)
    assert {d["uid"] for d in dashboards} >= {"aitools-k8s-namespace", "aitools-team"}
    assert sorted(BEYOND_ONE_MACHINE) == ["k8s-namespace.json", "team.json"]
