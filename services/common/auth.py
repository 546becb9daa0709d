"""Bearer tokens in gRPC metadata (`authorization: Bearer <token>`)."""

from __future__ import annotations

import hmac

import grpc

from services.common.errors import PermissionDenied, Unauthenticated

METADATA_KEY = "authorization"


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token`."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def check_token(context: grpc.aio.ServicerContext, expected: str, what: str) -> None:
    """Raise Unauthenticated without a token, PermissionDenied with a wrong one."""
    sent = ""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY and isinstance(value, str):
            sent = value.removeprefix("Bearer ").strip()
    if not sent:
        raise Unauthenticated(f"{what} needs metadata '{METADATA_KEY}: Bearer <token>'")
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise PermissionDenied(f"wrong {what} token")
