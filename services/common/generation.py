"""Tells a process that its state store came back empty, so that it rewrites what it knows.

A store can lose everything and come back (a Redis restarted without its volume).
Read naively, an empty store looks like "nobody has anything": a process that
reloads from it would drop every application it serves. To tell "lost" from
"empty", each kind of state keeps a generation marker in the store: a random id
written the first time a process finds none. A process remembers the id it
last saw; when the marker is missing or differs (another process found it
missing first and wrote a new one), the store was lost since, and the process
rewrites its memory into the store (`restore`) before trusting it again.

A store can also come back from an older copy (Redis with `appendfsync
everysec` loses its last second of writes): the marker then counts the writes
that must not be lost (`count_write`, after each), and a count lower than one
this process has seen means the store rolled back, which is repaired the same way.

`ensure` checks (one GET when nothing was lost); `start` also checks on an
interval, so that a loss is repaired even when nothing else touches the store.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from services.common.errors import Unavailable
from services.common.kv_store import KeyValueStore, Value
from services.common.tasks import every

logger = logging.getLogger(__name__)

GENERATION_PREFIX = "generation/"
CHECK_INTERVAL_S = 1.0


class GenerationGuard:
    """The generation marker of one kind of state (`name`) in `store`, and its repair."""

    def __init__(self, store: KeyValueStore, name: str,
                 restore: Callable[[], Awaitable[None]],
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.store = store
        self.key = GENERATION_PREFIX + name
        self.restore = restore
        self.check_interval_s = check_interval_s
        self.generation: str | None = None  # the id last seen; None before the first check
        self.writes = 0  # the highest write count seen in the marker of this generation
        self.restores = 0  # how many times the store was found lost and rewritten
        self._lock = asyncio.Lock()
        self._task = every(f"generation check of {self.key}", check_interval_s, self._check)

    async def ensure(self) -> bool:
        """Check the marker; if the store was lost since the last check, rewrite it from
        memory first. True when it was. Raises Unavailable when the store is away (then
        the next call checks again)."""
        if await self._unchanged():  # the common case, without waiting on a restore
            return False
        async with self._lock:
            if await self._unchanged():  # restored by the caller this one waited for
                return False
            marker = await self.store.update(self.key, _keep_or_new)
            lost = self.generation is not None
            if lost:
                logger.warning("state store lost or rolled back its %s state (generation %s, "
                               "was %s; %s writes, seen %d): rewriting it from memory", self.key,
                               marker["id"], self.generation, marker.get("writes", 0), self.writes)
                await self.restore()
                self.restores += 1
            # Only once restored: if the rewrite fails midway, the next check retries it.
            self.generation = str(marker["id"])
            self.writes = int(marker.get("writes", 0))
            return lost

    async def count_write(self) -> None:
        """Count a write that must not be lost (made after `ensure`), so that a rollback
        that loses it is noticed. Best effort: the write itself has succeeded."""
        try:
            marker = await self.store.update(self.key, _counted)
        except Unavailable as exc:
            logger.warning("could not count a write in %s: %s", self.key, exc)
            return
        if marker.get("id") == self.generation:
            self.writes = max(self.writes, int(marker["writes"]))

    async def _unchanged(self) -> bool:
        """Same generation, and not rolled back to before a write seen counted."""
        marker = await self.store.get(self.key)
        if marker is None or marker.get("id") != self.generation:
            return False
        writes = int(marker.get("writes", 0))
        if writes < self.writes:
            return False
        self.writes = writes
        return True

    async def start(self) -> None:
        """The first check (retried by the caller while the store is away) is up to the
        owner; this starts the periodic one."""
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    async def _check(self) -> None:
        try:
            await self.ensure()
        except Unavailable as exc:
            logger.debug("generation check of %s skipped: %s", self.key, exc)


def _keep_or_new(current: Value | None) -> Value:
    """The marker as it is, or a new generation when it is missing (first start, or lost)."""
    return current if current is not None else {"id": secrets.token_hex(8)}


def _counted(current: Value | None) -> Value:
    """One more write counted (in a new generation if the marker has gone: the next
    check then finds the store lost)."""
    marker = _keep_or_new(current)
    return {**marker, "writes": int(marker.get("writes", 0)) + 1}
