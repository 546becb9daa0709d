"""The prediction cache (aiocache): models' answers by (model, version, input), and recent
queries by id so that feedback joins the answers already given instead of re-running models.

In memory by default, bounded in entries and with a TTL; `redis://...` shares it
between frontends (every entry has the TTL; give that Redis a maxmemory with the
volatile-ttl policy, as deploy/ does, so that only cache entries are evicted). In
memory, an entry carries its expiry and a read past it is a miss: aiocache's own TTL
keeps a timer per entry, with a copy of the writer's context, and 100,000 of them
(the default bound, 2.5 minutes of queries at 700 q/s) grew the frontend by 1.1 MB a
second and its garbage collections to 160 ms pauses.
Values are serialized protobuf messages in both backends. Identical queries in
flight at once are coalesced: the first one asks the model and the others wait
for its answer (one still in time when that fails asks on its own). Errors are
not cached.

A model that is not a pure function of its input (sampling, time) should run
with the cache off (`--cache none`); recent queries are then kept in memory, so
feedback by query id still works. Reads on the query path give up after 10 ms
(a miss) and writes happen off it: a slow or absent cache never delays an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiocache import RedisCache, SimpleMemoryCache
from aiocache.base import BaseCache
from aiocache.plugins import BasePlugin
from aiocache.serializers import BaseSerializer

from services.common import clock, named_tensors, tracing
from services.common.errors import ClipperError
from services.common.named_tensors import Value
from services.common.redis_url import CACHE_SCHEMES, connection_kwargs, redact_url
from services.frontend import metrics
from services.generated.clipper.v1 import clipper_pb2 as pb

logger = logging.getLogger(__name__)

Fetch = Callable[[], Awaitable[tuple[str, Value]]]
# Longest a cache read may take on the query path (a miss after that), and a write.
READ_TIMEOUT_S = 0.01
WRITE_TIMEOUT_S = 1.0
WARN_EVERY_S = 10


class BytesSerializer(BaseSerializer):  # type: ignore[misc]
    """Stores bytes as they are (no JSON, no pickle), in Redis."""

    DEFAULT_ENCODING = None

    def dumps(self, value: bytes) -> bytes:
        return value

    def loads(self, value: bytes | None) -> bytes | None:
        return value


_EXPIRY = struct.Struct("<d")


class ExpiringBytes(BytesSerializer):
    """Stores bytes behind their expiry (`ttl_s` from the write, clock.now() time), and
    reads an expired value as none: a TTL with no timer per entry, in memory."""

    def __init__(self, ttl_s: float) -> None:
        super().__init__()
        self.ttl_s = ttl_s

    def dumps(self, value: bytes) -> bytes:
        return _EXPIRY.pack(clock.now() + self.ttl_s) + value

    def loads(self, value: bytes | None) -> bytes | None:
        if value is None or _EXPIRY.unpack_from(value)[0] < clock.now():
            return None
        return value[_EXPIRY.size:]


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


def input_digest(value: Value) -> str:
    """Hash of an input tensor's dtype, shape and contents (no re-encoding); of named
    tensors, of their names and each one's hash."""
    if not isinstance(value, pb.Tensor):
        return named_tensors.digest_named(value, input_digest)
    h = hashlib.blake2b(digest_size=16)
    h.update(value.dtype.encode())
    h.update(repr(list(value.shape)).encode())
    h.update(value.raw)
    for item in value.bytes_list:
        h.update(len(item).to_bytes(8, "little"))
        h.update(item)
    return h.hexdigest()


class PredictionCache:
    """Answers by (model, version, input), and recent queries by id for feedback.

    `answers` is None when answers are not cached (`--cache none`); recent queries
    are always kept (in memory then), so feedback by query id always works.
    """

    def __init__(self, answers: BaseCache | None, queries: BaseCache,
                 ttl_s: float | None) -> None:
        self.answers = answers
        self.queries = queries
        self.ttl_s = ttl_s  # the TTL the store applies (None: its serializer does)
        self.hits = 0
        self.coalesced = 0
        self._inflight: dict[str, asyncio.Future[tuple[str, Value]]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._warned_at = -math.inf

    @classmethod
    def open(cls, url: str, max_entries: int, ttl_s: float) -> PredictionCache:
        """`memory` (bounded to max_entries), `none`, or a redis:// URL."""
        if url in ("memory", "none"):
            memory = SimpleMemoryCache(
                serializer=ExpiringBytes(ttl_s), plugins=[EntryBound(max_entries)],
                namespace="clipper", timeout=None,  # bounded here (READ_/WRITE_TIMEOUT_S)
            )
            return cls(memory if url == "memory" else None, memory, None)
        if url.startswith(CACHE_SCHEMES):
            kwargs = connection_kwargs(url)  # user, password and TLS as the URL says
            redis = RedisCache(
                endpoint=kwargs.pop("host", "127.0.0.1"), port=kwargs.pop("port", 6379),
                db=kwargs.pop("db", 0), password=kwargs.pop("password", None),
                connection_pool_kwargs=kwargs,
                serializer=BytesSerializer(), namespace="clipper",
                create_connection_timeout=1.0, timeout=None,  # bounded here, as above
            )
            return cls(redis, redis, ttl_s)
        raise ValueError(f"cache {redact_url(url)!r}: expected memory, none or "
                         "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB")

    async def answer(self, model: str, version: str, value: Value, deadline: float,
                     fetch: Fetch) -> tuple[str, Value]:
        """The cached answer of model:version for this input, else `fetch()`.

        Identical queries in flight share one fetch (bounded by the deadline of the
        query that started it); one that joined and is still in time when that
        fetch fails asks on its own.
        """
        if self.answers is None or not version:
            return await fetch()
        key = f"answer:{model}:{version}:{input_digest(value)}"
        looked_up = clock.now() if tracing.enabled else 0.0
        cached = await self._get(self.answers, key, deadline)
        if tracing.enabled and tracing.active():
            tracing.span_after("clipper.cache.lookup", None, looked_up, clock.now(),
                               {"clipper.cache.hit": cached is not None})
        if cached is not None:
            self.hits += 1
            metrics.cache_hits.add(1, {"model": model})
            return f"{model}:{version}", named_tensors.from_bytes(cached)
        inflight = self._inflight.get(key)
        if inflight is None:
            inflight = asyncio.ensure_future(self._fetch_and_keep(key, fetch))
            self._inflight[key] = inflight
            inflight.add_done_callback(lambda f: self._forget(key, f))
            return await asyncio.shield(inflight)
        self.coalesced += 1
        metrics.cache_coalesced.add(1, {"model": model})
        try:
            return await asyncio.shield(inflight)
        except ClipperError:
            if clock.now() >= deadline:
                raise
            return await fetch()

    def remember_query(self, query_id: str, record: pb.RecentQuery) -> None:
        """Keep the query's answers for feedback, in the background (off the reply path)."""
        task = asyncio.create_task(self._set(self.queries, f"query:{query_id}",
                                             record.SerializeToString()))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def writes_done(self) -> None:
        """Wait until the writes started in the background so far have ended."""
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def recall_query(self, query_id: str) -> pb.RecentQuery | None:
        # Feedback is not latency-bound: give the read a write's time (a new connection,
        # a TLS handshake to rediss:// say, takes longer than a query's cache read may).
        deadline = clock.now() + WRITE_TIMEOUT_S
        raw = await self._get(self.queries, f"query:{query_id}", deadline, WRITE_TIMEOUT_S)
        if raw is None:
            return None
        record = pb.RecentQuery()
        record.ParseFromString(raw)
        return record

    async def aclose(self) -> None:
        pending: list[asyncio.Future[Any]] = [*self._inflight.values(), *self._writes]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for cache in {id(c): c for c in (self.answers, self.queries) if c is not None}.values():
            await cache.close()

    async def _fetch_and_keep(self, key: str, fetch: Fetch) -> tuple[str, Value]:
        served_by, output = await fetch()
        assert self.answers is not None
        await self._set(self.answers, key, named_tensors.to_bytes(output))
        return served_by, output

    def _forget(self, key: str, future: asyncio.Future[tuple[str, Value]]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: nobody may be waiting any more

    async def _get(self, cache: BaseCache, key: str, deadline: float,
                   timeout_s: float = READ_TIMEOUT_S) -> bytes | None:
        """A read bounded by `timeout_s` and the deadline; a slow or absent cache is a
        miss, never a failed or late query."""
        try:
            async with asyncio.timeout_at(min(deadline, clock.now() + timeout_s)):
                value: bytes | None = await cache.get(key)
                return value
        except Exception as exc:
            self._warn(f"prediction cache read failed: {exc!r}")
            return None

    async def _set(self, cache: BaseCache, key: str, value: bytes) -> None:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await cache.set(key, value, ttl=self.ttl_s)
        except Exception as exc:
            self._warn(f"prediction cache write failed: {exc!r}")

    def _warn(self, message: str) -> None:
        """Log a cache failure at most every WARN_EVERY_S (it may fail on every query)."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            logger.warning("%s (further cache failures are not logged for %d s)",
                           message, WARN_EVERY_S)
