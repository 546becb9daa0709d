"""Per-method gRPC server metrics, and the client's trace context made current.

Recorded by the error-handling wrappers every servicer method already has
(services/common/errors.py), not by an interceptor: no extra coroutine per call.
One histogram, `rpc.server.duration` (Prometheus: `rpc_server_duration_milliseconds`),
labelled with the service, the method and the status code, gives the count, the
latency and the status of every method on every service. A long-lived stream
(a frontend's stream to a container) counts once, when it ends.
"""

from __future__ import annotations

import asyncio
import sys
import time

import grpc

from services.common import tracing
from services.common.metrics import meter

_meter = meter("clipper.rpc")
server_duration = _meter.create_histogram(
    "rpc.server.duration", unit="ms",
    description="Time to serve a gRPC call (a stream: its whole life), by service, method and "
    "status code")

Call = tuple[float, object | None]


class MethodStats:
    """The metrics of one servicer method (`qualname`: "FrontendServicer.Predict")."""

    def __init__(self, qualname: str) -> None:
        cls, _, method = qualname.rpartition(".")
        self._base = {"rpc.service": cls.removesuffix("Servicer"), "rpc.method": method}
        # Attribute dicts per status code, made once.
        self._attributes: dict[grpc.StatusCode, dict[str, str]] = {}

    def begin(self, context: grpc.aio.ServicerContext) -> Call:
        """At the start of a call: its start time, and the client's trace context made
        current (when tracing is on and the client sent one)."""
        token = tracing.attach_from_metadata(context.invocation_metadata()) \
            if tracing.enabled else None
        return time.perf_counter(), token

    def end(self, call: Call, context: grpc.aio.ServicerContext, detach: bool = True) -> None:
        """In the wrapper's `finally`: record the call with the status it ends with.

        `detach=False` for streams, whose generator may close in another context (the
        call's task ends with it anyway)."""
        started, token = call
        code = _status(sys.exc_info()[1], context)
        attributes = self._attributes.get(code)
        if attributes is None:
            attributes = self._attributes[code] = {**self._base,
                                                   "rpc.grpc.status_code": code.name}
        server_duration.record((time.perf_counter() - started) * 1000, attributes)
        if detach:
            tracing.detach(token)


def _status(exc: BaseException | None, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL
