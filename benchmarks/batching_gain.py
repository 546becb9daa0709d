"""Batching gain, SLO attainment and bursts: adaptive vs batch size 1 vs a fixed batcher.

Queries go straight to one container's stream (as a frontend sends them), for a
synthetic model costing 5 ms per batch plus 0.1 ms per item and for a real
digits model; then the synthetic model again through the frontend. Each
figure is a ratio against batch size 1 measured in the same run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    BATCHERS,
    Sender,
    capacity,
    dial_credential,
    frontend_sender,
    start_container,
    sweep,
)
from benchmarks.loadgen import (
    ContainerStream,
    RunResult,
    Send,
    open_loop,
    open_loop_profile,
    settle,
)
from services.common.processes import ServiceProcess
from services.mesh import digits
from testkit.mesh import Mesh

SLO_S = 0.020
SYNTHETIC = "benchmarks.models:Synthetic"
NOOP = "benchmarks.models:NoOp"


@dataclass
class Capacity:
    """A batcher's sweep, and the highest rates that met the SLO for 99% and 95%."""

    label: str
    probes: list[RunResult] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return capacity(self.probes, 0.99)

    @property
    def qps95(self) -> float:
        return capacity(self.probes, 0.95)


def _container_sender(proc: ServiceProcess, value: np.ndarray) -> Sender:
    """Queries straight to a container of `start_container`."""
    async def make() -> tuple[Send, Callable[[], Awaitable[None]]]:
        stream = ContainerStream(proc.address, dial_credential(proc.name), value, SLO_S)
        await stream.__aenter__()
        return stream.send, lambda: stream.__aexit__(None, None, None)
    return make


async def _warm_up(make: Sender, rate: float) -> None:
    """Let the batcher learn its latency before it is measured, then let it drain."""
    send, close = await make()
    try:
        for r in (rate / 4, rate / 2, rate):
            await open_loop(send, r, 0.5, SLO_S)
        await settle(send, SLO_S)
    finally:
        await close()


async def container_capacities(work: Path, model: str, value: np.ndarray) -> list[Capacity]:
    out: list[Capacity] = []
    for label, flags in BATCHERS.items():
        proc = start_container(work, model, flags, name=f"c-{len(out)}")
        try:
            make = _container_sender(proc, value)
            await _warm_up(make, 400)
            out.append(Capacity(label, await sweep(make, SLO_S)))
        finally:
            proc.stop()
    return out


async def frontend_capacities(work: Path, value: np.ndarray) -> list[Capacity]:
    out: list[Capacity] = []
    for label, flags in BATCHERS.items():
        mesh = Mesh(work / f"mesh-{len(out)}")
        mesh.workdir.mkdir()
        try:
            mesh.start_selection()
            mesh.start_frontend("--cache", "none")  # one input, repeated: measure the model
            mesh.start_container(SYNTHETIC, "synthetic", "1", *flags)
            mesh.create_app("synthetic", ["synthetic"], shape=(4,), slo_ms=int(SLO_S * 1000))
            mesh.wait_connected("synthetic", 1)
            make = frontend_sender(mesh.address, "synthetic", value)
            await _warm_up(make, 400)
            out.append(Capacity(label, await sweep(make, SLO_S)))
        finally:
            mesh.close()
    return out


async def slo_attainment(work: Path, capacity_qps: float
                         ) -> dict[float, tuple[RunResult, RunResult]]:
    """Open-loop load at 50/80/95% of the adaptive batcher's capacity, 3 s each: the
    synthetic model, then a no-op model through the same container runtime and client at
    the same rates (what this machine and the runtime allow, with no model to batch)."""
    runs: dict[str, dict[float, RunResult]] = {}
    for model in (SYNTHETIC, NOOP):
        proc = start_container(work, model, BATCHERS["adaptive"], name=f"slo-{len(runs)}")
        runs[model] = {}
        try:
            make = _container_sender(proc, np.ones(4, np.float32))
            await _warm_up(make, capacity_qps / 2)
            for share in (0.5, 0.8, 0.95):
                send, close = await make()
                try:
                    await settle(send, SLO_S)
                    runs[model][share] = await open_loop(send, capacity_qps * share, 3.0, SLO_S)
                finally:
                    await close()
        finally:
            proc.stop()
    return {share: (runs[SYNTHETIC][share], runs[NOOP][share]) for share in runs[SYNTHETIC]}


async def bursts(work: Path, capacity_qps: float) -> dict[str, RunResult]:
    """30% of capacity for 2 s, 150% for 2 s, 30% for 3 s, for adaptive and fixed."""

    def rate_at(t: float) -> float:
        return capacity_qps * (1.5 if 2.0 <= t < 4.0 else 0.3)

    out: dict[str, RunResult] = {}
    for label in ("adaptive", "fixed (max 32, 5 ms wait)"):
        proc = start_container(work, SYNTHETIC, BATCHERS[label], name=f"burst-{len(out)}")
        try:
            make = _container_sender(proc, np.ones(4, np.float32))
            await _warm_up(make, capacity_qps / 2)
            send, close = await make()
            try:
                out[label] = await open_loop_profile(send, rate_at, 7.0, SLO_S)
            finally:
                await close()
        finally:
            proc.stop()
    return out


def digits_input() -> np.ndarray:
    _, x_test, _, _ = digits.split()
    row: np.ndarray = x_test[0].astype(np.float32)
    return row

