"""Key-value state behind one small interface; the embedded file store is the default.

Values are JSON-able dicts. Callers use `KeyValueStore` only; `open_store`
picks the backend from a URL: a file path (embedded) or `redis://host:port/db`
(shared by several frontends or selection replicas, see `redis_store.py`).
`update` is an atomic read-modify-write: concurrent updates of one key from any
number of processes lose none. `changes` follows writes made by others.

A key updated with a `ttl_s` is volatile: it expires that long after its last
update (Redis: a key TTL; the file store: its own expiry table), and the file
store keeps at most `max_volatile_keys` of them, dropping the least recently
updated first, as Redis's `volatile-lru` does under `maxmemory`. Keys written
without a TTL are never expired nor evicted.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from services.common.errors import Unavailable

logger = logging.getLogger(__name__)

Value = dict[str, Any]


class Feed(enum.Enum):
    """What `changes` yields besides keys."""

    RESYNC = "resync"  # (re)subscribed: changes made meanwhile are unknown, reload all
    LOST = "lost"  # the feed broke: others' changes go unseen until RESYNC


Change = str | Feed
# Gets the current value (None when absent) and returns the new one; it may run
# more than once (Redis retries it when another writer got there first).
Updater = Callable[[Value | None], Value]


class KeyValueStore(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...
    async def put(self, key: str, value: dict[str, Any]) -> None: ...
    async def update(self, key: str, fn: Updater, ttl_s: float | None = None) -> Value: ...
    async def delete(self, key: str) -> bool: ...
    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]: ...
    def changes(self) -> AsyncIterator[Change]: ...
    async def ping(self) -> bool: ...
    async def aclose(self) -> None: ...


class FileStore:
    """All keys in memory, written through to one JSON file atomically on every change.

    A write goes to a temporary file in the same folder, is fsynced, then renamed
    over the old file, so a crash leaves either the old or the new state, never half.
    Volatile keys' expiry times (wall clock, so they survive a restart) are kept in
    the same file under `EXPIRY_KEY`.
    """

    EXPIRY_KEY = "~expires"

    def __init__(self, path: str | Path, max_volatile_keys: int = 100_000) -> None:
        self.path = Path(path)
        self.max_volatile_keys = max_volatile_keys
        self._data: dict[str, dict[str, Any]] = {}
        # Volatile key -> expiry (time.time()), least recently updated first.
        self._expires: OrderedDict[str, float] = OrderedDict()
        self._lock = asyncio.Lock()
        if self.path.exists():
            try:
                self._data = json.loads(self.path.read_text() or "{}")
            except json.JSONDecodeError as exc:
                raise ValueError(f"state file {self.path} is not valid JSON: {exc}") from exc
        expires = self._data.pop(self.EXPIRY_KEY, {})
        self._expires = OrderedDict(sorted(expires.items(), key=lambda item: item[1]))

    @property
    def volatile_keys(self) -> int:
        return len(self._expires)

    async def get(self, key: str) -> dict[str, Any] | None:
        value = self._data.get(key)
        if value is None or self._expired(key):
            return None
        return _copy(value)

    async def put(self, key: str, value: dict[str, Any]) -> None:
        async with self._lock:
            self._data[key] = _copy(value)
            self._expires.pop(key, None)
            await self._flush()

    async def update(self, key: str, fn: Updater, ttl_s: float | None = None) -> Value:
        async with self._lock:
            current = None if self._expired(key) else self._data.get(key)
            new = _copy(fn(_copy(current) if current is not None else None))
            self._data[key] = new
            if ttl_s is None:
                self._expires.pop(key, None)
            else:
                self._expires[key] = time.time() + ttl_s
                self._expires.move_to_end(key)
                self._evict()
            await self._flush()
            return _copy(new)

    def _expired(self, key: str) -> bool:
        at = self._expires.get(key)
        return at is not None and at <= time.time()

    def _evict(self) -> None:
        """Drop expired volatile keys, and the least recently updated past the cap."""
        now = time.time()
        while self._expires:
            key, at = next(iter(self._expires.items()))
            if at > now and len(self._expires) <= self.max_volatile_keys:
                return
            del self._expires[key]
            self._data.pop(key, None)

    async def delete(self, key: str) -> bool:
        async with self._lock:
            self._expires.pop(key, None)
            existed = self._data.pop(key, None) is not None
            if existed:
                await self._flush()
            return existed

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {
            k: _copy(v) for k, v in self._data.items()
            if k.startswith(prefix) and not self._expired(k)
        }

    async def ping(self) -> bool:
        return True

    async def changes(self) -> AsyncIterator[Change]:
        """One process owns an embedded file, so nobody else changes it: never yields."""
        await asyncio.Event().wait()
        yield Feed.RESYNC  # pragma: no cover (unreachable; makes this an async generator)

    async def aclose(self) -> None:
        return None

    async def _flush(self) -> None:
        data = {**self._data, self.EXPIRY_KEY: dict(self._expires)} if self._expires else self._data
        text = json.dumps(data, sort_keys=True)
        await asyncio.to_thread(_atomic_write, self.path, text)


def _copy(value: Value) -> Value:
    """A deep copy through JSON: callers never share (or store) non-JSON values."""
    copied: Value = json.loads(json.dumps(value))
    return copied


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


async def retry_while_unavailable(op: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `op` until it no longer raises Unavailable, backing off (readiness waits on it)."""
    delay = 0.1
    while True:
        try:
            await op()
            return
        except Unavailable as exc:
            logger.warning("%s unreachable, retrying in %.1f s: %s", what, delay, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
