"""The prediction cache (aiocache): models' answers by (model, version, input), and recent
queries by id so that feedback joins the answers already given instead of re-running models.

In memory by default, bounded in entries and with a TTL; `redis://...` shares it
between frontends (Redis bounds it with its own maxmemory policy; entries keep
the TTL). Values are serialized protobuf messages in both backends. Identical
queries in flight at once are coalesced: the first one asks the model, the
others wait for its answer (with their own deadlines). Errors are not cached.

A model that is not a pure function of its input (sampling, time) should run
with the cache off (`--cache none`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiocache import RedisCache, SimpleMemoryCache
from aiocache.base import BaseCache
from aiocache.plugins import BasePlugin
from aiocache.serializers import BaseSerializer

from services.frontend import metrics
from services.generated.clipper.v1 import clipper_pb2 as pb

logger = logging.getLogger(__name__)

Fetch = Callable[[], Awaitable[tuple[str, pb.Tensor]]]


class BytesSerializer(BaseSerializer):  # type: ignore[misc]
    """Stores bytes as they are (no JSON, no pickle), in memory and in Redis."""

    DEFAULT_ENCODING = None

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, value: bytes | None) -> bytes | None:
        return value


class EntryBound(BasePlugin):  # type: ignore[misc]
    """Keeps an in-memory cache to `max_entries`, evicting the oldest written key."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._order: OrderedDict[str, None] = OrderedDict()

    async def post_set(self, client: BaseCache, key: str, *args: Any, **kwargs: Any) -> None:
        self._order[key] = None
        self._order.move_to_end(key)
        while len(self._order) > self.max_entries:
            oldest, _ = self._order.popitem(last=False)
            await client.delete(oldest)


def input_digest(value: pb.Tensor) -> str:
    """Hash of an input tensor's dtype, shape and contents (no re-encoding)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(value.dtype.encode())
    h.update(repr(list(value.shape)).encode())
    h.update(value.raw)
    for item in value.bytes_list:
        h.update(len(item).to_bytes(8, "little"))
        h.update(item)
    return h.hexdigest()


class PredictionCache:
    def __init__(self, cache: BaseCache | None, ttl_s: float) -> None:
        self.cache = cache
        self.ttl_s = ttl_s
        self.hits = 0
        self.coalesced = 0
        self._inflight: dict[str, asyncio.Future[tuple[str, pb.Tensor]]] = {}

    @classmethod
    def open(cls, url: str, max_entries: int, ttl_s: float) -> PredictionCache:
        """`memory` (bounded to max_entries), `none`, or a redis:// URL."""
        if url == "none":
            return cls(None, ttl_s)
        if url == "memory":
            cache = SimpleMemoryCache(
                serializer=BytesSerializer(), plugins=[EntryBound(max_entries)],
                namespace="clipper",
            )
            return cls(cache, ttl_s)
        if url.startswith("redis://"):
            parts = urlsplit(url)
            cache = RedisCache(
                endpoint=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                db=int(parts.path.strip("/") or 0), password=parts.password,
                serializer=BytesSerializer(), namespace="clipper",
            )
            return cls(cache, ttl_s)
        raise ValueError(f"cache {url!r}: expected memory, none or redis://HOST:PORT/DB")

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    async def answer(self, model: str, version: str, value: pb.Tensor, fetch: Fetch
                     ) -> tuple[str, pb.Tensor]:
        """The cached answer of model:version for this input, else `fetch()` (coalesced)."""
        if self.cache is None or not version:
            return await fetch()
        key = f"answer:{model}:{version}:{input_digest(value)}"
        cached = await self._get(key)
        if cached is not None:
            self.hits += 1
            metrics.cache_hits.add(1, {"model": model})
            output = pb.Tensor()
            output.ParseFromString(cached)
            return f"{model}:{version}", output
        inflight = self._inflight.get(key)
        if inflight is None:
            inflight = asyncio.ensure_future(self._fetch_and_keep(key, fetch))
            self._inflight[key] = inflight
            inflight.add_done_callback(lambda f: self._forget(key, f))
        else:
            self.coalesced += 1
            metrics.cache_coalesced.add(1, {"model": model})
        return await asyncio.shield(inflight)

    async def remember_query(self, query_id: str, record: pb.RecentQuery) -> None:
        if self.cache is not None:
            await self._set(f"query:{query_id}", record.SerializeToString())

    async def recall_query(self, query_id: str) -> pb.RecentQuery | None:
        if self.cache is None:
            return None
        raw = await self._get(f"query:{query_id}")
        if raw is None:
            return None
        record = pb.RecentQuery()
        record.ParseFromString(raw)
        return record

    async def aclose(self) -> None:
        if self.cache is not None:
            await self.cache.close()

    async def _fetch_and_keep(self, key: str, fetch: Fetch) -> tuple[str, pb.Tensor]:
        served_by, output = await fetch()
        await self._set(key, output.SerializeToString())
        return served_by, output

    def _forget(self, key: str, future: asyncio.Future[tuple[str, pb.Tensor]]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: nobody may be waiting any more

    async def _get(self, key: str) -> bytes | None:
        assert self.cache is not None
        try:
            value: bytes | None = await self.cache.get(key)
            return value
        except Exception as exc:  # a cache that is down is a miss, never a failed query
            logger.warning("prediction cache read failed: %r", exc)
            return None

    async def _set(self, key: str, value: bytes) -> None:
        assert self.cache is not None
        try:
            await self.cache.set(key, value, ttl=self.ttl_s)
        except Exception as exc:
            logger.warning("prediction cache write failed: %r", exc)
