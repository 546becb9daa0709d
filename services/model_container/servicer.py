"""The container's gRPC edge: one multiplexed query stream per frontend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.common import clock, tensors
from services.common.errors import ClipperError, code_value, handle_stream_errors
from services.common.streams import answering, replies_until_done
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.model_container.batcher import Batcher

logger = logging.getLogger(__name__)

Replies = asyncio.Queue[pb.ContainerReply | None]


class ContainerServicer(pb_grpc.ModelContainerServicer):
    """Decodes queries, hands them to the batcher and streams replies as they finish.

    Every response message carries all the replies that were waiting (a whole batch,
    typically) and the replica's current load. Only frontends reach it: the
    AuthInterceptor checks their replica credential first (see __main__).
    """

    def __init__(self, batcher: Batcher, input_spec: TensorSpec | None) -> None:
        self.batcher = batcher
        self.input_spec = input_spec

    @handle_stream_errors
    async def Predict(
        self,
        request_iterator: AsyncIterator[pb.ContainerRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ContainerResponse]:
        await context.send_initial_metadata(())
        replies: Replies = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, replies))
        async for batch in replies_until_done(replies, reader):
            yield self._response(batch)

    async def _read(self, request_iterator: AsyncIterator[pb.ContainerRequest],
                    replies: Replies) -> None:
        """Read queries until the stream ends, then wait for their answers and close."""
        async with answering(replies) as in_flight:
            async for message in request_iterator:
                for query in message.queries:
                    try:
                        value = tensors.decode(query.input)
                        if self.input_spec is not None:
                            self.input_spec.check(value)
                        deadline = clock.now() + query.budget_us / 1e6
                        future = self.batcher.submit(value, deadline)
                    except ClipperError as exc:
                        replies.put_nowait(_error_reply(query.id, exc))
                        continue
                    in_flight.add(future)
                    future.add_done_callback(_reply_when_done(query.id, replies, in_flight))

    def _response(self, replies: list[pb.ContainerReply]) -> pb.ContainerResponse:
        load = self.batcher.load()
        return pb.ContainerResponse(
            replies=replies,
            load=pb.ReplicaLoad(queue_depth=load.queue_depth,
                                est_wait_us=int(load.est_wait_s * 1e6)),
        )


def _reply_when_done(
    query_id: int, replies: Replies, in_flight: set[asyncio.Future[Any]]
) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        in_flight.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, ClipperError):
            reply = _error_reply(query_id, exc)
        elif exc is not None:
            reply = _error_reply(query_id, ClipperError("internal error"))
        else:
            try:
                reply = pb.ContainerReply(id=query_id, output=tensors.encode(future.result()))
            except Exception as err:
                reply = _error_reply(query_id, ClipperError(f"cannot encode model output: {err}"))
        replies.put_nowait(reply)

    return done


def _error_reply(query_id: int, exc: ClipperError) -> pb.ContainerReply:
    return pb.ContainerReply(
        id=query_id, error=pb.Error(code=code_value(exc.code), message=exc.message)
    )
