"""The local mesh as `make run` starts it: start time, idle memory, low-load latency.

Baseline, measured in the same run: the same three digits models called
in-process, one query at a time (what a query costs with no serving system).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import joblib
import numpy as np

from benchmarks.process_cpu import tree_memory
from services.common import tensors
from services.common.processes import REPO_ROOT
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits

READY = re.compile(r"Mesh ready in [\d.]+ s: frontend on (\S+)")


def start_mesh(state_dir: Path, *extra: str, env: Mapping[str, str] | None = None
               ) -> tuple[subprocess.Popen[str], str, float]:
    """Start `python -m services.mesh`; return it, the frontend address and seconds to ready.

    The prediction cache is off: benchmark inputs repeat, and a cached answer would
    measure the cache instead of the models and the mesh.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.mesh", "--port", "0", "--state-dir", str(state_dir),
         *extra],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
        env={**os.environ, "CLIPPER_FRONTEND_CACHE": "none", **(env or {})},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = READY.search(line)
        if match:
            return proc, match.group(1), time.monotonic() - started
    raise RuntimeError(f"mesh exited with {proc.wait()} before it was ready")


def stop_mesh(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _in_process_latency(model_dir: Path, x: np.ndarray) -> list[float]:
    models = [joblib.load(model_dir / f"{name}.joblib") for name in digits.MODEL_NAMES]
    samples = []
    for row in x:
        started = time.perf_counter()
        for model in models:
            model.predict(row.reshape(1, -1))
        samples.append(time.perf_counter() - started)
    return samples


def _mesh_latency(address: str, x: np.ndarray) -> tuple[list[float], int]:
    samples, defaults = [], 0
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        for row in x:
            request = pb.PredictRequest(application="digits", input=tensors.encode(row))
            started = time.perf_counter()
            reply = stub.Predict(request, timeout=5)
            samples.append(time.perf_counter() - started)
            defaults += reply.default_used
    return samples, defaults


def run(out: Path, queries: int) -> str:
    del out  # figures only, no plot
    _, x_test, _, _ = digits.split()
    x = np.resize(x_test, (queries, x_test.shape[1])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        cold, _, cold_s = start_mesh(state)  # trains the models on first start
        stop_mesh(cold)
        proc, address, warm_s = start_mesh(state)
        try:
            time.sleep(2.0)  # let the mesh settle before reading its idle memory
            memory = tree_memory(proc.pid)
            _mesh_latency(address, x[:50])  # warm-up
            mesh_samples, defaults = _mesh_latency(address, x)
        finally:
            stop_mesh(proc)
        local_samples = _in_process_latency(state / "models", x)
    m50, m99 = _percentiles(mesh_samples)
    l50, l99 = _percentiles(local_samples)
    return "\n".join([
        "## The local mesh (`make run`): start, idle memory, low-load latency",
        "",
        f"- Start to first answer, models already trained: **{warm_s:.2f} s** "
        f"(first start, training included: {cold_s:.2f} s)",
        f"- Idle memory, all {memory.processes} processes: **{memory.pss_mb:.0f} MB** "
        f"(proportional set size; their resident sets add up to {memory.rss_mb:.0f} MB, "
        "counting the interpreter's and libraries' shared pages once per process)",
        f"- `digits` query (3 models, majority vote), one at a time, {queries} queries, "
        f"{defaults} defaults:",
        "",
        "| path | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| in-process `predict` of the 3 models (baseline) | {l50:.3f} | {l99:.3f} |",
        f"| through the mesh over gRPC | {m50:.3f} | {m99:.3f} |",
        f"| ratio mesh / in-process | {m50 / l50:.2f}x | {m99 / l99:.2f}x |",
    ])
