"""CPU per query of the `make run` mesh against a bare grpc.aio echo server, same run.

ghz drives each open loop at each rate, with distinct inputs and the cache off, through
two applications without a default (a late answer is a failure): the one-model
application (`digits-onnx`) and the three-model ensemble (`digits`). Every process's CPU
over the run is divided by the queries sent. The models' own compute comes from the
containers' batch durations, measured in process, and so does the mean batch size they
ran. The echo server answers Predict with its input, with the same payload: what a
query costs gRPC alone. The relay floor is the mesh's shape with no query logic and no
model: a relay process that forwards each query over one stream to each of one (or
three) stream-echo processes (benchmarks/relay_server.py), what the hops alone cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.ghz_limit import TOKEN, register_strict_copy
from benchmarks.mesh_latency import start_mesh, stop_mesh
from benchmarks.overload import Run, ghz_run, write_payload
from benchmarks.process_cpu import KINDS, CpuUse, measured, mesh_processes
from services.common.metrics import read_metrics, sample
from services.common.processes import start_service
from services.mesh import digits
from services.mesh.specs import METRICS_URLS

RATES = (100, 200, 400, 500, 600, 800)
RUN_S = 4
APPS = {"1 model": digits.ONNX_MODEL, "3 models": "digits"}
# The ensemble again on a mesh whose models share one process (make run --cohost).
COHOSTED = {"3 models, one process": "digits"}
# The relay floor of each: stream-echo processes, and the times a query goes to each.
FLOORS = {"1 model": (1, 1), "3 models": (3, 1), "3 models, one process": (1, 3)}
SLO_S = 0.020


@dataclass
class Point:
    """One ghz run at `rate`: its calls, the CPU of each process kind, and (for the
    mesh) the models' own compute per query and the mean batch size they ran."""

    rate: int
    run: Run
    cpu: CpuUse
    compute_ms: float = 0.0
    batch_size: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.run.calls)

    def cpu_ms(self, kind: str) -> float:
        return self.cpu.per_query_ms(kind, self.sent)

    @property
    def mesh_ms(self) -> float:
        return 1000 * self.cpu.mesh_s / max(self.sent, 1)


def _batch_totals(urls: list[str]) -> tuple[float, float, float]:
    """Summed over the services' /metrics: milliseconds the models ran, queries they ran,
    and batches."""
    found = [read_metrics(url) for url in urls]
    ran, queries, batches = (sum(sample(samples, name) for samples in found) for name in (
        "clipper_batch_duration_milliseconds_sum", "clipper_batch_size_sum",
        "clipper_batch_size_count"))
    return ran, queries, batches


def _sweep(address: str, payload: Path, pids: dict[str, list[int]]) -> list[Point]:
    """ghz at each rate against `address`, with the CPU of `pids` (by kind)."""
    ghz_run(address, payload, 50, 1)  # uncounted: first calls load code
    points = []
    for rate in RATES:
        with measured(pids) as cpu:
            run = ghz_run(address, payload, rate, RUN_S)
        points.append(Point(rate, run, cpu))
    return points


def measure_echo(work: Path) -> list[Point]:
    payload = write_payload(work)
    echo = start_service("benchmarks.echo_server", ["--port", "0"], name="echo-cpu")
    try:
        return _sweep(echo.address, payload, {"frontend": [echo.proc.pid]})
    finally:
        echo.stop()


def measure_floor(work: Path, upstreams: int, copies: int) -> list[Point]:
    """The relay floor for an application of `upstreams` model processes, each asked
    `copies` times per query, at each rate."""
    payload = write_payload(work)
    echoes = [start_service("benchmarks.relay_server", ["--stream-echo"], name=f"echo-{i}")
              for i in range(upstreams)]
    relay = start_service("benchmarks.relay_server",
                          ["--upstream", ",".join(e.address for e in echoes),
                           "--copies", str(copies)], name="relay")
    try:
        return _sweep(relay.address, payload, {"frontend": [relay.proc.pid],
                                               "model_container": [e.proc.pid for e in echoes]})
    finally:
        for service in (relay, *echoes):
            service.stop()


def measure_mesh(work: Path, apps: dict[str, str], *options: str) -> dict[str, list[Point]]:
    """Each application of `apps` (label -> name) at each rate, on one `make run` mesh
    started with `options`."""
    proc, address, _ = start_mesh(work / "mesh", "--slo-ms", "20", *options,
                                  env={"CLIPPER_MANAGEMENT_TOKEN": TOKEN})
    try:
        urls = (work / "mesh" / METRICS_URLS).read_text().split()
        pids = mesh_processes(proc.pid)
        found: dict[str, list[Point]] = {}
        for label, app in apps.items():
            payload = write_payload(work / app, application=register_strict_copy(address, app))
            ghz_run(address, payload, 50, 1)  # uncounted
            found[label] = []
            for rate in RATES:
                ran_before, queries_before, batches_before = _batch_totals(urls)
                with measured(pids) as cpu:
                    run = ghz_run(address, payload, rate, RUN_S)
                ran, queries, batches = _batch_totals(urls)
                found[label].append(Point(  # compute: all the application's models
                    rate, run, cpu, compute_ms=(ran - ran_before) / max(len(run.calls), 1),
                    batch_size=(queries - queries_before) / max(batches - batches_before, 1)))
        return found
    finally:
        stop_mesh(proc)


def run(work: Path) -> str:
    echo = measure_echo(work / "echo")
    floors = {label: measure_floor(work / f"floor-{i}", *shape)
              for i, (label, shape) in enumerate(FLOORS.items())}
    mesh = measure_mesh(work / "separate", APPS) | measure_mesh(work / "cohosted", COHOSTED,
                                                               "--cohost")
    lines = [
        "## CPU per query: the mesh against a bare grpc.aio echo server (20 ms SLO)",
        "",
        f"ghz open loop, {RUN_S} s per rate, distinct inputs, cache off, applications "
        "without a default; CPU is each process's own over the run divided by the queries "
        "sent (ms). Models' compute: the containers' batch durations per query, measured in "
        "process, all of an application's models per query; mean batch: queries per batch. "
        "Floor: the relay floor's CPU (relay + stream echoes) for as many models and "
        "processes. \"One process\": the mesh started with --cohost.",
        "",
        "| rate q/s | echo p50/p99 ms | echo CPU | application | p50/p99 ms | within SLO | "
        + " | ".join(KINDS)
        + " | mesh CPU | vs echo | floor | vs floor | models' compute | mean batch |",
        "|---|---|---|---|---|---|" + "---|" * len(KINDS) + "---|---|---|---|---|---|",
    ]
    for i, rate in enumerate(RATES):
        e = echo[i]
        for label, points in mesh.items():
            p, floor = points[i], floors[label][i]
            lines.append(
                f"| {rate} | {_p50_99(e.run)} | {e.cpu_ms('frontend'):.2f} | {label} | "
                f"{_p50_99(p.run)} | {p.run.within_slo:.1%} | "
                + " | ".join(f"{p.cpu_ms(kind):.2f}" for kind in KINDS)
                + f" | {p.mesh_ms:.2f} | {p.mesh_ms / max(e.cpu_ms('frontend'), 1e-9):.1f}x | "
                f"{floor.mesh_ms:.2f} | {p.mesh_ms / max(floor.mesh_ms, 1e-9):.1f}x | "
                f"{p.compute_ms:.2f} | {p.batch_size:.1f} |")
    return "\n".join([*lines, "", *_ensemble_lines(mesh)])


def _ensemble_lines(mesh: dict[str, list[Point]]) -> list[str]:
    """Each ensemble's CPU per query against the one-model application's plus the extra
    models' own compute (both measured in the same run): what an ensemble costs beyond
    its models."""
    one, *ensembles = mesh
    lines = ["Ensembles: mesh CPU per query vs the one-model application's plus the extra "
             "models' compute (ms):", "",
             "| rate q/s | " + " | ".join(ensembles) + " |", "|---|" + "---|" * len(ensembles)]
    for i, rate in enumerate(RATES):
        base = mesh[one][i]
        cells = []
        for label in ensembles:
            p = mesh[label][i]
            target = base.mesh_ms + p.compute_ms - base.compute_ms
            cells.append(f"{p.mesh_ms:.2f} vs {target:.2f} "
                         f"({p.mesh_ms / max(target, 1e-9):.2f}x)")
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    return lines


def _p50_99(run: Run) -> str:
    return f"{run.quantile_ms(0.5, 'OK'):.1f} / {run.quantile_ms(0.99, 'OK'):.1f}"
