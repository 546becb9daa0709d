"""Overhead and the mesh's limit.

- Overhead: a no-op model, one query at a time: through the frontend vs straight
  to the container's stream vs an in-process call.
- The whole mesh (as `make run` starts it, digits, 3 models, majority vote) at a
  20 ms SLO, against a bare grpc.aio echo server with the same payload.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.harness import dial_credential, frontend_sender, sweep
from benchmarks.loadgen import ContainerStream, FrontendUnary, RunResult, closed_loop
from benchmarks.mesh_latency import start_mesh, stop_mesh
from benchmarks.models import NoOp
from services.common.processes import start_service
from services.mesh import digits
from testkit.mesh import Mesh

SLO_S = 0.020


async def noop_overhead(work: Path, queries_s: float = 3.0) -> dict[str, RunResult]:
    value = np.ones(4, np.float32)
    out: dict[str, RunResult] = {}
    model = NoOp()
    samples = []
    for _ in range(5000):
        started = time.perf_counter()
        model.predict_batch([value])
        samples.append(time.perf_counter() - started)
    from benchmarks.loadgen import Outcome
    out["in-process call"] = RunResult(0, 1, 1, [Outcome(0, s, True) for s in samples])
    mesh = Mesh(work / "noop")
    mesh.workdir.mkdir()
    try:
        mesh.start_selection()
        mesh.start_frontend("--cache", "none")  # the same input every time: no cached answers
        container = mesh.start_container("benchmarks.models:NoOp", "noop")
        mesh.create_app("noop", ["noop"], slo_ms=1000)
        mesh.wait_connected("noop", 1)
        (replica,) = mesh.replicas("noop")
        async with ContainerStream(container.address,
                                   dial_credential("noop", replica.replica_id),
                                   value, 1.0) as stream:
            await closed_loop(stream.send, 1, 0.3, 1.0)
            out["container stream"] = await closed_loop(stream.send, 1, queries_s, 1.0)
        async with FrontendUnary(mesh.address, "noop", value, channels=1) as client:
            await closed_loop(client.send, 1, 0.3, 1.0)
            out["through the frontend"] = await closed_loop(client.send, 1, queries_s, 1.0)
    finally:
        mesh.close()
    return out


async def mesh_vs_echo(work: Path) -> tuple[list[RunResult], list[RunResult]]:
    """Sweeps of the `make run` mesh at a 20 ms SLO, and of the echo server."""
    _, x_test, _, _ = digits.split()
    value = x_test[0].astype(np.float32)
    echo = start_service("benchmarks.echo_server", ["--port", "0"], name="echo")
    try:
        echo_runs = await sweep(frontend_sender(echo.address, "digits", value), SLO_S)
    finally:
        echo.stop()

    proc, address, _ = start_mesh(work / "mesh", "--slo-ms", "20")
    try:
        mesh_runs = await sweep(frontend_sender(address, "digits", value), SLO_S)
    finally:
        stop_mesh(proc)
    return mesh_runs, echo_runs
