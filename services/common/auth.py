"""Authentication in one server interceptor; the caller's identity for the servicers.

`AuthInterceptor` knows, per full method name, which `Authenticator` a call
needs. An authenticator reads the call's metadata only (the interceptor runs
before the request is decoded) and returns the `Caller`, or raises
Unauthenticated (no credential) / PermissionDenied (a wrong one), which the
interceptor turns into the call's status without running the method. The caller
is then available to the method as `current_caller()`; authorisation that
depends on the request body (the model of an Announce, the application of a
Predict) is checked there, against the caller, in one helper per rule
(`require_model` here, `services/frontend/access.py` for applications).

Methods with no rule (health, reflection, the Open Inference Protocol's metadata
calls) are open.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from services.common.credentials import same, sha256_hex, verify_container_token
from services.common.errors import ClipperError, PermissionDenied, Unauthenticated

METADATA_KEY = "authorization"
API_KEY_METADATA = "x-api-key"

Metadata = Sequence[tuple[str, str | bytes]]

ANONYMOUS = "anonymous"
MANAGEMENT = "management"
CONTAINER = "container"
FRONTEND = "frontend"
CLIENT = "client"


@dataclass(frozen=True)
class Caller:
    """Who made the current call, as its credential proved."""

    role: str = ANONYMOUS
    model: str = ""  # a container's model
    api_key_sha256: str = ""  # a client's API key, hashed ("" when it sent none)
    peer: str = ""  # a client's host, as the server saw it ("" for other roles)


_NOBODY = Caller()
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("clipper_caller")

Authenticator = Callable[[Metadata], Caller]


def current_caller() -> Caller:
    """The caller of the call being served (set by AuthInterceptor)."""
    return _caller.get(_NOBODY)


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token`."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def api_key(key: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying an application's API key."""
    return ((API_KEY_METADATA, key),)


def _value(metadata: Metadata, key: str) -> str:
    for name, value in metadata:
        if name == key and isinstance(value, str):
            return value
    return ""


def bearer_token(metadata: Metadata) -> str:
    return _value(metadata, METADATA_KEY).removeprefix("Bearer ").strip()


def token_auth(expected: str | Sequence[str], role: str, what: str) -> Authenticator:
    """Callers carrying `authorization: Bearer <expected>` (or any of several), as `role`."""
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)

    def authenticate(metadata: Metadata) -> Caller:
        sent = bearer_token(metadata)
        if not sent:
            raise Unauthenticated(f"needs metadata '{METADATA_KEY}: Bearer <{what} token>'")
        if not any([same(sent, token) for token in accepted]):  # each compared, in full
            raise PermissionDenied(f"wrong {what} token")
        return Caller(role)

    return authenticate


def container_auth(mesh_secret: str) -> Authenticator:
    """Containers carrying a token of their model derived from the mesh secret."""
    def authenticate(metadata: Metadata) -> Caller:
        sent = bearer_token(metadata)
        if not sent:
            raise Unauthenticated(
                f"needs metadata '{METADATA_KEY}: Bearer <container token of the model>' "
                "(python -m services.cli tokens container MODEL)")
        model = verify_container_token(mesh_secret, sent)
        if model is None:
            raise PermissionDenied("wrong container token (not one of this mesh's model tokens)")
        return Caller(CONTAINER, model=model)

    return authenticate


def api_key_auth(metadata: Metadata) -> Caller:
    """Clients, with the hash of their `x-api-key` when they sent one; never refuses
    (whether an application needs a key is decided with the application)."""
    key = _value(metadata, API_KEY_METADATA).strip()
    return Caller(CLIENT, api_key_sha256=sha256_hex(key) if key else "")


def require_model(caller: Caller, model: str) -> None:
    """A container may act for its own model's replicas only."""
    if caller.role != CONTAINER:
        raise PermissionDenied("only a container token may register replicas")
    if caller.model != model:
        raise PermissionDenied(
            f"this container token is for model {caller.model!r}, not {model!r}")


def rules_for(service: ServiceDescriptor, authenticator: Authenticator) -> dict[str, Authenticator]:
    """The same authenticator for every method of `service`."""
    return {f"/{service.full_name}/{m.name}": authenticator for m in service.methods}


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates each call by its method's rule before the method runs."""

    def __init__(self, rules: Mapping[str, Authenticator]) -> None:
        self.rules = dict(rules)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        authenticate = self.rules.get(details.method)
        if handler is None or authenticate is None:
            return handler
        try:
            caller = authenticate(details.invocation_metadata or ())
        except ClipperError as exc:
            return _refusal(handler, exc.code, f"{details.method.lstrip('/')}: {exc.message}")
        return _as_caller(handler, caller)


def peer_host(peer: str) -> str:
    """The host of a gRPC peer ("ipv4:127.0.0.1:5000" -> "127.0.0.1", "ipv6:[::1]:5000"
    -> "[::1]"); other peers (unix sockets) whole."""
    kind, _, address = peer.partition(":")
    return address.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else peer


# Peers on a Unix socket: only the service itself, for its accept probe (health checks,
# which need no rule); every method with a rule refuses them.
LOCAL_PEER = "unix:"


async def _for_call(caller: Caller, context: grpc.aio.ServicerContext) -> Caller:
    """The caller, with its host when it is a client (quotas tell clients apart by it);
    a call on a Unix socket is refused (see LOCAL_PEER)."""
    peer = context.peer()
    if peer.startswith(LOCAL_PEER):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            "this socket serves the service's own health checks only")
    if caller.role != CLIENT:
        return caller
    return replace(caller, peer=peer_host(peer))


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that ends the call with `code`, reading nothing."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover (abort raises; this makes it a generator)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(streaming)


def _as_caller(handler: grpc.RpcMethodHandler, caller: Caller) -> grpc.RpcMethodHandler:
    """The handler, run with `caller` as current_caller() (each call has its own task,
    hence its own context: nothing needs resetting)."""
    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner_unary = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _caller.set(await _for_call(caller, context))
            return await inner_unary(request, context)

        field = "unary_unary" if handler.unary_unary is not None else "stream_unary"
        return handler._replace(**{field: unary})
    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        _caller.set(await _for_call(caller, context))
        async for item in inner_stream(request, context):
            yield item

    field = "unary_stream" if handler.unary_stream is not None else "stream_stream"
    return handler._replace(**{field: streaming})
