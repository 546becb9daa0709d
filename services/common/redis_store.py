"""The shared state store on Redis: one JSON document per key, atomic updates, and
change notifications so that every frontend sees a change within moments.

`update` is optimistic: WATCH the key, read, compute, then MULTI/EXEC the write;
if another client wrote the key in between, EXEC fails and the update is
retried with the fresh value, so concurrent writers from any number of
processes never lose one another's changes. `scan` walks keys with SCAN (never
KEYS) and reads them with one MGET per batch. Every write publishes the key on
one pub/sub channel; `changes` follows it, and says "reload everything" (None)
whenever it (re)subscribes, since notifications sent while it was away are lost.

A Redis that cannot be reached raises `Unavailable` with the reason. The URL may
carry a user, a password and `rediss://` (services/common/redis_url.py); messages
show it without the password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import Unavailable
from services.common.kv_store import Change, Feed, Updater, Value
from services.common.redis_url import redact_url

logger = logging.getLogger(__name__)

MAX_UPDATE_ATTEMPTS = 100
RECONNECT_BACKOFF_S = (0.1, 1.0)
T = TypeVar("T")


class RedisStore:
    def __init__(self, url: str, namespace: str = "clipper:") -> None:
        self.url = redact_url(url)  # for messages: never the password
        self.namespace = namespace
        self.channel = namespace + "changes"
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10
        )

    def _key(self, key: str) -> str:
        return self.namespace + key

    async def get(self, key: str) -> dict[str, Any] | None:
        return _load(await self._call(lambda: self.client.get(self._key(key))))

    async def put(self, key: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, sort_keys=True)
        await self._call(lambda: self._write(key, lambda pipe: pipe.set(self._key(key), text)))

    async def update(self, key: str, fn: Updater, ttl_s: float | None = None) -> Value:
        return await self._call(lambda: self._update(key, fn, ttl_s))

    async def delete(self, key: str) -> bool:
        deleted = await self._call(
            lambda: self._write(key, lambda pipe: pipe.delete(self._key(key)))
        )
        return bool(deleted[0])

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        return await self._call(lambda: self._scan(prefix))

    async def ping(self) -> bool:
        return bool(await self._call(self.client.ping))  # type: ignore[arg-type]

    async def changes(self) -> AsyncIterator[Change]:
        """Keys written by anyone, as they are written; Feed.RESYNC once subscribed:
        reload everything; Feed.LOST when the connection broke."""
        delay = RECONNECT_BACKOFF_S[0]
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                delay = RECONNECT_BACKOFF_S[0]
                yield Feed.RESYNC
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        yield message["data"].decode()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("lost the Redis change feed (%r); retrying in %.1f s", exc, delay)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            yield Feed.LOST
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_BACKOFF_S[1])

    async def aclose(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------ internals

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(f"state store {self.url} unreachable: {exc}") from exc
        except ResponseError as exc:  # out of memory, read-only replica, failed save...
            raise Unavailable(f"state store {self.url} refused the write: {exc}") from exc

    async def _write(self, key: str, command: Callable[[Any], Any]) -> list[Any]:
        """One write and its notification, in one MULTI/EXEC."""
        async with self.client.pipeline(transaction=True) as pipe:
            command(pipe)
            pipe.publish(self.channel, key)
            result: list[Any] = await pipe.execute()
            return result

    async def _update(self, key: str, fn: Updater, ttl_s: float | None) -> Value:
        full = self._key(key)
        expiry_ms = None if ttl_s is None else max(int(ttl_s * 1000), 1)
        async with self.client.pipeline(transaction=True) as pipe:
            for attempt in range(MAX_UPDATE_ATTEMPTS):
                try:
                    await pipe.watch(full)
                    new = fn(_load(await pipe.get(full)))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(full, json.dumps(new, sort_keys=True), px=expiry_ms)
                    pipe.publish(self.channel, key)
                    await pipe.execute()
                    return new
                except WatchError:
                    # Another writer changed the key: back off a little (jittered, so
                    # that contenders spread out), then read it again.
                    await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))
        raise Unavailable(f"update of {key!r} kept conflicting; gave up after "
                          f"{MAX_UPDATE_ATTEMPTS} attempts")

    async def _scan(self, prefix: str) -> dict[str, dict[str, Any]]:
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


def _load(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
