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
from pathlib import Path

import pytest
import yaml

from tests.conftest import missing_realpart

jsonschema = pytest.importorskip("jsonschema")

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
    assert f'(max(aitools_budget_bytes{{budget="production_total"}}) or vector({default}))' in text
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
    assert "SUCCESS: 7 rules found" in out.stdout


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
