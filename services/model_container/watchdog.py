"""Ends the container when its event loop stops turning: a model run inline on the loop
that hangs would otherwise freeze health checks, heartbeats and SIGTERM for good.

A task on the loop records the time every tenth of `limit_s`; a daemon thread
checks it. When the loop has not turned for `limit_s`, the thread logs why and
exits the process at once (exit code 70): the frontends' streams to it break, so
its queries are retried elsewhere, its heartbeats stop, and the supervisor or
Kubernetes starts it again. A process stopped as a whole (SIGSTOP) and resumed is
not a stalled loop: the thread notices that it slept as long while the process used
no CPU, and lets the loop go on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from services.common.tasks import BackgroundTask

logger = logging.getLogger(__name__)

EXIT_CODE = 70  # EX_SOFTWARE


class LoopWatchdog:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._last_turn = time.monotonic()
        self._stop = threading.Event()
        self._task = BackgroundTask("loop-watchdog-tick", self._tick)
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    async def start(self) -> None:
        self._last_turn = time.monotonic()
        self._task.start()
        self._thread.start()

    async def aclose(self) -> None:
        self._stop.set()
        await self._task.aclose()

    async def _tick(self) -> None:
        while True:
            self._last_turn = time.monotonic()
            await asyncio.sleep(self.limit_s / 10)

    def _watch(self) -> None:
        period_s = self.limit_s / 10
        awake = time.monotonic()  # since when the process has been running
        checked, cpu = awake, time.process_time()
        while not self._stop.wait(period_s):
            now, cpu_now = time.monotonic(), time.process_time()
            overslept_s = now - checked - period_s
            if overslept_s > self.limit_s / 2 and cpu_now - cpu < overslept_s / 2:
                # This thread overslept as much as the loop, and the process did not run
                # meanwhile: it was stopped as a whole (SIGSTOP, a frozen VM or cgroup),
                # which no model does. The loop gets the full limit again from now.
                awake = now
            checked, cpu = now, cpu_now
            stalled_s = now - max(self._last_turn, awake)
            if stalled_s > self.limit_s:
                logger.critical("the event loop has not turned for %.1f s (a model run on it "
                                "hangs?); exiting so that the container is restarted",
                                stalled_s)
                logging.shutdown()
                os._exit(EXIT_CODE)
