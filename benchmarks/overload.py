"""Past capacity: goodput and latency of the `make run` mesh at 1x, 2x and 4x its strict
capacity, with the frontend's shedding on (the default) and off, in the same run.

ghz drives the frontend open loop with distinct inputs (thousands of test digits, each
made distinct, served round robin: no query is a cache hit), through an application
without a default, so that a late answer is a failure. Goodput is answers within the
20 ms SLO per second. Shedding off is the frontend with admission limits out of reach:
what it did before it shed (`--admission off`).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from benchmarks import plots
from benchmarks.ghz_limit import GHZ, STRICT_APP, TOKEN, register_strict_copy
from benchmarks.mesh_latency import start_mesh, stop_mesh
from benchmarks.process_cpu import KINDS, CpuUse, measured, mesh_processes, tree_memory
from services.mesh import digits

SLO_S = 0.020
CAPACITY_RATES = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 800, 1000)
MULTIPLES = (1, 2, 4)
RUN_S = 4
CORES = os.cpu_count() or 1
SHEDDING_OFF = {"CLIPPER_FRONTEND_ADMISSION": "off"}


@dataclass
class Run:
    """One ghz run: each call's latency (s) and status name."""

    rate: int
    seconds: float
    calls: list[tuple[float, str]] = field(default_factory=list)
    cpu: CpuUse = field(default_factory=CpuUse)

    @property
    def goodput(self) -> float:
        return sum(s == "OK" and t <= SLO_S for t, s in self.calls) / self.seconds

    @property
    def within_slo(self) -> float:
        return sum(s == "OK" and t <= SLO_S for t, s in self.calls) / max(len(self.calls), 1)

    def quantile_ms(self, q: float, status: str) -> float:
        """The `q` quantile of the latency of calls that ended with `status` (ms)."""
        picked = [t for t, s in self.calls if s == status]
        return float(np.quantile(picked, q) * 1000) if picked else float("nan")

    def count(self, status: str) -> int:
        return sum(s == status for _, s in self.calls)


def ghz_run(target: str, payload: Path, rate: int, seconds: float,
            connections: int = 2) -> Run:
    """ghz open loop at `rate` for `seconds` over `connections` connections."""
    workers = max(10, connections, min(500, rate // 4))
    done = subprocess.run(
        [str(GHZ), "--insecure", "--call", "clipper.v1.Frontend/Predict", "-D", str(payload),
         "--rps", str(rate), "-z", f"{seconds}s", "--duration-stop", "wait", "-t", "2s",
         "-c", str(workers), "--connections", str(connections), "--format", "json", target],
        capture_output=True, text=True, timeout=seconds * 10 + 60, check=False,
    )
    if done.returncode not in (0, 1) or not done.stdout:
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr}")
    details = json.loads(done.stdout).get("details") or []
    run = Run(rate, float(seconds))
    run.calls = [(d["latency"] / 1e9, _status(d)) for d in details]
    return run


def _status(detail: dict[str, object]) -> str:
    status = str(detail.get("status", ""))
    return "OK" if status == "OK" else status.replace(" ", "")


def write_payload(work: Path, count: int = 4000, application: str = STRICT_APP) -> Path:
    """`count` distinct digits queries to `application`, as a ghz data array."""
    _, x_test, _, _ = digits.split()
    rng = np.random.default_rng(7)
    rows = np.resize(x_test, (count, x_test.shape[1])).astype(np.float32)
    rows += rng.random(rows.shape, dtype=np.float32) * 0.01  # every row distinct
    work.mkdir(parents=True, exist_ok=True)
    payload = work / "overload-payload.json"
    payload.write_text(json.dumps([
        {"application": application,
         "input": {"dtype": "float32", "shape": [64],
                   "raw": base64.b64encode(row.tobytes()).decode()}}
        for row in rows
    ]))
    return payload


def strict_capacity(target: str, payload: Path, connections: int = 2) -> int:
    """The highest rate with at least 99% of answers within the SLO (the lowest if none)."""
    best = CAPACITY_RATES[0]
    for rate in CAPACITY_RATES:
        run = max((ghz_run(target, payload, rate, 2, connections) for _ in range(2)),
                  key=lambda r: r.within_slo)
        if run.within_slo < 0.99:
            break
        best = rate
    return best


def measure(work: Path, env: dict[str, str], capacity: int | None, payload: Path
            ) -> tuple[int, list[Run], float]:
    """Start a mesh with `env`; its capacity (measured when None), runs at each multiple of
    it, and the frontend tree's memory growth over the runs (MB)."""
    proc, address, _ = start_mesh(work, "--slo-ms", "20",
                                  env={"CLIPPER_MANAGEMENT_TOKEN": TOKEN, **env})
    try:
        register_strict_copy(address)
        ghz_run(address, payload, 50, 1)  # uncounted: first queries load code
        if capacity is None:
            capacity = strict_capacity(address, payload)
        before = tree_memory(proc.pid).pss_mb
        pids = mesh_processes(proc.pid)
        runs = []
        for multiple in MULTIPLES:
            with measured(pids) as cpu:
                runs.append(ghz_run(address, payload, capacity * multiple, RUN_S))
            runs[-1].cpu = cpu
        after = tree_memory(proc.pid).pss_mb
    finally:
        stop_mesh(proc)
    return capacity, runs, after - before


def run(out: Path, work: Path) -> str:
    title = "## Overload: goodput past capacity, shedding on and off (20 ms SLO)"
    if not GHZ.exists():
        return f"{title}\n\nSkipped: ghz is not built (`make ghz`).\n"
    payload = write_payload(work)
    capacity, on, on_mb = measure(work / "shed-on", {}, None, payload)
    _, off, off_mb = measure(work / "shed-off", SHEDDING_OFF, capacity, payload)
    _plot(out / "overload.png", capacity, {"shedding on": on, "shedding off": off})
    lines = [title, "",
             f"Strict capacity (99% within 20 ms, shedding on): **{capacity} q/s**. "
             f"{RUN_S} s per rate, ghz open loop, distinct inputs.", "",
             "| frontend | offered | goodput q/s | vs 1x | p50 / p99 answered ms | "
             "refused | refused p99 ms | other errors |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in (("shedding on", on), ("shedding off", off)):
        base = runs[0].goodput or 1.0
        for r in runs:
            other = len(r.calls) - r.count("OK") - r.count("ResourceExhausted")
            lines.append(
                f"| {name} | {r.rate} ({r.rate // capacity}x) | {r.goodput:.0f} | "
                f"{r.goodput / base:.2f}x | {r.quantile_ms(0.5, 'OK'):.1f} / "
                f"{r.quantile_ms(0.99, 'OK'):.1f} | {r.count('ResourceExhausted')} | "
                f"{r.quantile_ms(0.99, 'ResourceExhausted'):.1f} | {other} |")
    lines += ["", "CPU per offered query (ms) by process, and the share of the machine's "
              f"{CORES} cores busy (the load generator shares them):", "",
              "| frontend | offered | " + " | ".join(KINDS) + " | ghz | machine busy |",
              "|---|---|" + "---|" * (len(KINDS) + 2)]
    for name, runs in (("shedding on", on), ("shedding off", off)):
        for r in runs:
            offered = len(r.calls)
            busy = (r.cpu.mesh_s + r.cpu.seconds.get("load", 0.0)) / r.seconds / CORES
            lines.append(f"| {name} | {r.rate // capacity}x | " + " | ".join(
                f"{r.cpu.per_query_ms(kind, offered):.2f}" for kind in (*KINDS, "load"))
                + f" | {busy:.0%} |")
    lines += ["", "Memory (proportional set size) of the mesh's processes over the runs: "
              f"{on_mb:+.0f} MB shedding on, {off_mb:+.0f} MB off.", "", "![](overload.png)", ""]
    return "\n".join(lines)


def _plot(path: Path, capacity: int, series: dict[str, list[Run]]) -> None:
    fig, (good_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in series.items():
        offered = [r.rate for r in runs]
        good_ax.plot(offered, [r.goodput for r in runs], marker="o", label=name)
        lat_ax.plot(offered, [r.quantile_ms(0.99, "OK") for r in runs], marker="o",
                    label=f"{name}: p99 answered")
        lat_ax.plot(offered, [r.quantile_ms(0.5, "OK") for r in runs], marker=".",
                    linestyle="--", label=f"{name}: p50 answered")
    lat_ax.axhline(SLO_S * 1000, color="grey", linestyle=":", label="SLO")
    good_ax.set(xlabel="offered q/s", ylabel="answers within SLO per s",
                title=f"goodput (capacity {capacity} q/s)")
    lat_ax.set(xlabel="offered q/s", ylabel="ms", yscale="log", title="latency of answers")
    plots.save(fig, (good_ax, lat_ax), path)
