"""The selection service's metrics (see services/common/metrics.py for how they are served)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from services.common.metrics import meter

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
