"""The selection service's metrics (see services/common/metrics.py for how they are served)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from services.common.metrics import meter

if TYPE_CHECKING:
    from services.selection.weights import ArmWeight

_meter = meter("clipper.selection")

decisions = _meter.create_counter(
    "clipper.selection.decisions", description="Decisions made, by policy and outcome "
    "(ok, error)")
feedback = _meter.create_counter(
    "clipper.selection.feedback", description="Feedback observations learnt from, by policy "
    "and outcome (ok, error)")
decision_duration = _meter.create_histogram(
    "clipper.selection.decision.duration", unit="ms",
    description="Time to make a decision (its state read included), by policy")


def watch_states(sizes: Callable[[], tuple[int, int]]) -> None:
    """`clipper.selection.states`: the policy states this replica holds, by scope
    (application-wide, context), read from `sizes()` at each scrape."""
    def observe(_: CallbackOptions) -> Iterable[Observation]:
        app_wide, contexts = sizes()
        return [Observation(app_wide, {"scope": "application"}),
                Observation(contexts, {"scope": "context"})]

    _meter.create_observable_gauge(
        "clipper.selection.states", callbacks=[observe],
        description="Policy states held in memory by this replica, by scope (application, "
        "context)")


def watch_weights(weights: Callable[[], Iterable[ArmWeight]]) -> None:
    """`clipper.selection.weight` and `clipper.selection.reward_estimate` per application,
    policy, model and version, read from `weights()` (weights.py) at each scrape."""
    def labels(w: ArmWeight) -> dict[str, str]:
        return {"application": w.application, "policy": w.policy, "model": w.model,
                "version": w.version}

    def weight(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(w.weight, labels(w)) for w in weights() if w.weight is not None]

    def estimate(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(w.estimate, labels(w)) for w in weights()
                if w.estimate is not None]

    _meter.create_observable_gauge(
        "clipper.selection.weight", callbacks=[weight],
        description="Weight of each model an application's learning policy decides between "
        "(Exp3: probability of being drawn; Exp4: share of the ensemble), application-wide")
    _meter.create_observable_gauge(
        "clipper.selection.reward_estimate", callbacks=[estimate],
        description="Each model's mean reward (discounted) as an application's learning "
        "policy estimates it, application-wide")
