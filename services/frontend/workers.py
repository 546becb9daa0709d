"""Several frontend processes serving one port (`--workers N`).

One frontend process takes new calls from gRPC core only so fast (grpc.aio accepts
one about every third turn of its event loop), so a machine with more cores serves
more with more processes. Each worker is a full frontend, started with the same
`start(cfg)` as a single one: its own event loop, accept probe, admission, replica
streams and selection client. They share the state store and prediction cache
through Redis, and bind the port with SO_REUSEPORT, so that the kernel spreads
connections over them.

This process only looks after them: it starts worker 0 (which binds the port, a free
one for `--port 0`), then the others on the port it bound, and says it is ready once
all serve. A worker that exits is reported and started again on the same port after
a backoff (services/mesh/supervisor.py's `RestartPolicy`), while the others keep
serving; one that keeps exiting is left down. SIGTERM or SIGINT drains every worker
(each has `--grace-s`), then kills what is left; a second one kills them at once.
Workers are spawned, not forked (a fork would inherit gRPC's threads), sit in their
own process group (a terminal's Ctrl-C reaches this process only, which passes it on
once) and end when this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess

from services.common.server import (
    Running,
    catch_stop_signals,
    freeze_startup,
    run_service,
)
from services.common.tasks import BackgroundTask
from services.common.telemetry import setup_logging
from services.common.tracing import setup_tracing
from services.frontend.config import Config
from services.mesh.supervisor import STOP_MARGIN_S, RestartPolicy, exit_reason

logger = logging.getLogger(__name__)

Start = Callable[[Config], Awaitable[Running]]
START_TIMEOUT_S = 60.0
# A worker whose starts never serve this many times in a row is left down.
MAX_FAILED_STARTS = 3
_PR_SET_PDEATHSIG = 1


class WorkerFailed(RuntimeError):
    """A worker exited or hung before it served."""


# ------------------------------------------------------------ in a worker's process


def serve_worker(cfg: Config, index: int, parent_pid: int, link: socket.socket) -> None:
    """Worker `index`'s process: serve `cfg` as a single frontend does, until SIGTERM,
    after telling the parent, over `link`, the ports it bound."""
    # Imported here, in the worker: `python -m services.frontend` runs that module as
    # __main__, which a spawned process does not import again, and it imports this one.
    from services.frontend.__main__ import start

    os.setpgrp()
    _end_with(parent_pid)
    setup_logging(f"frontend-worker-{index}", cfg.log_level, cfg.log_format)
    setup_tracing("frontend")
    run_service(_serve(start, cfg, link))


def _end_with(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (Linux), so that no worker
    outlives it; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit(1)


async def _serve(start: Start, cfg: Config, link: socket.socket) -> None:
    running = await start(cfg)
    try:
        stop = catch_stop_signals()
        freeze_startup()
        link.sendall(f"{running.port} {running.health_port}\n".encode())
        await stop.wait()
    finally:
        await running.stop()
        link.close()


# ------------------------------------------------------------ in the parent process


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    # The link only ever carries the worker's ports; it is at its end once the worker
    # has exited.
    link: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    restarts: deque[float] = field(default_factory=deque)  # when, in the last minute
    quick_exits: int = 0
    started_at: float = 0.0
    served: bool = False  # its latest start reached serving
    failed_starts: int = 0  # starts in a row that never served


def _check_port_free(host: str, port: int) -> None:
    """Raise WorkerFailed when `host:port` is taken, by another pool of workers too
    (whose SO_REUSEPORT would otherwise let ours join it and split its traffic)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise WorkerFailed(f"{host}:{port} is in use ({exc.strerror})") from None


class WorkerPool:
    """`cfg.workers` frontend processes on one port."""

    def __init__(self, cfg: Config, policy: RestartPolicy | None = None) -> None:
        self.cfg = cfg
        self.policy = policy or RestartPolicy()
        self.port = cfg.port
        self.health_port = cfg.health_port
        self._workers = [_Worker(i) for i in range(cfg.workers)]
        self._keepers: list[BackgroundTask] = []
        self._left_down = 0
        self.all_down = asyncio.Event()  # every worker exited too often: nothing serves

    async def start(self) -> int:
        """Start every worker and return the port they serve, once all do; raises
        WorkerFailed (after stopping those started) when one does not."""
        if self.cfg.port:
            _check_port_free(self.cfg.host, self.cfg.port)
        try:
            await self._launch(self._workers[0])  # binds the port: the others need it
            await asyncio.gather(*(self._launch(w) for w in self._workers[1:]))
        except BaseException:
            await self.stop()
            raise
        for worker in self._workers:
            keeper = BackgroundTask(f"frontend-worker-{worker.index}",
                                    functools.partial(self._keep, worker))
            keeper.start()
            self._keepers.append(keeper)
        return self.port

    def _config(self, index: int) -> Config:
        metrics_port = self.cfg.metrics_port
        if metrics_port > 0:
            metrics_port += index
        return replace(self.cfg, port=self.port, health_port=self.health_port,
                       metrics_port=metrics_port, workers=1, reuse_port=True)

    async def _launch(self, worker: _Worker) -> None:
        """Spawn `worker` and wait until it serves (raises WorkerFailed)."""
        ours, theirs = socket.socketpair()
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(target=serve_worker, name=f"frontend-worker-{worker.index}",
                              args=(self._config(worker.index), worker.index, os.getpid(),
                                    theirs))
        try:
            # From this (the main) thread: the kernel's parent-death signal follows the
            # thread that spawned, and this one lives as long as the process.
            process.start()
        except OSError as exc:
            ours.close()
            raise WorkerFailed(f"frontend worker {worker.index} could not start: {exc}") \
                from exc
        finally:
            theirs.close()
        worker.process, worker.started_at, worker.served = process, time.monotonic(), False
        reader, writer = worker.link = await asyncio.open_connection(sock=ours)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await reader.readline()
        except TimeoutError:
            process.kill()
            raise WorkerFailed(f"frontend worker {worker.index} did not serve within "
                               f"{START_TIMEOUT_S:g} s; see its log") from None
        except BaseException:
            writer.close()
            process.kill()
            raise
        if not line:
            await asyncio.to_thread(process.join)
            raise WorkerFailed(f"frontend worker {worker.index} exited before it served "
                               f"({exit_reason(process.exitcode or 0)}); see its log")
        port, health_port = (int(word) for word in line.split())
        worker.served = True
        if worker.index == 0:
            self.port, self.health_port = port, health_port
        logger.info("frontend worker %d (pid %d) serves port %d", worker.index, process.pid,
                    port)

    async def _keep(self, worker: _Worker) -> None:
        """Start `worker` again each time it exits, until the pool stops or it exits
        too often."""
        while True:
            assert worker.link is not None and worker.process is not None
            reader, writer = worker.link
            await reader.read()  # to its end: the worker has exited
            writer.close()
            await asyncio.to_thread(worker.process.join)
            reason = exit_reason(worker.process.exitcode or 0)
            if not self._may_restart(worker):
                logger.error("frontend worker %d (pid %d) exited (%s), more than %d times in "
                             "a minute or %d starts in a row without serving: left down, the "
                             "others serve", worker.index, worker.process.pid, reason,
                             self.policy.max_restarts_per_min, MAX_FAILED_STARTS)
                self._left_down += 1
                if self._left_down == len(self._workers):
                    self.all_down.set()
                return
            delay_s = self.policy.delay_s(worker.quick_exits)
            logger.error("frontend worker %d (pid %d) exited (%s): the others serve; starting "
                         "it again in %.1f s", worker.index, worker.process.pid, reason,
                         delay_s)
            await asyncio.sleep(delay_s)
            try:
                await self._launch(worker)
            except WorkerFailed as exc:
                logger.error("%s", exc)  # its link is at its end: counted as an exit

    def _may_restart(self, worker: _Worker) -> bool:
        now = time.monotonic()
        # A start that never served counts as a quick exit, however long it hung.
        quick = not worker.served or now - worker.started_at < self.policy.stable_s
        worker.quick_exits = worker.quick_exits + 1 if quick else 1
        worker.failed_starts = 0 if worker.served else worker.failed_starts + 1
        if worker.failed_starts >= MAX_FAILED_STARTS:
            return False
        while worker.restarts and now - worker.restarts[0] > 60.0:
            worker.restarts.popleft()
        if len(worker.restarts) >= self.policy.max_restarts_per_min:
            return False
        worker.restarts.append(now)
        return True

    async def stop(self) -> bool:
        """SIGTERM every worker, wait its grace period, then SIGKILL what is left; True
        when all exited cleanly."""
        for keeper in self._keepers:
            await keeper.aclose()
        processes = [w.process for w in self._workers if w.process is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.cfg.grace_s + STOP_MARGIN_S

        def join(process: BaseProcess) -> None:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

        await asyncio.gather(*(asyncio.to_thread(join, p) for p in processes))
        clean = all(p.exitcode == 0 for p in processes)
        if not clean:
            logger.error("frontend workers exited with %s",
                         ", ".join(exit_reason(p.exitcode or 0) for p in processes))
        return clean

    def kill(self) -> None:
        """Kill every worker still alive, at once (signalled again while they drain)."""
        alive = [w.process for w in self._workers
                 if w.process is not None and w.process.is_alive()]
        logger.warning("signalled again while draining: killing %d frontend workers",
                       len(alive))
        for process in alive:
            process.kill()


async def serve_workers(cfg: Config, announce: Callable[[int], None]) -> int:
    """Run `cfg.workers` workers until SIGTERM or SIGINT (or until all are left down);
    `announce(port)` once all serve. The exit code: 0 when every worker drained cleanly."""
    pool = WorkerPool(cfg)
    try:
        port = await pool.start()
        stop = catch_stop_signals(on_again=pool.kill)
        announce(port)
        signalled = asyncio.create_task(stop.wait())
        all_down = asyncio.create_task(pool.all_down.wait())
        await asyncio.wait([signalled, all_down], return_when=asyncio.FIRST_COMPLETED)
        for task in (signalled, all_down):
            task.cancel()
    finally:
        clean = await pool.stop()
    return 0 if clean and not pool.all_down.is_set() else 1
