"""Keep the local mesh's processes running: restart what exits, drain in order on stop.

A process that exits on its own is started again after a backoff that doubles
with each quick exit (up to `max_backoff_s`; a run of `stable_s` resets it). A
service that exits more than `max_restarts_per_min` times in a minute is left
down and reported, while the others keep serving. Each exit and return is
printed as a status line and appended to the service's own log.

Only `drain` stops the mesh: one stage after another (frontend, then containers,
then the selection service), each process given SIGTERM and its grace period,
then SIGKILL. `drain` says whether everything exited cleanly.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from services.common.processes import ServiceProcess, start_service

STOP_MARGIN_S = 5.0  # past its grace period, a process is killed


@dataclass(frozen=True)
class RestartPolicy:
    """How soon and how often a service that exits is started again."""

    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_restarts_per_min: int = 5
    stable_s: float = 60.0
    start_timeout_s: float = 60.0

    def delay_s(self, quick_exits: int) -> float:
        """The wait before the next start, after `quick_exits` exits in a row (>= 1)."""
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (quick_exits - 1))


@dataclass
class ServiceSpec:
    """How to start one service: `python -m module --port PORT args...`.

    With `keep_port`, a restart binds the port the first start bound, so that
    whoever dials the service (clients, the frontend, containers) finds it again.
    `stage` orders the drain: lower stages stop first.
    """

    name: str
    module: str
    args: list[str]
    stage: int
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = 0
    keep_port: bool = False
    grace_s: float = 10.0

    def command(self) -> list[str]:
        return ["--port", str(self.port), *self.args]


@dataclass
class _Child:
    spec: ServiceSpec
    process: ServiceProcess | None = None
    started_at: float = 0.0
    restarts: deque[float] = field(default_factory=deque)  # when, within the last minute
    quick_exits: int = 0
    restart_at: float | None = None
    starting: Future[ServiceProcess] | None = None
    spawned: subprocess.Popen[str] | None = None  # the process a start is waiting on
    down: bool = False


def exit_reason(returncode: int) -> str:
    """`exit code 70`, or `killed by SIGKILL` for a signal."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _print_status(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


class Supervisor:
    """The mesh's children by name. Not thread-safe: one thread calls `start`,
    `check` and `drain` (restarts run in a pool and are collected by `check`)."""

    def __init__(self, policy: RestartPolicy | None = None,
                 status: Callable[[str], None] = _print_status) -> None:
        self.policy = policy or RestartPolicy()
        self.status = status
        self._children: dict[str, _Child] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(self, spec: ServiceSpec) -> ServiceProcess:
        """First start: wait until it serves (raises when it does not) and supervise it."""
        return self.start_all([spec])[0]

    def start_all(self, specs: Sequence[ServiceSpec]) -> list[ServiceProcess]:
        """First starts, side by side; raises when one does not serve."""
        children = [_Child(spec) for spec in specs]
        self._children.update((child.spec.name, child) for child in children)
        with ThreadPoolExecutor(max_workers=max(1, len(children))) as pool:
            processes = list(pool.map(self._launch, children))
        for child, process in zip(children, processes, strict=True):
            self._running(child, process)
        return processes

    def process(self, name: str) -> ServiceProcess | None:
        """The running process of a service (None while it restarts or is down)."""
        return self._children[name].process

    @property
    def down(self) -> list[str]:
        """Services left down after too many restarts."""
        return [name for name, child in self._children.items() if child.down]

    def check(self) -> None:
        """One pass: notice exits, schedule restarts, start what is due, collect starts."""
        now = time.monotonic()
        for child in self._children.values():
            if child.process is not None and child.process.proc.poll() is not None:
                process, child.process = child.process, None
                process.stop()  # already gone: joins its output reader
                self._exited(child, exit_reason(process.proc.returncode), now)
            elif child.starting is not None and child.starting.done():
                self._started(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.starting = self._restart_pool().submit(self._launch, child)

    def drain(self) -> bool:
        """Stop every service, stage by stage; True when each exited 0 within its grace."""
        for child in self._children.values():
            child.restart_at = None
            if child.spawned is not None and child.process is None:
                child.spawned.kill()  # a restart in progress: it never served
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        clean = True
        for stage in sorted({c.spec.stage for c in self._children.values()}):
            names = [n for n, c in self._children.items()
                     if c.spec.stage == stage and c.process is not None]
            if names:
                self.status(f"stopping {', '.join(names)}")
                clean = self._stop_stage([self._children[n] for n in names]) and clean
        return clean

    def kill_all(self) -> None:
        """SIGKILL every process at once (a second Ctrl-C)."""
        for child in self._children.values():
            for proc in (child.process.proc if child.process else None, child.spawned):
                if proc is not None and proc.poll() is None:
                    proc.kill()

    def _stop_stage(self, children: list[_Child]) -> bool:
        for child in children:
            assert child.process is not None
            if child.process.proc.poll() is None:
                child.process.proc.terminate()
        clean, terminated = True, time.monotonic()
        for child in children:
            assert child.process is not None
            proc, allowed_s = child.process.proc, child.spec.grace_s + STOP_MARGIN_S
            try:  # the stage stops side by side: each wait ends at its own deadline
                proc.wait(max(0.0, terminated + allowed_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self._report(child, f"did not stop within {allowed_s:g} s of SIGTERM: killed")
                clean = False
                continue
            if proc.returncode != 0:
                self._report(child, f"stopped with {exit_reason(proc.returncode)}")
                clean = False
        for child in children:
            assert child.process is not None
            child.process.stop()  # joins its output reader
        return clean

    def _launch(self, child: _Child) -> ServiceProcess:
        """Start the child's process and wait for its ready line (in any thread)."""

        def spawned(proc: subprocess.Popen[str]) -> None:
            child.spawned = proc

        spec = child.spec
        return start_service(spec.module, spec.command(), name=spec.name, env=spec.env,
                             timeout_s=self.policy.start_timeout_s, log_path=spec.log_path,
                             on_spawn=spawned)

    def _running(self, child: _Child, process: ServiceProcess) -> None:
        child.process = process
        child.started_at = time.monotonic()
        if child.spec.keep_port:
            child.spec.port = process.port

    def _exited(self, child: _Child, reason: str, now: float) -> None:
        """Schedule the next start, or leave the service down past the limit."""
        ran_s = now - child.started_at
        child.quick_exits = 1 if ran_s >= self.policy.stable_s else child.quick_exits + 1
        while child.restarts and now - child.restarts[0] >= 60:
            child.restarts.popleft()
        if len(child.restarts) >= self.policy.max_restarts_per_min:
            child.down = True
            self._report(child, f"{reason} after {ran_s:.1f} s; restarted "
                         f"{len(child.restarts)} times in the last minute, so it is left "
                         "down (the rest keep serving; restart the mesh to try again)")
            return
        child.restarts.append(now)
        delay_s = self.policy.delay_s(child.quick_exits)
        child.restart_at = now + delay_s
        self._report(child, f"{reason} after {ran_s:.1f} s; restarting in {delay_s:g} s "
                     f"({len(child.restarts)} of {self.policy.max_restarts_per_min} restarts "
                     "a minute)")

    def _started(self, child: _Child, now: float) -> None:
        assert child.starting is not None
        future, child.starting = child.starting, None
        try:
            process = future.result()
        except (RuntimeError, OSError) as exc:  # never served: counts as a quick exit
            child.spawned = None
            child.started_at = now
            self._exited(child, f"failed to start ({str(exc).splitlines()[0]})", now)
            return
        self._running(child, process)
        self._report(child, f"is back (pid {process.proc.pid}, {process.address})")

    def _report(self, child: _Child, what: str) -> None:
        line = f"{child.spec.name} {what}"
        self.status(line)
        if child.spec.log_path is not None:
            with open(child.spec.log_path, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} mesh supervisor: {line}\n")

    def _restart_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._children)),
                                            thread_name_prefix="restart")
        return self._pool

