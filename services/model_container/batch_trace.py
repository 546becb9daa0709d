"""A container's spans for the traced queries of a batch, made once the batch is done.

A query carries its trace context from the frontend (`ContainerQuery.trace_context`,
sent only for sampled queries). For each such query: `clipper.container.query`
(from its arrival to its answer, continuing the frontend's `clipper.replica` span),
with `clipper.container.queue` (arrival to the batch being formed) and
`clipper.batch` (the batch's size, estimated and actual latency, and the query's
deadline slack) holding `clipper.model.call`. A batch shared by several traced
queries appears in each of their traces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common import tracing


class TracedItem(Protocol):
    @property
    def arrival(self) -> float: ...
    @property
    def deadline(self) -> float: ...
    @property
    def trace(self) -> otel_context.Context | None: ...


def record_batch(batch: Sequence[TracedItem], formed_at: float, started: float,
                 finished: float, estimate_s: float | None, error: str = "") -> None:
    """The spans of every traced query in `batch` (`clock.now()` moments)."""
    size = len(batch)
    for item in batch:
        if not item.trace:  # none, or a traceparent that did not parse
            continue
        slack_ms = (item.deadline - finished) * 1000
        query = tracing.tracer().start_span(
            "clipper.container.query", context=item.trace, kind=SpanKind.SERVER,
            start_time=tracing.epoch_ns(item.arrival),
            attributes={"clipper.deadline_slack_ms": slack_ms,
                        "clipper.deadline_missed": slack_ms < 0})
        inside = tracing.child_context(query)
        tracing.span_after("clipper.container.queue", inside, item.arrival, formed_at,
                           {"clipper.queue_ms": (formed_at - item.arrival) * 1000})
        batch_span = tracing.tracer().start_span(
            "clipper.batch", context=inside, start_time=tracing.epoch_ns(formed_at),
            attributes={
                "clipper.batch.size": size,
                "clipper.batch.estimated_ms": (estimate_s or 0.0) * 1000,
                "clipper.batch.actual_ms": (finished - started) * 1000,
                "clipper.deadline_slack_ms": slack_ms,
            })
        call = tracing.tracer().start_span("clipper.model.call",
                                           context=tracing.child_context(batch_span),
                                           start_time=tracing.epoch_ns(started))
        if error:
            for span in (call, batch_span, query):
                span.set_status(Status(StatusCode.ERROR, error))
        call.end(end_time=tracing.epoch_ns(finished))
        batch_span.end(end_time=tracing.epoch_ns(finished))
        query.end(end_time=tracing.epoch_ns(finished))
