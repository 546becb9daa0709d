"""The background-task helper: stops on close, logs a failure, restarts when asked, and
keeps a periodic task going past a failed round."""

from __future__ import annotations

import asyncio

import pytest

from services.common.tasks import BackgroundTask, every


async def test_close_cancels_and_waits() -> None:
    ended = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    task = BackgroundTask("forever", forever)
    task.start()
    await asyncio.sleep(0)
    assert task.running
    await task.aclose()
    assert ended.is_set() and not task.running
    await task.aclose()  # twice is harmless


async def test_a_failure_is_logged_and_restarted_when_asked(
        caplog: pytest.LogCaptureFixture) -> None:
    runs = 0
    third = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
            await asyncio.Event().wait()
        raise RuntimeError(f"bug {runs}")

    once = BackgroundTask("once", flaky)
    once.start()
    await asyncio.sleep(0.01)
    assert runs == 1 and not once.running
    assert "background task once failed" in caplog.text and "bug 1" in caplog.text

    again = BackgroundTask("again", flaky, restart_s=0.001)
    again.start()
    await asyncio.wait_for(third.wait(), 5)
    assert runs == 3 and again.running
    await again.aclose()


async def test_a_failed_round_does_not_stop_the_next(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    done = asyncio.Event()

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise ValueError("first round fails")
        if len(rounds) == 3:
            done.set()

    task = every("periodic", 0.001, work)
    task.start()
    await asyncio.wait_for(done.wait(), 5)
    await task.aclose()
    assert "periodic failed" in caplog.text and "first round fails" in caplog.text
