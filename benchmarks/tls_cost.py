"""What TLS costs per query: the `make run` mesh in plaintext against the same mesh with
mTLS on every channel (client -> frontend -> selection and containers), same run.

Both meshes run at once and are queried in alternating blocks, one query at a time,
so that drift in the machine's load falls on both alike. Per process kind, the CPU
time (user + system, from /proc) the mesh's processes spent during their own blocks,
divided by the queries. Two applications: `digits` (policy all: frontend and the 3
containers) and `digits-exp4` (a learning policy: the selection service too). And the
cost of a new connection: connect, handshake and one query.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from benchmarks.mesh_latency import start_mesh, stop_mesh
from benchmarks.process_cpu import KINDS, cpu_s, mesh_processes
from services.common import tensors
from services.common.auth import bearer
from services.common.tls import ClientTLS, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits
from services.mesh.certs import make_ca, make_leaf

TOKEN = "bench-management-token"
APPS = ("digits", "digits-exp4")
BLOCK = 50  # queries per block before switching meshes
NEW_CONNECTIONS = 50


@dataclass
class _Mesh:
    label: str
    address: str
    pids: dict[str, list[int]]
    tls: ClientTLS | None
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    queries: dict[str, int] = field(default_factory=dict)


def _cpu_by_kind(pids: dict[str, list[int]]) -> dict[str, float]:
    return {kind: sum(cpu_s(p) for p in found) for kind, found in pids.items()}


def _create_exp4(address: str, tls: ClientTLS | None) -> None:
    app = pb.Application(
        name="digits-exp4",
        input_spec=pb.TensorSpec(dtype=digits.INPUT_DTYPE, shape=list(digits.INPUT_SHAPE)),
        slo_ms=100, policy="exp4", linked_models=list(digits.MODEL_NAMES),
        default_output=tensors.encode(np.int64(-1)))
    with sync_channel(address, tls) as channel:
        pb_grpc.ManagementStub(channel).CreateApplication(
            pb.ApplicationRequest(application=app), metadata=bearer(TOKEN), timeout=10)


def _block(mesh: _Mesh, stub: pb_grpc.FrontendStub, app: str, x: np.ndarray) -> None:
    """`len(x)` queries one at a time; their latency and the mesh's CPU meanwhile."""
    before = _cpu_by_kind(mesh.pids)
    client_before = time.process_time()
    samples = mesh.samples.setdefault(app, [])
    for row in x:
        request = pb.PredictRequest(application=app, input=tensors.encode(row))
        started = time.perf_counter()
        stub.Predict(request, timeout=5)
        samples.append(time.perf_counter() - started)
    after = _cpu_by_kind(mesh.pids)
    for kind in KINDS:
        key = f"{app}/{kind}"
        mesh.cpu_s[key] = mesh.cpu_s.get(key, 0.0) + after[kind] - before[kind]
    key = f"{app}/client"
    mesh.cpu_s[key] = mesh.cpu_s.get(key, 0.0) + time.process_time() - client_before
    mesh.queries[app] = mesh.queries.get(app, 0) + len(x)


def _new_connections(mesh: _Mesh, x: np.ndarray) -> list[float]:
    samples = []
    for row in x[:NEW_CONNECTIONS]:
        started = time.perf_counter()
        with sync_channel(mesh.address, mesh.tls) as channel:
            pb_grpc.FrontendStub(channel).Predict(
                pb.PredictRequest(application="digits", input=tensors.encode(row)), timeout=5)
        samples.append(time.perf_counter() - started)
    return samples


def _ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


def _measure(meshes: list[_Mesh], x: np.ndarray) -> dict[str, list[float]]:
    channels = [sync_channel(m.address, m.tls) for m in meshes]
    try:
        stubs = [pb_grpc.FrontendStub(c) for c in channels]
        for stub in stubs:  # warm-up, not counted
            for app in APPS:
                for row in x[:BLOCK]:
                    stub.Predict(pb.PredictRequest(application=app, input=tensors.encode(row)),
                                 timeout=5)
        for start in range(0, len(x), BLOCK):
            for app in APPS:
                for mesh, stub in zip(meshes, stubs, strict=True):
                    _block(mesh, stub, app, x[start:start + BLOCK])
    finally:
        for channel in channels:
            channel.close()
    return {m.label: _new_connections(m, x) for m in meshes}


def _report(meshes: list[_Mesh], connect: dict[str, list[float]], queries: int) -> str:
    plain, tls = meshes
    lines = [
        "## The cost of TLS per query (plaintext vs mTLS on every channel, same run)", "",
        f"The `make run` mesh twice, one plaintext, one with mTLS on every hop (ECDSA P-256 "
        f"certificates); {queries} queries per application and mesh, one at a time, in "
        f"alternating blocks of {BLOCK}. `digits`: policy all (frontend and 3 containers); "
        "`digits-exp4`: a learning policy (the selection service too).", "",
        "| application | plaintext p50 ms | p99 ms | mTLS p50 ms | p99 ms | p50 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for app in APPS:
        p50, p99 = _ms(plain.samples[app], 50), _ms(plain.samples[app], 99)
        t50, t99 = _ms(tls.samples[app], 50), _ms(tls.samples[app], 99)
        lines.append(f"| `{app}` | {p50:.3f} | {p99:.3f} | {t50:.3f} | {t99:.3f} | "
                     f"{t50 / p50:.2f}x |")
    c50p, c50t = _ms(connect[plain.label], 50), _ms(connect[tls.label], 50)
    lines += [f"| new connection + one `digits` query ({NEW_CONNECTIONS}) | {c50p:.3f} | "
              f"{_ms(connect[plain.label], 99):.3f} | {c50t:.3f} | "
              f"{_ms(connect[tls.label], 99):.3f} | {c50t / c50p:.2f}x |", "",
              "CPU per query (ms, user + system) by process, during each mesh's own blocks:",
              "", "| application | process | plaintext | mTLS | difference |",
              "|---|---|---|---|---|"]
    for app in APPS:
        for kind in (*KINDS, "client"):
            key = f"{app}/{kind}"
            p = plain.cpu_s[key] / plain.queries[app] * 1000
            t = tls.cpu_s[key] / tls.queries[app] * 1000
            name = "3 model containers" if kind == "model_container" else kind
            lines.append(f"| `{app}` | {name} | {p:.3f} | {t:.3f} | {t - p:+.3f} |")
    return "\n".join(lines)


def run(out: Path, queries: int) -> str:
    del out  # figures only, no plot
    _, x_test, _, _ = digits.split()
    x = np.resize(x_test, (queries, x_test.shape[1])).astype(np.float32)
    env = {"CLIPPER_MANAGEMENT_TOKEN": TOKEN}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca = make_ca(work / "pki", "ca")
        leaf = make_leaf(work / "pki", "mesh", ca)
        tls_flags = ["--tls-ca", str(ca.cert), "--tls-cert", str(leaf.cert),
                     "--tls-key", str(leaf.key), "--mtls"]
        client_tls = ClientTLS(str(ca.cert), str(leaf.cert), str(leaf.key))
        procs = []
        try:
            meshes = []
            for label, flags, tls in (("plaintext", [], None), ("mTLS", tls_flags, client_tls)):
                proc, address, _ = start_mesh(work / label, *flags, env=env)
                procs.append(proc)
                _create_exp4(address, tls)
                meshes.append(_Mesh(label, address, mesh_processes(proc.pid), tls))
            connect = _measure(meshes, x)
        except grpc.RpcError as exc:
            raise RuntimeError(f"a benchmark query failed: {exc.code().name}: "
                               f"{exc.details()}") from exc
        finally:
            for proc in procs:
                stop_mesh(proc)
    return _report(meshes, connect, queries)
