"""The whole mesh against the gRPC limit, driven by ghz instead of the Python load generator.

The same grid of rates, 20 ms SLO and payload as `overhead.mesh_vs_echo`, but the
load comes from ghz (Go, its own process, open loop at a constant rate), which
reports every call's latency and status: the client no longer competes with the
servers for the Python interpreter's time. The mesh is queried through an
application with no default output, so a query that no model answered in time is
an error rather than a flagged default that would pass for an answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np

from benchmarks.harness import grid
from benchmarks.loadgen import Outcome, RunResult
from benchmarks.mesh_latency import start_mesh, stop_mesh
from services.common.auth import bearer
from services.common.processes import REPO_ROOT, start_service
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits

GHZ = REPO_ROOT / ".tools" / "bin" / "ghz"
SLO_S = 0.020
PROBE_S = 2
STRICT_APP = "digits-strict"
TOKEN = "benchmark-management-token"


def available() -> bool:
    return GHZ.exists()


def ghz_probe(target: str, payload: Path, rate: int) -> RunResult:
    """ghz at `rate` q/s for PROBE_S seconds; every call becomes an Outcome."""
    workers = max(10, min(400, rate // 10))  # enough for 100 ms latency without stalling
    done = subprocess.run(
        [str(GHZ), "--insecure", "--call", "clipper.v1.Frontend/Predict", "-D", str(payload),
         "--rps", str(rate), "-z", f"{PROBE_S}s", "--duration-stop", "wait",
         "-c", str(workers), "--connections", "1", "--format", "json", target],
        capture_output=True, text=True, timeout=PROBE_S * 10 + 30, check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout:
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr}")
    report = json.loads(done.stdout)
    details = report.get("details") or []
    start = min((_seconds(d["timestamp"]) for d in details), default=0.0)
    result = RunResult(offered_qps=rate, duration_s=float(PROBE_S), slo_s=SLO_S)
    result.outcomes = [
        Outcome(_seconds(d["timestamp"]) - start, d["latency"] / 1e9, d["status"] == "OK")
        for d in details
    ]
    return result


async def sweep(target: str, payload: Path) -> list[RunResult]:
    """The benchmarks' grid of rates, a ghz run at each, after one not counted (the first
    queries a server ever answers load code and open connections)."""
    await asyncio.to_thread(ghz_probe, target, payload, 50)
    return await grid(lambda rate, _: asyncio.to_thread(ghz_probe, target, payload, rate))


async def mesh_vs_echo(work: Path) -> tuple[list[RunResult], list[RunResult]]:
    """ghz sweeps of the `make run` mesh (strict application) and of the echo server."""
    payload = _write_payload(work)
    echo = start_service("benchmarks.echo_server", ["--port", "0"], name="echo-ghz")
    try:
        echo_runs = await sweep(echo.address, payload)
    finally:
        echo.stop()
    proc, address, _ = start_mesh(work / "mesh-ghz", "--slo-ms", "20",
                                  env={"CLIPPER_MANAGEMENT_TOKEN": TOKEN})
    try:
        register_strict_copy(address)
        mesh_runs = await sweep(address, payload)
    finally:
        stop_mesh(proc)
    return mesh_runs, echo_runs


def _write_payload(work: Path) -> Path:
    """The Predict request ghz sends: one test digit, to the strict application."""
    _, x_test, _, _ = digits.split()
    payload = work / "ghz-payload.json"
    work.mkdir(parents=True, exist_ok=True)
    payload.write_text(json.dumps({
        "application": STRICT_APP,
        "input": {"dtype": "float32", "shape": [64],
                  "raw": base64.b64encode(x_test[0].astype(np.float32).tobytes()).decode()},
    }))
    return payload


def register_strict_copy(address: str, name: str = "digits") -> str:
    """Register the application `name` as `make run` has it again as `<name>-strict`,
    without its default output (a late answer is then a failure); return that name.
    `digits`' copy is STRICT_APP."""
    strict = f"{name}-strict"
    with grpc.insecure_channel(address) as channel:
        mgmt = pb_grpc.ManagementStub(channel)
        md = bearer(TOKEN)
        app = mgmt.GetApplication(pb.ApplicationName(name=name), metadata=md, timeout=5)
        app.name = strict
        app.ClearField("default_output")
        mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=md, timeout=5)
    return strict


def _seconds(timestamp: str) -> float:
    """ghz's RFC 3339 timestamps (nanoseconds) as seconds since the epoch."""
    head, _, frac = timestamp.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head + "+00:00").timestamp()
    return whole + (float("0." + frac) if frac else 0.0)
