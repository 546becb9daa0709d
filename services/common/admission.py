"""Admission before work: a service sheds a query it cannot serve in time, at once, instead
of queueing it behind others that will all be late.

Two signals decide, both cheap to read:

- the backlog: how late the event loop runs its callbacks (`LoopLag`). Every
  message and every query waits behind that much work, so when it passes
  `max_backlog_s`, or half the time a query has left, the query is refused;
- the work in flight: at most `max_inflight` queries at once in this process, and
  `max_inflight_per_key` per key (the application).

A refused query gets Overloaded (RESOURCE_EXHAUSTED) with `retry_after_ms`, which
the servicers send as the `grpc-retry-pushback-ms` trailer: when to try again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.common.errors import Overloaded

# Longest a refused client is asked to wait before trying again.
MAX_PUSHBACK_MS = 1000
MIN_PUSHBACK_MS = 10


class LoopLag:
    """How late this event loop runs a timer: the wait every callback has ahead of it.

    Sampled every `period_s`; `lag_s` follows a rise at once and decays by half each
    sample, so that one stall does not shed for long.
    """

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._sample(), name="loop-lag")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sample(self) -> None:
        while True:
            due = time.monotonic() + self.period_s
            await asyncio.sleep(self.period_s)
            late = max(time.monotonic() - due, 0.0)
            self.lag_s = max(late, self.lag_s / 2)


@dataclass(frozen=True)
class AdmissionLimits:
    max_inflight: int = 1024
    max_inflight_per_key: int = 512
    max_backlog_s: float = 0.05


class Admission:
    """Counts queries in flight per key and refuses those that cannot be served in time."""

    def __init__(self, limits: AdmissionLimits, lag: LoopLag | None = None) -> None:
        self.limits = limits
        self.lag = lag or LoopLag()
        self.inflight = 0
        self._per_key: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Count one query of `key` in flight while the block runs (after `check`)."""
        self.inflight += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        try:
            yield
        finally:
            self.inflight -= 1
            left = self._per_key[key] - 1
            if left:
                self._per_key[key] = left
            else:
                del self._per_key[key]

    def check(self, key: str, remaining_s: float) -> None:
        """Raise Overloaded, with a pushback, unless a query of `key` with `remaining_s`
        left can be taken now."""
        limits, backlog_s = self.limits, self.lag.lag_s
        if backlog_s > limits.max_backlog_s or backlog_s > remaining_s / 2:
            raise _shed(f"backlog of {backlog_s * 1000:.0f} ms: a query with "
                        f"{remaining_s * 1000:.0f} ms left would be late", backlog_s)
        if self.inflight >= limits.max_inflight:
            raise _shed(f"{self.inflight} queries in flight, the limit (--max-inflight)",
                        backlog_s)
        if self._per_key.get(key, 0) >= limits.max_inflight_per_key:
            raise _shed(f"{self._per_key[key]} queries of {key!r} in flight, the limit "
                        "(--max-inflight-per-app)", backlog_s)


def _shed(reason: str, backlog_s: float) -> Overloaded:
    """Overloaded, asking the client to come back once the backlog has cleared."""
    pushback_ms = int(min(max(2000 * backlog_s, MIN_PUSHBACK_MS), MAX_PUSHBACK_MS))
    return Overloaded(f"overloaded, retry in {pushback_ms} ms: {reason}",
                      retry_after_ms=pushback_ms)
