"""Admission before work: a service sheds a query it cannot serve in time, at once, instead
of queueing it behind others that will all be late.

Three signals decide, all cheap to read:

- the wait before the handler: how long a new call waits inside gRPC core before any
  handler runs, as the service's accept probe sees it (services/common/accept_probe.py;
  the frontend has one). Past capacity this is where queries queue, out of every
  handler's sight; while it is over half the time a query has left, queries
  are refused, which shortens the loop's turns, and the queue drains;
- the backlog: how late the event loop runs its callbacks (`LoopLag`). Every
  message and every query waits behind that much work, so when it passes half the
  time a query has left, the query is refused; and while it stays over `max_backlog_s`
  on average (one stall, a process starting beside us, does not count), every query is;
- the work in flight: at most `max_inflight` queries at once in this process, and
  per key (the application) at most its adaptive limit, never above
  `max_inflight_per_key`. The limit follows the outcomes of admitted queries, as
  TCP's window follows losses: one more for each window of queries that met their
  deadline (the backlog before the handler counted), and, when one missed it, a tenth
  less than what was in flight then (at most once per window). Past
  capacity, queries then wait in no queue long enough to be late: the excess is
  refused at once, and what is admitted is answered in time.

A refused query gets Overloaded (RESOURCE_EXHAUSTED) with `retry_after_ms`, which
the servicers send as the `grpc-retry-pushback-ms` trailer: when to try again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from services.common.accept_probe import AcceptProbe
from services.common.config import POSITIVE, flag
from services.common.errors import Overloaded
from services.common.tasks import BackgroundTask

# Longest a refused client is asked to wait before trying again.
MAX_PUSHBACK_MS = 1000
MIN_PUSHBACK_MS = 10
# New queries are refused while calls wait inside gRPC core longer than this share of
# the time the query has left: the queue that forms there only drains as fast as the
# loop takes calls, and refusing is the cheapest way to shorten the loop's turns.
# Half, not less: with a quarter, a busy but healthy mesh (the three-model digits at
# 500-1,600 q/s, same runs) refused queries it would have answered in time on every
# short spike of that wait, and kept less goodput past capacity.
ACCEPT_SHARE = 0.5


class LoopLag:
    """How late this event loop runs a timer: the wait every callback has ahead of it.

    Sampled every `period_s`; `lag_s` follows a rise at once and decays by half each
    sample, so that one stall does not shed for long; `mean_s` is its moving average
    (a fifth of each sample), which only a backlog that lasts moves.
    """

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.lag_s = 0.0
        self.mean_s = 0.0
        self._task = BackgroundTask("loop-lag", self._sample)

    async def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    async def _sample(self) -> None:
        while True:
            due = time.monotonic() + self.period_s
            await asyncio.sleep(self.period_s)
            late = max(time.monotonic() - due, 0.0)
            self.lag_s = max(late, self.lag_s / 2)
            self.mean_s += (late - self.mean_s) / 5


ADMISSION_MODES = ("adaptive", "fixed", "off")


@dataclass(frozen=True)
class AdmissionLimits:
    """The admission flags of a service (`section(AdmissionLimits)`)."""

    max_inflight: int = flag(
        1024, "queries in flight at once; past it a query is shed at once "
        "(RESOURCE_EXHAUSTED with grpc-retry-pushback-ms, or the flagged default)",
        check=POSITIVE)
    max_inflight_per_key: int = flag(512, "queries of one application in flight at once",
                                     name="max-inflight-per-app", check=POSITIVE)
    max_backlog_s: float = flag(
        50.0, "shed queries while the service's own backlog (event loop lag) is longer "
        "than this on average (and any query with less than twice the backlog left)",
        name="max-backlog-ms", check=POSITIVE, scale=1 / 1000)
    min_inflight_per_key: int = 2
    # adaptive: the per-key limit follows deadline outcomes; fixed: it stays at the
    # maximum; off: nothing is refused here (a baseline for benchmarks).
    mode: str = flag("adaptive", "adaptive: each application's in-flight limit follows "
                     "whether its queries meet their deadlines; fixed: --max-inflight-per-app "
                     "only; off: shed nothing (a baseline)", name="admission",
                     choices=ADMISSION_MODES)


@dataclass
class _KeyState:
    limit: float
    inflight: int = 0
    # Completions left before the limit may shrink again (one cut per window).
    cooldown: int = 0


class Admission:
    """Counts queries in flight per key and refuses those that cannot be served in time.

    `probe`, when the service has one, says how long a new call waits inside gRPC core
    before its handler runs (services/common/accept_probe.py): that wait is part of the
    backlog, and a query that went through it has that much less time left."""

    def __init__(self, limits: AdmissionLimits, lag: LoopLag | None = None) -> None:
        self.limits = limits
        self.lag = lag or LoopLag()
        self.probe: AcceptProbe | None = None
        self.inflight = 0
        self.checked = 0  # queries checked so far (the probe runs while this moves)
        self._keys: dict[str, _KeyState] = {}

    @property
    def accept_wait_s(self) -> float:
        """How long a call waits inside gRPC core before its handler runs, as now seen."""
        return self.probe.wait_s if self.probe is not None else 0.0

    def attach_probe(self, address: str) -> AcceptProbe:
        """Probe the server at `address` (its `probe_address`) while queries come."""
        seen = [self.checked]

        def in_use() -> bool:
            moved, seen[0] = self.checked != seen[0], self.checked
            return moved or self.inflight > 0

        self.probe = AcceptProbe(address, in_use)
        return self.probe

    def limit(self, key: str) -> float:
        """The adaptive limit of queries of `key` in flight."""
        state = self._keys.get(key)
        return state.limit if state else float(self.limits.max_inflight_per_key)

    def enter(self, key: str) -> None:
        """Count one query of `key` in flight (after `check`), until `leave`."""
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState(limit=float(self.limits.max_inflight_per_key))
        self.inflight += 1
        state.inflight += 1

    def leave(self, key: str) -> None:
        self.inflight -= 1
        self._keys[key].inflight -= 1

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Count one query of `key` in flight while the block runs (after `check`)."""
        self.enter(key)
        try:
            yield
        finally:
            self.leave(key)

    def observe(self, key: str, in_time: bool) -> None:
        """An admitted query of `key` was answered in time, or not: adapt its limit."""
        state = self._keys.get(key)
        if state is None or self.limits.mode != "adaptive":
            return
        limits = self.limits
        state.cooldown = max(state.cooldown - 1, 0)
        if in_time:
            state.limit = min(state.limit + 1 / state.limit, float(limits.max_inflight_per_key))
        elif state.cooldown == 0:  # cut from what is really in flight, once per window
            state.limit = max(min(state.limit, state.inflight + 1.0) * 0.9,
                              float(limits.min_inflight_per_key))
            state.cooldown = state.inflight + 1

    def check(self, key: str, remaining_s: float) -> None:
        """Raise Overloaded, with a pushback, unless a query of `key` with `remaining_s`
        left can be taken now."""
        self.checked += 1
        limits = self.limits
        if limits.mode == "off":
            return
        backlog_s, waited_s = self.lag.lag_s, self.accept_wait_s
        if waited_s > remaining_s * ACCEPT_SHARE:
            raise _shed(f"calls wait {waited_s * 1000:.0f} ms inside gRPC core before they "
                        f"are handled, over {ACCEPT_SHARE:.0%} of the "
                        f"{remaining_s * 1000:.0f} ms a query has left", waited_s)
        if backlog_s > remaining_s / 2:
            raise _shed(f"backlog of {backlog_s * 1000:.0f} ms: a query with "
                        f"{remaining_s * 1000:.0f} ms left would be late", backlog_s)
        if self.lag.mean_s > limits.max_backlog_s:
            raise _shed(f"backlog of {self.lag.mean_s * 1000:.0f} ms on average, over "
                        f"--max-backlog-ms={limits.max_backlog_s * 1000:g}", backlog_s)
        if self.inflight >= limits.max_inflight:
            raise _shed(f"{self.inflight} queries in flight, the limit (--max-inflight)",
                        backlog_s)
        state = self._keys.get(key)
        if state is not None and state.inflight >= min(state.limit,
                                                       limits.max_inflight_per_key):
            raise _shed(f"{state.inflight} queries of {key!r} in flight, its limit now "
                        f"(adaptive, at most --max-inflight-per-app={limits.max_inflight_per_key})",
                        backlog_s)


def _shed(reason: str, backlog_s: float) -> Overloaded:
    """Overloaded, asking the client to come back once the backlog has cleared."""
    pushback_ms = int(min(max(2000 * backlog_s, MIN_PUSHBACK_MS), MAX_PUSHBACK_MS))
    return Overloaded(f"overloaded, retry in {pushback_ms} ms: {reason}",
                      retry_after_ms=pushback_ms)


def export_metrics(admission: Admission, meter: Meter) -> None:
    """Gauges of what admission decides on, read when scraped: the backlog (the loop's
    lag, and the wait inside gRPC core its probe sees), and per key its limit and load."""
    def backlog(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(admission.lag.mean_s * 1000, {"of": "loop_lag"}),
                Observation(admission.accept_wait_s * 1000, {"of": "accept_wait"})]

    def per_key(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {"application": key, "of": of})
                for key, state in list(admission._keys.items())
                for of, value in (("limit", state.limit), ("inflight", state.inflight))]

    meter.create_observable_gauge(
        "clipper.admission.backlog", unit="ms", callbacks=[backlog],
        description="The backlog admission sheds by: the event loop's lag (average) and "
        "how long a new call waits inside gRPC core before its handler runs")
    meter.create_observable_gauge(
        "clipper.admission.queries", callbacks=[per_key],
        description="Per application: its adaptive in-flight limit and the queries in flight")
