"""A query's span and access-log record at the frontend.

`QueryPath` uses `observed_predict` in place of its own `predict` only when tracing
is on or the access log samples queries, so that otherwise a query does no work
here at all. The query's span (`clipper.query`, continuing the client's trace
when it sent one) is the parent of the spans the query path makes:
`clipper.admit` (validation, quotas and admission), `clipper.select`, one
`clipper.model` per model asked (its cache lookup and replica calls below it) and
`clipper.combine`. A query past its SLO is marked `clipper.slo_miss` so that a
collector can keep slow traces.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common import tracing
from services.common.errors import ClipperError

if TYPE_CHECKING:
    from services.frontend.query_path import Prediction, QueryPath

Predict = Callable[..., Awaitable["Prediction"]]

# The longest application name or query id an access log line carries.
MAX_LOGGED = 128


async def observed_predict(path: QueryPath, predict: Predict, app_name: str, *args: Any,
                           **kwargs: Any) -> Prediction:
    """`predict(path, app_name, ...)` in the query's span, and its access-log record."""
    logged = path.access_log.sampled()
    started = time.perf_counter()
    prediction: Prediction | None = None
    status = "OK"
    try:
        if not tracing.enabled:
            prediction = await predict(path, app_name, *args, **kwargs)
            return prediction
        with tracing.tracer().start_as_current_span(
                "clipper.query", kind=SpanKind.SERVER,
                attributes={"clipper.application": app_name[:MAX_LOGGED]}) as span:
            try:
                prediction = await predict(path, app_name, *args, **kwargs)
            except ClipperError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code.name)
                raise
            if span.is_recording():
                slo_ms = path.registry.apps[app_name].slo_ms if app_name in path.registry.apps \
                    else 0
                describe_query(span, prediction, slo_ms, (time.perf_counter() - started) * 1000)
            return prediction
    except ClipperError as exc:
        status = exc.code.name
        raise
    except BaseException:
        status = "INTERNAL"
        raise
    finally:
        if logged:
            path.access_log.write(_access_fields(app_name, args, kwargs, prediction, status,
                                                 (time.perf_counter() - started) * 1000))


def _access_fields(app_name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                   prediction: Prediction | None, status: str,
                   latency_ms: float) -> dict[str, Any]:
    query_id = prediction.query_id if prediction else kwargs.get(
        "query_id", args[2] if len(args) > 2 else "")
    # What the client sent may be refused for its length or characters: logged cut.
    fields: dict[str, Any] = {"application": app_name[:MAX_LOGGED],
                              "query_id": str(query_id)[:MAX_LOGGED],
                              "status": status, "latency_ms": round(latency_ms, 3)}
    if prediction is not None:
        fields.update(models=prediction.models, missing_models=prediction.missing_models,
                      default_used=prediction.default_used,
                      default_cause=prediction.default_cause)
    return fields


def describe_query(span: Span, p: Prediction, slo_ms: int, latency_ms: float) -> None:
    slo_miss = p.default_cause == "deadline" or (slo_ms > 0 and latency_ms > slo_ms)
    span.set_attributes({
        "clipper.query_id": p.query_id,
        "clipper.models": p.models,
        "clipper.missing_models": p.missing_models,
        "clipper.default_used": p.default_used,
        "clipper.default_cause": p.default_cause,
        "clipper.confidence": p.confidence,
        "clipper.slo_ms": slo_ms,
        "clipper.latency_ms": latency_ms,
        "clipper.slo_miss": slo_miss,
    })
    if slo_miss:
        span.set_status(Status(StatusCode.ERROR, f"SLO missed ({slo_ms} ms)"))


def mark_admitted() -> None:
    """`clipper.admit`: from the query's start to now (validation, quotas, admission)."""
    query_span = trace.get_current_span()
    start_ns = getattr(query_span, "start_time", None)
    if query_span.is_recording() and start_ns:
        tracing.tracer().start_span("clipper.admit", start_time=start_ns).end()


@contextmanager
def combine_span() -> Iterator[Span]:
    with tracing.tracer().start_as_current_span("clipper.combine") as span:
        yield span


def describe_combine(span: Span, p: Prediction) -> None:
    if not span.is_recording():
        return
    span.set_attributes({
        "clipper.confidence": p.confidence,
        "clipper.models": p.models,
        "clipper.missing_models": p.missing_models,
        "clipper.default_used": p.default_used,
        "clipper.default_cause": p.default_cause,
        "clipper.default_reason": p.default_reason,
    })


async def observed_feedback(path: QueryPath, feedback: Callable[..., Awaitable[list[str]]],
                            app_name: str, *args: Any, **kwargs: Any) -> list[str]:
    """`feedback(path, app_name, ...)` in its own span (`clipper.feedback`), linked to the
    query's trace when it names a traced query (`link_query`)."""
    with tracing.tracer().start_as_current_span(
            "clipper.feedback", kind=SpanKind.SERVER,
            attributes={"clipper.application": app_name}) as span:
        models: list[str] = await feedback(path, app_name, *args, **kwargs)
        span.set_attribute("clipper.models", models)
        return models


def link_query(trace_context: Mapping[str, str]) -> None:
    """Link the current span (a feedback's) to the span of the query it is about."""
    span_context = tracing.span_context_of(trace_context)
    span = trace.get_current_span()
    if span_context is not None and span.is_recording():
        span.add_link(span_context)
