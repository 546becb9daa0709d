"""Exceptions the client raises when a call fails, one per gRPC status the mesh uses.

    ClientError                    any other status (INTERNAL, UNKNOWN, CANCELLED, ...)
    ├── InvalidArgumentError       INVALID_ARGUMENT   wrong dtype, shape or size
    ├── NotFoundError              NOT_FOUND          unknown application, or feedback
    │                                                 for a query id no longer known
    ├── UnauthenticatedError       UNAUTHENTICATED    no token
    ├── PermissionDeniedError      PERMISSION_DENIED  wrong token
    ├── ResourceExhaustedError     RESOURCE_EXHAUSTED overload, message too large
    ├── DeadlineExceededError      DEADLINE_EXCEEDED  late and no default answer
    └── UnavailableError           UNAVAILABLE        no replica, or the frontend is down

Every error carries `code` (a `grpc.StatusCode`) and `details` (the server's message).
"""

from __future__ import annotations

import grpc


class ClientError(Exception):
    """A call to the mesh failed with gRPC status `code`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(ClientError):
    """The input did not match the application (dtype, shape, byte length)."""


class NotFoundError(ClientError):
    """Unknown application or model, or a feedback for a query id the frontend forgot."""


class UnauthenticatedError(ClientError):
    """The call needs a token and none was sent."""


class PermissionDeniedError(ClientError):
    """The token sent was wrong."""


class ResourceExhaustedError(ClientError):
    """The mesh shed the query (overload) or the message was over the size limit."""


class DeadlineExceededError(ClientError):
    """No answer in time and the application has no default answer."""


class UnavailableError(ClientError):
    """No replica could answer, or the frontend could not be reached."""


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def error_for_status(code: grpc.StatusCode, details: str) -> ClientError:
    """The most specific error for a status code."""
    return _BY_CODE.get(code, ClientError)(code, details)


def from_rpc_error(exc: grpc.RpcError) -> ClientError:
    """Wrap a failed call (sync or asyncio) in the matching ClientError."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return error_for_status(code, details or "")
