"""The model loaded in llama.cpp's own server, `llama-server` (ggml-org/llama.cpp tools/server).

A llama-server answers (its README, "API Endpoints"):
- `GET /props`: {"default_generation_settings": {"n_ctx", ...}, "total_slots", "model_alias",
  "model_path", "endpoint_slots", "endpoint_metrics", "is_sleeping", ...}; in router mode
  (started without a model) {"role": "router", ...};
- `GET /v1/models`: {"data": [{"id", "meta": {"n_ctx", "n_params", "size", ...}}]}: `size` is
  the model's tensor bytes (llama_model_size, the weights the server loaded); in router mode
  one entry per model, with "status": {"value": "loaded" | "unloaded" | "sleeping" | ...};
- `GET /slots` (unless --no-slots): one entry per slot, "is_processing";
- `GET /metrics` (with --metrics): Prometheus text, `llamacpp:requests_processing`...;
- while it loads its model, 503 with {"error": {"code": 503, "message": "Loading model"}}.

Published: aitools_llm_server_up / aitools_llm_model_loaded_bytes / _installed_bytes with
server="llamacpp" as the other LLM servers, and aitools_llm_model_context_length (each
slot's context), aitools_llm_server_slots and aitools_llm_server_slots_busy.

The default address is llama-server's own default port, 8080, which many development
servers use too: a server there that does not answer /props in llama.cpp's shape is "not
running" (aitools_llm_server_up 0, no failure), and is asked again only after
FOREIGN_REPROBE_SECONDS so that another program's log does not fill with our requests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.base import Deadline, gauge
from exporter.collectors.llm import LLMServerCollector, ModelReading, Unreadable, byte_count, model_name
from exporter.config import DEFAULT_TIMEOUT_SECONDS, LlamaCppSection

log = logging.getLogger(__name__)

SERVER = "llamacpp"
FOREIGN_REPROBE_SECONDS = 60.0
LOADED = "loaded"  # router mode: the status of a model with a running instance


@dataclass
class LlamaCppReading(ModelReading):
    context_length: dict[str, int] = field(default_factory=dict)  # model -> each slot's context
    slots: int | None = None
    busy_slots: int | None = None


def is_llamacpp_props(payload: Any) -> bool:
    """Whether a /props answer has llama-server's shape (single model or router)."""
    return (isinstance(payload, dict) and isinstance(payload.get("default_generation_settings"), dict)
            and isinstance(payload.get("model_path"), str))


def shown_name(model_id: str, model_path: str | None) -> str:
    """The model's label: its alias, or the file name when the id is the model's path
    (llama-server's default id is the -m argument)."""
    if model_path and model_id == model_path or model_id.lower().endswith(".gguf"):
        return model_id.replace("\\", "/").rsplit("/", 1)[-1] or model_id
    return model_id


def parse_models(payload: Any, model_path: str | None, router: bool) -> LlamaCppReading:
    """`/v1/models` (or a router's `/models`): the loaded models with their size and context."""
    reading = LlamaCppReading(installed_bytes={})
    entries = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise Unreadable("unexpected answer from /v1/models: no \"data\" list", answered=True)
    for entry in entries:
        entry = entry if isinstance(entry, dict) else {}
        status = entry.get("status")
        if router and not (isinstance(status, dict) and status.get("value") == LOADED):
            continue  # unloaded, sleeping, loading, downloading: nothing of it in memory (or not yet)
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        identifier = model_name(entry.get("id"))
        size = byte_count(meta.get("size"))
        if identifier is None or size is None:
            reading.skipped_entries += 1
            continue
        name = shown_name(identifier, model_path)
        reading.loaded_bytes[name] = reading.loaded_bytes.get(name, 0) + size
        reading.installed_bytes[name] = size
        context = byte_count(meta.get("n_ctx"))
        if context:
            reading.context_length[name] = context
    return reading


def busy_from_slots(payload: Any) -> int | None:
    """`/slots`: a list of slots, each with "is_processing"."""
    if not isinstance(payload, list):
        return None
    return sum(1 for slot in payload if isinstance(slot, dict) and slot.get("is_processing") is True)


def busy_from_metrics(text: str) -> int | None:
    """`/metrics`: llamacpp:requests_processing, the slots busy now."""
    try:
        for family in text_string_to_metric_families(text):
            if family.name == "llamacpp:requests_processing":
                for sample in family.samples:
                    return int(sample.value)
    except ValueError:
        return None
    return None


class LlamaCppCollector(LLMServerCollector):
    name = SERVER

    def __init__(self, section: LlamaCppSection = LlamaCppSection(), timeout: float = DEFAULT_TIMEOUT_SECONDS):
        super().__init__(section.url, timeout)
        self._foreign: tuple[float, str] | None = None  # (until when, why) another program answers there

    def read_models(self, deadline: Deadline) -> LlamaCppReading:
        if self._foreign is not None and time.monotonic() < self._foreign[0]:
            raise Unreadable(self._foreign[1], answered=False, not_running=True)
        self._foreign = None
        props = self._props(deadline)
        if props is None:
            return LlamaCppReading()  # loading its model: nothing loaded yet
        router = props.get("role") == "router"
        if props.get("is_sleeping") is True:
            reading = LlamaCppReading()  # asleep: its model and cache are unloaded
        else:
            reading = parse_models(self.get_json("/v1/models" if not router else "/models", deadline),
                                   props.get("model_path"), router)
        if router:
            return reading
        reading.slots = byte_count(props.get("total_slots"))
        # Busy slots: /slots where it is on (the default), else /metrics where that is on.
        try:
            if props.get("endpoint_slots", True) is not False:
                reading.busy_slots = busy_from_slots(self.get_json("/slots", deadline))
            elif props.get("endpoint_metrics") is True:
                status, body = self._get("/metrics", deadline, {})
                if 200 <= status < 300:
                    reading.busy_slots = busy_from_metrics(body.decode("utf-8", "replace"))
        except Unreadable as exc:
            log.debug("%s at %s: busy slots unknown: %s", self.name, self.base_url, exc.reason)
        return reading

    def _props(self, deadline: Deadline) -> dict | None:
        """/props when the server is a llama-server; None while it loads its model."""
        try:
            props = self.get_json("/props", deadline)
        except Unreadable as exc:
            if not exc.answered or exc.status in (401, 403):
                if exc.status in (401, 403):
                    raise Unreadable(f"{exc.reason} (llama-server started with --api-key: not supported; "
                                     "start it without one on 127.0.0.1)", answered=True, status=exc.status) from None
                raise
            if exc.status == 503 and "Loading model" in exc.reason:
                return None
            return self._not_llamacpp(f"answered /props with {exc.reason}")
        if not is_llamacpp_props(props):
            return self._not_llamacpp("answered /props without llama-server's fields")
        return props

    def _not_llamacpp(self, what: str) -> None:
        reason = (f"something else listens there (it {what}): not a llama.cpp server; "
                  f"set llamacpp.url to llama-server's address, or null")
        self._foreign = (time.monotonic() + FOREIGN_REPROBE_SECONDS, reason)
        raise Unreadable(reason, answered=False, not_running=True)

    def more_families(self, reading: ModelReading, context) -> list:
        """The slots; each loaded model's context (llama.cpp: each slot's) into `context`."""
        slots = gauge("aitools_llm_server_slots", "How many requests the server serves at once (its slots).",
                      ["server"])
        busy = gauge("aitools_llm_server_slots_busy", "The slots serving a request now.", ["server"])
        if isinstance(reading, LlamaCppReading):
            for model, length in sorted(reading.context_length.items()):
                context.add_metric([self.name, model], float(length))
            if reading.slots is not None:
                slots.add_metric([self.name], float(reading.slots))
            if reading.busy_slots is not None:
                busy.add_metric([self.name], float(reading.busy_slots))
        return [slots, busy]
