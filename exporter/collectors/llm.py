"""Models loaded in the local LLM servers: Ollama and LM Studio.

Ollama: `GET /api/ps` lists the running models, each with `size` (bytes in memory),
`size_vram` (the part of it in GPU memory) and `context_length`; `GET /api/tags` lists the
installed models, each with `size` (bytes on disk) and `digest`, loaded or not; `POST
/api/show {"model": m}` gives a model's `model_info` (its GGUF metadata) and `parameters`,
from which exporter/estimate.py makes its loaded size (`aitools_llm_model_estimated_bytes`);
those answers are cached by digest and read a few per scrape.
LM Studio 0.4+: `GET /api/v1/models` lists the downloaded models, each with
`size_bytes` and `loaded_instances`: the installed models and the loaded ones in one
answer. Older LM Studio (0.3.6 to 0.3.x) only has
`GET /api/v0/models`, which says which models are loaded but not their size; it
answers /api/v1/models with HTTP 200 and an "Unexpected endpoint" error, or a 404.

`aitools_llm_server_up` is 1 when the server answered HTTP at all (even with a bad
status or body) and 0 when it did not (refused, timed out, hung up before
answering). A failure yields that gauge first, then raises CollectorError.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from exporter.collectors.base import MAX_BYTE_COUNT, CollectorError, Deadline, SourceCollector, SourceNotRunning, gauge
from exporter.collectors.base import byte_count as base_byte_count
from exporter.collectors.httpclient import Client
from exporter.collectors.machine import current
from exporter.config import DEFAULT_TIMEOUT_SECONDS, LMStudioSection, OllamaSection
from exporter.estimate import Estimate, NoEstimate, OllamaSettings, estimate_lmstudio, estimate_ollama

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 2**20
MAX_ERROR_DETAIL_CHARS = 200

# Visible ASCII: what an Authorization header can carry (RFC 9110 field values, less
# spaces and tabs, which no bearer token holds).
_BEARER_TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]+")

LMSTUDIO_V1_MODELS = "/api/v1/models"
LMSTUDIO_V0_MODELS = "/api/v0/models"
# While LM Studio does not know /api/v1/models (before 0.4), read /api/v0/models and ask
# /api/v1 again after this long, or at once after /api/v0 fails: it may have been updated.
LMSTUDIO_V1_REPROBE_SECONDS = 300.0
MAX_TOKEN_FILE_BYTES = 4096


class Unreadable(Exception):
    """The server could not be read. `answered` is True once it sent an HTTP status line."""

    def __init__(self, reason: str, answered: bool, status: int | None = None, not_running: bool = False):
        super().__init__(reason)
        self.reason, self.answered, self.status, self.not_running = reason, answered, status, not_running


@dataclass
class ModelReading:
    loaded_bytes: dict[str, int] = field(default_factory=dict)
    vram_bytes: dict[str, int] = field(default_factory=dict)
    skipped_entries: int = 0  # model entries without a usable name or size
    # Installed models, loaded or not; None when the server did not say (LM Studio's
    # /api/v0, or Ollama's /api/tags failing while /api/ps answered).
    installed_bytes: dict[str, int] | None = None
    installed_error: str | None = None  # why installed_bytes is None, when it is a failure
    context_lengths: dict[str, int] = field(default_factory=dict)  # loaded models: the context they run with
    # Each installed or loaded model's loaded size as its server would load it, or the reason
    # there is none (exporter/estimate.py).
    estimates: dict[str, Estimate | str] = field(default_factory=dict)


def byte_count(value: Any) -> int | None:
    """A size in bytes if `value` is a non-negative finite integer (2.0 counts, 2.5 does not)."""
    return base_byte_count(value, MAX_BYTE_COUNT)


def model_name(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    try:
        # Python's json reads NaN and Infinity, which are not JSON: refuse them.
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise Unreadable("body is not valid JSON (truncated?)", answered=True) from None


def error_detail(body: bytes) -> str:
    """The server's own error text from an error answer: Ollama {"error": "..."},
    OpenAI style {"error": {"message": "..."}}; empty when there is none."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str):
        return ""
    return " ".join(error.split())[:MAX_ERROR_DETAIL_CHARS]


class LLMServerCollector(SourceCollector):
    """The HTTP side shared by the LLM servers: one bounded GET of a JSON document."""

    def __init__(self, base_url: str | None, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(timeout)
        if not base_url:
            raise ValueError(f"{self.name} has no URL: leave the collector out when it is disabled")
        self.base_url = base_url.rstrip("/")
        self.skipped_entries = 0
        self._installed_error: str | None = None
        self.last_estimates: dict[str, Estimate | str] = {}  # of the last collection, for `fit`
        # Kept-alive connections, reused across scrapes; never through an HTTP_PROXY from the
        # environment (a local server is reached directly); redirects are not followed.
        self.http = Client(headers={"Accept": "application/json"}, source=self.name)

    def read_models(self, deadline: Deadline) -> ModelReading:  # pragma: no cover - abstract
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Strings that must never appear in an error message."""
        return []

    def collect(self, deadline: Deadline | None = None):
        deadline = self.deadline(deadline)
        up = gauge("aitools_llm_server_up", "1 when the LLM server answered.", ["server"])
        loaded = gauge("aitools_llm_model_loaded_bytes",
                       "Size of each loaded model as its server reports it.", ["server", "model"])
        vram = gauge("aitools_llm_model_vram_bytes",
                     "The part of a loaded model in GPU memory, where the server tells it.", ["server", "model"])
        installed = gauge("aitools_llm_model_installed_bytes",
                          "Size of each model installed in the server, loaded or not.", ["server", "model"])
        estimated = gauge("aitools_llm_model_estimated_bytes",
                          "Memory the model takes once loaded as its server would load it: weights, KV cache "
                          "at the context below, runtime buffers.", ["server", "model"])
        context = gauge("aitools_llm_model_context_length",
                        "The context length that estimate assumed (for a loaded model, the one it was loaded with).",
                        ["server", "model"])
        try:
            reading, failure = self.read_models(deadline), None
        except Unreadable as exc:
            reading, failure = None, exc

        up.add_metric([self.name], 1.0 if failure is None or failure.answered else 0.0)
        yield up
        if failure is not None:
            # Nothing listens there: the server is not started, a normal state (not a failure).
            error = SourceNotRunning if failure.not_running else CollectorError
            raise error(self._redact(f"{self.name} at {self.base_url}: {failure.reason}"))

        self._note_skipped(reading.skipped_entries)
        for model, size in sorted(reading.loaded_bytes.items()):
            loaded.add_metric([self.name, model], float(size))
        for model, size in sorted(reading.vram_bytes.items()):
            vram.add_metric([self.name, model], float(size))
        self._note_installed_error(reading.installed_error)
        for model, size in sorted((reading.installed_bytes or {}).items()):
            installed.add_metric([self.name, model], float(size))
        extra = self.more_families(reading, context)
        self.last_estimates = dict(reading.estimates)
        for model, found in sorted(reading.estimates.items()):
            if isinstance(found, Estimate):
                estimated.add_metric([self.name, model], float(found.total_bytes))
                if found.context_length:
                    context.add_metric([self.name, model], float(found.context_length))
        yield loaded
        yield vram
        yield installed
        yield estimated
        yield context
        yield from extra

    def more_families(self, reading: ModelReading, context) -> list:
        """A server's own figures beside the models (llama.cpp: slots), and its loaded models'
        context lengths added to `context`; none by default."""
        return []

    def get_json(self, path: str, deadline: Deadline, headers: dict[str, str] | None = None) -> Any:
        """GET base_url + path within the deadline and return the parsed JSON of a 2xx answer."""
        status, body = self._get(path, deadline, headers or {})
        if not 200 <= status < 300:
            detail = error_detail(body)
            raise Unreadable(f"answered HTTP {status} for {path}" + (f": {detail}" if detail else ""),
                             answered=True, status=status)
        return parse_json(body)

    def _get(self, path: str, deadline: Deadline, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            answer = self.http.get(self.base_url + path, deadline, MAX_BODY_BYTES, headers)
        except CollectorError as exc:
            raise self._failure(exc, path, deadline) from None
        return answer.status, answer.body

    @staticmethod
    def _failure(exc: CollectorError, path: str, deadline: Deadline) -> Unreadable:
        """A failed GET in this collector's words; `answered` once a status line had come."""
        kind, answered = getattr(exc, "kind", ""), getattr(exc, "answered", False)
        if isinstance(exc, SourceNotRunning):
            return Unreadable(str(exc), answered=False, not_running=True)
        if kind == "timeout":
            where = " while reading the body" if answered else ""
            return Unreadable(f"timed out after {deadline.seconds:g}s{where}", answered=answered)
        if kind == "too_large":
            return Unreadable(f"body of {path} is larger than {MAX_BODY_BYTES // 2**20} MiB", answered=True)
        if kind == "closed":
            if answered:
                return Unreadable("connection closed before the whole body arrived (truncated)", answered=True)
            return Unreadable("closed the connection without answering", answered=False)
        return Unreadable(str(exc), answered=answered)

    def _redact(self, message: str) -> str:
        for secret in self.secrets():
            message = message.replace(secret, "[redacted]")
        return message

    def _note_installed_error(self, error: str | None) -> None:
        """The installed models are a second reading beside the loaded ones: when only they
        fail, the loaded figures (which the budgets count) stay published and the collector
        succeeds; the log says once that the installed list is missing, and once when it is back."""
        previous = self._installed_error
        if error and error != previous:
            log.warning("%s at %s: installed models unknown: %s", self.name, self.base_url, self._redact(error))
        elif previous and not error:
            log.info("%s at %s: installed models readable again", self.name, self.base_url)
        self._installed_error = error

    def _note_skipped(self, skipped: int) -> None:
        if skipped and skipped != self.skipped_entries:
            log.warning("%s at %s: skipped %d model entries without a usable name or size",
                        self.name, self.base_url, skipped)
        self.skipped_entries = skipped


def _models_list(payload: Any, key: str, path: str) -> list:
    entries = payload.get(key) if isinstance(payload, dict) else None
    if isinstance(payload, dict) and key in payload and entries is None:
        return []  # Go encodes an empty slice it never filled as null
    if not isinstance(entries, list):
        raise Unreadable(f"unexpected answer from {path}: no \"{key}\" list", answered=True)
    return entries


def parse_ollama_ps(payload: Any) -> ModelReading:
    """`/api/ps`: {"models": [{"name", "model", "size", "size_vram", ...}]}."""
    reading = ModelReading()
    for entry in _models_list(payload, "models", "/api/ps"):
        entry = entry if isinstance(entry, dict) else {}
        name = model_name(entry.get("name")) or model_name(entry.get("model"))
        size = byte_count(entry.get("size"))
        if name is None or size is None:
            reading.skipped_entries += 1
            continue
        reading.loaded_bytes[name] = reading.loaded_bytes.get(name, 0) + size
        context = byte_count(entry.get("context_length"))
        if context:
            reading.context_lengths[name] = context
        in_vram = byte_count(entry.get("size_vram"))
        if in_vram is not None:
            reading.vram_bytes[name] = reading.vram_bytes.get(name, 0) + in_vram
    return reading


def parse_ollama_tags(payload: Any) -> dict[str, int]:
    """`/api/tags`: {"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}.

    `size` is the model's bytes on disk. Cloud models (Ollama 0.12+: an entry with
    `remote_host` / `remote_model`) run elsewhere and take no memory here: left out.
    Entries without a usable name or size are left out too."""
    installed: dict[str, int] = {}
    for entry in _models_list(payload, "models", "/api/tags"):
        if not isinstance(entry, dict) or entry.get("remote_host") or entry.get("remote_model"):
            continue
        name = model_name(entry.get("name")) or model_name(entry.get("model"))
        size = byte_count(entry.get("size"))
        if name is not None and size is not None:
            installed[name] = size
    return installed


def ollama_digests(payload: Any) -> dict[str, str]:
    """`/api/tags`: each local model's digest (what its /api/show answer is cached by)."""
    digests: dict[str, str] = {}
    entries = payload.get("models") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            name = model_name(entry.get("name")) or model_name(entry.get("model"))
            digest = entry.get("digest")
            if name is not None and isinstance(digest, str) and 0 < len(digest) <= 128:
                digests[name] = digest
    return digests


def parse_lmstudio_v1(payload: Any) -> ModelReading:
    """`/api/v1/models`: {"models": [{"key", "size_bytes", "loaded_instances": [{"id", "config"}]}]}.

    One series per model key. Each loaded instance of a key is a separate load of its
    weights, so the key counts size_bytes once per instance.
    """
    reading = ModelReading(installed_bytes={})
    for entry in _models_list(payload, "models", LMSTUDIO_V1_MODELS):
        entry = entry if isinstance(entry, dict) else {}
        instances = entry.get("loaded_instances")
        key = model_name(entry.get("key"))
        size = byte_count(entry.get("size_bytes"))
        if key is not None and size is not None:
            reading.installed_bytes[key] = size  # every downloaded model, loaded or not
            reading.estimates[key] = _lmstudio_estimate(entry, size, instances)
        if isinstance(instances, list) and not instances:
            continue  # downloaded, not loaded
        if key is None or size is None or not isinstance(instances, list):
            reading.skipped_entries += 1
            continue
        reading.loaded_bytes[key] = reading.loaded_bytes.get(key, 0) + size * len(instances)
    return reading


def _lmstudio_estimate(entry: dict, size: int, instances: Any) -> Estimate | str:
    """LM Studio's model information: the file size and the context of its loaded instance."""
    context = None
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        config = instances[0].get("config")
        context = config.get("context_length") if isinstance(config, dict) else None
    try:
        return estimate_lmstudio(size, context)
    except NoEstimate as exc:
        return str(exc)


def is_unknown_endpoint(payload: Any) -> bool:
    """LM Studio answers a path it does not know with HTTP 200 (not 404) and
    {"error": "Unexpected endpoint or method. (GET /path)"}."""
    error = payload.get("error") if isinstance(payload, dict) else None
    return isinstance(error, str) and error.startswith("Unexpected endpoint or method")


def loaded_in_lmstudio_v0(payload: Any) -> list[str]:
    """`/api/v0/models`: {"object": "list", "data": [{"id", "state": "loaded" | "not-loaded", ...}]}."""
    return [entry["id"] for entry in _models_list(payload, "data", LMSTUDIO_V0_MODELS)
            if isinstance(entry, dict) and entry.get("state") == "loaded" and model_name(entry.get("id"))]


# /api/show calls per scrape at most: the answers are cached by digest, so a new machine's
# models are all read within a few scrapes, and a scrape never waits on more than this many.
MAX_SHOW_CALLS_PER_SCRAPE = 4
MAX_SHOW_CACHE = 512
SHOW_MIN_SECONDS_LEFT = 0.2     # no /api/show call started with less of the deadline left
SETTINGS_REREAD_SECONDS = 60.0  # the server process's environment, read again after this long


def ollama_server_environment() -> dict[str, str]:
    """The OLLAMA_* environment of the user's own `ollama serve` process, where the OS lets us
    read it (Linux: /proc/PID/environ; macOS: psutil's environ() for the user's own processes);
    {} else (collectors/machine.py)."""
    return current().process_environment(("ollama", "Ollama"), "serve", "OLLAMA_")


# Metal's default working-set ceiling (recommendedMaxWorkingSetSize) as a share of physical
# memory, from llama.cpp's ggml_metal_init lines in public reports: 16 GB 10922.67 MB and
# 32 GB 21845.34 MB, two thirds (abetlen/llama-cpp-python#687, ollama/ollama#434); 64 GB
# about 48 GiB, three quarters (ggml-org/llama.cpp#1870); 128 GiB 107.52 GiB, 0.84
# (antirez/ds4#893). Up to each size (GiB) its share.
METAL_CEILING_SHARE = ((36, 2 / 3), (96, 3 / 4), (1 << 20, 0.84))


def gpu_memory_bytes() -> int | None:
    """The GPU memory Ollama sizes its default context by: on Apple silicon Metal's default
    working-set ceiling (METAL_CEILING_SHARE: 48 GiB on a 64 GB Mac); None elsewhere (no GPU
    this exporter knows of)."""
    machine = current()
    if not machine.apple_silicon:
        return None
    total = machine.memory_total()
    share = next(share for limit, share in METAL_CEILING_SHARE if total <= limit * 2**30)
    return int(total * share)


class OllamaCollector(LLMServerCollector):
    name = "ollama"

    def __init__(self, section: OllamaSection = OllamaSection(), timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(section.url, timeout)
        self.context_length = section.context_length  # ollama.context_length: None leaves it to the server
        self._shows: dict[str, Any] = {}   # /api/show answers by digest (or by name without one)
        self._settings: OllamaSettings | None = None
        self._settings_at = 0.0
        self.first: tuple[str, ...] = ()  # models whose /api/show is read before the others (`fit MODEL`)

    def settings(self, deadline: Deadline | None = None) -> OllamaSettings:
        """What the server runs with: its process's environment (read again every minute, and
        only with some of the scrape's deadline left), the configuration's context length."""
        now = time.monotonic()
        stale = self._settings is None or now - self._settings_at > SETTINGS_REREAD_SECONDS
        if stale and deadline is not None and deadline.left() < SHOW_MIN_SECONDS_LEFT:
            return self._settings or OllamaSettings.from_environment({}, self.context_length,
                                                                     gpu_memory_bytes())
        if stale:
            try:
                environ = ollama_server_environment()
            except Exception as exc:  # a process table that cannot be read costs only the environment
                log.debug("ollama: server environment not read: %s", exc)
                environ = {}
            self._settings = OllamaSettings.from_environment(environ, self.context_length,
                                                             gpu_memory_bytes())
            self._settings_at = now
        return self._settings

    def unload_request(self, model: str, instance: str) -> tuple[str, dict, dict[str, str]]:
        """(URL, JSON body, headers) of the POST that unloads a model now (keep_alive 0)."""
        return self.base_url + "/api/generate", {"model": model, "keep_alive": 0}, {}

    def read_models(self, deadline: Deadline) -> ModelReading:
        reading = parse_ollama_ps(self.get_json("/api/ps", deadline))
        # The installed models: one more request within the same deadline. Its failure
        # costs only the installed figures (see _note_installed_error).
        digests: dict[str, str] = {}
        try:
            tags = self.get_json("/api/tags", deadline)
            reading.installed_bytes = parse_ollama_tags(tags)
            digests = ollama_digests(tags)
        except Unreadable as exc:
            reading.installed_error = exc.reason
        if reading.installed_bytes is not None:  # without the file sizes there is nothing to estimate
            self._estimate(reading, digests, deadline)
        return reading

    def _estimate(self, reading: ModelReading, digests: dict[str, str], deadline: Deadline) -> None:
        """Each model's estimate from its /api/show answer: cached by digest, at most
        MAX_SHOW_CALLS_PER_SCRAPE calls per scrape, none once the deadline is nearly spent."""
        installed = reading.installed_bytes or {}
        models = sorted(set(installed) | set(reading.loaded_bytes),
                        key=lambda model: (model not in self.first and model.split(":")[0] not in self.first, model))
        keys = {model: digests.get(model, "name:" + model) for model in models}
        self._shows = {key: answer for key, answer in self._shows.items() if key in keys.values()}
        calls = 0
        settings = self.settings(deadline)
        for model in models:
            key = keys[model]
            if key not in self._shows:
                if calls >= MAX_SHOW_CALLS_PER_SCRAPE or deadline.left() < SHOW_MIN_SECONDS_LEFT:
                    reading.estimates[model] = "not read yet (/api/show is read a few models per scrape)"
                    continue
                calls += 1
                try:
                    # `name`: the field's older spelling (api/types.go ShowRequest keeps both).
                    self._shows[key] = self.post_json("/api/show", {"model": model, "name": model}, deadline)
                except Unreadable as exc:
                    reading.estimates[model] = f"/api/show: {exc.reason}"
                    continue
                if len(self._shows) > MAX_SHOW_CACHE:
                    self._shows.pop(next(iter(self._shows)))
            weights = installed.get(model)
            if weights is None:
                reading.estimates[model] = "not in /api/tags: its file size is unknown"
                continue
            try:
                reading.estimates[model] = estimate_ollama(self._shows.get(key), weights, settings,
                                                           reading.context_lengths.get(model))
            except NoEstimate as exc:
                reading.estimates[model] = str(exc)

    def post_json(self, path: str, document: Any, deadline: Deadline) -> Any:
        """POST a JSON document within the deadline and return the parsed JSON of a 2xx answer."""
        try:
            answer = self.http.post_json(self.base_url + path, document, deadline, MAX_BODY_BYTES)
        except CollectorError as exc:
            raise self._failure(exc, path, deadline) from None
        if not 200 <= answer.status < 300:
            detail = error_detail(answer.body)
            raise Unreadable(f"answered HTTP {answer.status} for {path}" + (f": {detail}" if detail else ""),
                             answered=True, status=answer.status)
        return parse_json(answer.body)


class LMStudioCollector(LLMServerCollector):
    name = "lmstudio"

    def __init__(self, section: LMStudioSection = LMStudioSection(), timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(section.url, timeout)
        self._v0_until = 0.0  # monotonic time until which /api/v1/models is known to answer 404
        self.token_file = section.token_file
        self._sent_token: str | None = None

    def token(self) -> str | None:
        """LM Studio's API token: lmstudio.token_file, read at each use (a rotated token works at
        the next scrape), else LM_API_TOKEN. Its content is never logged; a file that cannot be
        read raises Unreadable naming the file only."""
        path = self.token_file
        if path is None:
            # A token read from a file often ends in a newline; it is not part of the token.
            return os.environ.get("LM_API_TOKEN", "").strip() or None
        try:
            # O_NONBLOCK: a FIFO put there by mistake cannot hold the scrape; a regular file ignores it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise Unreadable(f"cannot read lmstudio.token_file {path}: {exc.strerror or type(exc).__name__}",
                             answered=False) from None
        token = data.decode("utf-8", "replace").strip()
        if not token or len(data) > MAX_TOKEN_FILE_BYTES:
            raise Unreadable(f"lmstudio.token_file {path} holds no token (or one over {MAX_TOKEN_FILE_BYTES} bytes)",
                             answered=False)
        return token

    def token_source(self) -> str:
        path = self.token_file
        return f"lmstudio.token_file {path}" if path else "LM_API_TOKEN"

    def secrets(self) -> list[str]:
        # The token sent (the file may have been rotated since) and the one there now.
        try:
            current = self.token()
        except Unreadable:
            current = None
        return [token for token in {self._sent_token, current} if token]

    def unload_request(self, model: str, instance: str) -> tuple[str, dict, dict[str, str]]:
        """(URL, JSON body, headers) of the POST that unloads a loaded instance (LM Studio 0.4+)."""
        token = self.token()
        return (self.base_url + "/api/v1/models/unload", {"instance_id": instance},
                {"Authorization": f"Bearer {token}"} if token else {})

    def read_models(self, deadline: Deadline) -> ModelReading:
        if time.monotonic() >= self._v0_until:
            try:
                payload = self.get_json(LMSTUDIO_V1_MODELS, deadline)
            except Unreadable as exc:
                if exc.status != 404:
                    raise
                payload = None
            if payload is not None and not is_unknown_endpoint(payload):
                return parse_lmstudio_v1(payload)
            self._v0_until = time.monotonic() + LMSTUDIO_V1_REPROBE_SECONDS
        try:
            payload = self.get_json(LMSTUDIO_V0_MODELS, deadline)
        except Unreadable:
            self._v0_until = 0.0
            raise
        if is_unknown_endpoint(payload):
            self._v0_until = 0.0
            raise Unreadable(f"knows neither {LMSTUDIO_V1_MODELS} nor {LMSTUDIO_V0_MODELS} "
                             "(LM Studio before 0.3.6?); update LM Studio to 0.4 or later", answered=True)
        loaded = loaded_in_lmstudio_v0(payload)
        if loaded:
            # /api/v0 gives no size. Publishing these models as 0 bytes would show the
            # lmstudio budget as unused while models fill memory, so the collector fails
            # instead (up stays 1: the server answered) and says what to do about it.
            shown = ", ".join(loaded[:3]) + (f" and {len(loaded) - 3} more" if len(loaded) > 3 else "")
            raise Unreadable(f"{LMSTUDIO_V0_MODELS} (LM Studio before 0.4) lists {len(loaded)} loaded "
                             f"model(s) ({shown}) but not their sizes; update LM Studio to 0.4 or later "
                             f"for {LMSTUDIO_V1_MODELS}", answered=True)
        return ModelReading()

    def get_json(self, path: str, deadline: Deadline, headers: dict[str, str] | None = None) -> Any:
        token = self.token()
        headers = dict(headers or {})
        if token and not _BEARER_TOKEN_CHARACTERS.fullmatch(token):
            # The HTTP library would refuse the header with the token in its error message
            # (and in its debug log): say what is wrong without ever handing it over.
            raise Unreadable(f"{self.token_source()} cannot be sent: it holds a space, a control character or a "
                             "non-ASCII character", answered=False)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._sent_token = token
        try:
            return super().get_json(path, deadline, headers)
        except Unreadable as exc:
            if exc.status not in (401, 403):
                raise
            hint = (f"LM Studio refused the token in {self.token_source()}" if token
                    else "LM Studio requires an API token: set lmstudio.token_file (or LM_API_TOKEN)")
            raise Unreadable(f"{exc.reason} ({hint})", answered=True, status=exc.status) from None
