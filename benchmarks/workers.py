"""Frontend workers: the `digits` mesh (three models) with 1 and with 2 frontend
processes on one port, state in one redis-server, in the same run.

ghz drives the frontend open loop over several connections (the kernel spreads
connections, not calls, over the workers) with distinct inputs, through an
application without a default (a late answer is a failure). First the CPU each kind
of process spends per query at a moderate rate (half the 1-worker capacity), then
goodput and latency at 1x, 2x and 4x the 1-worker strict capacity.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.ghz_limit import GHZ, STRICT_APP
from benchmarks.overload import (
    CORES,
    MULTIPLES,
    RUN_S,
    Run,
    ghz_run,
    strict_capacity,
    write_payload,
)
from benchmarks.process_cpu import KINDS, measured, mesh_processes
from services.mesh import digits
from testkit.mesh import Mesh
from testkit.redis_server import RedisServer

CONNECTIONS = 8
CPU_RUNS = 3  # CPU per query is the lowest of this many runs
WORKER_COUNTS = (1, 2)


@dataclass
class Measured:
    """One frontend setting: CPU per query at the moderate rate, and the load runs."""

    workers: int
    cpu_run: Run | None = None
    runs: list[Run] = field(default_factory=list)

    def cpu_ms(self, kind: str) -> float:
        assert self.cpu_run is not None
        return self.cpu_run.cpu.per_query_ms(kind, len(self.cpu_run.calls))

    @property
    def mesh_cpu_ms(self) -> float:
        return sum(self.cpu_ms(kind) for kind in KINDS)


@contextmanager
def digits_mesh(work: Path, models: dict[str, Path], workers: int) -> Iterator[str]:
    """Redis, the selection service, a frontend of `workers` processes and one container
    per digits model, with the strict application; yields the frontend's address."""
    redis = RedisServer(work / "redis").start()
    mesh = Mesh(work)
    try:
        mesh.start_selection(state=redis.url)
        mesh.start_frontend("--workers", str(workers), "--cache", "none", state=redis.url)
        mesh.start_digits_models(models, digits.MODEL_NAMES)
        mesh.create_app(STRICT_APP, list(digits.MODEL_NAMES), shape=digits.INPUT_SHAPE,
                        slo_ms=20, policy="all")
        for _ in range(2 * workers):  # each worker has dialled every container
            for name in digits.MODEL_NAMES:
                mesh.wait_connected(name, 1)
        yield mesh.address
    finally:
        mesh.close()
        redis.stop()


def measure(work: Path, models: dict[str, Path], workers: int, payload: Path,
            capacity: int | None) -> tuple[int, Measured]:
    """One setting; the strict capacity is measured when `capacity` is None."""
    result = Measured(workers)
    with digits_mesh(work, models, workers) as address:
        ghz_run(address, payload, 50, 1, CONNECTIONS)  # uncounted: first queries load code
        if capacity is None:
            capacity = strict_capacity(address, payload, CONNECTIONS)
        pids = mesh_processes(os.getpid())
        cpu_runs = []
        for _ in range(CPU_RUNS):
            with measured(pids) as cpu:
                cpu_runs.append(ghz_run(address, payload, max(50, capacity // 2), RUN_S,
                                        CONNECTIONS))
            cpu_runs[-1].cpu = cpu
        # The least disturbed: another process on the cores only ever adds to it.
        result.cpu_run = min(cpu_runs, key=lambda r: r.cpu.mesh_s / max(len(r.calls), 1))
        for multiple in MULTIPLES:
            result.runs.append(ghz_run(address, payload, capacity * multiple, RUN_S,
                                       CONNECTIONS))
    return capacity, result


def run(work: Path) -> str:
    title = "## Frontend workers: 1 and 2 frontend processes on one port (digits, 20 ms SLO)"
    if not GHZ.exists():
        return f"{title}\n\nSkipped: ghz is not built (`make ghz`).\n"
    if shutil.which("redis-server") is None:
        return f"{title}\n\nSkipped: no redis-server (apt-get install redis-server).\n"
    models = digits.train(work / "models")
    payload = write_payload(work)
    capacity, one = measure(work / "one", models, 1, payload, None)
    _, two = measure(work / "two", models, 2, payload, capacity)
    assert one.cpu_run is not None
    lines = [title, "",
             f"State in redis-server, no prediction cache; ghz open loop over {CONNECTIONS} "
             f"connections, distinct inputs, {RUN_S} s per rate, on {CORES} cores shared with "
             "ghz. Strict capacity of 1 worker (99% within 20 ms): "
             f"**{capacity} q/s**.", "",
             f"CPU per query (ms) by process kind at {one.cpu_run.rate} q/s, the lowest of "
             f"{CPU_RUNS} runs (a frontend's workers and the process that looks after them "
             "counted together):", "",
             "| workers | " + " | ".join(KINDS) + " | mesh | mesh vs 1 worker |",
             "|---|" + "---|" * (len(KINDS) + 2)]
    for m in (one, two):
        lines.append(f"| {m.workers} worker(s) | " + " | ".join(
            f"{m.cpu_ms(kind):.2f}" for kind in KINDS) + f" | {m.mesh_cpu_ms:.2f} | "
            f"{m.mesh_cpu_ms / one.mesh_cpu_ms:.2f}x |")
    lines += ["", "| workers | offered | goodput q/s | vs 1 worker | within SLO | "
              "p50 / p99 answered ms | refused |", "|---|---|---|---|---|---|---|"]
    for m in (one, two):
        for r, base in zip(m.runs, one.runs, strict=True):
            lines.append(
                f"| {m.workers} worker(s) | {r.rate} ({r.rate // capacity}x) | {r.goodput:.0f} "
                f"| {r.goodput / (base.goodput or 1.0):.2f}x | {r.within_slo:.1%} | "
                f"{r.quantile_ms(0.5, 'OK'):.1f} / {r.quantile_ms(0.99, 'OK'):.1f} | "
                f"{r.count('ResourceExhausted')} |")
    lines.append("")
    return "\n".join(lines)
