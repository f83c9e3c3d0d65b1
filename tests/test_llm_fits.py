"""Which installed model fits now: exporter/fits.py and the rule aitools:llm_model_fits agree.

Real stand-in servers with installed and loaded models, the real exporter collectors
(and the real /proc for the machine's memory) make one collection. From its samples the
Python logic gives each model its verdict; promtool then runs the rule file on the very
same samples and must give the same answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import psutil
import pytest
import yaml

from exporter.app import Exporter
from exporter.config import Config, DockerSection, LMStudioSection, OllamaSection
from exporter.fits import MEMORY_RESERVE_FRACTION, Loaded, Rooms, model_fits, plan
from exporter.readings import Samples
from exporter.snapshot import render_json, render_table, snapshot_of
from tests.parts.show_payloads import GEMMA3_4B, QWEN25_7B
from tests.test_rules import LLM_RULES, PROMETHEUS_DIR, promtool

GB = 10**9
RULE_INPUTS = ("aitools_budget_bytes", "aitools_llm_server_up", "aitools_llm_model_loaded_bytes",
               "aitools_llm_model_installed_bytes", "aitools_llm_model_estimated_bytes",
               "aitools_system_memory_total_bytes", "aitools_system_memory_available_bytes")


def rule_expr(name: str) -> str:
    for group in yaml.safe_load(LLM_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == name:
                return rule["expr"]
    raise AssertionError(f"no rule {name}")


def test_the_rules_reserve_is_the_python_reserve():
    expr = " ".join(rule_expr("aitools:llm_memory_room_bytes").split())
    found = re.fullmatch(r"max by \(instance\) \(aitools_system_memory_available_bytes\) "
                         r"- ([0-9.]+) \* max by \(instance\) \(aitools_system_memory_total_bytes\)", expr)
    assert found, expr
    assert float(found[1]) == MEMORY_RESERVE_FRACTION
    # The documented reason for 10 %: where the low-memory warning starts.
    alerts = yaml.safe_load((PROMETHEUS_DIR / "rules" / "aitools-alerts.rules.yml").read_text())
    warning = next(rule for group in alerts["groups"] for rule in group["rules"]
                   if rule.get("alert") == "AitoolsSystemMemoryLow" and rule["labels"]["severity"] == "warning")
    assert f"< {MEMORY_RESERVE_FRACTION} * aitools_system_memory_total_bytes" in " ".join(warning["expr"].split())


def collect_with_models(ollama_standin, lmstudio_standin):
    huge = 2 * psutil.virtual_memory().total  # never fits this machine
    ollama_standin.load("llama3.1:8b", size=6 * GB)  # llama3 8B's shape (the documented /api/show)
    ollama_standin.install("qwen2.5:7b", size_on_disk=4_683_087_232, family="qwen2")
    ollama_standin.shows["qwen2.5:7b"] = QWEN25_7B
    ollama_standin.install("gemma3:4b", size_on_disk=3_338_801_804, family="gemma3")
    ollama_standin.shows["gemma3:4b"] = GEMMA3_4B
    ollama_standin.install("mamba:2.8b", size_on_disk=1_600_000_000, family="mamba")
    ollama_standin.shows["mamba:2.8b"] = {"model_info": {"general.architecture": "mamba", "mamba.block_count": 64}}
    ollama_standin.install("llama3.3:70b", size_on_disk=huge)    # never
    lmstudio_standin.load("google/gemma-3-4b", size_bytes=3_340_000_000)
    lmstudio_standin.download("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    lmstudio_standin.download("text-embedding-nomic-embed-text-v1.5", size_bytes=84_110_000, type="embedding")
    lmstudio_standin.download("meta/llama-3.1-405b", size_bytes=huge)
    # Ollama's budget leaves 3.6 GB: gemma3:4b's 3.3 GB file would fit, its 3.7 GB loaded size does not.
    config = Config(ollama=OllamaSection(url=ollama_standin.url), lmstudio=LMStudioSection(url=lmstudio_standin.url),
                    docker=DockerSection(enabled=False),
                    budgets={**Config().budgets, "ollama": 9_600_000_000, "lmstudio": 4 * huge})
    exporter = Exporter(config)
    # 5 Ollama models: /api/show is read 4 per scrape, the fifth at the next.
    list(exporter.llm_server("ollama").collect())
    return config, exporter.collect(), exporter


def test_show_is_read_a_few_models_per_scrape_and_cached_by_digest(ollama_standin):
    from exporter.collectors.llm import MAX_SHOW_CALLS_PER_SCRAPE, OllamaCollector

    for number in range(6):
        ollama_standin.install(f"model{number}:7b", size_on_disk=GB)
    collector = OllamaCollector(OllamaSection(url=ollama_standin.url))
    shows = lambda: sum(path == "/api/show" for path, _ in ollama_standin.requests)  # noqa: E731
    list(collector.collect())
    assert shows() == MAX_SHOW_CALLS_PER_SCRAPE == 4
    assert collector.last_estimates["model5:7b"] == "not read yet (/api/show is read a few models per scrape)"
    list(collector.collect())
    assert shows() == 6 and all(not isinstance(e, str) for e in collector.last_estimates.values())
    list(collector.collect())
    assert shows() == 6  # cached by digest
    ollama_standin.path_modes = {"/api/show": "http500"}
    ollama_standin.install("model6:7b", size_on_disk=GB)
    list(collector.collect())
    assert collector.last_estimates["model6:7b"].startswith("/api/show: answered HTTP 500")
    assert not isinstance(collector.last_estimates["model0:7b"], str)  # the others keep theirs


def test_which_installed_models_fit_with_real_standins(ollama_standin, lmstudio_standin):
    config, samples, exporter = collect_with_models(ollama_standin, lmstudio_standin)
    assert samples.value("aitools_system_memory_available_bytes") > 8 * GB, "this test needs some free memory"

    estimated = {labels["model"]: value for labels, value in samples.all("aitools_llm_model_estimated_bytes")}
    context = {labels["model"]: value for labels, value in samples.all("aitools_llm_model_context_length")}
    # Every installed and loaded model with an estimate: Ollama's by its /api/show answer, at 4096
    # tokens (this machine has no GPU: Ollama's default), LM Studio's by its file size.
    assert set(estimated) == {"llama3.1:8b", "qwen2.5:7b", "gemma3:4b", "llama3.3:70b", "google/gemma-3-4b",
                              "qwen/qwen3-4b-2507", "text-embedding-nomic-embed-text-v1.5", "meta/llama-3.1-405b"}
    assert context == {"llama3.1:8b": 4096, "qwen2.5:7b": 4096, "gemma3:4b": 4096, "llama3.3:70b": 4096,
                       "google/gemma-3-4b": 4096}
    assert estimated["gemma3:4b"] == pytest.approx(3.71e9, rel=0.01)   # file 3.34 GB + KV 266 MB + buffers
    assert estimated["qwen2.5:7b"] == pytest.approx(5.10e9, rel=0.01)  # file 4.68 GB + KV 235 MB + buffers
    assert estimated["qwen/qwen3-4b-2507"] == 2_500_000_000

    verdicts = {(fit.server, fit.model): (fit.outcome, fit.unload_first) for fit in model_fits(samples)}
    assert verdicts == {
        ("ollama", "qwen2.5:7b"): ("after_plan", ["ollama/llama3.1:8b"]),
        ("ollama", "gemma3:4b"): ("after_plan", ["ollama/llama3.1:8b"]),
        ("ollama", "mamba:2.8b"): ("fits", []),  # no estimate: its file size
        ("ollama", "llama3.3:70b"): ("never", []),
        ("lmstudio", "qwen/qwen3-4b-2507"): ("fits", []),
        ("lmstudio", "text-embedding-nomic-embed-text-v1.5"): ("fits", []),
        ("lmstudio", "meta/llama-3.1-405b"): ("never", []),
    }  # the loaded models (llama3.1:8b, google/gemma-3-4b) are not asked about
    fits = {fit.model: fit for fit in model_fits(samples)}
    assert fits["gemma3:4b"].server_room_bytes == pytest.approx(3.6e9)
    assert not fits["mamba:2.8b"].estimated and fits["mamba:2.8b"].size_bytes == 1_600_000_000
    available, total = (samples.value(f"aitools_system_memory_{n}_bytes") for n in ("available", "total"))
    assert fits["qwen2.5:7b"].memory_room_bytes == available - 0.1 * total
    never = fits["llama3.3:70b"]
    assert never.memory_limit_bytes == available - 0.1 * total + 6 * GB + 3_340_000_000  # everything unloaded
    assert "never fits: needs" in never.verdict and "ollama budget 9.6 GB" in never.verdict

    # The snapshot shows the same, for people and for scripts.
    snapshot = snapshot_of(config, samples, exporter.last_errors(), exporter.estimates())
    table = render_table(config, snapshot)
    assert "ollama    gemma3:4b  3.7 GB at context 4096: fits once ollama/llama3.1:8b unloaded" in table
    assert "ollama    mamba:2.8b  1.6 GB (file size, no estimate): fits now" in table
    assert "ollama    llama3.3:70b" in table and "never fits: needs" in table
    data = render_json(config, snapshot)
    assert {(f["server"], f["model"]): (f["outcome"], f["unload_first"]) for f in data["llm_fits"]} == verdicts
    gemma = next(f for f in data["llm_fits"] if f["model"] == "gemma3:4b")
    assert gemma["estimate"]["kv_bytes"] == 5 * 4096 * 4096 + 29 * 1536 * 4096  # sliding-window layers
    mamba = next(f for f in data["llm_fits"] if f["model"] == "mamba:2.8b")
    assert "architecture 'mamba' is not one" in mamba["no_estimate_reason"]
    assert data["memory_reserve_fraction"] == MEMORY_RESERVE_FRACTION


def test_the_gpu_room_counts_where_the_machine_has_one(ollama_standin, lmstudio_standin):
    _, samples, _ = collect_with_models(ollama_standin, lmstudio_standin)
    with_gpu(samples, room=3 * GB, limit=48 * 2**30)
    fits = {fit.model: fit for fit in model_fits(samples)}
    assert fits["qwen/qwen3-4b-2507"].gpu_room_bytes == 3 * GB
    # LM Studio's 2.5 GB model fits the GPU room; the embedding model too; Ollama's qwen2.5:7b
    # (5.1 GB) needs llama3.1:8b's 6 GB of GPU memory back as well as its budget.
    assert fits["qwen/qwen3-4b-2507"].fits and fits["qwen2.5:7b"].unload_first == ["ollama/llama3.1:8b"]


def with_gpu(samples: Samples, room: float, limit: float) -> None:
    """Adds the GPU series of a Mac (the GPU figures' collector) to a collection's samples."""
    samples.by_name["aitools_gpu_memory_limit_bytes"] = [({}, limit)]
    samples.by_name["aitools_gpu_memory_wired_bytes"] = [({}, limit - room)]


def samples_without_gpu(samples: Samples) -> Samples:
    bare = Samples([])
    bare.by_name.update({name: found for name, found in samples.by_name.items() if "gpu" not in name})
    return bare


def test_the_plan_counts_each_room_across_servers():
    ollama_big = Loaded("ollama", "llama3.3:70b", 40 * GB, 40 * GB)
    ollama_small = Loaded("ollama", "qwen2.5:0.5b", 1 * GB, 1 * GB)
    lms = Loaded("lmstudio", "qwen/qwen3-8b", 5 * GB, 5 * GB)
    lms_cpu = Loaded("lmstudio", "google/gemma-3-1b", 2 * GB, 0)  # on the CPU: frees no GPU memory
    candidates = [ollama_big, ollama_small, lms, lms_cpu]
    # An LM Studio model of 6 GB: its budget has 20 GB, memory 2 GB, GPU 4 GB. Unloading
    # Ollama's small model and LM Studio's 5 GB one gives memory 8 and GPU 10: the smallest
    # set is one model if one alone will do: LM Studio's 5 GB (memory 7, GPU 9).
    rooms = Rooms(server=20 * GB, memory=2 * GB, gpu=4 * GB)
    assert plan("lmstudio", 6 * GB, rooms, candidates) == [lms]
    # The server's own budget only grows with its own models: Ollama's 1 GB room.
    rooms = Rooms(server=1 * GB, memory=30 * GB, gpu=None)
    assert plan("ollama", 3 * GB, rooms, candidates) == [ollama_big]  # the small one alone is not enough
    # A model on the CPU gives no GPU room back: the GPU needs lms (5 GB), not gemma (0).
    rooms = Rooms(server=50 * GB, memory=50 * GB, gpu=1 * GB)
    assert plan("lmstudio", 3 * GB, rooms, [lms_cpu, ollama_small]) is None  # 1 + 1 GB of GPU at most
    assert plan("lmstudio", 3 * GB, rooms, [lms_cpu, lms]) == [lms]
    # Fits now: no plan; never: None.
    assert plan("ollama", 1 * GB, Rooms(2 * GB, 2 * GB, None), candidates) == []
    assert plan("ollama", 100 * GB, Rooms(2 * GB, 2 * GB, None), candidates) is None


def run_fit(config_path, *args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "exporter", "fit", *args, "--config.file", str(config_path)],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def test_fit_command_verdicts_and_exit_codes(ollama_standin, lmstudio_standin, tmp_path):
    config, _, _ = collect_with_models(ollama_standin, lmstudio_standin)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({
        "docker": {"enabled": False}, "ollama": {"url": ollama_standin.url},
        "lmstudio": {"url": lmstudio_standin.url},
        "budgets": {"ollama": config.budgets["ollama"], "lmstudio": config.budgets["lmstudio"]}}))

    code, out = run_fit(path, "qwen2.5:7b")
    assert code == 1, out
    assert "qwen2.5:7b (ollama): fits once ollama/llama3.1:8b unloaded" in out
    assert "unload ollama/llama3.1:8b (6.0 GB): ollama stop llama3.1:8b" in out
    assert "assumed: context 4096: Ollama's default for no GPU memory known" in out
    code, out = run_fit(path, "qwen/qwen3-4b-2507", "--server", "lmstudio")
    assert code == 0 and "fits now" in out, out
    code, out = run_fit(path, "llama3.1:8b")
    assert code == 0 and "is loaded in ollama now" in out, out
    code, out = run_fit(path, "llama3.3:70b")
    assert code == 2 and "never fits: needs" in out, out
    code, out = run_fit(path, "mamba:2.8b")  # its file fits, its loaded size is unknown: no verdict
    assert code == 3 and "no estimate: architecture 'mamba' is not one" in out, out
    code, out = run_fit(path, "no-such-model")
    assert code == 3 and "not installed in ollama or lmstudio" in out, out
    code, out = run_fit(path, "qwen2.5:7b", "--server", "lmstudio")
    assert code == 3, out

    code, out = run_fit(path, "gemma3:4b", "--json")
    answer = json.loads(out)
    assert code == answer["exit_code"] == 1 and answer["outcome"] == "after_plan"
    assert answer["fit"]["unload_first"] == ["ollama/llama3.1:8b"]
    assert answer["estimate"]["context_length"] == 4096 and answer["estimate"]["parallel"] == 1
    assert answer["estimate"]["total_bytes"] == answer["fit"]["size_bytes"]

    ollama_standin.stop()
    lmstudio_standin.stop()
    code, out = run_fit(path, "qwen2.5:7b")
    assert code == 3 and "did not answer" in out, out


def _series(name: str, labels: dict[str, str], value: float) -> dict:
    text = ", ".join(f'{key}="{val}"' for key, val in sorted({**labels, "instance": "snap:8730"}.items()))
    return {"series": f"{name}{{{text}}}", "values": f"{value!r}x3"}


@pytest.mark.parametrize("gpu_room", [None, 2 * GB], ids=["no-gpu", "gpu-room-2GB"])
def test_the_rule_gives_the_same_answers_on_the_same_samples(ollama_standin, lmstudio_standin, tmp_path, gpu_room):
    _, samples, _ = collect_with_models(ollama_standin, lmstudio_standin)
    if gpu_room is not None:
        with_gpu(samples, room=gpu_room, limit=48 * 2**30)
    expected = model_fits(samples)
    assert len(expected) == 7
    if gpu_room is not None:  # the GPU room changes verdicts: LM Studio's 2.5 GB model no longer fits
        assert sum(fit.fits for fit in expected) < sum(fit.fits for fit in model_fits(
            samples_without_gpu(samples)))
    inputs = [_series(name, labels, value) for name in RULE_INPUTS for labels, value in samples.all(name)]
    if gpu_room is not None:  # the GPU figures' recording rule, as its series
        inputs.append(_series("aitools:gpu_memory_room_bytes", {}, float(gpu_room)))
    test = {
        "rule_files": [str(LLM_RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": inputs,
            "promql_expr_test": [{
                "expr": "aitools:llm_model_fits",
                "eval_time": "1m",
                "exp_samples": [
                    {"labels": f'aitools:llm_model_fits{{instance="snap:8730", model="{fit.model}", '
                               f'server="{fit.server}"}}',
                     "value": 1 if fit.fits else 0}
                    for fit in expected],
            }],
        }],
    }
    (tmp_path / "fits.test.yml").write_text(yaml.safe_dump(test))
    out = subprocess.run([promtool(), "test", "rules", "fits.test.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_context_and_slots_come_from_the_ollama_servers_own_environment(ollama_standin, tmp_path):
    """A real process named `ollama`, started as `ollama serve` with OLLAMA_CONTEXT_LENGTH,
    OLLAMA_NUM_PARALLEL and OLLAMA_KV_CACHE_TYPE in its environment: the collector reads them
    from /proc/PID/environ (the user's own process) and estimates with them."""
    import os
    import shutil
    import time

    from exporter.collectors.llm import OllamaCollector

    binary = tmp_path / "ollama"
    shutil.copy(os.path.realpath(sys.executable), binary)
    (tmp_path / "serve").write_text("import time\ntime.sleep(120)\n")
    env = {**os.environ, "OLLAMA_CONTEXT_LENGTH": "16384", "OLLAMA_NUM_PARALLEL": "2",
           "OLLAMA_KV_CACHE_TYPE": "q8_0", "PYTHONHOME": sys.base_prefix}  # the copy sits outside the interpreter's prefix
    server = subprocess.Popen([str(binary), "serve"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        assert server.poll() is None, "the stand-in `ollama serve` process did not start"
        ollama_standin.install("llama3:8b", size_on_disk=4_661_224_676)
        collector = OllamaCollector(OllamaSection(url=ollama_standin.url))
        list(collector.collect())
        found = collector.last_estimates["llama3:8b"]
        assert (found.context_length, found.parallel, found.cache_type) == (8192, 2, "q8_0")  # 16384 capped at 8192
        assert any("OLLAMA_CONTEXT_LENGTH of the server process" in note for note in found.assumed)
        assert found.kv_bytes == 2 * 8192 * 32 * 8 * 256 * 34 // 32  # two slots of 8192 cells at q8_0
        # The configuration's ollama.context_length wins over the environment.
        configured = OllamaCollector(OllamaSection(url=ollama_standin.url, context_length=2048))
        list(configured.collect())
        assert configured.last_estimates["llama3:8b"].context_length == 2048
    finally:
        server.kill()
        server.wait()


def test_ollama_context_length_in_the_configuration():
    from exporter.config import ConfigError, parse_config

    assert parse_config("ollama: {context_length: 32768}").ollama.context_length == 32768
    assert parse_config("ollama: {url: null}").ollama.context_length is None
    for bad in ("0", "-1", "4096.5", "'4096'", "true", str(2**25)):
        with pytest.raises(ConfigError, match="ollama.context_length"):
            parse_config(f"ollama: {{context_length: {bad}}}")
    with pytest.raises(ConfigError):
        parse_config("lmstudio: {context_length: 4096}")


def test_never_fits_names_each_limit_and_the_largest_context_that_fits():
    from exporter.estimate import OllamaSettings, estimate, estimate_ollama

    found = estimate_ollama(QWEN25_7B, 4_683_087_232, OllamaSettings(gpu_bytes=24 * 2**30))  # 32k context
    samples = Samples([])
    samples.by_name.update({
        "aitools_system_memory_total_bytes": [({}, 64 * GB)],
        "aitools_system_memory_available_bytes": [({}, 40 * GB)],
        "aitools_budget_bytes": [({"budget": "ollama"}, 6 * GB)],
        "aitools_llm_server_up": [({"server": "ollama"}, 1)],
        "aitools_llm_model_installed_bytes": [({"server": "ollama", "model": "qwen2.5:7b"}, 4_683_087_232)],
        "aitools_llm_model_estimated_bytes": [({"server": "ollama", "model": "qwen2.5:7b"}, found.total_bytes)],
        "aitools_llm_model_context_length": [({"server": "ollama", "model": "qwen2.5:7b"}, 32768)],
    })
    with_gpu(samples, room=20 * GB, limit=48 * 2**30)
    [fit] = model_fits(samples, {("ollama", "qwen2.5:7b"): found})
    assert found.total_bytes > 6 * GB and fit.outcome == "never"
    assert (fit.budget_bytes, fit.memory_limit_bytes, fit.gpu_limit_bytes) == (6 * GB, 40 * GB - 6.4 * GB, 20 * GB)
    context = fit.largest_context
    assert context % 256 == 0 and 4096 < context < 32768
    assert estimate(found.shape, found.weights_bytes, context).total_bytes <= 6 * GB
    assert estimate(found.shape, found.weights_bytes, context + 256).total_bytes > 6 * GB
    assert fit.verdict == (f"never fits: needs {found.total_bytes / 1e9:.1f} GB, at most ollama budget 6.0 GB, "
                           f"memory 33.6 GB, GPU 20.0 GB; a context of {context} would fit")


def test_a_slow_show_costs_only_the_estimates_within_the_scrapes_deadline(ollama_standin):
    import time

    from exporter.collectors.llm import OllamaCollector

    ollama_standin.load("llama3.1:8b", size=6 * GB)
    ollama_standin.install("qwen2.5:7b", size_on_disk=4_683_087_232)
    ollama_standin.path_modes = {"/api/show": "slow"}  # answers after 10 s
    collector = OllamaCollector(OllamaSection(url=ollama_standin.url), 1.0)
    started = time.monotonic()
    families = {family.name: family for family in collector.collect()}
    took = time.monotonic() - started
    assert took < 1.0 + 0.3, took
    assert [s.value for s in families["aitools_llm_model_loaded_bytes"].samples] == [6 * GB]  # the budgets' figures stay
    assert families["aitools_llm_model_estimated_bytes"].samples == []
    reasons = set(collector.last_estimates.values())
    assert reasons <= {"/api/show: timed out after 1s", "not read yet (/api/show is read a few models per scrape)"}
    assert "/api/show: timed out after 1s" in reasons
