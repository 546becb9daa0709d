"""PNG plots of benchmark runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from benchmarks.loadgen import RunResult


def save(fig: Figure, axes: tuple[Axes, ...], path: Path, legend_loc: str = "best") -> None:
    """Grid and legend on each axis, then write the PNG and free the figure."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=legend_loc)  # type: ignore[call-overload]
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_curves(path: Path, title: str, slo_ms: float,
                series: dict[str, list[RunResult]]) -> None:
    """p99 latency and achieved throughput against offered load, one line per batcher."""
    fig, (lat_ax, thr_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in series.items():
        runs = sorted(runs, key=lambda r: r.offered_qps)
        offered = [r.offered_qps for r in runs]
        p99 = [min(r.percentile_ms(99), 10 * slo_ms) for r in runs]
        lat_ax.plot(offered, p99, marker="o", label=label)
        thr_ax.plot(offered, [r.goodput_qps for r in runs], marker="o", label=label)
    lat_ax.axhline(slo_ms, color="grey", linestyle="--", label=f"SLO {slo_ms:g} ms")
    lat_ax.set(xlabel="offered load (queries/s)", ylabel="p99 latency (ms, capped)",
               yscale="log", title=f"{title}: p99 latency")
    thr_ax.set(xlabel="offered load (queries/s)", ylabel="answers within SLO per s",
               title=f"{title}: goodput")
    save(fig, (lat_ax, thr_ax), path)


def burst(path: Path, runs: dict[str, RunResult], window_s: float = 0.25) -> None:
    """Goodput and reported queue depth over time under a burst."""
    fig, (good_ax, depth_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run in runs.items():
        edges = [i * window_s for i in range(int(run.duration_s / window_s) + 1)]
        good = [0] * len(edges)
        depth = [0] * len(edges)
        for o in run.outcomes:
            i = min(int(o.sent_at / window_s), len(edges) - 1)
            good[i] += o.ok and o.latency_s <= run.slo_s
            depth[i] = max(depth[i], o.queue_depth)
        good_ax.plot(edges, [g / window_s for g in good], label=label)
        depth_ax.plot(edges, depth, label=label)
    good_ax.set(xlabel="time (s)", ylabel="answers within SLO per s", title="goodput")
    depth_ax.set(xlabel="time (s)", ylabel="queue depth (max per window)", title="queue depth")
    for ax in (good_ax, depth_ax):
        ax.axvspan(2.0, 4.0, color="orange", alpha=0.15)
    save(fig, (good_ax, depth_ax), path)
