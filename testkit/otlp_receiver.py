"""An OTLP trace receiver on a loopback port: the services export their spans to it.

A small gRPC server implementing the OTLP TraceService (from the `opentelemetry-proto`
package), keeping every span it receives with the service.name of its resource.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    span: Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    def attribute(self, key: str) -> object:
        for kv in self.span.attributes:
            if kv.key == key:
                return _plain(kv.value)
        raise KeyError(key)


def _plain(value: AnyValue) -> object:
    """An OTLP attribute value as Python (an array as a list)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    return getattr(value, kind or "string_value")


class OtlpReceiver(otlp_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.endpoint = ""  # http://127.0.0.1:PORT, once serving
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(self, request: otlp.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> otlp.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            service = next((kv.value.string_value for kv in resource_spans.resource.attributes
                            if kv.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                received.extend(ReceivedSpan(service, span) for span in scope_spans.spans)
        with self._lock:
            self._spans.extend(received)
        return otlp.ExportTraceServiceResponse()

    def spans(self, trace_id: str = "") -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if not trace_id or s.trace_id == trace_id]

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], trace_id: str = "",
                 timeout_s: float = 20.0) -> list[ReceivedSpan]:
        """The spans (of `trace_id`) once `done(spans)`; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.spans(trace_id)
            if done(spans):
                return spans
            time.sleep(0.05)
        spans = self.spans(trace_id)
        raise AssertionError(f"spans not received in {timeout_s} s; have "
                             f"{sorted((s.service, s.name) for s in spans)}")


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A running receiver (spans go to its `endpoint`)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = OtlpReceiver()
    otlp_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(None)
