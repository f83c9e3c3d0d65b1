"""Stand-ins for Ollama and LM Studio: small HTTP servers on 127.0.0.1 (see TESTING.md).

No model can be downloaded on these machines, so these answer exactly the documented
shapes instead:

- Ollama (docs.ollama.com/api, api/types.go ProcessModelResponse / ListModelResponse):
  `GET /api/ps`, `GET /api/tags`, `GET /api/version`.
- LM Studio 0.4+ (lmstudio.ai/docs/developer/rest/list): `GET /api/v1/models`;
  LM Studio 0.3.6+ (REST API v0, deprecated): `GET /api/v0/models`.

Plain classes, usable outside pytest:

    with OllamaStandin() as ollama:
        ollama.load("llama3.1:8b", size=4_900_000_000)
        ...  # point ollama.url at the exporter

Failure modes (`standin.mode = ...`, back to normal with `standin.mode = None`):
  "refused"    the listening socket is closed: connections are refused
  "slow"       waits `delay` seconds before answering anything
  "stall"      sends the status line and headers, then waits `delay` seconds before the body
  "drip"       sends the body one byte every `drip_interval` seconds
  "http500"    answers 500 with the server's error body
  "truncated"  declares a Content-Length larger than the bytes it sends, then closes
  "malformed"  answers 200 with a body that is not valid JSON
  "hangup"     closes the connection without answering
`standin.path_modes = {"/api/tags": "http500"}` gives one path a failure mode of its own
(any mode but "refused"), the others answering normally.
`standin.answer = (status, body_bytes)` overrides every answer (wrong shapes, bad sizes);
`header_delay` waits that long before any answer; `chunked = True` sends bodies with
chunked transfer encoding and no Content-Length (as Go's net/http does past 4 KB).
LM Studio only: `api_version = "v0"` is LM Studio before 0.4, without /api/v1/models, and
`api_version = "none"` is LM Studio before 0.3.6, without either. LM Studio answers a path
it does not know with HTTP 200 and {"error": "Unexpected endpoint or method. (GET /path)"}
(lmstudio-bug-tracker #618, #1323); `unknown_endpoint_status = 404` makes that a 404.
`required_token = "..."` answers 401 without "Authorization: Bearer <that token>".
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

FAILURE_MODES = ("refused", "slow", "stall", "drip", "http500", "truncated", "malformed", "hangup")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        standin = self.server.standin
        standin.requests.append((self.path, dict(self.headers)))
        mode = standin.path_modes.get(self.path, standin.mode)
        if mode in ("hangup", "refused"):  # refused: a server gone away closes its kept-alive connections too
            self.close_connection = True
            return
        if standin.header_delay and standin.wait(standin.header_delay):
            return
        if mode == "slow" and standin.wait(standin.delay):
            return
        status, body = standin.answer or standin.respond(self.path, self.headers.get("Authorization"))
        if mode == "http500" and standin.answer is None:
            status, body = 500, standin.error_body("llama runner process has terminated: exit status 2")
        if mode == "malformed":
            status, body = 200, b'{"models": [{"name": "llama3.1:8b", "size": 49,}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if mode == "truncated":
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if standin.chunked and mode is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for offset in range(0, len(body), 65536):
                chunk = body[offset:offset + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        if mode == "stall" and standin.wait(standin.delay):
            return
        if mode == "drip":
            for offset in range(len(body)):
                self.wfile.write(body[offset:offset + 1])
                self.wfile.flush()
                if standin.wait(standin.drip_interval):
                    return
            return
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - Ollama's /api/show; other POSTs: tests/parts/llm_unload.py
        standin = self.server.standin
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 1 << 20))
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        standin.requests.append((self.path, dict(self.headers)))
        mode = standin.path_modes.get(self.path, standin.mode)
        if mode in ("hangup", "refused"):
            self.close_connection = True
            return
        if mode == "slow" and standin.wait(standin.delay):
            return
        status, answer = standin.post(self.path, body, self.headers.get("Authorization"))
        if mode == "http500":
            status, answer = 500, standin.error_body("llama runner process has terminated: exit status 2")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args):  # keep the test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, standin: "Standin"):
        self.standin = standin
        super().__init__(address, _Handler)

    def get_request(self):
        connection, client = super().get_request()
        # As real servers (Go, Node) do: without it each kept-alive answer waits out the client's delayed ACK.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, client

    def handle_error(self, request, client_address):
        pass  # a client that gave up (timeout tests) is expected here


class Standin:
    """An HTTP server on 127.0.0.1 (a free port, kept across "refused") in a thread."""

    def __init__(self):
        self.port = 0
        self.delay = 10.0  # for "slow" and "stall"; longer than any timeout the tests use
        self.drip_interval = 0.2
        self.header_delay = 0.0
        self.chunked = False
        self.answer: tuple[int, bytes] | None = None
        self.path_modes: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._mode: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str | None:
        return self._mode

    @mode.setter
    def mode(self, mode: str | None) -> None:
        if mode is not None and mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; one of {FAILURE_MODES}")
        if mode == "refused":
            self._close()
        elif self._server is None and self._thread is not None:
            self._listen()  # back from "refused", on the same port
        self._mode = mode

    def start(self) -> "Standin":
        self._listen()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends the waits of slow, stalled and dripping answers
        self._close()

    def wait(self, seconds: float) -> bool:
        """Sleep in an answer; True when the stand-in is stopping meanwhile."""
        return self._stopping.wait(seconds)

    def _listen(self) -> None:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{type(self).__name__}:{self.port}",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def respond(self, path: str, authorization: str | None) -> tuple[int, bytes]:  # pragma: no cover - abstract
        raise NotImplementedError

    def post(self, path: str, body, authorization: str | None) -> tuple[int, bytes]:
        return 404, b"404 page not found"

    def error_body(self, message: str) -> bytes:
        return _json({"error": message})


def _json(document) -> bytes:
    return json.dumps(document, indent=2).encode()


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


# Ollama's documented /api/show answer (ollama/ollama docs/api.md, "Show Model Information",
# at v0.33.0-rc2): llama3 8B Q4_0, with its tokenizer arrays empty as without `verbose`.
LLAMA3_8B_SHOW = {
    "modelfile": "# Modelfile generated by \"ollama show\"\nFROM llama3:latest\n",
    "parameters": "num_keep                       24\nstop                           \"<|start_header_id|>\"\n"
                  "stop                           \"<|end_header_id|>\"\nstop                           \"<|eot_id|>\"",
    "template": "{{ .Prompt }}",
    "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                "parameter_size": "8.0B", "quantization_level": "Q4_0"},
    "model_info": {
        "general.architecture": "llama", "general.file_type": 2, "general.parameter_count": 8030261248,
        "general.quantization_version": 2, "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
        "llama.attention.layer_norm_rms_epsilon": 0.00001, "llama.block_count": 32, "llama.context_length": 8192,
        "llama.embedding_length": 4096, "llama.feed_forward_length": 14336, "llama.rope.dimension_count": 128,
        "llama.rope.freq_base": 500000, "llama.vocab_size": 128256, "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128009, "tokenizer.ggml.merges": [], "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.token_type": [], "tokenizer.ggml.tokens": [],
    },
    "capabilities": ["completion", "vision"],
}


class OllamaStandin(Standin):
    """Ollama's /api/ps, /api/tags and /api/version, with the models loaded at run time."""

    version = "0.12.6"

    def __init__(self):
        super().__init__()
        self.running: dict[str, dict] = {}    # /api/ps entries by name
        self.installed: dict[str, dict] = {}  # /api/tags entries by name
        self.shows: dict[str, object] = {}    # /api/show answers by name (default: LLAMA3_8B_SHOW)

    def install(self, name: str, size_on_disk: int, family: str = "llama", parameter_size: str = "8.0B",
                quantization_level: str = "Q4_K_M") -> dict:
        details = {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                   "parameter_size": parameter_size, "quantization_level": quantization_level}
        self.installed[name] = {
            "name": name, "model": name,
            "modified_at": _rfc3339(datetime.now(timezone.utc) - timedelta(days=3)),
            "size": size_on_disk, "digest": _digest(name), "details": details,
        }
        return details

    def load(self, name: str, size: int, size_vram: int | None = None, context_length: int = 4096, **details) -> None:
        """Load a model: `size` bytes in memory, `size_vram` of them on the GPU (default: all)."""
        if name not in self.installed:
            self.install(name, size_on_disk=int(size * 0.9), **details)
        self.running[name] = {
            "name": name, "model": name, "size": size, "digest": _digest(name),
            "details": self.installed[name]["details"],
            "expires_at": _rfc3339(datetime.now(timezone.utc) + timedelta(minutes=5)),
            "size_vram": size if size_vram is None else size_vram,
            "context_length": context_length,
        }

    def unload(self, name: str) -> None:
        self.running.pop(name, None)

    def remove(self, name: str) -> None:
        """`ollama rm`: unloaded and no longer installed."""
        self.running.pop(name, None)
        self.installed.pop(name, None)

    def post(self, path: str, body, authorization: str | None) -> tuple[int, bytes]:
        """`POST /api/show {"model": name}`: the model's details, parameters and model_info."""
        name = body.get("model") if isinstance(body, dict) else None
        if path != "/api/show" or name not in self.installed:
            return 404, _json({"error": f"model '{name}' not found"})
        answer = self.shows.get(name, LLAMA3_8B_SHOW)
        return 200, answer if isinstance(answer, bytes) else _json(answer)

    def respond(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        if path == "/api/ps":
            return 200, _json({"models": list(self.running.values())})
        if path == "/api/tags":
            return 200, _json({"models": None if self.installed is None else list(self.installed.values())})
        if path == "/api/version":
            return 200, _json({"version": self.version})
        return 404, b"404 page not found"  # Go's default NotFound handler, text/plain


class LMStudioStandin(Standin):
    """LM Studio's /api/v1/models (0.4+) and /api/v0/models, with models loaded at run time."""

    def __init__(self):
        super().__init__()
        self.api_version = "v1"  # "v0": LM Studio 0.3.6 to 0.3.x; "none": before 0.3.6
        self.unknown_endpoint_status = 200
        self.required_token: str | None = None
        self.models: dict[str, dict] = {}  # /api/v1/models entries by key

    def download(self, key: str, size_bytes: int, type: str = "llm", publisher: str = "lmstudio-community",
                 architecture: str = "llama", params_string: str | None = "8B",
                 quantization: str = "Q4_K_M", bits_per_weight: float = 4) -> dict:
        entry = {
            "type": type, "publisher": publisher, "key": key,
            "display_name": key.split("/")[-1].replace("-", " ").title(),
            "architecture": architecture,
            "quantization": {"name": quantization, "bits_per_weight": bits_per_weight},
            "size_bytes": size_bytes, "params_string": params_string,
            "loaded_instances": [], "max_context_length": 131072, "format": "gguf",
            "capabilities": {"vision": False, "trained_for_tool_use": True}, "description": None,
        }
        if type == "embedding":  # the docs: absent for embedding models
            for absent in ("architecture", "capabilities", "description"):
                del entry[absent]
        self.models[key] = entry
        return entry

    def load(self, key: str, size_bytes: int, instances: int = 1, context_length: int = 4096, **download) -> None:
        """Load `instances` instances of a model of `size_bytes` (downloading it first if needed)."""
        if key not in self.models:
            self.download(key, size_bytes, **download)
        self.models[key]["loaded_instances"] = [
            {"id": key if number == 1 else f"{key}:{number}", "config": {"context_length": context_length}}
            for number in range(1, instances + 1)
        ]

    def unload(self, key: str) -> None:
        if key in self.models:
            self.models[key]["loaded_instances"] = []

    def respond(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        if self.required_token is not None and authorization != f"Bearer {self.required_token}":
            # The docs do not show the body of this answer; an OpenAI-style error object.
            return 401, _json({"error": {"message": "Unauthorized: a valid API token is required",
                                         "type": "invalid_request_error"}})
        if path == "/api/v1/models" and self.api_version == "v1":
            return 200, _json({"models": list(self.models.values())})
        if path == "/api/v0/models" and self.api_version in ("v1", "v0"):
            return 200, _json({"object": "list", "data": [self._v0_entry(model) for model in self.models.values()]})
        return self.unknown_endpoint_status, _json({"error": f"Unexpected endpoint or method. (GET {path})"})

    @staticmethod
    def _v0_entry(model: dict) -> dict:
        return {
            "id": model["key"], "object": "model",
            "type": "embeddings" if model["type"] == "embedding" else model["type"],
            "publisher": model["publisher"], "arch": model.get("architecture", "nomic-bert"),
            "compatibility_type": model["format"], "quantization": model["quantization"]["name"],
            "state": "loaded" if model["loaded_instances"] else "not-loaded",
            "max_context_length": model["max_context_length"],
        }


@pytest.fixture
def ollama_standin():
    with OllamaStandin() as standin:
        yield standin


@pytest.fixture
def lmstudio_standin():
    with LMStudioStandin() as standin:
        yield standin
