"""`make bench`: every benchmark, bounded in time; figures as ratios against same-run baselines.

Writes bench-results/report.md and PNG plots beside it, and prints the report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import batching_gain as gain
from benchmarks import (
    cpu_per_query,
    ghz_limit,
    mesh_latency,
    overhead,
    overload,
    paper_table,
    plots,
    runtimes,
    selection_experiments,
    tls_cost,
    tracing_cost,
    workers,
)
from benchmarks.harness import capacity, workdir
from benchmarks.loadgen import RunResult
from services.mesh import digits

SECTIONS = ("mesh", "container", "digits", "paper", "frontend", "slo", "burst", "overhead",
            "limit", "selection", "tls", "tracing", "overload", "runtimes", "workers", "cpu")


def _capacity_table(caps: list[gain.Capacity]) -> list[str]:
    base = next(c for c in caps if c.label == "batch size 1")
    rows = ["| batcher | highest rate, 99% within SLO (q/s) | vs batch size 1 | "
            "highest rate, 95% within SLO (q/s) | vs batch size 1 |", "|---|---|---|---|---|"]
    rows += [f"| {c.label} | {c.qps:.0f} | {_ratio(c.qps, base.qps)} | {c.qps95:.0f} | "
             f"{_ratio(c.qps95, base.qps95)} |" for c in caps]
    return rows


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}x" if base else "n/a (baseline 0)"


async def run(out: Path, sections: tuple[str, ...], queries: int) -> str:
    lines = ["# Benchmark report", "",
             "Every figure is measured in one run on this machine; ratios are against "
             "baselines from the same run. SLO 20 ms unless stated.", ""]
    adaptive_capacity, capacity_basis = 0.0, ""
    with workdir() as work:
        if "mesh" in sections:
            lines += [mesh_latency.run(out, queries), ""]
        if "runtimes" in sections:
            lines += [await runtimes.measure(work / "runtimes"), ""]
        if "tls" in sections:
            lines += [tls_cost.run(out, queries), ""]
        if "tracing" in sections:
            lines += [tracing_cost.run(out, queries), ""]
        if "overload" in sections:
            lines += [await asyncio.to_thread(overload.run, out, work / "overload"), ""]
        if "workers" in sections:
            lines += [await asyncio.to_thread(workers.run, work / "workers"), ""]
        if "cpu" in sections:
            lines += [await asyncio.to_thread(cpu_per_query.run, work / "cpu"), ""]
        if "container" in sections:
            caps = await gain.container_capacities(work, gain.SYNTHETIC, np.ones(4, np.float32))
            adaptive = next(c for c in caps if c.label == "adaptive")
            # Capacity as the batching gain defines it (p99 within the SLO); the 95% figure
            # only when no rate met that.
            adaptive_capacity, capacity_basis = ((adaptive.qps, "p99") if adaptive.qps
                                                 else (adaptive.qps95, "95%"))
            plots.load_curves(out / "container-synthetic.png", "synthetic, container", 20,
                              {c.label: c.probes for c in caps})
            lines += ["## Batching gain at the container: synthetic model "
                      "(5 ms per batch + 0.1 ms per item)", "", *_capacity_table(caps), "",
                      "![](container-synthetic.png)", ""]
        if "digits" in sections:
            model_dir = work / "models"
            paths = digits.train(model_dir)
            value = gain.digits_input()
            caps = await gain.container_capacities(work, str(paths["digits-svm"]), value)
            plots.load_curves(out / "container-digits.png", "digits SVM, container", 20,
                              {c.label: c.probes for c in caps})
            lines += ["## Batching gain at the container: digits SVM", "",
                      *_capacity_table(caps), "", "![](container-digits.png)", ""]
        if "paper" in sections:
            lines += [paper_table.report(await paper_table.measure(work)),
                      await paper_table.handoff_report(), ""]
        if "frontend" in sections:
            caps = await gain.frontend_capacities(work, np.ones(4, np.float32))
            plots.load_curves(out / "frontend-synthetic.png", "synthetic, via frontend", 20,
                              {c.label: c.probes for c in caps})
            lines += ["## Batching gain through the frontend: synthetic model", "",
                      *_capacity_table(caps), "", "![](frontend-synthetic.png)", ""]
        if adaptive_capacity and "slo" in sections:
            results = await gain.slo_attainment(work, adaptive_capacity)
            lines += [f"## SLO attainment, adaptive batcher, open-loop Poisson load "
                      f"(capacity, the highest rate with {capacity_basis} within the SLO: "
                      f"{adaptive_capacity:.0f} q/s)", "",
                      "The no-op model runs through the same container and client at the same "
                      "rates: what this machine and the runtime allow with nothing to batch.", "",
                      "| load | offered q/s | answered within SLO | p99 ms | no-op model: within "
                      "SLO | no-op p99 ms |", "|---|---|---|---|---|---|"]
            lines += [f"| {share:.0%} | {r.offered_qps:.0f} | {r.within_slo:.2%} | "
                      f"{r.percentile_ms(99):.1f} | {noop.within_slo:.2%} | "
                      f"{noop.percentile_ms(99):.1f} |" for share, (r, noop) in results.items()]
            lines.append("")
        if adaptive_capacity and "burst" in sections:
            runs = await gain.bursts(work, adaptive_capacity)
            plots.burst(out / "burst.png", runs)
            lines += ["## Burst: 30% of capacity, 150% for 2 s (t = 2..4 s), back to 30%", "",
                      "| batcher | goodput during burst (q/s) | goodput after (q/s) | "
                      "max queue depth |", "|---|---|---|---|"]
            for label, r in runs.items():
                lines.append(f"| {label} | {_goodput(r, 2, 4):.0f} | {_goodput(r, 4, 7):.0f} | "
                             f"{max((o.queue_depth for o in r.outcomes), default=0)} |")
            lines += ["", "![](burst.png)", ""]
        if "overhead" in sections:
            res = await overhead.noop_overhead(work)
            lines += ["## Overhead: no-op model, one query at a time", "",
                      "| path | p50 ms | p99 ms | p50 vs container stream |", "|---|---|---|---|"]
            stream_p50 = res["container stream"].percentile_ms(50)
            for label, r in res.items():
                lines.append(f"| {label} | {r.percentile_ms(50):.3f} | {r.percentile_ms(99):.3f}"
                             f" | {r.percentile_ms(50) / stream_p50:.2f}x |")
            lines.append("")
        if "limit" in sections:
            mesh_runs, echo_runs = await overhead.mesh_vs_echo(work)
            echo_qps, mesh_qps = capacity(echo_runs, 0.99), capacity(mesh_runs, 0.999)
            echo95, mesh95 = capacity(echo_runs, 0.95), capacity(mesh_runs, 0.95)
            plots.load_curves(out / "mesh-limit.png", "mesh vs echo", 20,
                              {"mesh (digits, 3 models)": mesh_runs, "grpc echo": echo_runs})
            lines += ["## The whole mesh against the gRPC limit (20 ms SLO)", "",
                      "| server | highest rate, strict (q/s) | vs echo | highest rate, 95% "
                      "within SLO (q/s) | vs echo |", "|---|---|---|---|---|",
                      f"| bare grpc.aio echo, same payload (strict: 99%) | {echo_qps:.0f} | 1.00x "
                      f"| {echo95:.0f} | 1.00x |",
                      f"| `make run` mesh, digits, 3 models (strict: 99.9% real answers) | "
                      f"{mesh_qps:.0f} | {_ratio(mesh_qps, echo_qps)} | {mesh95:.0f} | "
                      f"{_ratio(mesh95, echo95)} |", "", "![](mesh-limit.png)", ""]
            lines += await _ghz_limit(out, work)
        if "selection" in sections:
            lines += [await selection_experiments.run(out, work), ""]
    return "\n".join(lines)


async def _ghz_limit(out: Path, work: Path) -> list[str]:
    """The same comparison with ghz as the load generator (skipped without ghz)."""
    title = "## The whole mesh against the gRPC limit, load from ghz (20 ms SLO)"
    if not ghz_limit.available():
        return [title, "", "Skipped: ghz is not built (`make ghz`).", ""]
    mesh_runs, echo_runs = await ghz_limit.mesh_vs_echo(work / "ghz")
    echo_qps, mesh_qps = capacity(echo_runs, 0.99), capacity(mesh_runs, 0.999)
    echo95, mesh95 = capacity(echo_runs, 0.95), capacity(mesh_runs, 0.95)
    plots.load_curves(out / "mesh-limit-ghz.png", "mesh vs echo (ghz)", 20,
                      {"mesh (digits, 3 models)": mesh_runs, "grpc echo": echo_runs})
    return [title, "",
            "ghz runs in its own process, open loop at each rate; the mesh is queried "
            "through an application without a default, so a late query is a failure.", "",
            "| server | highest rate, strict (q/s) | vs echo | highest rate, 95% within SLO "
            "(q/s) | vs echo |", "|---|---|---|---|---|",
            f"| bare grpc.aio echo (strict: p99) | {echo_qps:.0f} | 1.00x | {echo95:.0f} | "
            "1.00x |",
            f"| `make run` mesh, digits, 3 models (strict: 99.9%) | {mesh_qps:.0f} | "
            f"{_ratio(mesh_qps, echo_qps)} | {mesh95:.0f} | {_ratio(mesh95, echo95)} |", "",
            "![](mesh-limit-ghz.png)", ""]


def _goodput(run: RunResult, start_s: float, end_s: float) -> float:
    good = sum(o.ok and o.latency_s <= run.slo_s and start_s <= o.sent_at < end_s
               for o in run.outcomes)
    return good / (end_s - start_s)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--out", default="bench-results")
    p.add_argument("--queries", type=int, default=1000, help="queries for the latency figures")
    p.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = asyncio.run(run(out, tuple(args.only), args.queries))
    report += f"\n_Benchmarks took {time.monotonic() - started:.0f} s._\n"
    (out / "report.md").write_text(report)
    print(report)
    print(f"written to {out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
