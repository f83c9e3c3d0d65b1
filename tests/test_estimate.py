"""exporter/estimate.py: a model's loaded size as Ollama (llama.cpp) computes it.

Pure functions: the KV cache and buffers of real shapes, the context the server would use
(loaded, num_ctx, configuration or OLLAMA_CONTEXT_LENGTH, the default by GPU memory), slots
and cache types, hostile model information, and the README's table of public reports.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from exporter.estimate import (GIB, NoEstimate, OllamaSettings, default_context, estimate, estimate_lmstudio,
                               estimate_ollama, kv_cache_bytes, largest_context, model_shape)
from tests.parts.show_payloads import GEMMA3_4B, LLAMA3_8B, NOMIC_EMBED, QWEN25_7B

MIB = 2**20
README = Path(__file__).resolve().parent.parent / "README.md"
LLAMA3_FILE = 4_661_224_676  # llama3:8b Q4_0's size in /api/tags


def info(show: dict) -> dict:
    return show["model_info"]


# ------------------------------------------------------------------ the arithmetic

def test_llama3_8b_kv_cache_is_128_kib_per_token_at_f16():
    shape = model_shape(info(LLAMA3_8B))
    # 32 layers x 8 KV heads x (128 + 128) x 2 bytes = 128 KiB per token: 1024 MiB at 8192.
    assert kv_cache_bytes(shape, 8192) == 1024 * MIB
    assert kv_cache_bytes(shape, 8192, cache_type="q8_0") == 544 * MIB   # 34 bytes per 32 elements
    assert kv_cache_bytes(shape, 8192, cache_type="q4_0") == 288 * MIB   # 18 bytes per 32
    assert kv_cache_bytes(shape, 4096, parallel=2) == 1024 * MIB         # slots multiply the cells
    assert kv_cache_bytes(shape, 1000) == kv_cache_bytes(shape, 1024)    # padded to 256 cells


def test_gemma3_sliding_window_layers_hold_only_the_window():
    shape = model_shape(info(GEMMA3_4B))
    assert shape.sliding_layers.count(False) == 5 and shape.sliding_layers[5] is False  # layers 5, 11, 17, 23, 29
    per_cell = 4 * (256 + 256) * 2  # 4 KV heads of 256, K and V, f16
    # 5 global layers hold the whole 32768 cells, 29 sliding ones 1024 + one batch of 512.
    assert kv_cache_bytes(shape, 32768) == 5 * 32768 * per_cell + 29 * 1536 * per_cell
    assert kv_cache_bytes(shape, 1024) == 34 * 1024 * per_cell  # below the window: every layer the same


def test_embedding_models_have_no_kv_cache_and_one_slot():
    found = estimate_ollama(NOMIC_EMBED, 274_302_450, OllamaSettings(num_parallel=4))
    assert (found.kv_bytes, found.parallel, found.context_length) == (0, 1, 2048)  # num_ctx 8192 capped at 2048


def test_total_is_weights_kv_and_buffers():
    found = estimate(model_shape(info(LLAMA3_8B)), LLAMA3_FILE, 8192)
    assert found.total_bytes == found.weights_bytes + found.kv_bytes + found.compute_bytes
    assert found.weights_bytes == LLAMA3_FILE and found.kv_bytes == 1024 * MIB
    assert 0 < found.compute_bytes < 512 * MIB


# ------------------------------------------------------------------ the context the server would use

@pytest.mark.parametrize("show,settings,loaded,expected,said", [
    (LLAMA3_8B, OllamaSettings(), 2048, 2048, "the one it is loaded with"),
    (QWEN25_7B, OllamaSettings(context_length=16384, context_source="ollama.context_length in the configuration"),
     None, 16384, "ollama.context_length"),
    (QWEN25_7B, OllamaSettings.from_environment({"OLLAMA_CONTEXT_LENGTH": "8192"}), None, 8192,
     "OLLAMA_CONTEXT_LENGTH"),
    (QWEN25_7B, OllamaSettings(), None, 4096, "default for no GPU memory"),
    (QWEN25_7B, OllamaSettings(gpu_bytes=24 * GIB), None, 32768, "default for 24 GiB"),
    # 48 GiB (a 64 GB Mac's Metal ceiling): 262144, capped at qwen2.5's trained 32768.
    (QWEN25_7B, OllamaSettings(gpu_bytes=48 * GIB), None, 32768, "capped at the model's trained length 32768"),
])
def test_context_order(show, settings, loaded, expected, said):
    found = estimate_ollama(show, 4_683_087_232, settings, loaded)
    assert found.context_length == expected
    assert any(said in note for note in found.assumed), found.assumed


def test_models_num_ctx_parameter_wins_over_the_server_setting():
    show = copy.deepcopy(QWEN25_7B)
    show["parameters"] = "num_ctx                        12288\n" + show["parameters"]
    found = estimate_ollama(show, 1, OllamaSettings(context_length=4096, context_source="x"))
    assert found.context_length == 12288


def test_default_context_by_gpu_memory_as_ollama_routes_go():
    assert [default_context(g) for g in (None, 0, 8 * GIB, 23 * GIB, 47 * GIB - 1, 47 * GIB, 96 * GIB)] == \
        [4096, 4096, 4096, 32768, 32768, 262144, 262144]


def test_server_environment_slots_and_cache_type():
    settings = OllamaSettings.from_environment({"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_KV_CACHE_TYPE": "Q8_0",
                                                "OLLAMA_CONTEXT_LENGTH": "4096"})
    found = estimate_ollama(LLAMA3_8B, LLAMA3_FILE, settings)
    assert (found.parallel, found.cache_type, found.context_length) == (2, "q8_0", 4096)
    assert found.kv_bytes == 544 * MIB  # 8192 cells at q8_0
    # Flash attention off: llama.cpp keeps the V cache in f16.
    off = OllamaSettings.from_environment({"OLLAMA_KV_CACHE_TYPE": "q4_0", "OLLAMA_FLASH_ATTENTION": "0"})
    assert estimate_ollama(LLAMA3_8B, LLAMA3_FILE, off).cache_type == "f16"
    # Nonsense in the environment is ignored, not trusted.
    junk = OllamaSettings.from_environment({"OLLAMA_NUM_PARALLEL": "-3", "OLLAMA_KV_CACHE_TYPE": "q1_x",
                                            "OLLAMA_CONTEXT_LENGTH": "1e9"})
    assert (junk.num_parallel, junk.kv_cache_type, junk.context_length) == (None, None, None)


def test_largest_context_that_fits():
    shape = model_shape(info(LLAMA3_8B))
    room = estimate(shape, LLAMA3_FILE, 4096).total_bytes
    assert largest_context(shape, LLAMA3_FILE, room) == 4096
    assert largest_context(shape, LLAMA3_FILE, room - 1) == 3840
    assert largest_context(shape, LLAMA3_FILE, 10 * GIB) == 8192  # the trained length at most
    assert largest_context(shape, LLAMA3_FILE, LLAMA3_FILE) is None


def test_lmstudio_gives_the_file_size_and_says_so():
    found = estimate_lmstudio(5_000_000_000, 8192)
    assert (found.total_bytes, found.context_length) == (5_000_000_000, 8192)
    assert "no layer or head counts" in found.assumed[0]


# ------------------------------------------------------------------ hostile model information

def hostile(**changes) -> dict:
    model_info = dict(info(LLAMA3_8B))
    model_info.update(changes)
    return {k: v for k, v in model_info.items() if v is not ...}


@pytest.mark.parametrize("model_info,reason", [
    (hostile(**{"llama.block_count": 10**12}), "block_count 1000000000000 is outside"),
    (hostile(**{"llama.block_count": -32}), "is outside"),
    (hostile(**{"llama.block_count": 32.5}), "not a whole number"),
    (hostile(**{"llama.block_count": "32"}), "not a number"),
    (hostile(**{"llama.block_count": True}), "not a number"),
    (hostile(**{"llama.block_count": float("inf")}), "not a whole number"),
    (hostile(**{"llama.block_count": ...}), "block_count is missing"),
    (hostile(**{"llama.context_length": -4096}), "is outside"),
    (hostile(**{"llama.attention.head_count_kv": [8, 8]}), "lists 2 layers, not 32"),
    (hostile(**{"llama.attention.head_count_kv": [None] * 32}), "not a number"),
    (hostile(**{"llama.attention.head_count": ...}), "head_count is missing"),
    (hostile(**{"llama.attention.key_length": 0}), "is outside"),
    (hostile(**{"general.architecture": "mamba2"}), "architecture 'mamba2' is not one"),
    (hostile(**{"general.architecture": 7}), "no general.architecture"),
    (hostile(**{"general.architecture": "x" * 10_000}), "no general.architecture"),
    ("not a dict", "no model_info"),
    (None, "no model_info"),
])
def test_hostile_model_information_gives_no_estimate_with_the_reason(model_info, reason):
    with pytest.raises(NoEstimate, match=re.escape(reason)):
        estimate_ollama({"model_info": model_info}, LLAMA3_FILE, OllamaSettings())


def test_absurd_but_in_range_figures_never_give_an_absurd_estimate():
    huge = hostile(**{"llama.block_count": 10_000, "llama.embedding_length": 1 << 20,
                      "llama.attention.head_count": 16384, "llama.attention.head_count_kv": 16384,
                      "llama.attention.key_length": 1 << 20, "llama.attention.value_length": 1 << 20,
                      "llama.context_length": 1 << 24})
    with pytest.raises(NoEstimate, match="beyond any workstation"):
        estimate_ollama({"model_info": huge, "parameters": "num_ctx 16777216"}, LLAMA3_FILE, OllamaSettings())
    for weights in (-1, 2.5, "5GB", 1 << 60):
        with pytest.raises(NoEstimate):
            estimate(model_shape(info(LLAMA3_8B)), weights, 4096)
    for context in (0, -5, 3.5, "4096"):
        with pytest.raises(NoEstimate):
            estimate_ollama(LLAMA3_8B, LLAMA3_FILE, OllamaSettings(), loaded_context=context)


def test_hostile_parameters_are_ignored():
    for parameters in ("num_ctx -5", "num_ctx 1e9", "num_ctx 99999999999999", "num_ctx", 42, None, "x" * 100_000):
        show = dict(LLAMA3_8B, parameters=parameters)
        assert estimate_ollama(show, LLAMA3_FILE, OllamaSettings()).context_length == 4096


# ------------------------------------------------------------------ README: real cases from public reports

# Each: what the runtime logged beyond the weights (KV cache, output and compute buffers, MiB),
# the shape of the model (its GGUF metadata, as the same report or the model's card gives it).
MISTRAL_7B_V02 = {"general.architecture": "llama", "llama.block_count": 32, "llama.embedding_length": 4096,
                  "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
                  "llama.context_length": 32768, "llama.feed_forward_length": 14336, "llama.vocab_size": 32000}
COMMAND_R_35B = {"general.architecture": "command-r", "command-r.block_count": 40,
                 "command-r.embedding_length": 8192, "command-r.attention.head_count": 64,
                 "command-r.attention.head_count_kv": 64, "command-r.context_length": 131072,
                 "command-r.feed_forward_length": 22528, "command-r.vocab_size": 256000}
QWEN2_7B_SHAPE = {"general.architecture": "qwen2", "qwen2.block_count": 28, "qwen2.embedding_length": 3584,
                  "qwen2.attention.head_count": 28, "qwen2.attention.head_count_kv": 4,
                  "qwen2.context_length": 32768, "qwen2.feed_forward_length": 18944, "qwen2.vocab_size": 152064}
REPORTED = [
    # (row name, model_info, context, flash attention, what counts, reported MiB, source)
    ("mistral-7b-2k", MISTRAL_7B_V02, 2048, False, "all", 256.00 + 0.12 + 164.00 + 12.01,
     "https://github.com/fedora-copr/logdetective/pull/106"),
    ("mistral-7b-32k", MISTRAL_7B_V02, 32768, False, "all", 4096.00 + 0.12 + 2144.00 + 72.01,
     "https://github.com/fedora-copr/logdetective/pull/106"),
    ("command-r-4k", COMMAND_R_35B, 4096, False, "kv", 5120.00, "https://github.com/ggml-org/llama.cpp/pull/6122"),
    ("qwen2-7b-2k", QWEN2_7B_SHAPE, 2048, False, "kv", 112.00, "https://github.com/JamePeng/llama-cpp-python/pull/1"),
]


def ours_mib(model_info: dict, context: int, flash: bool, what: str) -> float:
    found = estimate(model_shape(model_info), 0, context, 1, "f16", flash)
    return (found.kv_bytes if what == "kv" else found.total_bytes) / MIB


@pytest.mark.parametrize("row", REPORTED, ids=[row[0] for row in REPORTED])
def test_public_reports_within_ten_percent_and_in_the_readme(row):
    name, model_info, context, flash, what, reported, source = row
    ours = ours_mib(model_info, context, flash, what)
    assert ours == pytest.approx(reported, rel=0.10)
    line = next((line for line in README.read_text().splitlines() if line.startswith(f"| {name} |")), None)
    assert line is not None, f"README has no row {name}"
    assert source in line and f"{reported:.2f} MiB" in line and f"{ours:.2f} MiB" in line, line


def test_metal_ceiling_shares_of_the_public_reports():
    from exporter.collectors.llm import gpu_memory_bytes
    from exporter.collectors.machine import Live, use

    class AppleSilicon(Live):
        def __init__(self, gib: int) -> None:
            super().__init__()
            self.platform, self.arch, self.gib = "darwin", "arm64", gib

        def memory_total(self) -> int:
            return self.gib * GIB

    found = {}
    try:
        for gib in (16, 32, 64, 128):
            use(AppleSilicon(gib))
            found[gib] = gpu_memory_bytes() / MIB
    finally:
        use(Live())
    # recommendedMaxWorkingSetSize as llama.cpp logged it (MB there are MiB): 10922.67, 21845.34,
    # about 48 GiB, 107.52 GiB.
    assert found[16] == pytest.approx(10922.67, abs=0.01) and found[32] == pytest.approx(21845.34, abs=0.01)
    assert found[64] == 48 * 1024 and found[128] / 1024 == pytest.approx(107.52, abs=0.01)
    # And Ollama's default context on the 64 GB Mac: 256k (capped at the model's trained length).
    assert default_context(int(found[64] * MIB)) == 262144


def test_a_sliding_window_architecture_without_its_window_counts_every_layer_whole():
    show = copy.deepcopy(GEMMA3_4B)
    del show["model_info"]["gemma3.attention.sliding_window"]
    shape = model_shape(info(show))
    assert shape.sliding_window == 0 and kv_cache_bytes(shape, 32768) == 34 * 32768 * 4 * 512 * 2
