"""TLS contexts for the HTTP sources (exporter/fetch.py: node, llm).

A TLS context per connection would mean loading the whole CA bundle each time (some 20 ms
of CPU and about a megabyte of memory), so they are shared. A client for an http://
URL never uses TLS, so it gets one shared context that trusts nothing (it would refuse
any certificate, should it ever be used); https:// clients share one verifying context,
built the first time one is needed.
"""

from __future__ import annotations

import functools
import ssl


@functools.lru_cache(maxsize=1)
def _verifying_context() -> ssl.SSLContext:
    import httpx

    # What httpx.Client(trust_env=False) would build for itself: the certifi CA bundle.
    return httpx.create_ssl_context(trust_env=False)


@functools.lru_cache(maxsize=1)
def _unused_context() -> ssl.SSLContext:
    # PROTOCOL_TLS_CLIENT verifies certificates and host names by default; with no CA loaded it trusts none.
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def tls_verify(url: str) -> ssl.SSLContext:
    """The TLS context of the connections to `url`."""
    return _verifying_context() if url[:6].lower() == "https:" else _unused_context()
