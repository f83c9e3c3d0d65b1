"""The landing page at `/`, in a real browser (Debian's chromium, headless).

The real exporter serves a real collection: a real Docker engine's container whose compose
project and service labels are hostile HTML, a swift-frontend process, and Ollama and LM
Studio stand-ins with loaded and installed models, some named with HTML too. Chromium
renders the page; its DOM must hold exactly the snapshot's budgets, tree and verdicts
(`aitools-exporter snapshot --json` run beside it), every hostile name as plain text (no
element made of it), and a screenshot of the page is kept under tests/artifacts/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import missing_realpart
from tests.parts.exporter_process import ExporterProcess

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
GB = 10**9
HOSTILE_MODEL = '"><img src=x onerror=alert(1)>:7b'
HOSTILE_KEY = "<script>alert('lmstudio')</script>"
HOSTILE_PROJECT = "<b>proj</b>&amp;"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    missing_realpart("chromium is not installed (Debian package chromium)")


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="aitools-chromium-")
    try:
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
                               *args], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Dom(HTMLParser):
    """The rows of the dumped DOM (by class, with their data- attributes and text) and every tag seen."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[dict]] = {}
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._row: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and attrs.get("class") in ("budget", "node", "fit"):
            self._row = {key[5:]: value for key, value in attrs.items() if key.startswith("data-")}
            self._row["cells"] = []
            self.rows.setdefault(attrs["class"], []).append(self._row)

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None and data.strip():
            self._row["cells"].append(data.strip())


def number(text: str) -> float | None:
    return None if text == "None" else float(text)


@pytest.fixture
def served(docker_engine, swift_frontend, ollama_standin, lmstudio_standin, tmp_path):
    docker_engine.client.api.tag("busybox:local", "supabase/postgres", "15.1.0.147")
    container = docker_engine.run("hostile-db", "supabase/postgres:15.1.0.147", hold_mb=16, labels={
        "com.docker.compose.project": HOSTILE_PROJECT, "com.docker.compose.service": "<i>db</i>"})
    swift_frontend.start(hold_mb=40)
    ollama_standin.load("llama3.1:8b", size=6 * GB)
    ollama_standin.install("qwen2.5:0.5b", size_on_disk=397_821_319)
    ollama_standin.install(HOSTILE_MODEL, size_on_disk=4_113_301_824)  # needs llama3.1:8b unloaded
    lmstudio_standin.load(HOSTILE_KEY, size_bytes=2_500_000_000)
    lmstudio_standin.download("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    config = yaml.safe_dump({"budgets": {"ollama": 8 * GB, "swift_build": "30MB"},
                             "docker": {"host": docker_engine.host},
                             "ollama": {"url": ollama_standin.url}, "lmstudio": {"url": lmstudio_standin.url}})
    try:
        with ExporterProcess(config) as exporter:
            (tmp_path / "config.yml").write_text(config)
            yield exporter, tmp_path / "config.yml", ollama_standin
    finally:
        docker_engine.client.api.remove_container(container, force=True)


def test_landing_page_in_chromium_shows_the_snapshots_figures(served, capsys):
    exporter, config_path, _ = served
    served_page = httpx.get(exporter.url + "/", timeout=30)
    assert served_page.status_code == 200 and served_page.headers["content-type"] == "text/html; charset=utf-8"
    dumped = run_chromium("--dump-dom", exporter.url + "/")
    assert dumped.returncode == 0 and "<html" in dumped.stdout, dumped.stderr[-2000:]
    snapshot = json.loads(subprocess.run([sys.executable, "-m", "exporter", "snapshot", "--json", "--config.file",
                                          str(config_path)], capture_output=True, text=True, timeout=60).stdout)
    dom = Dom()
    dom.feed(dumped.stdout)

    # Plain HTML and CSS, refreshing itself, nothing fetched from anywhere.
    tags = {tag for tag, _ in dom.tags}
    assert not tags & {"script", "img", "link", "iframe", "object", "embed", "i"}, tags
    assert ("meta", {"http-equiv": "refresh", "content": "30"}) in dom.tags
    assert not [attrs for _, attrs in dom.tags if any(str(v).startswith(("http:", "https:", "//"))
                                                       for k, v in attrs.items() if k in ("src", "href"))]
    # Hostile names are text on the page, as they were given.
    text = "".join(dom.text)
    for name in (HOSTILE_MODEL, HOSTILE_KEY, HOSTILE_PROJECT):
        assert name in text

    # Every budget with its figures and its bar: the snapshot's readings.
    page_budgets = {(row["budget"], row["subject"]): row for row in dom.rows["budget"]}
    snap_budgets = {(r["budget"], r["subject"]): r for r in snapshot["readings"]
                    if r["budget"] and r["budget"] != "container limit"}
    assert set(page_budgets) == set(snap_budgets)
    for key, reading in snap_budgets.items():
        assert number(page_budgets[key]["budget-bytes"]) == reading["budget_bytes"]
    for server, used in (("ollama", 6 * GB), ("lmstudio", 2.5 * GB)):
        row = page_budgets[(server, f"{server} loaded models")]
        assert number(row["used-bytes"]) == used == snap_budgets[(server, f"{server} loaded models")]["used_bytes"]
    assert "75%" in page_budgets[("ollama", "ollama loaded models")]["cells"]
    swift = page_budgets[("swift_build", next(s for b, s in page_budgets if b == "swift_build"))]
    assert "OVER" in swift["cells"]  # 40 MB held, 30 MB budget
    bars = [attrs for tag, attrs in dom.tags if tag == "span" and attrs.get("class", "").startswith("bar")]
    assert len(bars) >= len(snap_budgets) and any(a["class"] == "bar over" for a in bars)

    # The breakdown: the same tree, node for node; stable figures equal, the machine's close.
    def flatten(node, depth=0):
        yield depth, node
        for child in node["children"]:
            yield from flatten(child, depth + 1)
    # The top-level nodes of unclaimed programs (the ten largest by name) change with
    # whatever else runs on the machine between the page and the snapshot: left out here.
    known = {"Docker", "Node.js servers", "Swift compilation (Xcode)", "IDE", "LLM services", "Python ML",
             "System/OS", "Other"}
    snap_all = list(flatten(snapshot["tree"]))
    page_all = dom.rows["node"][:len(snap_all) + 20]
    page_all = page_all[:next((i for i, row in enumerate(page_all) if row["name"] == "Other"), len(page_all)) + 1]

    def keep(entries, depth_of, name_of):
        out, skipping = [], False
        for entry in entries:
            depth, name = depth_of(entry), name_of(entry)
            if depth == 1:
                skipping = name not in known
            if not skipping:
                out.append(entry)
        return out

    snap_nodes = keep(snap_all, lambda e: e[0], lambda e: e[1]["name"])
    user_nodes = keep(page_all, lambda r: int(r["depth"]), lambda r: r["name"])
    assert [(int(row["depth"]), row["name"]) for row in user_nodes] == [(d, n["name"]) for d, n in snap_nodes]
    for row, (_, node) in zip(user_nodes, snap_nodes):
        shown, expected = number(row["bytes"]), node["bytes"]
        if node["name"] in ("llama3.1:8b", HOSTILE_KEY):
            assert shown == expected, node["name"]
        elif expected is None:
            assert shown is None, node["name"]
        elif node["name"] in ("Workstation (used memory)", "System/OS", "Python ML", "Other", "LLM services",
                              "Ollama", "LM Studio", "Docker", "Swift compilation (Xcode)"):
            # The apps' figures: processes of the whole machine (this test's own among them),
            # which move between the page and the snapshot.
            assert shown is not None and shown >= 0, node["name"]
        else:
            assert shown == pytest.approx(expected, rel=0.25), node["name"]  # containers, swift-frontend
    docker = next(row for row in user_nodes if row["name"] == "Docker")
    project = next(row for row in user_nodes if row["name"] == HOSTILE_PROJECT)
    assert int(project["depth"]) == int(docker["depth"]) + 1

    # Which installed models fit: the snapshot's verdicts.
    page_fits = {(row["server"], row["model"]): row["fits"] for row in dom.rows["fit"]}
    assert page_fits == {(f["server"], f["model"]): "1" if f["fits"] else "0" for f in snapshot["llm_fits"]}
    assert page_fits == {("ollama", "qwen2.5:0.5b"): "1", ("ollama", HOSTILE_MODEL): "0",
                         ("lmstudio", "qwen/qwen3-4b-2507"): "1"}
    assert "fits once ollama/llama3.1:8b unloaded" in text
    # At their estimated loaded size (llama3 8B's shape from /api/show, 4096 tokens here), with the plan.
    by_model = {row["model"]: row for row in dom.rows["fit"]}
    assert by_model[HOSTILE_MODEL]["outcome"] == "after_plan" and by_model[HOSTILE_MODEL]["unload"] == "ollama/llama3.1:8b"
    assert {f["model"]: f["size_bytes"] for f in snapshot["llm_fits"]}["qwen2.5:0.5b"] == \
        float(by_model["qwen2.5:0.5b"]["size-bytes"]) > 397_821_319 + 512 * 2**20  # file + 512 MiB of KV cache
    assert by_model["qwen2.5:0.5b"]["cells"][3] == "4096"

    # A screenshot, kept for people to look at.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "landing-page.png"
    screenshot.unlink(missing_ok=True)
    shot = run_chromium("--window-size=1200,1700", "--hide-scrollbars", f"--screenshot={screenshot}",
                        exporter.url + "/")
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    with capsys.disabled():  # shown in the run's output, captured or not
        print(f"\nlanding page screenshot: {screenshot}")


def test_landing_page_reuses_a_fresh_collection(served):
    """Reloads within a few seconds do not hit the backends again."""
    exporter, _, ollama = served
    before = len(ollama.requests)
    first = httpx.get(exporter.url + "/", timeout=30).text
    # One collection (and the models' /api/show for their estimates, once per digest).
    asked = [path for path, _ in ollama.requests[before:]]
    assert [path for path in asked if path != "/api/show"] == ["/api/ps", "/api/tags"]
    second = httpx.get(exporter.url + "/", timeout=30).text
    assert first == second and len(ollama.requests) == before + len(asked)


def test_the_page_of_links_served_when_the_breakdown_cannot_be_built():
    from exporter import __version__
    from exporter.landing import render_links_only

    body = render_links_only().decode()
    assert 'href="metrics"' in body and 'href="healthz"' in body and "<script" not in body
    assert f"Version {__version__}." in body
