"""Redis URLs as every store and cache takes them, and their safe form for logs.

Accepted: `redis://HOST:PORT/DB`, with a password (`redis://:PASSWORD@HOST...`) or
an ACL user (`redis://USER:PASSWORD@HOST...`), `rediss://` for TLS (a CA with
`?ssl_ca_certs=/path/ca.pem`), and `unix://` sockets for the state stores. The
password is percent-encoded in the URL when it has reserved characters. A URL is
never logged or put in an error message with its password: use `redact_url`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.connection import parse_url

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# The prediction cache (aiocache) connects by host and port: no unix sockets.
CACHE_SCHEMES = ("redis://", "rediss://")


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:  # unparseable: say nothing of what it holds
        return "<unparseable URL>"


def connection_kwargs(url: str) -> dict[str, Any]:
    """redis-py's connection settings for `url` (host, port, db, username, password,
    TLS connection class and ssl_* options); ValueError when it is not a Redis URL."""
    return dict(parse_url(url))
