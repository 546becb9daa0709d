"""Errors with their gRPC status codes, mapped to the wire in one place.

    ClipperError                 (INTERNAL)
    ├── InvalidInput             (INVALID_ARGUMENT)  bad shape, dtype, size
    ├── NotFound                 (NOT_FOUND)         unknown application or model
    ├── AlreadyExists            (ALREADY_EXISTS)    creating what exists
    ├── Unauthenticated          (UNAUTHENTICATED)   no token
    ├── PermissionDenied         (PERMISSION_DENIED) wrong token
    ├── Overloaded               (RESOURCE_EXHAUSTED) queue full, load shed
    ├── Unavailable              (UNAVAILABLE)       no replica and no default
    └── DeadlineExpired          (DEADLINE_EXCEEDED) late and no default

`handle_errors` wraps every servicer method: a ClipperError aborts the call
with its code and message; any other exception is logged with its traceback
and the client sees INTERNAL "internal error".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import grpc

from services.common.rpc_stats import MethodStats
from services.generated.clipper.v1 import clipper_pb2 as pb

logger = logging.getLogger(__name__)


class ClipperError(Exception):
    """Base of every error that maps to a gRPC status."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(ClipperError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ClipperError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ClipperError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(ClipperError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClipperError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(ClipperError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        # Sent as the `grpc-retry-pushback-ms` trailer: when the client may try again.
        self.retry_after_ms = retry_after_ms


class QuotaExceeded(Overloaded):
    """A client past its quota for an application (RESOURCE_EXHAUSTED, with pushback)."""


PUSHBACK_KEY = "grpc-retry-pushback-ms"


def trailers(exc: ClipperError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes out with `exc`'s status."""
    if isinstance(exc, Overloaded) and exc.retry_after_ms is not None:
        return ((PUSHBACK_KEY, str(exc.retry_after_ms)),)
    return ()


class Unavailable(ClipperError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(ClipperError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_CODE_TO_ERROR: dict[grpc.StatusCode, type[ClipperError]] = {
    cls.code: cls
    for cls in (
        InvalidInput, NotFound, AlreadyExists, Unauthenticated, PermissionDenied,
        Overloaded, Unavailable, DeadlineExpired,
    )
}


def error_from_code(code: int | grpc.StatusCode, message: str) -> ClipperError:
    """Rebuild an error carried as data on a stream (its code and message)."""
    status = code if isinstance(code, grpc.StatusCode) else _status_from_int(code)
    return _CODE_TO_ERROR.get(status, ClipperError)(message)


def _status_from_int(value: int) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == value:
            return status
    return grpc.StatusCode.UNKNOWN


def code_value(code: grpc.StatusCode) -> int:
    """The integer a status code has on the wire."""
    return int(code.value[0])


def to_error_proto(exc: Exception) -> pb.Error:
    """An error as it travels on a stream: a ClipperError's code and message; anything
    else is INTERNAL "internal error" (its details belong in the log, not on the wire)."""
    if isinstance(exc, ClipperError):
        return pb.Error(code=code_value(exc.code), message=exc.message)
    return pb.Error(code=code_value(grpc.StatusCode.INTERNAL), message="internal error")


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def handle_errors(
    method: Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Map exceptions of a unary servicer method to gRPC statuses (and count the call)."""
    stats = MethodStats(method.__qualname__)

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        call = stats.begin(context)
        try:
            return await method(self, request, context)
        except ClipperError as exc:
            await context.abort(exc.code, exc.message, trailers(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            logger.exception("unhandled error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            stats.end(call, context)
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


def handle_stream_errors(
    method: Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[Self, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """Map exceptions of a streaming servicer method to gRPC statuses (and count the call)."""
    stats = MethodStats(method.__qualname__)

    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        call = stats.begin(context)
        try:
            async for item in method(self, request, context):
                yield item
        except ClipperError as exc:
            await context.abort(exc.code, exc.message, trailers(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            logger.exception("unhandled error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            stats.end(call, context, detach=False)

    return wrapper

