"""The unload requests of Ollama and LM Studio, added to their stand-ins (llm_standins.py).

- Ollama (docs.ollama.com/api, "Unload a model"): POST /api/generate {"model": m, "keep_alive": 0}
  answers {"model", "created_at", "response": "", "done": true, "done_reason": "unload"}.
- LM Studio 0.4+ (lmstudio.ai/docs/developer/rest/unload): POST /api/v1/models/unload
  {"instance_id": i} answers {"instance_id": i}.

Every POST but Ollama's /api/show (a read) is recorded in `posts` as (path, parsed JSON body, headers), and the model is
really unloaded from the stand-in's state, so the next GET shows it gone.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

from tests.parts.llm_standins import LMStudioStandin, OllamaStandin, _Handler, _json, _Server


class _UnloadHandler(_Handler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        standin = self.server.standin
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        if self.path != "/api/show":  # a read (the estimate's), not an unload request
            with standin.lock:
                standin.posts.append((self.path, body, dict(self.headers)))
        status, answer = standin.post(self.path, body, self.headers.get("Authorization"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class _UnloadServer(_Server):
    def __init__(self, address, standin):
        self.standin = standin
        super(_Server, self).__init__(address, _UnloadHandler)


class _WithUnload:
    def __init__(self):
        super().__init__()
        self.posts: list[tuple[str, object, dict]] = []
        self.lock = threading.Lock()

    def _listen(self) -> None:
        self._stopping.clear()
        self._server = _UnloadServer(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{type(self).__name__}:{self.port}",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()


class OllamaWithUnload(_WithUnload, OllamaStandin):
    def set_expiry(self, name: str, moment: datetime) -> None:
        self.running[name]["expires_at"] = moment.isoformat(timespec="microseconds")

    def post(self, path: str, body, authorization):
        if path == "/api/show":
            return super().post(path, body, authorization)
        if path != "/api/generate" or not isinstance(body, dict):
            return 404, b"404 page not found"
        name = body.get("model")
        if body.get("keep_alive") == 0 and not body.get("prompt"):
            self.unload(name)
            return 200, _json({"model": name, "created_at": datetime.now(timezone.utc).isoformat(),
                               "response": "", "done": True, "done_reason": "unload"})
        return 400, _json({"error": "this stand-in only unloads"})


class LMStudioWithUnload(_WithUnload, LMStudioStandin):
    def post(self, path: str, body, authorization):
        if self.required_token is not None and authorization != f"Bearer {self.required_token}":
            return 401, _json({"error": {"message": "Unauthorized"}})
        if path != "/api/v1/models/unload" or not isinstance(body, dict):
            return 200, _json({"error": f"Unexpected endpoint or method. (POST {path})"})
        instance = body.get("instance_id")
        for model in self.models.values():
            kept = [i for i in model["loaded_instances"] if i["id"] != instance]
            if len(kept) != len(model["loaded_instances"]):
                model["loaded_instances"] = kept
                return 200, _json({"instance_id": instance})
        return 404, _json({"error": f"No loaded model instance {instance}"})
