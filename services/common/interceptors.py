"""Server interceptors shared by every service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc


class _Undecodable:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(exc)

    return decode


class RejectUndecodable(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Garbage request bytes get INVALID_ARGUMENT with a message, not UNKNOWN."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await _abort(context, method, request)
                return await inner_uu(request, context)

            return handler._replace(
                request_deserializer=_safe(handler.request_deserializer), unary_unary=unary_unary
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await _abort(context, method, request)
                async for item in inner_us(request, context):
                    yield item

            return handler._replace(
                request_deserializer=_safe(handler.request_deserializer), unary_stream=unary_stream
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any],
                                    context: grpc.aio.ServicerContext) -> Any:
                async for item in inner_ss(_checked(requests, context, method), context):
                    yield item

            return handler._replace(
                request_deserializer=_safe(handler.request_deserializer),
                stream_stream=stream_stream,
            )
        return handler


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str
) -> AsyncIterator[Any]:
    async for item in requests:
        if isinstance(item, _Undecodable):
            await _abort(context, method, item)
        yield item


async def _abort(context: grpc.aio.ServicerContext, method: str, item: _Undecodable) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request to {method} is not a valid protobuf message: {item.error}",
    )
