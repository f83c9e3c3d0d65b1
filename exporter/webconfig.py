"""`--web.config.file`: TLS and basic auth in the exporter-toolkit format every official exporter reads.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...   # a bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Relative file names are read relative to the web config file, as exporter-toolkit does.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import logging
import random
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path


log = logging.getLogger(__name__)

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_NONE,
               "RequireAnyClientCert": ssl.CERT_REQUIRED, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
            "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
# A successful check is cached so that each scrape does not pay bcrypt's deliberate cost
# again. Only successes: a flood of wrong logins can then neither fill the cache nor push
# the real login out of it. When full, a random tenth is evicted (as exporter-toolkit does),
# not the whole cache.
MAX_CACHED_CREDENTIALS = 256
EVICTED_WHEN_FULL = MAX_CACHED_CREDENTIALS // 10


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    _cache: set[bytes] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # One bcrypt check at a time, as exporter-toolkit: wrong logins from many connections
    # then take one core, not all, and the scrapes keep the rest. Granted in arrival order,
    # so the real login waits for the checks queued before it, not for every later one.
    _bcrypt_lock: "FairLock" = field(default_factory=lambda: FairLock(), repr=False)

    def authorized(self, authorization: str | None) -> bool:
        """Whether an Authorization header satisfies basic_auth_users (always, when there are none)."""
        if not self.users:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":  # the scheme name is case-insensitive (RFC 9110)
            return False
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), hashed or b"", password.encode()])).digest()
        with self._lock:
            if key in self._cache:
                return True
        ok = _check(password.encode(), hashed, self._bcrypt_lock)
        if ok:
            with self._lock:
                if len(self._cache) >= MAX_CACHED_CREDENTIALS:
                    for evicted in random.sample(list(self._cache), EVICTED_WHEN_FULL):
                        self._cache.discard(evicted)
                self._cache.add(key)
        return ok


class FairLock:
    """A lock granted in the order it was asked for (Go's sync.Mutex, which exporter-toolkit
    uses, turns to this order too once a waiter has waited 1 ms). Python's Lock wakes any
    waiter: under a flood one login could wait behind many later ones."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def __enter__(self) -> "FairLock":
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder before us, who hands the lock over
        return self

    def __exit__(self, *exc) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()  # still held: now by the next in line
            else:
                self._held = False


def _check(password: bytes, hashed: bytes | None, lock: FairLock) -> bool:
    """bcrypt's verdict, one check at a time. An unknown user still costs a check, so that
    timing does not tell which users exist. bcrypt reads at most 72 bytes and refuses more:
    such a password is wrong (as in Go's bcrypt), not an error that drops the connection."""
    if len(password) > 72:
        return False
    import bcrypt

    with lock:
        try:
            ok = bcrypt.checkpw(password, hashed or _dummy_hash())
        except ValueError:  # a hash bcrypt cannot read: checked at load, so not expected
            return False
    return ok and hashed is not None


@functools.cache
def _dummy_hash() -> bytes:
    import bcrypt

    return bcrypt.hashpw(b"no such user", bcrypt.gensalt(10))


def load_web_config(path: str | Path) -> WebConfig:
    path = Path(path)
    from exporter.config import MAX_FILE_BYTES, ConfigError, load_yaml

    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        # The configuration file's strict reader: no aliases, bounded depth and size, no duplicate keys.
        document = load_yaml(data.decode("utf-8"), str(path))[0] or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{path}: not UTF-8 text") from None
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    if not isinstance(document, dict):
        raise WebConfigError(f"{path}: must be a mapping")
    unknown = set(document) - {"tls_server_config", "http_server_config", "basic_auth_users"}
    if unknown:
        raise WebConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}")
    base = path.parent
    config = WebConfig()

    users = document.get("basic_auth_users") or {}
    if not isinstance(users, dict) or not all(isinstance(u, str) and isinstance(h, str) for u, h in users.items()):
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash")
        # Python's bcrypt reads the $2y$ prefix htpasswd writes as $2b$: the same algorithm.
        config.users[user] = ("$2b$" + hashed[4:] if hashed.startswith("$2y$") else hashed).encode()

    http_config = document.get("http_server_config") or {}
    if not isinstance(http_config, dict) or set(http_config) - {"headers", "http2"}:
        raise WebConfigError(f"{path}: http_server_config takes headers (and http2, which this server ignores)")
    headers = http_config.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"{path}: http_server_config.headers must be a mapping")
    config.headers = {str(k): str(v) for k, v in headers.items()}

    tls = document.get("tls_server_config")
    if tls:
        config.ssl_context = _ssl_context(tls, base, path)
    return config


def _ssl_context(tls: dict, base: Path, path: Path) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise WebConfigError(f"{path}: tls_server_config must be a mapping")
    unknown = set(tls) - set(TLS_KEYS)
    if unknown:
        raise WebConfigError(f"{path}: tls_server_config: unknown key {sorted(unknown)[0]!r}")
    if not tls.get("cert_file") or not tls.get("key_file"):
        raise WebConfigError(f"{path}: tls_server_config needs cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(base / tls["cert_file"], base / tls["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"{path}: cannot load cert_file/key_file: {exc}") from None
    for key, attribute in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise WebConfigError(f"{path}: tls_server_config.{key} must be one of {', '.join(TLS_VERSIONS)}")
            setattr(context, attribute, TLS_VERSIONS[tls[key]])
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in CLIENT_AUTH:
        raise WebConfigError(f"{path}: tls_server_config.client_auth_type must be one of {', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth_type]
    if tls.get("client_ca_file"):
        try:
            context.load_verify_locations(base / tls["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{path}: cannot load client_ca_file: {exc}") from None
    elif context.verify_mode != ssl.CERT_NONE:
        raise WebConfigError(f"{path}: client_auth_type {auth_type} needs client_ca_file")
    for ignored in ("cipher_suites", "prefer_server_cipher_suites", "curve_preferences"):
        if ignored in tls:
            log.warning("web config: tls_server_config.%s is not supported here and is ignored", ignored)
    return context
