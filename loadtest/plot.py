"""A sweep as a PNG: p50/p99 latency and the share within the SLO against the rate
(matplotlib, headless; a dev dependency, so the plot is skipped without it)."""

from __future__ import annotations

import math
from pathlib import Path

from loadtest.results import HELD_SHARE, RunResult


def plot_sweep(path: Path, title: str, results: list[RunResult]) -> Path | None:
    """Write the PNG; None (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rates = [r.offered_rps or 0.0 for r in results]
    slo = results[0].slo_ms if results else None
    fig, (lat_ax, share_ax) = plt.subplots(1, 2, figsize=(11, 4))
    lat_ax.plot(rates, [r.latency_ms[50] for r in results], marker="o", label="p50")
    lat_ax.plot(rates, [r.p99_ms for r in results], marker="o", label="p99")
    if slo:
        lat_ax.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:g} ms")
    lat_ax.set(xlabel="offered rate (calls/s)", ylabel="latency of OK calls (ms)",
               yscale="log", title=f"{title}: latency")
    shares = [math.nan if r.within_slo is None else 100 * r.within_slo for r in results]
    share_ax.plot(rates, shares, marker="o", label="answered within SLO")
    share_ax.axhline(100 * HELD_SHARE, color="grey", linestyle="--",
                     label=f"{HELD_SHARE:.1%}")
    share_ax.set(xlabel="offered rate (calls/s)", ylabel="calls (%)", ylim=(0, 101),
                 title=f"{title}: within SLO (defaults count as misses)")
    for ax in (lat_ax, share_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
