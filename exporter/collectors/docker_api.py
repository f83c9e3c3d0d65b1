"""The few Docker Engine API calls the exporter makes, through the one HTTP client.

Four read-only GETs for the collectors (GET /version once, /info, /containers/json,
/containers/{id}/stats) and one POST for the stop_duplicate_container action, each within
the caller's deadline, over the engine's unix socket (Docker Desktop, colima, rootless
Docker, Linux engines) or tcp:// (plain HTTP, or HTTPS with the Docker CLI's
DOCKER_TLS_VERIFY and DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem).

No Docker SDK: for these calls it would bring requests, urllib3 and charset_normalizer
(about 7 MB of the exporter's resident memory, three times the CPU per call) and a second
timeout style. Its one unique feature, ssh:// hosts, needed paramiko, which was never a
dependency; such a host is refused with the way round it (forward the engine's socket).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from exporter.collectors.base import CollectorError, Deadline
from exporter.collectors.httpclient import Client

# Idle keep-alive connections kept for the next scrape, at most: every container's stats
# are asked for at once, each on its own connection.
MAX_IDLE_CONNECTIONS = 64
MAX_ANSWER_BYTES = 16 * 2**20


class EngineAPIError(Exception):
    """The engine answered with an error status; `explanation` is its message."""

    def __init__(self, status_code: int, explanation: str, reason: str = ""):
        super().__init__(f"HTTP {status_code}: {explanation or reason}")
        self.status_code, self.explanation, self.reason = status_code, explanation, reason


class EngineNotFound(EngineAPIError):
    """HTTP 404: e.g. a container removed since it was listed."""


class MalformedEngineAnswer(ValueError):
    """The engine answered 2xx, but not with what the API documents."""


class UnsupportedHost(CollectorError):
    """A Docker host this client does not speak to (ssh://, npipe://)."""


def version_lt(version: str, other: str) -> bool:
    """'1.40' < '1.41', numerically."""
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))
    return parts(version) < parts(other)


def tls_from_env(env: Mapping[str, str], home: Path) -> ssl.SSLContext | None:
    """The TLS the docker CLI would use for a tcp:// host: none unless DOCKER_TLS_VERIFY (not
    empty) or DOCKER_CERT_PATH is set; then the client certificate of DOCKER_CERT_PATH
    (default ~/.docker), and the server's verified against its ca.pem only with DOCKER_TLS_VERIFY."""
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    cert_path = env.get("DOCKER_CERT_PATH")
    if not verify and not cert_path:
        return None
    folder = Path(cert_path) if cert_path else home / ".docker"
    try:
        if verify:
            context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if (folder / "cert.pem").exists():
            context.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise CollectorError(f"cannot use the Docker TLS files in {folder}: {exc}") from None
    return context


def endpoint(host: str, env: Mapping[str, str] = os.environ, home: Path | None = None) -> tuple[str, Client]:
    """(base URL, client) for a Docker host: unix://PATH, tcp://HOST:PORT, http(s)://HOST:PORT."""
    for scheme in ("unix://", "http+unix://"):
        if host.startswith(scheme):
            # The Host header the docker CLI sends too.
            return "http://localhost", Client(headers={"Accept": "application/json"}, unix_socket=host[len(scheme):],
                                              max_idle=MAX_IDLE_CONNECTIONS, source="docker")
    scheme, _, rest = host.partition("://")
    scheme = scheme.lower()
    if scheme in ("tcp", "http", "https"):
        tls = tls_from_env(env, home or Path.home()) if scheme == "tcp" else None
        secure = scheme == "https" or tls is not None
        parts = urlsplit(f"http://{rest}")
        port = parts.port or (2376 if secure else 2375)
        netloc = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        base = f"{'https' if secure else 'http'}://{netloc}:{port}{parts.path.rstrip('/')}"
        return base, Client(headers={"Accept": "application/json"}, tls=tls, max_idle=MAX_IDLE_CONNECTIONS,
                            source="docker")
    if scheme == "ssh":
        raise UnsupportedHost(f"ssh:// Docker hosts are not supported: forward the engine's socket "
                              f"(ssh -nNT -L /tmp/docker.sock:/var/run/docker.sock {rest.split('/')[0]}) "
                              "and set docker.host to unix:///tmp/docker.sock")
    raise UnsupportedHost(f"{scheme}:// Docker hosts are not supported: use unix:// or tcp://")


class Engine:
    """A Docker engine: its API version asked once (GET /version, as the SDK's version="auto"),
    then the calls below on connections kept across scrapes."""

    def __init__(self, host: str, deadline: Deadline, env: Mapping[str, str] = os.environ):
        self.host = host
        self.base, self.http = endpoint(host, env)
        try:
            document = self._request("GET", "/version", deadline)
        except BaseException:
            self.http.close()
            raise
        version = document.get("ApiVersion") if isinstance(document, dict) else None
        if not isinstance(version, str) or not all(part.isdigit() for part in version.split(".")):
            self.http.close()
            raise MalformedEngineAnswer(f"no usable ApiVersion: {version!r}")
        self.api_version = version

    def containers(self, deadline: Deadline, filters: dict[str, Any] | None = None) -> Any:
        query = {"filters": json.dumps({key: value if isinstance(value, list) else [value]
                                        for key, value in filters.items()})} if filters else {}
        return self._request("GET", self._versioned("/containers/json"), deadline, query)

    def stats(self, container: str, deadline: Deadline, one_shot: bool | None = None) -> Any:
        query = {"stream": "false"}
        if one_shot is not None:
            query["one-shot"] = "true" if one_shot else "false"
        return self._request("GET", self._versioned(f"/containers/{quote(container, safe='')}/stats"), deadline, query)

    def info(self, deadline: Deadline) -> Any:
        return self._request("GET", self._versioned("/info"), deadline)

    def stop(self, container: str, deadline: Deadline, timeout: int = 10) -> None:
        """`docker stop`: SIGTERM, then SIGKILL after `timeout` seconds. Already stopped (304) is fine."""
        self._request("POST", self._versioned(f"/containers/{quote(container, safe='')}/stop"), deadline,
                      {"t": str(timeout)}, expect_json=False)

    def close(self) -> None:
        self.http.close()

    def _versioned(self, path: str) -> str:
        return f"/v{self.api_version}{path}"

    def _request(self, method: str, path: str, deadline: Deadline, query: dict[str, str] | None = None,
                 expect_json: bool = True) -> Any:
        url = self.base + (f"{path}?{urlencode(query)}" if query else path)
        answer = self.http.request(method, url, deadline, MAX_ANSWER_BYTES)
        if answer.status >= 400:
            explanation = ""
            try:
                document = json.loads(answer.body)
                if isinstance(document, dict) and isinstance(document.get("message"), str):
                    explanation = document["message"]
            except (ValueError, RecursionError):
                explanation = answer.body.decode("utf-8", "replace").strip()
            raise (EngineNotFound if answer.status == 404 else EngineAPIError)(answer.status, explanation,
                                                                               answer.reason)
        if not expect_json:
            return None
        try:
            return json.loads(answer.body)
        except RecursionError:
            raise MalformedEngineAnswer("JSON nested too deeply") from None
