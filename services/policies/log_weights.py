"""Multiplicative weights kept as log-weights, shared by Exp3 and Exp4.

Log-weights are shifted so the largest candidate's is 0 and floored at
-ln(max_ratio) (policy parameter, default MAX_RATIO): no model's weight falls
below 1/max_ratio of the best one's, so a model that was written off can come
back, and a leader that degrades is overtaken within a bounded number of rounds
(at most ln(max_ratio) / eta losses; fewer in an ensemble, where the others'
weights together outvote it). Arms that are not candidates (older versions of a
model) keep their place relative to the candidates, at most level with the best.
"""

from __future__ import annotations

import math

from services.policies.base import State, model_stats

MAX_RATIO = 1000.0


def log_weights(state: State, candidates: tuple[str, ...]) -> dict[str, float]:
    """The candidates' log-weights. A candidate without one (a new model, or a new version
    of one) starts level with the best of the others that have one: judged on its own
    answers from there, neither ahead of the models it joins nor written off."""
    known = state.get("models", {})
    logs = {m: float(known[m]["log_w"]) for m in candidates
            if m in known and "log_w" in known[m]}
    start = max(logs.values(), default=0.0)
    return {m: logs.get(m, start) for m in candidates}


def probabilities(state: State, candidates: tuple[str, ...]) -> dict[str, float]:
    """Softmax of the candidates' log-weights."""
    logs = log_weights(state, candidates)
    top = max(logs.values())
    exps = {m: math.exp(v - top) for m, v in logs.items()}
    total = sum(exps.values())
    return {m: e / total for m, e in exps.items()}


def penalize(
    state: State, candidates: tuple[str, ...], losses: dict[str, float], eta: float,
    max_ratio: float = MAX_RATIO,
) -> None:
    """log_w[m] -= eta * loss[m]; then shift and floor the candidates (and known models)."""
    for model, value in log_weights(state, candidates).items():
        model_stats(state, model).setdefault("log_w", value)
    for model, loss in losses.items():
        stats = model_stats(state, model)
        stats["log_w"] = float(stats.get("log_w", 0.0)) - eta * loss
    models = state.get("models", {})
    top = max(float(models[m]["log_w"]) for m in candidates)
    floor = -math.log(max_ratio)
    for model, stats in models.items():  # other versions keep their place relative to these
        shifted = float(stats.get("log_w", 0.0)) - top
        stats["log_w"] = max(shifted if model in candidates else min(shifted, 0.0), floor)


def demote(state: State, candidates: tuple[str, ...], models: list[str],
           max_ratio: float = MAX_RATIO) -> None:
    """Models whose reward dropped (base.ChangeDetector) fall to the floor at once, so a
    leader gone bad stops being drawn now rather than after ln(max_ratio) / eta losses;
    its own answers from there bring it back if the drop was noise."""
    floor = -math.log(max_ratio)
    for model in models:
        model_stats(state, model)["log_w"] = floor
    if models and all(m in models for m in candidates):
        return  # every candidate dropped: nothing better to prefer
    if models:
        penalize(state, candidates, {}, 0.0, max_ratio)  # shift so the best is at 0 again
