"""Ollama /api/show answers of a few architectures, for the estimate and fit tests.

- LLAMA3_8B: the documented example (ollama/ollama docs/api.md "Show Model Information", at
  v0.33.0-rc2), as tests/parts/llm_standins.py serves it by default.
- QWEN25_7B: Qwen2.5-7B-Instruct's GGUF metadata (qwen2: 28 blocks, 28 heads, 4 KV heads,
  feed-forward 18944, rope base 1e6, as llama.cpp prints them in LlamaEdge/LlamaEdge issue
  #278), in the shape /api/show gives model_info.
- GEMMA3_4B: gemma-3-4b-it's GGUF metadata (gemma3: 34 blocks, 8 heads, 4 KV heads of 256,
  sliding window 1024 on five layers of six: Google's config.json `sliding_window` and
  `sliding_window_pattern` 6, and llama.cpp's LLM_ARCH_GEMMA3 swa pattern).
- NOMIC_EMBED: nomic-embed-text (nomic-bert, an embedding model: no KV cache, one slot).
"""

from __future__ import annotations

from tests.parts.llm_standins import LLAMA3_8B_SHOW

LLAMA3_8B = LLAMA3_8B_SHOW


def _show(family: str, parameters: str, model_info: dict, capabilities: list[str]) -> dict:
    return {"modelfile": "", "parameters": parameters, "template": "{{ .Prompt }}",
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": family, **model_info,
                           "tokenizer.ggml.tokens": [], "tokenizer.ggml.token_type": []},
            "capabilities": capabilities}


QWEN25_7B = _show("qwen2", 'stop                           "<|im_start|>"\nstop                           "<|im_end|>"', {
    "general.parameter_count": 7615616512, "qwen2.block_count": 28, "qwen2.context_length": 32768,
    "qwen2.embedding_length": 3584, "qwen2.feed_forward_length": 18944, "qwen2.attention.head_count": 28,
    "qwen2.attention.head_count_kv": 4, "qwen2.rope.freq_base": 1000000,
    "qwen2.attention.layer_norm_rms_epsilon": 0.000001}, ["completion", "tools"])

GEMMA3_4B = _show("gemma3", 'stop                           "<end_of_turn>"\ntemperature                    1', {
    "general.parameter_count": 3880263168, "gemma3.block_count": 34, "gemma3.context_length": 131072,
    "gemma3.embedding_length": 2560, "gemma3.feed_forward_length": 10240, "gemma3.attention.head_count": 8,
    "gemma3.attention.head_count_kv": 4, "gemma3.attention.key_length": 256, "gemma3.attention.value_length": 256,
    "gemma3.attention.sliding_window": 1024, "gemma3.rope.freq_base": 1000000}, ["completion", "vision"])

NOMIC_EMBED = _show("nomic-bert", "num_ctx                        8192", {
    "general.parameter_count": 136727040, "nomic-bert.block_count": 12, "nomic-bert.context_length": 2048,
    "nomic-bert.embedding_length": 768, "nomic-bert.feed_forward_length": 3072,
    "nomic-bert.attention.head_count": 12, "nomic-bert.pooling_type": 1}, ["embedding"])
