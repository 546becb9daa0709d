"""Background work of the services: one way to start it, stop it and hear of its failure.

`BackgroundTask` runs one coroutine for the life of its owner: `start()` creates
the task, `aclose()` cancels it and waits for it to end. A coroutine that fails
unexpectedly is logged (it would otherwise die silently and its owner go on
without it) and, with `restart_s`, started again after that pause. `every()` is
the periodic kind: the work runs each interval, and a failure of one round is
logged without stopping the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class BackgroundTask:
    def __init__(self, name: str, run: Callable[[], Awaitable[None]],
                 restart_s: float | None = None) -> None:
        self.name = name
        self._run = run
        self.restart_s = restart_s
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervised(), name=self.name)

    async def aclose(self) -> None:
        """Cancel the task and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _supervised(self) -> None:
        while True:
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background task %s failed%s", self.name,
                                 "" if self.restart_s is None
                                 else f"; restarting in {self.restart_s:g} s")
                if self.restart_s is None:
                    return
            await asyncio.sleep(self.restart_s)


def every(name: str, interval_s: float, work: Callable[[], Awaitable[object]]) -> BackgroundTask:
    """`work` each `interval_s` (first after one interval); a failed round is logged."""
    async def rounds() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s failed; trying again in %g s", name, interval_s)

    return BackgroundTask(name, rounds)
