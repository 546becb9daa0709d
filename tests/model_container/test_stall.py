"""The stall meter ticks while thread batches come, sorts its ticks, and then stops."""

from __future__ import annotations

import asyncio
import time

from services.model_container.stall import IDLE_S, StallMeter


def _hold_the_gil(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_ticks_sort_into_during_and_outside_and_a_gil_holder_shows_as_a_stall() -> None:
    meter = StallMeter()
    assert meter._task is None  # nothing ticks before a thread batch
    for _ in range(3):
        meter.thread_batch_started()
        await asyncio.to_thread(_hold_the_gil, 0.3)  # the loop ticks meanwhile
        meter.thread_batch_ended()
        await asyncio.sleep(0.3)
    stall = meter.stall()
    assert stall is not None, (len(meter._during), len(meter._outside))
    assert stall.during_s > stall.outside_s
    await asyncio.sleep(IDLE_S + 0.5)
    assert meter._task is not None and meter._task.done()  # idle: no more ticks
    meter.stop()


async def test_no_stall_is_known_before_enough_ticks() -> None:
    meter = StallMeter()
    meter.thread_batch_started()
    await asyncio.sleep(0.02)
    meter.thread_batch_ended()
    assert meter.stall() is None
    meter.stop()
