"""The memory a model takes once loaded, as its server computes it: pure functions.

What Ollama does (read at ollama/ollama tag v0.33.0-rc2, commit fb30760996871fa9460115c753afd2c60d4ab0f7):

- server/routes.go (Serve): the default context by GPU memory: 262144 tokens from 47 GiB of
  GPU memory on, 32768 from 23 GiB, else 4096 (docs/context-length.mdx: "< 24 GiB VRAM: 4k,
  24-48 GiB: 32k, >= 48 GiB: 256k"); api/types.go DefaultOptions: OLLAMA_CONTEXT_LENGTH
  (envconfig/config.go) replaces it; a model's own `num_ctx` parameter replaces both.
- llm/server.go NewLlamaServer: the context is capped at the model's trained length
  (`<arch>.context_length`); OLLAMA_KV_CACHE_TYPE (lower-cased) is the KV cache type.
- server/sched.go load: OLLAMA_NUM_PARALLEL slots (at least 1); 1 for embedding models
  (no "completion" capability) and for the architectures listed there.
- llm/llama_server.go startLlamaServer: the runtime is llama.cpp's llama-server, started
  with `-c num_ctx*num_parallel -np num_parallel --cache-type-k/-v TYPE`; MemorySize():
  what `ollama ps` shows as SIZE is the sum of the buffers llama-server logs ("model",
  "KV", "compute", "output" buffer size). LlamaServerFlashAttention with ml/device.go
  FlashAttentionSupported: flash attention "auto" (Metal, the CPU, recent CUDA) unless
  OLLAMA_FLASH_ATTENTION says otherwise; llama.cpp's "auto" turns it on there.
- fs/ggml/ggml.go GraphSize: Ollama's own estimate of the compute graph per architecture
  (the `fullOffload` formulas, used here for the compute buffer without flash attention:
  they give the 164.00 and 2144.00 MiB llama.cpp logged for Mistral 7B at 2k and 32k) and
  of the KV cache:
  per layer, cells x (key_length + value_length) x head_count_kv x bytes per element,
  recurrent layers at f32, gemma3's sliding-window layers (five of every six) at
  num_parallel x sliding_window + batch cells.

So the loaded size here is llama.cpp's own arithmetic, which is what Ollama reports:
  weights (the model file: llama.cpp maps it whole, its "model buffer")
  + KV cache: for each layer, cells x head_count_kv x (key_length + value_length) elements
    at the cache type's size (ggml's block sizes: q8_0 34 bytes per 32 elements, q4_0 18);
    cells = the context times the slots, padded to 256 as llama.cpp pads its context; a
    sliding-window layer holds min(cells, window x slots + batch) cells, padded alike
  + the compute buffer for a batch of 512 (without flash attention Ollama's GraphSize
    formula; with it, the mask and the batch's activations, as llama.cpp's log shows them)
  + the output buffer (the logits of one batch row per slot, f32).
tests/test_llama_cpp_estimate.py checks the KV cache and the total against a real
llama-server's log; README.md ("Will this model fit?") lists real cases from public reports.

LM Studio tells no architecture numbers in its REST API: its models are estimated from
their file size (with a loaded instance's context), without a KV cache, and say so
(`assumed`).

Anything unexpected in a model's information (an unknown architecture, a missing field,
a string, a float, a negative or absurd number) gives NoEstimate with the reason: never an
exception of another kind, never an absurd figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
CONTEXT_PAD = 256          # llama.cpp pads its context (and each cache) to a multiple of 256 cells
DEFAULT_BATCH = 512        # Ollama's num_batch and llama.cpp's n_ubatch
# Bounds past which a figure is not a model's but an error or an attack.
MAX_LAYERS = 10_000
MAX_DIMENSION = 1 << 20    # embedding, key/value lengths, feed-forward
MAX_HEADS = 1 << 14
MAX_CONTEXT = 1 << 24      # 16 Mi tokens
MAX_VOCAB = 1 << 24
MAX_PARALLEL = 1024
MAX_ESTIMATE_BYTES = 1 << 50  # 1 PiB: anything above is not a workstation's model

# Bytes per element of the KV cache types llama.cpp accepts (ggml type sizes / block sizes).
KV_CACHE_TYPES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                  "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}

# Ollama's default context by GPU memory (server/routes.go), largest first.
DEFAULT_CONTEXT_BY_GPU = ((47 * GIB, 262144), (23 * GIB, 32768), (0, 4096))

# Architectures whose layers are all plain attention layers to llama.cpp (one KV cache of
# the whole context), and those with sliding-window layers: the period of the pattern
# (llama.cpp hparams.set_swa_pattern: layer i slides when i % period < period - 1).
ATTENTION_ARCHITECTURES = frozenset({
    "llama", "mistral3", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "qwen2vl", "qwen25vl", "phi2", "phi3", "gemma",
    "command-r", "granite", "granitemoe", "starcoder2", "olmo", "olmo2", "olmoe", "stablelm", "internlm2",
    "exaone", "deci", "falcon", "gpt2", "mpt", "baichuan", "chatglm", "glm4", "glm4moe", "deepseek", "minicpm",
    "nemotron", "smollm3", "ernie4_5", "hunyuan-dense", "dots1", "seed_oss", "arcee", "bailingmoe",
})
SLIDING_WINDOW_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gptoss": 2, "gpt-oss": 2, "llama4": 4}
# Embedding architectures: llama.cpp keeps no KV cache for them.
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "new", "t5encoder"})
# server/sched.go load: architectures Ollama loads with one slot whatever OLLAMA_NUM_PARALLEL says.
SINGLE_SLOT_ARCHITECTURES = frozenset({"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2",
                                       "lfm2moe", "nemotron_h", "nemotron_h_moe", "nemotron_h_omni"})


class NoEstimate(Exception):
    """The model's loaded size cannot be estimated; str() is the reason."""


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache and the compute buffer depend on, from a model's GGUF metadata."""
    architecture: str
    n_layer: int
    n_embd: int
    n_head: tuple[int, ...]      # per layer
    n_head_kv: tuple[int, ...]   # per layer; 0 on a recurrent layer
    key_length: int
    value_length: int
    n_ctx_train: int
    n_vocab: int | None = None
    sliding_window: int = 0
    sliding_layers: tuple[bool, ...] = ()
    ssm: tuple[int, int, int, int] = (0, 0, 0, 0)  # conv kernel, state size, inner size, group count
    n_ff: int = 0                # feed-forward length (largest layer's); 0: unknown


@dataclass
class Estimate:
    total_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    context_length: int          # per slot, as `ollama ps` CONTEXT shows it
    parallel: int
    cache_type: str
    assumed: list[str] = field(default_factory=list)  # what it assumed, in words
    shape: ModelShape | None = None   # for other contexts (largest_context)
    flash_attention: bool = True

    def as_dict(self) -> dict:
        return {"total_bytes": self.total_bytes, "weights_bytes": self.weights_bytes, "kv_bytes": self.kv_bytes,
                "compute_bytes": self.compute_bytes, "context_length": self.context_length,
                "parallel": self.parallel, "cache_type": self.cache_type, "assumed": list(self.assumed)}


# -- reading a model's information

def _count(value: Any, what: str, low: int, high: int) -> int:
    """A whole number within [low, high]; NoEstimate naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NoEstimate(f"{what} is not a number ({type(value).__name__})")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise NoEstimate(f"{what} is not a whole number ({value!r})")
    number = int(value)
    if not low <= number <= high:
        raise NoEstimate(f"{what} {number} is outside {low}..{high}")
    return number


def _per_layer(info: dict, key: str, what: str, n_layer: int, low: int, high: int) -> tuple[int, ...] | None:
    value = info.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != n_layer:
            raise NoEstimate(f"{what} lists {len(value)} layers, not {n_layer}")
        return tuple(_count(item, what, low, high) for item in value)
    return (_count(value, what, low, high),) * n_layer


def model_shape(model_info: Any) -> ModelShape:
    """The shape from Ollama's /api/show `model_info` (GGUF metadata keys, `<arch>.block_count`...)."""
    if not isinstance(model_info, dict):
        raise NoEstimate("no model_info")
    arch = model_info.get("general.architecture")
    if not isinstance(arch, str) or not arch or len(arch) > 64:
        raise NoEstimate("no general.architecture")
    known = arch in ATTENTION_ARCHITECTURES or arch in SLIDING_WINDOW_PERIOD or arch in EMBEDDING_ARCHITECTURES
    if not known:
        raise NoEstimate(f"architecture {arch[:64]!r} is not one whose KV cache this estimate knows")

    def get(name: str, what: str, low: int, high: int, default: int | None = None) -> int:
        value = model_info.get(f"{arch}.{name}")
        if value is None:
            if default is None:
                raise NoEstimate(f"{arch}.{name} is missing")
            return default
        return _count(value, f"{arch}.{name}", low, high)

    n_layer = get("block_count", "block count", 1, MAX_LAYERS)
    n_embd = get("embedding_length", "embedding length", 1, MAX_DIMENSION)
    n_head = _per_layer(model_info, f"{arch}.attention.head_count", "head count", n_layer, 0, MAX_HEADS)
    if n_head is None or max(n_head) == 0:
        raise NoEstimate(f"{arch}.attention.head_count is missing")
    n_head_kv = _per_layer(model_info, f"{arch}.attention.head_count_kv", "KV head count", n_layer, 0, MAX_HEADS)
    n_head_kv = n_head_kv if n_head_kv is not None else n_head
    head_dim = n_embd // max(n_head)
    key_length = get("attention.key_length", "key length", 1, MAX_DIMENSION, head_dim or 1)
    value_length = get("attention.value_length", "value length", 1, MAX_DIMENSION, head_dim or 1)
    n_ctx_train = get("context_length", "context length", 1, MAX_CONTEXT)
    n_vocab = None
    if model_info.get(f"{arch}.vocab_size") is not None:
        n_vocab = get("vocab_size", "vocabulary size", 1, MAX_VOCAB)
    elif isinstance(model_info.get("tokenizer.ggml.tokens"), list):
        n_vocab = len(model_info["tokenizer.ggml.tokens"]) or None
    window, sliding = 0, ()
    if arch in SLIDING_WINDOW_PERIOD and model_info.get(f"{arch}.attention.sliding_window") is not None:
        # Without a window every layer holds the whole context: an estimate on the safe side.
        window = get("attention.sliding_window", "sliding window", 1, MAX_CONTEXT)
        pattern = model_info.get(f"{arch}.attention.sliding_window_pattern")
        if isinstance(pattern, list) and len(pattern) == n_layer and all(isinstance(p, bool) for p in pattern):
            sliding = tuple(pattern)
        else:
            period = SLIDING_WINDOW_PERIOD[arch]
            sliding = tuple(layer % period < period - 1 for layer in range(n_layer))
    ssm = tuple(get(f"ssm.{name}", f"ssm {name}", 0, MAX_DIMENSION, 0)
                for name in ("conv_kernel", "state_size", "inner_size", "group_count"))
    n_ff = _per_layer(model_info, f"{arch}.feed_forward_length", "feed-forward length", n_layer, 0, MAX_DIMENSION)
    return ModelShape(arch, n_layer, n_embd, n_head, n_head_kv, key_length, value_length, n_ctx_train, n_vocab,
                      window, sliding, ssm, max(n_ff) if n_ff else 0)


# -- the arithmetic

def pad(cells: int) -> int:
    return -(-cells // CONTEXT_PAD) * CONTEXT_PAD


def kv_cache_bytes(shape: ModelShape, context: int, parallel: int = 1, cache_type: str = "f16") -> int:
    """llama.cpp's KV cache for `context` tokens per slot and `parallel` slots: what it logs as
    `llama_kv_cache: size = ...` (the sum of them for a model with sliding-window layers)."""
    if shape.architecture in EMBEDDING_ARCHITECTURES:
        return 0
    per_element = KV_CACHE_TYPES[cache_type]
    cells = pad(context * parallel)
    batch = min(cells, DEFAULT_BATCH)
    sliding_cells = min(cells, pad(shape.sliding_window * parallel + batch)) if shape.sliding_window else cells
    total = 0.0
    for layer in range(shape.n_layer):
        heads_kv = shape.n_head_kv[layer]
        if heads_kv == 0:
            conv, state, inner, groups = shape.ssm  # a recurrent layer: its state, f32, per slot
            rows = (max(conv - 1, 0) * (inner + 2 * groups * state)) + state * inner
            total += 4.0 * rows * parallel
            continue
        layer_cells = sliding_cells if shape.sliding_layers and shape.sliding_layers[layer] else cells
        total += layer_cells * heads_kv * (shape.key_length + shape.value_length) * per_element
    return int(total)


def compute_buffer_bytes(shape: ModelShape, context: int, parallel: int = 1, flash_attention: bool = True) -> int:
    """The compute graph's buffer for one batch of 512 tokens.

    Without flash attention: Ollama's GraphSize `fullOffload` (fs/ggml/ggml.go, the "llama"
    case, which it applies to the llama family): the attention scores of the batch against
    every cell (context x heads per batch row, f32) dominate. With flash attention (Ollama's
    and llama.cpp's default where the backend has it: "auto") those scores are never
    materialised; what is left, measured on llama.cpp's own log (tests/test_llama_cpp_estimate.py),
    is the attention mask (a slot's cells x batch, f16) and the batch's activations, f32: three of
    the embedding's width and four of the feed-forward's (4 x embedding when unknown)."""
    cells = pad(context * parallel)
    batch = min(cells, DEFAULT_BATCH)
    heads = max(shape.n_head)
    if not flash_attention:
        return max(4 * batch * (1 + 4 * shape.n_embd + cells * (1 + heads)),
                   4 * batch * (shape.n_embd + (shape.n_vocab or 0)))
    feed_forward = shape.n_ff or 4 * shape.n_embd
    # One mask per slot's stream of cells (llama-server keeps a stream per slot: kv_unified false).
    return 2 * (cells // parallel) * batch + 4 * batch * (3 * shape.n_embd + 4 * feed_forward)


def output_buffer_bytes(shape: ModelShape, parallel: int = 1) -> int:
    """llama.cpp's output buffer: the logits of one row per slot, f32."""
    return 4 * (shape.n_vocab or 0) * parallel


def estimate(shape: ModelShape, weights_bytes: int, context: int, parallel: int = 1, cache_type: str = "f16",
             flash_attention: bool = True, assumed: list[str] | None = None) -> Estimate:
    """The loaded size of a model of `shape` whose file holds `weights_bytes`."""
    weights_bytes = _count(weights_bytes, "weights size", 0, MAX_ESTIMATE_BYTES)
    context = min(_count(context, "context length", 1, MAX_CONTEXT), shape.n_ctx_train)
    parallel = _count(parallel, "parallel slots", 1, MAX_PARALLEL)
    if cache_type not in KV_CACHE_TYPES:
        raise NoEstimate(f"KV cache type {cache_type[:20]!r} is not one llama.cpp knows")
    kv = kv_cache_bytes(shape, context, parallel, cache_type)
    compute = compute_buffer_bytes(shape, context, parallel, flash_attention) + output_buffer_bytes(shape, parallel)
    total = weights_bytes + kv + compute
    if total > MAX_ESTIMATE_BYTES:
        raise NoEstimate(f"the estimate ({total} bytes) is beyond any workstation: the model's figures are wrong")
    notes = list(assumed or [])
    if shape.n_vocab is None:
        notes.append("vocabulary size unknown: the output buffer left out")
    return Estimate(total, weights_bytes, kv, compute, context, parallel, cache_type, notes, shape, flash_attention)


def largest_context(shape: ModelShape, weights_bytes: int, room_bytes: float, parallel: int = 1,
                    cache_type: str = "f16", flash_attention: bool = True) -> int | None:
    """The largest context (a multiple of 256, up to the trained length) whose estimate fits
    `room_bytes`; None when not even 256 tokens do."""
    low, high = 0, shape.n_ctx_train // CONTEXT_PAD
    while low < high:  # the estimate grows with the context: bisect on multiples of 256
        middle = (low + high + 1) // 2
        size = estimate(shape, weights_bytes, middle * CONTEXT_PAD, parallel, cache_type, flash_attention).total_bytes
        low, high = (middle, high) if size <= room_bytes else (low, middle - 1)
    return low * CONTEXT_PAD or None


# -- what the server would use

def default_context(gpu_bytes: int | None) -> int:
    """Ollama's default context for a machine with `gpu_bytes` of GPU memory (0 or None: none)."""
    for floor, context in DEFAULT_CONTEXT_BY_GPU:
        if (gpu_bytes or 0) >= floor:
            return context
    return 4096


def parse_parameters(text: Any) -> dict[str, str]:
    """Ollama's /api/show `parameters`: 'num_ctx  8192\\nstop "<|eot|>"' lines, first value kept."""
    found: dict[str, str] = {}
    if not isinstance(text, str):
        return found
    for line in text[:65536].splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] not in found:
            found[parts[0]] = parts[1].strip()
    return found


def positive_int(text: Any, high: int) -> int | None:
    """A positive whole number from a string or number, at most `high`; None otherwise."""
    if isinstance(text, str):
        text = text.strip()
        if not text.isdigit() or len(text) > 12:
            return None
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int) or not 0 < text <= high:
        return None
    return text


@dataclass(frozen=True)
class OllamaSettings:
    """What the Ollama server was started with (its environment), each None when unknown."""
    context_length: int | None = None    # ollama.context_length, else OLLAMA_CONTEXT_LENGTH
    context_source: str = ""
    num_parallel: int | None = None      # OLLAMA_NUM_PARALLEL
    kv_cache_type: str | None = None     # OLLAMA_KV_CACHE_TYPE
    flash_attention: bool | None = None  # OLLAMA_FLASH_ATTENTION
    gpu_bytes: int | None = None         # the machine's GPU memory (Apple silicon: Metal's ceiling)

    @classmethod
    def from_environment(cls, environ: dict[str, str], configured_context: int | None = None,
                         gpu_bytes: int | None = None) -> "OllamaSettings":
        context, source = configured_context, "ollama.context_length in the configuration"
        if context is None:
            context = positive_int(environ.get("OLLAMA_CONTEXT_LENGTH"), MAX_CONTEXT)
            source = "OLLAMA_CONTEXT_LENGTH of the server process"
        flash = environ.get("OLLAMA_FLASH_ATTENTION", "").strip().lower()
        cache = environ.get("OLLAMA_KV_CACHE_TYPE", "").strip().lower()
        return cls(context, source if context else "",
                   positive_int(environ.get("OLLAMA_NUM_PARALLEL"), MAX_PARALLEL),
                   cache if cache in KV_CACHE_TYPES else None,
                   True if flash in ("1", "true", "t") else False if flash in ("0", "false", "f") else None,
                   gpu_bytes)


def estimate_ollama(show: Any, weights_bytes: int, settings: OllamaSettings,
                    loaded_context: int | None = None) -> Estimate:
    """An Ollama model's loaded size from its /api/show answer, as the server would load it now
    (or, for a loaded model, as it was loaded: `loaded_context` from /api/ps)."""
    if not isinstance(show, dict):
        raise NoEstimate("no /api/show answer")
    shape = model_shape(show.get("model_info"))
    assumed: list[str] = []
    num_ctx = positive_int(parse_parameters(show.get("parameters")).get("num_ctx"), MAX_CONTEXT)
    if loaded_context is not None:
        context = _count(loaded_context, "loaded context length", 1, MAX_CONTEXT)
        assumed.append(f"context {context}: the one it is loaded with (/api/ps)")
    elif num_ctx is not None:
        context = num_ctx
        assumed.append(f"context {context}: the model's num_ctx parameter")
    elif settings.context_length is not None:
        context = settings.context_length
        assumed.append(f"context {context}: {settings.context_source}")
    else:
        context = default_context(settings.gpu_bytes)
        gpu = f"{settings.gpu_bytes / GIB:.0f} GiB of GPU memory" if settings.gpu_bytes else "no GPU memory known"
        assumed.append(f"context {context}: Ollama's default for {gpu}")
    if context > shape.n_ctx_train:
        assumed.append(f"context capped at the model's trained length {shape.n_ctx_train}")
    capabilities = show.get("capabilities")
    embedding = shape.architecture in EMBEDDING_ARCHITECTURES or (
        isinstance(capabilities, list) and "completion" not in capabilities and "embedding" in capabilities)
    parallel = settings.num_parallel or 1
    if parallel > 1 and (embedding or shape.architecture in SINGLE_SLOT_ARCHITECTURES):
        parallel = 1
    assumed.append(f"{parallel} parallel slot(s)" + ("" if settings.num_parallel else " (OLLAMA_NUM_PARALLEL unknown: 1)"))
    flash = settings.flash_attention if settings.flash_attention is not None else True
    cache_type = settings.kv_cache_type or "f16"
    if cache_type != "f16" and settings.flash_attention is False:
        cache_type = "f16"  # llama.cpp quantizes the V cache only with flash attention
    assumed.append(f"KV cache {cache_type}, flash attention {'on' if flash else 'off'}")
    return estimate(shape, weights_bytes, context, parallel, cache_type, flash, assumed)


def estimate_lmstudio(size_bytes: int, context: int | None) -> Estimate:
    """An LM Studio model (lmstudio.ai/docs/developer/rest: /api/v1/models `size_bytes`,
    `loaded_instances[].config.context_length`, `max_context_length`): its REST API tells the
    file size and a loaded instance's context, but no layer or head counts, so no KV cache can
    be computed: the file size, with the loaded context (0: not loaded, none assumed)."""
    weights = _count(size_bytes, "size_bytes", 0, MAX_ESTIMATE_BYTES)
    shown = positive_int(context, MAX_CONTEXT) or 0
    return Estimate(weights, weights, 0, 0, shown, 1, "unknown",
                    ["LM Studio tells no layer or head counts: the file size, without the KV cache"])
