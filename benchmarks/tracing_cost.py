"""What tracing costs per query: the `make run` mesh with tracing off, on at a 1% ratio
and on at 100%, same run.

The three meshes run at once and are queried in alternating blocks, one query at a
time (as in tls_cost.py); the two traced ones export over OTLP/gRPC to a receiver in
this process (testkit/otlp_receiver.py), which keeps what it gets. CPU per query
by process kind, from /proc, during each mesh's own blocks. `digits-exp4` (a learning
policy) puts the frontend, the selection service and the 3 containers on every query.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc
import numpy as np

from benchmarks.mesh_latency import start_mesh, stop_mesh
from benchmarks.process_cpu import KINDS, mesh_processes
from benchmarks.tls_cost import BLOCK, TOKEN, MeshRun, create_exp4, percentile_ms, query_block
from services.common.tls import sync_channel
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits
from testkit.otlp_receiver import otlp_receiver

APP = "digits-exp4"
SETTINGS = (("off", None), ("on, 1%", "0.01"), ("on, 100%", "1.0"))


def _measure(meshes: list[MeshRun], x: np.ndarray) -> None:
    channels = [sync_channel(m.address, None) for m in meshes]
    try:
        stubs = [pb_grpc.FrontendStub(c) for c in channels]
        for mesh, stub in zip(meshes, stubs, strict=True):  # warm-up, not counted
            query_block(MeshRun("warm-up", mesh.address, mesh.pids, None), stub, APP, x[:BLOCK])
        for start in range(0, len(x), BLOCK):
            for mesh, stub in zip(meshes, stubs, strict=True):
                query_block(mesh, stub, APP, x[start:start + BLOCK])
    finally:
        for channel in channels:
            channel.close()


def _report(meshes: list[MeshRun], queries: int, spans: int) -> str:
    off = meshes[0]
    lines = [
        "## The cost of tracing per query (off, 1% sampled, 100% sampled; same run)", "",
        f"The `make run` mesh three times, tracing off, and on (OTLP/gRPC to a local "
        f"receiver, which got {spans} spans) with OTEL_TRACES_SAMPLER_ARG 0.01 and 1.0; "
        f"{queries} `{APP}` queries per mesh (frontend, selection service and 3 containers "
        f"on each), one at a time, in alternating blocks of {BLOCK}.", "",
        "| tracing | p50 ms | p99 ms | mesh CPU per query (ms) | vs off |",
        "|---|---|---|---|---|",
    ]

    def mesh_cpu_ms(mesh: MeshRun) -> float:
        return sum(mesh.cpu_s[f"{APP}/{kind}"] for kind in KINDS) / mesh.queries[APP] * 1000

    base = mesh_cpu_ms(off)
    for mesh in meshes:
        samples = mesh.samples[APP]
        cpu = mesh_cpu_ms(mesh)
        lines.append(f"| {mesh.label} | {percentile_ms(samples, 50):.3f} | "
                     f"{percentile_ms(samples, 99):.3f} | {cpu:.3f} | {cpu / base - 1:+.1%} |")
    lines += ["", "CPU per query (ms, user + system) by process:", "",
              "| process | " + " | ".join(m.label for m in meshes) + " |",
              "|---|" + "---|" * len(meshes)]
    for kind in KINDS:
        name = "3 model containers" if kind == "model_container" else kind
        cells = [f"{m.cpu_s[f'{APP}/{kind}'] / m.queries[APP] * 1000:.3f}" for m in meshes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(out: Path, queries: int) -> str:
    del out  # figures only, no plot
    _, x_test, _, _ = digits.split()
    x = np.resize(x_test, (queries, x_test.shape[1])).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, otlp_receiver() as receiver:
        work = Path(tmp)
        procs = []
        try:
            meshes = []
            for label, ratio in SETTINGS:
                env = {"CLIPPER_MANAGEMENT_TOKEN": TOKEN, "OTEL_EXPORTER_OTLP_ENDPOINT": "",
                       "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
                if ratio is not None:
                    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                               OTEL_TRACES_SAMPLER_ARG=ratio)
                proc, address, _ = start_mesh(work / label.replace(" ", ""), env=env)
                procs.append(proc)
                create_exp4(address, None)
                meshes.append(MeshRun(label, address, mesh_processes(proc.pid), None))
            _measure(meshes, x)
        except grpc.RpcError as exc:
            raise RuntimeError(f"a benchmark query failed: {exc.code().name}: "
                               f"{exc.details()}") from exc
        finally:
            for proc in procs:
                stop_mesh(proc)
        return _report(meshes, queries, len(receiver.spans()))
