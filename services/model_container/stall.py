"""How much a model's batches on a worker thread stall the event loop.

A model that holds the GIL (a Python loop over trees, say) keeps the event loop
from reading, writing and planning while its batch runs: every time the loop
gives the GIL up (for any system call) it waits for the model to give it back.
A tick on the loop measures this as it serves: every `INTERVAL_S` it notes how
late it woke. Ticks are sorted by what ran meanwhile: a batch on a worker
thread (`during`), nothing (`outside`), or a batch run on the loop itself
(dropped: that stall is by design and bounded). The stall of the model is how
much later the loop wakes during batches than outside them (90th percentiles:
a model that holds the GIL makes the loop wait for whole stretches of it now and
then, while the loop's own work at the current load delays every tick a little),
which leaves out what the loop's own work costs. It ticks only while thread
batches come: a model run on the loop alone, or an idle one, costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

INTERVAL_S = 0.002
WINDOW = 400
# Ticks of each kind needed before the stall is known.
MIN_TICKS = 100
# The tick stops after this long without a thread batch (and starts with the next one).
IDLE_S = 1.0
QUANTILE = 0.9


@dataclass(frozen=True)
class Stall:
    """Loop lag (90th percentile) during thread batches and outside them (s)."""

    during_s: float
    outside_s: float
    ticks: int

    @property
    def excess_s(self) -> float:
        return max(0.0, self.during_s - self.outside_s)


class StallMeter:
    def __init__(self) -> None:
        self.running = 0  # batches on worker threads now
        self._batches = 0  # thread batches started so far
        self._inline = 0  # batches run on the loop so far
        self._during: deque[float] = deque(maxlen=WINDOW)
        self._outside: deque[float] = deque(maxlen=WINDOW)
        self._task: asyncio.Task[None] | None = None
        self._last_end = time.monotonic()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def thread_batch_started(self) -> None:
        """Count a batch handed to a worker thread; tick while such batches come."""
        self.running += 1
        self._batches += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._tick(), name="stall-meter")

    def thread_batch_ended(self) -> None:
        self.running -= 1
        self._last_end = time.monotonic()

    def inline_batch_ran(self) -> None:
        self._inline += 1

    def stall(self) -> Stall | None:
        """The stall so far, or None until enough ticks of each kind were seen."""
        if len(self._during) < MIN_TICKS or len(self._outside) < MIN_TICKS:
            return None
        during, outside = (float(np.quantile(np.array(lags), QUANTILE))
                           for lags in (self._during, self._outside))
        return Stall(during, outside, len(self._during) + len(self._outside))

    async def _tick(self) -> None:
        while self.running or time.monotonic() - self._last_end < IDLE_S:
            busy, batches, inline = self.running, self._batches, self._inline
            due = time.monotonic() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)
            lag = max(0.0, time.monotonic() - due)
            if self._inline != inline:
                continue
            if busy or self.running or self._batches != batches:
                self._during.append(lag)
            else:
                self._outside.append(lag)
