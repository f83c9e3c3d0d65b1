"""The loaded-size estimate (exporter/estimate.py) against a real llama.cpp server.

Ollama runs its GGUF models in llama.cpp's llama-server (`-c num_ctx*num_parallel -np
num_parallel`, with the KV cache type of OLLAMA_KV_CACHE_TYPE) and reports as a model's
size the buffers llama-server logs. Here the tests write small models of a few shapes
with the gguf package (tests/parts/llama_cpp.py), start the real llama-server on each as
Ollama would, and compare: the KV cache within 1 % of `llama_kv_cache: size = ...`
(its log rounds to 0.01 MiB), the total within 10 % of the buffers' sum.
"""

from __future__ import annotations

import pytest

from exporter.estimate import estimate, model_shape
from tests.conftest import missing_realpart
from tests.parts.llama_cpp import LlamaServer, Shape, llama_server_binary, parse_log, write_gguf


def model_info(shape: Shape) -> dict:
    """What Ollama's /api/show says of such a model: its GGUF metadata keys."""
    return {"general.architecture": "llama", "llama.block_count": shape.n_layer,
            "llama.embedding_length": shape.n_embd, "llama.attention.head_count": shape.n_head,
            "llama.attention.head_count_kv": shape.n_head_kv, "llama.context_length": shape.n_ctx_train,
            "llama.feed_forward_length": shape.n_ff, "llama.rope.dimension_count": shape.head_dim,
            "llama.vocab_size": shape.n_vocab, "tokenizer.ggml.tokens": []}


CASES = [
    # name, shape, context per slot, slots, cache type, flash attention
    ("gqa-4k", Shape(), 4096, 1, "f16", True),
    ("gqa-1000-padded", Shape(), 1000, 1, "f16", True),
    ("no-flash-attention", Shape(), 4096, 1, "f16", False),
    ("q8_0", Shape(), 4096, 1, "q8_0", True),
    ("two-slots", Shape(), 4096, 2, "f16", True),
    ("mqa-q4_0-three-slots", Shape(n_layer=6, n_embd=384, n_head=6, n_head_kv=1, n_ff=1024), 3000, 3, "q4_0", True),
    ("large-vocabulary-mha", Shape(n_layer=4, n_embd=512, n_head=8, n_head_kv=8, extra_tokens=20000), 2048, 1,
     "f16", True),
]


@pytest.fixture(scope="module")
def binary():
    found = llama_server_binary()
    if found is None:
        missing_realpart("llama-server is not built (tests/install-llama-server.sh)")
    return found


@pytest.mark.parametrize("name,shape,context,slots,cache_type,flash", CASES, ids=[case[0] for case in CASES])
def test_estimate_matches_what_llama_server_allocates(binary, tmp_path, name, shape, context, slots, cache_type, flash):
    model = write_gguf(tmp_path / f"{name}.gguf", shape)
    # As Ollama starts it: the context times the slots, the slots, the cache type, flash attention.
    extra = ["-ctk", cache_type, "-ctv", cache_type, "-fa", "on" if flash else "off"]
    with LlamaServer(binary, model, ctx=context * slots, parallel=slots, extra=extra) as server:
        logged = parse_log(server.log())

    ours = estimate(model_shape(model_info(shape)), model.stat().st_size, context, slots, cache_type, flash)

    kv = logged["kv"]
    print(f"FIGURES llama-server {name}: KV {kv['bytes'] if kv else None} logged, {ours.kv_bytes} ours; total "
          f"{logged['total_bytes']} logged, {ours.total_bytes} ours ({ours.total_bytes / logged['total_bytes'] - 1:+.2%})")
    assert kv is not None, "llama-server logged no KV cache size"
    assert (kv["k_type"], kv["v_type"], kv["seqs"]) == (cache_type, cache_type, slots)
    assert ours.kv_bytes == pytest.approx(kv["bytes"], rel=0.01)
    assert len(logged["kv_caches"]) == 1  # llama: no sliding-window layers, one cache
    assert {kind for _, kind, _ in logged["buffers"]} >= {"model", "KV", "compute"}
    assert ours.total_bytes == pytest.approx(logged["total_bytes"], rel=0.10)
    assert ours.context_length == context and ours.parallel == slots


def test_kv_cache_figures_of_testing_md_exactly():
    """TESTING.md's measured figures: 8 layers, 2 KV heads of 64, 4096 cells: f16 16.00 MiB,
    q8_0 8.50 MiB, q4_0 4.50 MiB (the same arithmetic, without a server)."""
    shape = model_shape(model_info(Shape()))
    mib = 2**20
    assert [estimate(shape, 0, 4096, 1, kind).kv_bytes for kind in ("f16", "q8_0", "q4_0")] == \
        [16 * mib, int(8.5 * mib), int(4.5 * mib)]
