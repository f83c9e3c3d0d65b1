"""The Grafana dashboards (grafana/dashboards_src -> grafana/dashboards/*.json) and provisioning.

- the committed JSON is what the code generates, and loads back into the SDK's model;
- every panel has a unit, a one-line description, legends, explicit thresholds, the
  data source variable, and no budget typed in;
- every query parses as PromQL (promtool) and names only exporter metrics, bundled
  recording rules, ALERTS or up;
- against a real Prometheus that runs the bundled rules on a stand-in exporter, every
  panel query returns the series the panel is meant to show;
- the provisioning files have the keys Grafana requires and fit compose.monitoring.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from tests.conftest import UNDER_CI, missing_realpart
from tests.parts.monitoring import MetricsStandin, MissingBinary, Prometheus, wait_until

try:
    import grafana_foundation_sdk  # noqa: F401  (the test extra of pyproject.toml)
except ImportError:
    if UNDER_CI:
        raise
    pytest.skip("grafana-foundation-sdk is not installed: pip install -e '.[test]'", allow_module_level=True)

from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.cog.plugins import register_default_plugins  # noqa: E402
from grafana_foundation_sdk.models.dashboard import Dashboard  # noqa: E402

from grafana.dashboards_src import BEYOND_ONE_MACHINE, DASHBOARDS, OUTPUT_DIR, build_all  # noqa: E402
from grafana.dashboards_src import lib  # noqa: E402
from grafana.dashboards_src.__main__ import main as build_main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE_FILE = ROOT / "compose.monitoring.yml"

# The exporter's metrics (../shared/CONTRACT.md, and the sibling aitools_collector_series_dropped).
EXPORTER_METRICS = frozenset({
    "aitools_node_heap_used_bytes", "aitools_node_heap_total_bytes", "aitools_node_heap_limit_bytes",
    "aitools_node_rss_bytes", "aitools_node_target_up",
    "aitools_container_memory_usage_bytes", "aitools_container_memory_limit_bytes", "aitools_docker_up",
    "aitools_llm_model_loaded_bytes", "aitools_llm_model_vram_bytes", "aitools_llm_server_up",
    "aitools_llm_model_installed_bytes",
    "aitools_process_group_rss_bytes", "aitools_process_group_processes",
    "aitools_system_memory_pages", "aitools_system_page_size_bytes", "aitools_system_memory_total_bytes",
    "aitools_system_memory_available_bytes", "aitools_system_swap_used_bytes",
    "aitools_budget_bytes", "aitools_profile_info",
    "aitools_collector_success", "aitools_collector_duration_seconds", "aitools_collector_series_dropped",
    "aitools_build_info",
    # Siblings (README, metrics): not running vs failing, and the macOS memory pressure.
    "aitools_collector_source_running", "aitools_system_memory_pressure_level",
    "aitools_app_processes",
    # Additions (third round): macOS, the Apple GPU, Docker Desktop's VM.
    "aitools_system_swap_total_bytes", "aitools_system_memory_free_ratio", "aitools_system_pageouts_total",
    "aitools_system_swapouts_total", "aitools_gpu_memory_limit_bytes", "aitools_gpu_memory_wired_bytes",
    "aitools_docker_vm_memory_limit_bytes",
})
# Published for the rules, on no dashboard (the Node.js dashboard shows the targets' up;
# the dashboards show what the rules make of the apps: aitools:app_memory_bytes, the totals).
RULES_ONLY_METRICS = frozenset({"aitools_node_target_running",
                                "aitools_app_memory_bytes", "aitools_app_budget_info", "aitools_app_docker_vm"})
# Series Prometheus itself makes.
PROMETHEUS_SERIES = frozenset({"ALERTS", "up"})
# The budgets of the contract; the dashboards must show each against its size.
CONTRACT_BUDGETS = ("node_heap", "node_heap_growth", "docker", "ollama", "lmstudio", "swift_build",
                    "development_total", "production_total")
# Series that a panel may draw as a limit line besides aitools_budget_bytes: the V8 heap
# limit and physical memory are limits of the machine, not budgets.
LIMIT_LINE_METRICS = frozenset({"aitools_budget_bytes", "aitools_node_heap_limit_bytes",
                                "aitools_system_memory_total_bytes", "aitools_gpu_memory_limit_bytes",
                                "aitools_docker_vm_memory_limit_bytes"})
# Values of the dashboard variables when a query is checked outside Grafana.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                             "unless", "offset", "bool", "inf", "nan", "atan2"})
# A panel may write small numbers (100 for a score, 1 for a whole ratio, topk(10), > 1
# for duplicates); a budget is millions of bytes at least.
LARGEST_LITERAL = 100

register_default_plugins()


# --- helpers ---------------------------------------------------------------------------

def committed() -> dict[str, dict]:
    return {name: json.loads((OUTPUT_DIR / name).read_text()) for name in DASHBOARDS}


def panels_of(dashboard: dict) -> list[dict]:
    """Every panel that is not a row, including those inside collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def all_panels() -> list[tuple[str, dict]]:
    return [(name, panel) for name, dashboard in committed().items() for panel in panels_of(dashboard)]


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard, where, expr) of every panel target, annotation and variable query."""
    found = []
    for name, dashboard in committed().items():
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                found.append((name, f"{panel['title']} / {target['refId']}", target["expr"]))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                found.append((name, f"annotation {annotation['name']}", annotation["expr"]))
    return found


def variable_names(dashboard: dict) -> set[str]:
    return {variable["name"] for variable in dashboard["templating"]["list"]}


VARIABLE = re.compile(r"\$\{(\w+)(?:[:.][^}]*)?\}|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $var / ${var}; $1 (a regex group of label_replace) stays."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():
            return match.group(0)
        return values[name]

    return VARIABLE.sub(replace, expr)


def used_variables(expr: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in VARIABLE.finditer(expr)} - {str(n) for n in range(10)}


STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
TOKEN = re.compile(r"(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?P<unit>[a-z]+)?|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _strip(expr: str) -> str:
    """The expression without strings, label matchers, ranges and grouping label lists."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    return GROUPING.sub(" ", text)


def metric_names(expr: str) -> set[str]:
    text = _strip(expr)
    names = set()
    for match in TOKEN.finditer(text):
        name = match.group("name")
        if name is None or name in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[match.end():]):
            continue  # a function or an aggregation
        names.add(name)
    return names


def numeric_literals(expr: str) -> list[float]:
    """Numbers written in the expression, leaving out durations (30m) and label values."""
    numbers = []
    for match in TOKEN.finditer(_strip(expr)):
        if match.group("number") is not None and match.group("unit") is None:
            numbers.append(float(match.group("number")))
    return numbers


def recording_rule_names() -> set[str]:
    names = set()
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            names.update(rule["record"] for rule in group.get("rules", []) if "record" in rule)
    return names


def threshold_values(panel: dict) -> list[float]:
    field_config = panel.get("fieldConfig", {})
    configs = [field_config.get("defaults", {}).get("thresholds")]
    for override in field_config.get("overrides", []):
        configs += [p.get("value") for p in override.get("properties", []) if p["id"] == "thresholds"]
    return [step["value"] for config in configs if config for step in config["steps"] if step["value"] is not None]


def min_max_values(panel: dict) -> list[float]:
    field_config = panel.get("fieldConfig", {})
    values = [field_config.get("defaults", {}).get(key) for key in ("min", "max")]
    for override in field_config.get("overrides", []):
        values += [p.get("value") for p in override.get("properties", []) if p["id"] in ("min", "max")]
    return [value for value in values if value is not None]


# --- the committed JSON ------------------------------------------------------------------

def test_committed_json_is_what_the_code_generates():
    built = build_all()
    assert sorted(built) == sorted(p.name for p in OUTPUT_DIR.glob("*.json")), \
        "grafana/dashboards/ holds exactly the generated dashboards"
    for name, text in built.items():
        assert (OUTPUT_DIR / name).read_text() == text, \
            f"grafana/dashboards/{name} differs from the code: run python -m grafana.dashboards_src"


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    assert build_main(["--output", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({**DASHBOARDS, **BEYOND_ONE_MACHINE})
    assert build_main(["--output", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "node.json"
    stale.write_text(stale.read_text().replace("heapUsed", "heap used"))
    assert build_main(["--output", str(tmp_path), "--check"]) == 1
    assert "node.json: differs from the code" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_loads_back_into_the_sdk_model(name):
    """Grafana's dashboard model (the SDK's types): decoding and encoding again changes nothing."""
    data = json.loads((OUTPUT_DIR / name).read_text())
    model = Dashboard.from_json(data)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == data
    assert model.uid and 8 <= len(model.uid) <= 40
    assert model.title and model.panels


def test_dashboards_have_unique_uids_and_the_common_variables():
    dashboards = committed()
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles)
    for name, dashboard in dashboards.items():
        assert lib.TAG in dashboard["tags"], name
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["datasource"]["current"]["value"] == lib.DATASOURCE_UID
        assert variables["instance"]["type"] == "query"
        assert variables["instance"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert "instance" in variables["instance"]["query"]


def test_overview_shows_what_the_issue_asks_for():
    overview = committed()["overview.json"]
    panels = panels_of(overview)
    gauges = [p for p in panels if p["type"] == "gauge"]
    exprs = [p["targets"][0]["expr"] for p in gauges]
    assert any(e.startswith("aitools:efficiency_score:overall{") for e in exprs)
    components = sorted(re.search(r'component="(\w+)"', e).group(1) for e in exprs if 'component="' in e)
    assert components == ["docker", "llm", "node", "system"]
    all_exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert "ALERTS{" in all_exprs and "topk(" in all_exprs
    assert "aitools:budget_usage:ratio{" in all_exprs and "aitools:budget_usage_bytes{" in all_exprs


def test_panels_are_laid_out_on_the_grid_without_overlap():
    for name, dashboard in committed().items():
        taken = set()
        ids = []
        for panel in dashboard["panels"]:
            ids.append(panel["id"])
            ids.extend(inner["id"] for inner in panel.get("panels", []))
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel["title"])
            cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & taken, f"{name}: {panel['title']} overlaps another panel"
            taken |= cells
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"


# --- every panel ---------------------------------------------------------------------

@pytest.mark.parametrize("name,panel", all_panels(), ids=lambda v: v if isinstance(v, str) else v["title"])
def test_panel_has_unit_description_legend_thresholds_and_datasource(name, panel):
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    description = panel.get("description", "")
    assert description.strip() and "\n" not in description, "a one-line description"
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults.get("unit") in lib.UNITS, f"unit set: {defaults.get('unit')!r}"
    if defaults["unit"] == lib.STATE and panel["type"] != "table":
        assert defaults.get("mappings") or panel["options"].get("textMode") == "name", \
            "a panel without a unit shows states through value mappings or names"
    # Explicit thresholds: without them Grafana applies its default red at 80.
    assert defaults.get("thresholds", {}).get("steps"), "thresholds set"
    assert panel["targets"], "queries"
    for target in panel["targets"]:
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        legend = target.get("legendFormat", "")
        assert legend.strip() and legend != "__auto", f"{target['refId']}: a legend that names the thing"
        assert 'instance="$instance"' in target["expr"], f"{target['refId']}: filtered to the selected instance"


@pytest.mark.parametrize("name,panel", all_panels(), ids=lambda v: v if isinstance(v, str) else v["title"])
def test_no_panel_has_a_budget_typed_in(name, panel):
    for target in panel["targets"]:
        expr = target["expr"]
        assert "^" not in _strip(expr), f"{target['refId']}: no powers (2^30 would be a size)"
        too_big = [n for n in numeric_literals(expr) if n > LARGEST_LITERAL]
        assert not too_big, f"{target['refId']}: numbers in the query: {too_big}"
    assert all(abs(v) <= LARGEST_LITERAL for v in threshold_values(panel)), threshold_values(panel)
    assert all(abs(v) <= LARGEST_LITERAL for v in min_max_values(panel)), min_max_values(panel)
    # Fields in bytes never get a numeric threshold or maximum: budgets are series.
    defaults = panel["fieldConfig"]["defaults"]
    scopes = [(defaults.get("unit"), defaults)]
    for override in panel["fieldConfig"].get("overrides", []):
        properties = {p["id"]: p.get("value") for p in override["properties"]}
        scopes.append((properties.get("unit", defaults.get("unit")), properties))
    for unit, scope in scopes:
        if unit == lib.BYTES:
            steps = (scope.get("thresholds") or {}).get("steps", [])
            assert [step["value"] for step in steps if step["value"] is not None] == [], \
                "a field in bytes has no numeric thresholds"
            assert scope.get("max") is None, "a field in bytes has no fixed maximum"


def test_budget_lines_come_from_the_exporter_series():
    lines = 0
    for _, panel in all_panels():
        line_refs = [o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])
                     if o["matcher"]["id"] == "byFrameRefID"]
        for ref in line_refs:
            target = next(t for t in panel["targets"] if t["refId"] == ref)
            assert metric_names(target["expr"]) & LIMIT_LINE_METRICS, (panel["title"], target["expr"])
            lines += 1
        if re.search(r"\bbudget\b", panel["title"]) and panel["type"] == "timeseries":
            assert any("aitools_budget_bytes" in t["expr"] for t in panel["targets"]), \
                f"{panel['title']}: a time series against a budget draws the budget line"
    assert lines >= 8


def test_every_budget_is_shown_against_its_size():
    exprs = [expr for _, _, expr in all_queries()]
    overview = " ".join(t["expr"] for p in panels_of(committed()["overview.json"]) for t in p["targets"])
    # The overview shows every budget's ratio, whatever its name.
    assert re.search(r'aitools:budget_usage:ratio\{instance="\$instance"\}', overview)
    for name in CONTRACT_BUDGETS:
        assert any(name in expr and ("aitools_budget_bytes" in expr or "aitools:budget_usage" in expr)
                   for expr in exprs) or name.endswith("_total"), name
    assert any("development_total|production_total" in expr for expr in exprs)


def test_score_gauges_use_the_score_bands():
    gauges = [panel for _, panel in all_panels() if panel["type"] == "gauge"]
    assert len(gauges) >= 9
    expected = [{"color": color, "value": value} for value, color, _ in lib.SCORE_BANDS]
    for panel in gauges:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == lib.SCORE
        assert (defaults["min"], defaults["max"]) == (0, 100)
        assert defaults["thresholds"]["steps"] == expected
        assert "efficiency_score" in panel["targets"][0]["expr"]
    assert lib.SCORE_BANDS[-1][0] == 85, "the user calls 85 and more excellent"


# --- the queries -----------------------------------------------------------------------

def test_queries_name_only_exporter_metrics_and_bundled_rules():
    rules = recording_rule_names()
    assert {"aitools:budget_usage_bytes", "aitools:budget_usage:ratio", "aitools:efficiency_score",
            "aitools:efficiency_score:overall", "aitools:node_heap_baseline_bytes",
            "aitools:node_heap_baseline_growth_bytes"} <= rules, "the recording rules the dashboards use exist"
    known = EXPORTER_METRICS | RULES_ONLY_METRICS | PROMETHEUS_SERIES | rules
    used = set()
    for name, where, expr in all_queries():
        names = metric_names(expr)
        assert names, f"{name} {where}: no metric found in {expr}"
        assert names <= known, f"{name} {where}: unknown names {sorted(names - known)}"
        used |= names
    for dashboard in committed().values():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                inner = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"])
                assert inner, variable["query"]
                assert metric_names(inner.group(1)) <= known
    # Most of the exporter's metrics are on some dashboard.
    assert len(used & EXPORTER_METRICS) >= len(EXPORTER_METRICS) - 1, sorted(EXPORTER_METRICS - used)


def test_metric_name_extraction():
    expr = ('topk(10, label_replace(max by (instance, target) (aitools_node_rss_bytes{instance="$instance"}'
            ' or aitools_node_heap_used_bytes{instance="x"}), "consumer", "node $1", "target", "(.+)"))'
            ' / on (instance) group_left () aitools:budget_usage:ratio offset 5m > bool 1e3')
    assert metric_names(expr) == {"aitools_node_rss_bytes", "aitools_node_heap_used_bytes", "aitools:budget_usage:ratio"}
    assert numeric_literals(expr) == [10, 1000]
    assert used_variables(expr) == {"instance"}


def test_queries_use_only_defined_variables():
    for name, dashboard in committed().items():
        defined = variable_names(dashboard) | set(GRAFANA_BUILTINS)
        for dname, where, expr in all_queries():
            if dname == name:
                assert used_variables(expr) <= defined, f"{name} {where}: {used_variables(expr) - defined}"


def test_every_query_parses_as_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_realpart("promtool is not installed (apt-get install prometheus)")
    values = {"instance": "host.docker.internal:8730", "target": ".*", "project": ".*", "datasource": "x",
              **GRAFANA_BUILTINS}
    rules = [{"record": f"dashboard:query_{index}:check", "expr": substitute(expr, values)}
             for index, (_, _, expr) in enumerate(all_queries())]
    assert len(rules) >= 60
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_query(tmp_path):
    """The check above can fail: a query with a syntax error is refused."""
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_realpart("promtool is not installed (apt-get install prometheus)")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "dashboard:broken", "expr": 'sum by (instance (aitools_budget_bytes)'}]}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


# --- the queries against a real Prometheus running the bundled rules ----------------------

GiB, MiB = 2**30, 2**20
STANDIN_METRICS = f"""\
aitools_build_info{{version="0.1.0"}} 1
aitools_profile_info{{profile="development"}} 1
aitools_budget_bytes{{budget="node_heap"}} 200000000
aitools_budget_bytes{{budget="node_heap_growth"}} 50000000
aitools_budget_bytes{{budget="docker"}} 5000000000
aitools_budget_bytes{{budget="ollama"}} 8000000000
aitools_budget_bytes{{budget="lmstudio"}} 16000000000
aitools_budget_bytes{{budget="swift_build"}} 6000000000
aitools_budget_bytes{{budget="development_total"}} 20000000000
aitools_budget_bytes{{budget="production_total"}} 8000000000
aitools_node_heap_used_bytes{{target="api"}} {150 * MiB}
aitools_node_heap_total_bytes{{target="api"}} {180 * MiB}
aitools_node_heap_limit_bytes{{target="api"}} {4144 * MiB}
aitools_node_rss_bytes{{target="api"}} {260 * MiB}
aitools_node_target_up{{target="api"}} 1
aitools_docker_up 1
aitools_container_memory_usage_bytes{{name="supabase-db",image="supabase/postgres:15.1.0.147",family="postgres",compose_project="supabase",compose_service="db"}} {1200 * MiB}
aitools_container_memory_usage_bytes{{name="supabase-kong",image="kong:2.8.1",family="kong",compose_project="supabase",compose_service="kong"}} {400 * MiB}
aitools_container_memory_usage_bytes{{name="old-postgres",image="postgres:15",family="postgres",compose_project="",compose_service=""}} {300 * MiB}
aitools_container_memory_limit_bytes{{name="supabase-kong",image="kong:2.8.1",family="kong",compose_project="supabase",compose_service="kong"}} {512 * MiB}
aitools_llm_server_up{{server="ollama"}} 1
aitools_llm_server_up{{server="lmstudio"}} 1
aitools_llm_model_loaded_bytes{{server="ollama",model="llama3.2:3b"}} {3 * GiB}
aitools_llm_model_vram_bytes{{server="ollama",model="llama3.2:3b"}} {2 * GiB}
aitools_llm_model_loaded_bytes{{server="lmstudio",model="qwen2.5-coder-7b-instruct"}} {4500 * MiB}
aitools_llm_model_installed_bytes{{server="ollama",model="llama3.2:3b"}} 2019393189
aitools_llm_model_installed_bytes{{server="ollama",model="qwen2.5:0.5b"}} 397821319
aitools_llm_model_installed_bytes{{server="ollama",model="llama3.3:70b"}} 42520413916
aitools_llm_model_installed_bytes{{server="lmstudio",model="qwen2.5-coder-7b-instruct"}} {4500 * MiB}
aitools_llm_model_installed_bytes{{server="lmstudio",model="google/gemma-3-12b"}} 8100000000
aitools_process_group_rss_bytes{{group="swift-frontend"}} {5 * GiB}
aitools_process_group_processes{{group="swift-frontend"}} 4
aitools_system_page_size_bytes 16384
aitools_system_memory_pages{{state="free"}} 100000
aitools_system_memory_pages{{state="active"}} 1500000
aitools_system_memory_pages{{state="wired"}} 400000
aitools_system_memory_pages{{state="compressed"}} 200000
aitools_system_memory_total_bytes {64 * GiB}
aitools_system_memory_available_bytes {24 * GiB}
aitools_system_swap_used_bytes {1 * GiB}
aitools_collector_success{{collector="docker"}} 1
aitools_collector_success{{collector="node"}} 0
aitools_collector_success{{collector="ollama"}} 0
aitools_collector_success{{collector="lmstudio"}} 0
aitools_collector_source_running{{collector="docker"}} 1
aitools_collector_source_running{{collector="node"}} 1
aitools_collector_source_running{{collector="ollama"}} 0
aitools_collector_source_running{{collector="lmstudio"}} 1
aitools_system_memory_pressure_level 2
aitools_container_memory_usage_bytes{{name="shop-worker-1",image="shop-worker",family="shop-worker",compose_project="shop",compose_service="worker"}} {10 * MiB}
aitools_container_memory_usage_bytes{{name="shop-worker-2",image="shop-worker",family="shop-worker",compose_project="shop",compose_service="worker"}} {10 * MiB}
aitools_container_memory_usage_bytes{{name="small-1",image="busybox",family="busybox-1",compose_project="shop",compose_service="s1"}} {1 * MiB}
aitools_container_memory_usage_bytes{{name="small-2",image="busybox",family="busybox-2",compose_project="shop",compose_service="s2"}} {2 * MiB}
aitools_container_memory_usage_bytes{{name="small-3",image="busybox",family="busybox-3",compose_project="shop",compose_service="s3"}} {3 * MiB}
aitools_container_memory_usage_bytes{{name="small-4",image="busybox",family="busybox-4",compose_project="shop",compose_service="s4"}} {4 * MiB}
aitools_container_memory_usage_bytes{{name="small-5",image="busybox",family="busybox-5",compose_project="shop",compose_service="s5"}} {5 * MiB}
aitools_container_memory_usage_bytes{{name="small-6",image="busybox",family="busybox-6",compose_project="shop",compose_service="s6"}} {6 * MiB}
aitools_container_memory_usage_bytes{{name="small-7",image="busybox",family="busybox-7",compose_project="shop",compose_service="s7"}} {7 * MiB}
aitools_container_memory_usage_bytes{{name="small-8",image="busybox",family="busybox-8",compose_project="shop",compose_service="s8"}} {8 * MiB}
aitools_container_memory_usage_bytes{{name="small-9",image="busybox",family="busybox-9",compose_project="shop",compose_service="s9"}} {9 * MiB}
aitools_container_memory_usage_bytes{{name="small-10",image="busybox",family="busybox-10",compose_project="shop",compose_service="s10"}} {10 * MiB}
aitools_collector_duration_seconds{{collector="docker"}} 0.12
aitools_collector_duration_seconds{{collector="node"}} 3.0
aitools_collector_series_dropped{{collector="docker"}} 0
aitools_app_memory_bytes{{app="docker"}} {6 * GiB}
aitools_app_memory_bytes{{app="ide"}} {3 * GiB}
aitools_app_memory_bytes{{app="xcode"}} {5 * GiB}
aitools_app_memory_bytes{{app="system"}} {8 * GiB}
aitools_app_memory_bytes{{app="monitoring"}} {100 * MiB}
aitools_app_memory_bytes{{app="other"}} {1 * GiB}
aitools_app_processes{{app="docker"}} 12
aitools_app_processes{{app="ide"}} 9
aitools_app_processes{{app="xcode"}} 4
aitools_app_processes{{app="system"}} 300
aitools_app_processes{{app="monitoring"}} 1
aitools_app_processes{{app="other"}} 80
aitools_app_budget_info{{app="docker",budget="development_total"}} 1
aitools_app_budget_info{{app="ide",budget="development_total"}} 1
aitools_app_budget_info{{app="xcode",budget="development_total"}} 1
aitools_app_budget_info{{app="docker",budget="production_total"}} 1
aitools_app_docker_vm 1
aitools_system_memory_pages{{state="stored_in_compressor"}} 500000
aitools_system_memory_pages{{state="anonymous"}} 1200000
aitools_system_memory_pages{{state="purgeable"}} 20000
aitools_system_memory_pages{{state="file_backed"}} 320000
aitools_system_swap_total_bytes {2 * GiB}
aitools_system_memory_free_ratio 0.41
aitools_system_pageouts_total 524587
aitools_system_swapouts_total 1696838
aitools_gpu_memory_wired_bytes {7 * GiB}
aitools_gpu_memory_limit_bytes {48 * GiB}
aitools_docker_vm_memory_limit_bytes {8 * GiB}
"""

# Queries that need more history than a short run has (a 30-minute offset), or alerts
# whose `for` has not passed yet: they must run, they may answer nothing.
MAY_BE_EMPTY = ("baseline_growth", "ALERTS")


@pytest.fixture(scope="module")
def prometheus_with_rules(tmp_path_factory):
    """Debian's Prometheus with the bundled rules, scraping a stand-in exporter."""
    rule_files = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
    assert rule_files, "prometheus/rules/*.yml"
    workdir = tmp_path_factory.mktemp("prometheus")
    standin = MetricsStandin(STANDIN_METRICS)
    target = standin.address
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "aitools", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    try:
        prometheus = Prometheus(workdir / "prometheus.yml", workdir)
    except MissingBinary as exc:
        standin.close()
        missing_realpart(str(exc))
    try:
        try:
            wait_until(lambda: prometheus.query("aitools:efficiency_score:overall")
                       and len(prometheus.query("aitools:efficiency_score")) == 4, 90, "the rules' scores")
        except TimeoutError as exc:
            pytest.fail(f"{exc}: {prometheus.log()[-2000:]}")
        time.sleep(2)  # a few more evaluations: every rule has run on every series
        yield prometheus, target
    finally:
        prometheus.stop()
        standin.close()


def test_every_panel_query_returns_its_series(prometheus_with_rules):
    prometheus, instance = prometheus_with_rules
    values = {"instance": instance, "target": ".*", "project": ".*", "datasource": "x", **GRAFANA_BUILTINS}
    empty = []
    for name, where, expr in all_queries():
        result = prometheus.query(substitute(expr, values))
        if not result and not any(marker in expr for marker in MAY_BE_EMPTY):
            empty.append(f"{name} {where}: {expr}")
    assert not empty, "queries that show nothing:\n" + "\n".join(empty)


def test_queries_show_the_right_values(prometheus_with_rules):
    prometheus, instance = prometheus_with_rules
    values = {"instance": instance, "target": ".*", "project": ".*", "datasource": "x", **GRAFANA_BUILTINS}

    def run(dashboard: str, title: str, ref: str = "A") -> list[dict]:
        panel = next(p for p in panels_of(committed()[dashboard]) if p["title"] == title)
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        return prometheus.query(substitute(target["expr"], values))

    # The top consumers: one of each kind, largest first, named in `consumer`.
    top = run("overview.json", "Top consumers now")
    # (the small containers of the "top 10 and the rest" check below stay out of it)
    consumers = {s["metric"]["consumer"]: float(s["value"][1]) for s in top if float(s["value"][1]) >= 100 * MiB}
    assert consumers == {
        "processes swift-frontend": 5 * GiB, "lmstudio / qwen2.5-coder-7b-instruct": 4500 * MiB,
        "ollama / llama3.2:3b": 3 * GiB, "container supabase-db": 1200 * MiB,
        "container supabase-kong": 400 * MiB, "container old-postgres": 300 * MiB, "node api": 260 * MiB,
    }
    # The tracked total's budget line: only the active profile's total.
    line = run("overview.json", "Tracked total against the profile's budget", "B")
    assert [(s["metric"]["budget"], float(s["value"][1])) for s in line] == [("development_total", 20e9)]
    # Where the memory goes: the apps (docker less the bundle's containers in the VM: none
    # here), stacked up to the used memory (64 - 24 GiB); the table's share of it.
    apps = {s["metric"]["app"]: float(s["value"][1]) for s in run("overview.json", "Memory by application")}
    assert apps == {"docker": 6 * GiB, "ide": 3 * GiB, "xcode": 5 * GiB, "system": 8 * GiB,
                    "monitoring": 100 * MiB, "other": 1 * GiB}
    assert [float(s["value"][1]) for s in run("overview.json", "Memory by application", "B")] == [40 * GiB]
    processes = {s["metric"]["app"]: float(s["value"][1]) for s in run("overview.json", "Applications now", "B")}
    assert processes["system"] == 300 and processes["ide"] == 9
    share = {s["metric"]["app"]: float(s["value"][1]) for s in run("overview.json", "Applications now", "C")}
    assert share["system"] == 0.2 and share["docker"] == 0.15
    # The tracked total is measured on the apps: docker, ide and xcode count in development.
    total = run("overview.json", "Tracked total against the profile's budget", "A")
    assert [(s["metric"]["budget"], float(s["value"][1])) for s in total] == [("development_total", 14 * GiB)]
    # Budget lines are the exporter's budgets.
    docker_line = run("containers.json", "All containers against the docker budget", "B")
    assert [float(s["value"][1]) for s in docker_line] == [5e9]
    # The budgets table: used and size per budget, from the rules and the exporter.
    used = {s["metric"]["budget"]: float(s["value"][1]) for s in run("overview.json", "Budgets: used against limit", "A")}
    size = {s["metric"]["budget"]: float(s["value"][1]) for s in run("overview.json", "Budgets: used against limit", "B")}
    assert used["docker"] == (1900 + 20 + 55) * MiB and size["docker"] == 5e9
    assert used["swift_build"] == 5 * GiB and size["swift_build"] == 6e9
    assert set(size) <= set(used) and "production_total" not in size
    # Duplicates: the two postgres containers (Supabase's and one outside any project),
    # and the count of duplicated families; two replicas of shop's worker are no
    # duplicate (the rule of AitoolsDuplicateService).
    duplicates = run("containers.json", "Containers of a service that runs twice")
    assert sorted(s["metric"]["name"] for s in duplicates) == ["old-postgres", "supabase-db"]
    assert [float(s["value"][1]) for s in run("containers.json", "Duplicated services")] == [1]
    # Compose projects, the container without one under (none).
    projects = {s["metric"]["compose_project"]: float(s["value"][1])
                for s in run("containers.json", "Memory per compose project")}
    assert projects == {"supabase": 1600 * MiB, "(none)": 300 * MiB, "shop": 75 * MiB}
    # 15 containers: the 10 biggest by name, the other 5 (1-5 MiB) together as other.
    title = "Memory per container: the 10 biggest and the rest"
    biggest = {s["metric"]["name"]: float(s["value"][1]) for s in run("containers.json", title, "A")}
    assert len(biggest) == 10 and min(biggest.values()) == 6 * MiB and biggest["supabase-db"] == 1200 * MiB
    assert [float(s["value"][1]) for s in run("containers.json", title, "B")] == [15 * MiB]
    # Collectors: ok, not running (Ollama not started) and failing told apart.
    states = {s["metric"]["collector"]: float(s["value"][1]) for s in run("system.json", "Collectors")}
    assert states == {"docker": 1, "node": 0, "ollama": 2, "lmstudio": 0}
    assert [float(s["value"][1]) for s in run("system.json", "Memory pressure (macOS)")] == [2]
    # Own limits: only the container that has one.
    limits = run("containers.json", "Usage against each container's own limit")
    assert [(s["metric"]["name"], round(float(s["value"][1]), 4)) for s in limits] == [("supabase-kong", 0.7812)]
    # Pages by state in bytes.
    pages = {s["metric"]["state"]: float(s["value"][1]) for s in run("system.json", "Memory by page state")}
    assert pages["active"] == 1500000 * 16384
    # Swift: RSS per process.
    per_process = run("swift.json", "RSS per swift-frontend process")
    assert [float(s["value"][1]) for s in per_process] == [5 * GiB / 4]
    # Installed models: which fit now (the machine leaves 24 GiB - 6.4 GiB, more than either budget).
    fit = [(s["metric"]["server"], s["metric"]["model"], float(s["value"][1])) for s in run("llm.json", "Fit now")]
    assert fit == [("lmstudio", "google/gemma-3-12b", 8.1e9), ("ollama", "qwen2.5:0.5b", 397821319)]
    blocked = run("llm.json", "Need another model unloaded first")
    assert [(s["metric"]["model"], float(s["value"][1])) for s in blocked] == [("llama3.3:70b", 42520413916)]
    room = {s["metric"]["server"]: float(s["value"][1]) for s in run("llm.json", "Room for another model")}
    assert room == {"ollama": 8e9 - 3 * GiB, "lmstudio": 16e9 - 4500 * MiB}  # the budgets bind, not the memory
    # The GPU share of the Ollama model.
    share = run("llm.json", "GPU share of each model")
    assert [round(float(s["value"][1]), 4) for s in share] == [0.6667]
    # Docker Desktop: the VM (the docker app, 6 GiB) beyond its containers' usage.
    containers = (1200 + 400 + 300 + 10 + 10 + sum(range(1, 11))) * MiB
    [overhead] = run("containers.json", "The VM beyond its containers")
    assert float(overhead["value"][1]) == 6 * GiB - containers
    # Activity Monitor's Memory Used, from the page counts: App Memory + Wired + Compressed.
    figures = {ref: float(run("system.json", "Activity Monitor's Memory (macOS)", ref)[0]["value"][1])
               for ref in "ABC"}
    assert figures == {"A": (1200000 - 20000) * 16384, "B": 400000 * 16384, "C": 200000 * 16384}
    [cached] = run("system.json", "Cached Files (macOS)")
    assert float(cached["value"][1]) == (320000 + 20000) * 16384
    # Apple silicon: the GPU may wire 41 GiB more (48 GiB ceiling, 7 GiB wired).
    [gpu_room] = run("system.json", "GPU room")
    assert float(gpu_room["value"][1]) == 41 * GiB


# --- provisioning --------------------------------------------------------------------

def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _mount_target(service: dict, source: str) -> str:
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


def test_datasource_provisioning():
    files = sorted((PROVISIONING / "datasources").glob("*.yml"))
    assert files
    sources = []
    for path in files:
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1
        sources += document["datasources"]
    for source in sources:
        for key in ("name", "type", "uid", "access", "url"):
            assert source.get(key), f"{source.get('name')}: {key}"
        assert source["access"] in ("proxy", "direct")
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["uid"] == lib.DATASOURCE_UID and prometheus[0]["isDefault"] is True
    assert sum(bool(s.get("isDefault")) for s in sources) == 1
    # The URLs name services of the compose stack on their ports.
    services = _compose()["services"]
    for source in sources:
        host, port = urllib.parse.urlsplit(source["url"]).netloc.split(":")
        assert host in services, source["url"]
        command = services[host].get("command", [])
        assert f"0.0.0.0:{port}" in (command if isinstance(command, str) else " ".join(command)), source["url"]
    # $__rate_interval follows the scrape interval of the bundled prometheus.yml.
    scrape_interval = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert prometheus[0]["jsonData"]["timeInterval"] == scrape_interval


def test_dashboard_provisioning_loads_the_generated_dashboards():
    files = sorted((PROVISIONING / "dashboards").glob("*.yml"))
    assert files
    providers = []
    for path in files:
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1
        providers += document["providers"]
    assert len(providers) == 1
    provider = providers[0]
    assert provider["name"] and provider["type"] == "file" and provider["folder"]
    assert provider["options"]["path"]
    grafana = _compose()["services"]["grafana"]
    # The provider's path is where compose mounts grafana/dashboards/.
    assert _mount_target(grafana, "./grafana/dashboards") == provider["options"]["path"]
    assert _mount_target(grafana, "./grafana/provisioning/dashboards") == "/etc/grafana/provisioning/dashboards"
    assert _mount_target(grafana, "./grafana/provisioning/datasources") == "/etc/grafana/provisioning/datasources"
    # The home dashboard is the overview, one of the provisioned files.
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/overview.json"
    assert (OUTPUT_DIR / "overview.json").exists()
