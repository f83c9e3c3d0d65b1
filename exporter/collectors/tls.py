"""The TLS context of the HTTP sources' https:// connections (exporter/fetch.py).

Building one means loading the whole CA bundle (some 20 ms of CPU and about a megabyte of
memory), so every https:// connection shares one verifying context, built the first time
one is needed. An http:// connection has none.
"""

from __future__ import annotations

import functools
import ssl


@functools.lru_cache(maxsize=1)
def _verifying_context() -> ssl.SSLContext:
    import httpx

    # What httpx.Client(trust_env=False) would build for itself: the certifi CA bundle.
    return httpx.create_ssl_context(trust_env=False)


def tls_verify(url: str) -> ssl.SSLContext | None:
    """The TLS context of the connections to `url`: the shared verifying one for https://, None otherwise."""
    return _verifying_context() if url[:6].lower() == "https:" else None
