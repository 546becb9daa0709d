"""Traces with OpenTelemetry: one trace per query across frontend, selection and containers.

Configured the OpenTelemetry way, from the environment, by `setup_tracing` in each
service's `__main__`:

- `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): where spans
  go, over OTLP/gRPC (`http://collector:4317`). Unset, or `OTEL_TRACES_EXPORTER=none`,
  or `OTEL_SDK_DISABLED=true`: tracing is off.
- `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: by default
  `parentbased_traceidratio` with the ratio in the argument (1.0 when unset): a
  client's sampled trace is kept, and of the queries that start here that share.
- `OTEL_SERVICE_NAME`: the service's name in traces (default `clipper-<service>`).

Tracing off costs nothing on the hot path: callers check the module flag `enabled`
(or `active()`, which also skips queries not sampled) before any span work, so no
span object, no-op or not, is made for a query. The W3C trace context travels in
gRPC metadata from clients (`traceparent`) and in the `trace_context` map of the
selection and container stream messages.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import Span, SpanKind, Tracer

from services.common import clock

logger = logging.getLogger(__name__)

# Read on the hot path: False until `setup_tracing` installs an exporter.
enabled = False
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
# Epoch nanoseconds at clock.now() == 0 (spans timed after the fact use clock.now()).
_epoch_offset_ns = 0

DEFAULT_SAMPLER = "parentbased_traceidratio"
# The metadata keys of the W3C trace context.
_CONTEXT_KEYS = frozenset(("traceparent", "tracestate"))

Carrier = dict[str, str]


def tracing_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, not disabled)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(service: str) -> bool:
    """Install the tracer provider and OTLP exporter when the environment asks for
    them; True when tracing is on."""
    global enabled, _tracer, _provider, _epoch_offset_ns
    if not tracing_requested():
        return False
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name != "otlp":
        logger.warning("OTEL_TRACES_EXPORTER=%s: only otlp (over gRPC) or none are "
                       "supported; using otlp", exporter_name)
    # Imported here: the exporter (and its gRPC client) loads only when traces go out.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {
        "service.name": f"clipper-{service}"}
    sampler = None  # the SDK reads OTEL_TRACES_SAMPLER(_ARG) itself
    if os.environ.get("OTEL_TRACES_SAMPLER", DEFAULT_SAMPLER) == DEFAULT_SAMPLER:
        sampler = ParentBasedTraceIdRatio(_ratio(os.environ.get("OTEL_TRACES_SAMPLER_ARG")))
    _provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("clipper")
    _epoch_offset_ns = time.time_ns() - int(clock.now() * 1e9)
    enabled = True
    logger.info("tracing on: OTLP to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return True


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop (at a service's exit)."""
    global enabled, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    enabled, _tracer, _provider = False, None, None


def _ratio(raw: str | None) -> float:
    if not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a ratio 0..1") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a ratio 0..1")
    return ratio


def tracer() -> Tracer:
    """The service's tracer (only once `enabled`)."""
    assert _tracer is not None, "tracing is off: check tracing.enabled first"
    return _tracer


def active() -> bool:
    """Whether the current query is traced (tracing on and its span sampled)."""
    return enabled and trace.get_current_span().is_recording()


def epoch_ns(moment: float) -> int:
    """A `clock.now()` moment as the epoch nanoseconds spans are stamped with."""
    return _epoch_offset_ns + int(moment * 1e9)


# ---------------------------------------------------------------- context

def from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> otel_context.Context | None:
    """The trace context a client sent in its call metadata, if any."""
    carrier = {k: v for k, v in metadata or () if k in _CONTEXT_KEYS and isinstance(v, str)}
    return propagate.extract(carrier) if carrier else None


def attach_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> object | None:
    """Make the client's trace context current for this call; a token for `detach`."""
    ctx = from_metadata(metadata)
    return otel_context.attach(ctx) if ctx is not None else None


def detach(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def carrier() -> Carrier | None:
    """The current span's context for a stream message, when it is sampled (an
    unsampled query sends none, so the services downstream do no span work for it)."""
    if not active():
        return None
    out: Carrier = {}
    propagate.inject(out)
    return out


def extract(carrier: Mapping[str, str]) -> otel_context.Context | None:
    """The context a stream message carried (None when it carried none)."""
    return propagate.extract(carrier) if carrier else None


def span_context_of(carrier: Mapping[str, str]) -> trace.SpanContext | None:
    """The span context in `carrier` (for a link), if valid."""
    ctx = extract(carrier)
    if ctx is None:
        return None
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


# ---------------------------------------------------------------- spans

def span_after(name: str, parent: otel_context.Context | None, start: float, end: float,
               attributes: Mapping[str, Any] | None = None,
               kind: SpanKind = SpanKind.INTERNAL) -> Span:
    """A span of something already timed (`clock.now()` moments), ended at `end`."""
    span = tracer().start_span(name, context=parent, kind=kind, attributes=attributes,
                               start_time=epoch_ns(start))
    span.end(end_time=epoch_ns(end))
    return span


def child_context(span: Span) -> otel_context.Context:
    """A context whose current span is `span` (to parent spans made after the fact)."""
    return trace.set_span_in_context(span)
