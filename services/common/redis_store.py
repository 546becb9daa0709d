"""The shared state store on Redis: one JSON document per key, atomic updates.

`update` is optimistic: WATCH the key, read, compute, then MULTI/EXEC the write;
if another client wrote the key in between, EXEC fails and the update is
retried with the fresh value, so concurrent writers from any number of
processes never lose one another's changes. `scan` walks keys with SCAN (never
KEYS) and reads them with one MGET per batch.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from services.common.kv_store import Updater, Value

MAX_UPDATE_ATTEMPTS = 100


class RedisStore:
    def __init__(self, url: str, namespace: str = "clipper:") -> None:
        self.url = url
        self.namespace = namespace
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10
        )

    def _key(self, key: str) -> str:
        return self.namespace + key

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self.client.get(self._key(key))
        return _load(raw)

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.client.set(self._key(key), json.dumps(value, sort_keys=True))

    async def update(self, key: str, fn: Updater) -> Value:
        full = self._key(key)
        async with self.client.pipeline(transaction=True) as pipe:
            for attempt in range(MAX_UPDATE_ATTEMPTS):
                try:
                    await pipe.watch(full)
                    new = fn(_load(await pipe.get(full)))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(full, json.dumps(new, sort_keys=True))
                    await pipe.execute()
                    return new
                except WatchError:
                    # Another writer changed the key: back off a little (jittered, so
                    # that contenders spread out), then read it again.
                    await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))
        raise RuntimeError(f"update of {key!r} kept conflicting; gave up after "
                           f"{MAX_UPDATE_ATTEMPTS} attempts")

    async def delete(self, key: str) -> bool:
        return bool(await self.client.delete(self._key(key)))

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        keys: list[bytes] = []
        pattern = _glob_escape(self._key(prefix)) + "*"
        async for key in self.client.scan_iter(match=pattern, count=500):
            keys.append(key)
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            for key, raw in zip(batch, await self.client.mget(batch), strict=True):
                value = _load(raw)
                if value is not None:
                    found[key.decode()[len(self.namespace):]] = value
        return found

    async def ping(self) -> bool:
        return bool(await self.client.ping())  # type: ignore[misc]

    async def aclose(self) -> None:
        await self.client.aclose()


def _load(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
