"""Multiplicative weights kept as log-weights, shared by Exp3 and Exp4.

Log-weights are shifted so the largest is 0 and floored at -ln(MAX_RATIO): no
model's weight falls below 1/MAX_RATIO of the best one's, so a model that was
written off can come back, and a leader that degrades is overtaken within a
bounded number of rounds (at most ln(MAX_RATIO) / eta losses).
"""

from __future__ import annotations

import math

from services.selection.policies.base import State, model_stats

MAX_RATIO = 1000.0


def log_weight(state: State, model: str) -> float:
    stats = state.get("models", {}).get(model)
    return float(stats.get("log_w", 0.0)) if stats else 0.0


def probabilities(state: State, candidates: tuple[str, ...]) -> dict[str, float]:
    """Softmax of the candidates' log-weights (unknown models start level with the best)."""
    logs = {m: log_weight(state, m) for m in candidates}
    top = max(logs.values())
    exps = {m: math.exp(v - top) for m, v in logs.items()}
    total = sum(exps.values())
    return {m: e / total for m, e in exps.items()}


def penalize(
    state: State, candidates: tuple[str, ...], losses: dict[str, float], eta: float
) -> None:
    """log_w[m] -= eta * loss[m]; then shift and floor the candidates (and known models)."""
    for model in candidates:
        model_stats(state, model).setdefault("log_w", 0.0)
    for model, loss in losses.items():
        stats = model_stats(state, model)
        stats["log_w"] = float(stats.get("log_w", 0.0)) - eta * loss
    models = state.get("models", {})
    top = max(float(s.get("log_w", 0.0)) for s in models.values())
    floor = -math.log(MAX_RATIO)
    for stats in models.values():
        stats["log_w"] = max(float(stats.get("log_w", 0.0)) - top, floor)
