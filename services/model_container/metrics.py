"""A container's metrics. A process serving one model is named by its target_info
(MODEL_ATTRIBUTE); one serving several labels each model's metrics with `model`."""

from __future__ import annotations

from services.common.metrics import MODEL_METRIC_LABEL, meter

_meter = meter("clipper.container")


def model_attributes(model: str) -> dict[str, str]:
    """What a model's metrics are labelled with: none for "" (the process's only model)."""
    return {MODEL_METRIC_LABEL: model} if model else {}


batch_size = _meter.create_histogram(
    "clipper.batch.size", description="Queries per batch run by the model")
queue_delay = _meter.create_histogram(
    "clipper.queue.delay", unit="ms", description="Time from a query's arrival to its "
    "batch's start")
batch_duration = _meter.create_histogram(
    "clipper.batch.duration", unit="ms", description="Time the model took per batch")
refused = _meter.create_counter(
    "clipper.queries.refused", description="Queries not run, by reason (overloaded, expired)")
worker_switches = _meter.create_counter(
    "clipper.worker.switches", description="Moves of the model from worker threads to worker "
    "processes (--worker auto), by outcome (ok, failed: it stays on threads)")
warmup_duration = _meter.create_gauge(
    "clipper.warmup.duration", unit="ms", description="How long the warm-up took before the "
    "container announced itself")
streams = _meter.create_up_down_counter(
    "clipper.container.streams", description="Query streams open from frontends (one per "
    "frontend, whatever the models the process serves)")
