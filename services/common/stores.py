"""Open the state store a URL names: Redis (shared by several processes) or an embedded
file (one process)."""

from __future__ import annotations

from services.common.kv_store import FileStore, KeyValueStore
from services.common.redis_store import RedisStore


def open_store(url: str, max_volatile_keys: int = 100_000) -> KeyValueStore:
    """`redis://...` opens the shared Redis store; anything else is an embedded file path
    (keeping at most `max_volatile_keys` keys written with a TTL)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    return FileStore(url, max_volatile_keys)
