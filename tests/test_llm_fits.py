"""Which installed model fits now: exporter/fits.py and the rule aitools:llm_model_fits agree.

Real stand-in servers with installed and loaded models, the real exporter collectors
(and the real /proc for the machine's memory) make one collection. From its samples the
Python logic gives each model its verdict; promtool then runs the rule file on the very
same samples and must give the same answers.
"""

from __future__ import annotations

import re
import subprocess

import psutil
import yaml

from exporter.app import Exporter
from exporter.readings import Samples
from exporter.config import Config, DockerSection, LMStudioSection, OllamaSection
from exporter.fits import MEMORY_RESERVE_FRACTION, model_fits
from exporter.snapshot import render_json, render_table, snapshot_of
from tests.test_rules import LLM_RULES, PROMETHEUS_DIR, promtool

GB = 10**9
RULE_INPUTS = ("aitools_budget_bytes", "aitools_llm_server_up", "aitools_llm_model_loaded_bytes",
               "aitools_llm_model_installed_bytes", "aitools_system_memory_total_bytes",
               "aitools_system_memory_available_bytes")


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
    ollama_standin.load("llama3.1:8b", size=6 * GB)
    ollama_standin.install("qwen2.5:0.5b", size_on_disk=397_821_319)
    ollama_standin.install("phi3:mini", size_on_disk=2 * GB)      # exactly the room the budget leaves
    ollama_standin.install("mistral:7b", size_on_disk=4_113_301_824)  # needs llama3.1:8b unloaded
    ollama_standin.install("llama3.3:70b", size_on_disk=huge)    # never
    lmstudio_standin.load("google/gemma-3-4b", size_bytes=3_340_000_000)
    lmstudio_standin.download("qwen/qwen3-4b-2507", size_bytes=2_500_000_000)
    lmstudio_standin.download("text-embedding-nomic-embed-text-v1.5", size_bytes=84_110_000, type="embedding")
    lmstudio_standin.download("meta/llama-3.1-405b", size_bytes=huge)
    config = Config(ollama=OllamaSection(url=ollama_standin.url), lmstudio=LMStudioSection(url=lmstudio_standin.url), docker=DockerSection(enabled=False),
                    budgets={**Config().budgets, "ollama": 8 * GB, "lmstudio": 4 * huge})
    exporter = Exporter(config)
    return config, exporter.collect(), exporter


def test_which_installed_models_fit_with_real_standins(ollama_standin, lmstudio_standin):
    config, samples, scraper = collect_with_models(ollama_standin, lmstudio_standin)
    assert samples.value("aitools_system_memory_available_bytes") > 6 * GB, "this test needs some free memory"

    verdicts = {(fit.server, fit.model): (fit.fits, fit.unload_first) for fit in model_fits(samples)}

    assert verdicts == {
        ("ollama", "qwen2.5:0.5b"): (True, []),
        ("ollama", "phi3:mini"): (True, []),
        ("ollama", "mistral:7b"): (False, ["llama3.1:8b"]),
        ("ollama", "llama3.3:70b"): (False, []),
        ("lmstudio", "qwen/qwen3-4b-2507"): (True, []),
        ("lmstudio", "text-embedding-nomic-embed-text-v1.5"): (True, []),
        ("lmstudio", "meta/llama-3.1-405b"): (False, []),
    }  # the loaded models (llama3.1:8b, google/gemma-3-4b) are not asked about
    fits = {fit.model: fit for fit in model_fits(samples)}
    assert fits["mistral:7b"].server_room_bytes == 2 * GB
    available, total = (samples.value(f"aitools_system_memory_{n}_bytes") for n in ("available", "total"))
    assert fits["qwen2.5:0.5b"].memory_room_bytes == available - 0.1 * total

    # The snapshot shows the same, for people and for scripts.
    snapshot = snapshot_of(config, samples, scraper.last_errors())
    table = render_table(config, snapshot)
    assert "ollama    mistral:7b  4.1 GB: needs llama3.1:8b unloaded first" in table
    assert "ollama    qwen2.5:0.5b  397.8 MB: fits now" in table
    assert "ollama    llama3.3:70b" in table and "does not fit, even with every model of ollama unloaded" in table
    data = render_json(config, snapshot)
    assert {(f["server"], f["model"]): (f["fits"], f["unload_first"]) for f in data["llm_fits"]} == verdicts
    assert data["memory_reserve_fraction"] == MEMORY_RESERVE_FRACTION


def _series(name: str, labels: dict[str, str], value: float) -> dict:
    text = ", ".join(f'{key}="{val}"' for key, val in sorted({**labels, "instance": "snap:8730"}.items()))
    return {"series": f"{name}{{{text}}}", "values": f"{value!r}x3"}


def test_the_rule_gives_the_same_answers_on_the_same_samples(ollama_standin, lmstudio_standin, tmp_path):
    _, samples, _ = collect_with_models(ollama_standin, lmstudio_standin)
    expected = model_fits(samples)
    assert len(expected) == 7
    inputs = [_series(name, labels, value) for name in RULE_INPUTS for labels, value in samples.all(name)]
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
