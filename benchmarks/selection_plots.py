"""PNG plots of the selection experiments (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.plots import save


def confidence_curve(path: Path, curves: dict[str, list[tuple[str, int, float]]],
                     best_single: float) -> None:
    """Accuracy per confidence bucket, one line per series, with the baseline as a line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [b[0] for b in next(iter(curves.values()), [])]
    for label, buckets in curves.items():
        kept = [(i, b) for i, b in enumerate(buckets) if b[1] > 0]
        ax.plot([i for i, _ in kept], [b[2] for _, b in kept], marker="o",
                label=f"Exp4, {label}")
    ax.axhline(best_single, color="tab:red", linestyle="--",
               label=f"best single model {best_single:.3f}")
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set(xlabel="confidence (share of weight agreeing with the answer)",
           ylabel="accuracy in bucket", ylim=(0, 1.05),
           title="Confidence against accuracy (Exp4, digits)")
    save(fig, (ax,), path, legend_loc="lower right")


def regret(path: Path, expected: list[np.ndarray], realized: np.ndarray, uniform: np.ndarray,
           best_share: list[np.ndarray], window: int) -> None:
    """Cumulative regret of Exp3 runs against uniform random choice; the best model's share."""
    fig, (reg_ax, share_ax) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = np.arange(1, len(uniform) + 1)
    for k, series in enumerate(expected, start=1):
        reg_ax.plot(rounds, series, label=f"Exp3 run {k}, expected")
    reg_ax.plot(rounds, realized, color="black", alpha=0.5, linewidth=0.8,
                label="Exp3, realized (mean of runs)")
    reg_ax.plot(rounds, uniform, color="tab:red", linestyle="--",
                label="uniform random choice (baseline)")
    reg_ax.set(xlabel="feedback rounds", ylabel="cumulative regret",
               title="Exp3: regret against the best model in hindsight")
    for k, series in enumerate(best_share, start=1):
        share_ax.plot(rounds, series[:len(rounds)], label=f"run {k}")
    share_ax.axhline(0.5, color="grey", linestyle="--", label="50%")
    share_ax.set(xlabel="feedback rounds", ylabel=f"share of the last {window} queries",
                 ylim=(0, 1.02), title="Exp3: traffic to the best model")
    save(fig, (reg_ax, share_ax), path)


def degradation(path: Path, accuracy: dict[str, np.ndarray], switch: int, window: int) -> None:
    """Trailing accuracy of each policy over the rounds, with the degradation marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, series in accuracy.items():
        ax.plot(np.arange(len(series)), series, label=label)
    ax.axvline(switch, color="grey", linestyle="--", label="best model degrades")
    ax.set(xlabel="feedback rounds", ylabel=f"accuracy of the last {window} answers",
           ylim=(0, 1.02), title="A model degrades mid-stream")
    save(fig, (ax,), path, legend_loc="lower left")


def latency_cdf(path: Path, latencies_ms: dict[str, list[float]], slo_ms: float) -> None:
    """Latency distribution of each run (log scale), with the SLO."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in latencies_ms.items():
        ordered = np.sort(np.asarray(values))
        ax.plot(ordered, np.arange(1, len(ordered) + 1) / max(len(ordered), 1), label=label)
    ax.axvline(slo_ms, color="grey", linestyle="--", label=f"SLO {slo_ms:g} ms")
    ax.set(xscale="log", xlabel="latency (ms)", ylabel="share of queries",
           title="Stragglers: latency with one model 10x over the SLO")
    save(fig, (ax,), path)


def adaptation(path: Path, title: str, curves: dict[str, dict[str, np.ndarray]], change: int,
               best_before: float, best_after: float, window: int) -> None:
    """Accuracy per round (mean over runs, `window`-round moving mean) per policy, one
    panel per scenario, with the best single model before and the best remaining after."""
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), sharey=True)
    for ax, (scenario, by_policy) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for policy, curve in by_policy.items():
            smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(len(smooth)) - change, smooth, label=policy, linewidth=1)
        ax.hlines(best_before, -change, 0, colors="black", linestyles="--",
                  label=f"best single model {best_before:.3f}")
        ax.hlines(best_after, 0, len(next(iter(by_policy.values()))) - change,
                  colors="tab:red", linestyles="--", label=f"best remaining {best_after:.3f}")
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="feedback rounds after the change", ylabel="accuracy",
               title=f"{title}: {scenario}", ylim=(0.4, 1.02))
    save(fig, tuple(np.atleast_1d(axes)), path, legend_loc="lower right")
