"""The container's gRPC edge: one multiplexed query stream per frontend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.common import clock, named_tensors, tensors, tracing
from services.common.channels import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import ClipperError, InvalidInput, handle_stream_errors, to_error_proto
from services.common.streams import (
    MessagePacker,
    accept_stream,
    answering,
    encoded_size,
    item_budget,
    replies_until_done,
)
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.model_container.answer_check import AnswerCheck
from services.model_container.batcher import Batcher

logger = logging.getLogger(__name__)

Replies = asyncio.Queue[pb.ContainerReply | None]


class ContainerServicer(pb_grpc.ModelContainerServicer):
    """Decodes queries, hands them to the batcher and streams replies as they finish.

    Every response message carries the replies that were waiting (a whole batch,
    typically), as many as fit the message limit, and the replica's current load.
    The stream's initial metadata states the largest message the container receives,
    so that frontends pack their queries to fit. Only frontends reach it: the
    AuthInterceptor checks their replica credential first (see __main__).
    """

    def __init__(self, batcher: Batcher, input_spec: TensorSpec | None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 inputs: tuple[TensorSpec, ...] = (),
                 answers: AnswerCheck | None = None) -> None:
        """`max_message_bytes`: the server's receive and send limit, stated to frontends;
        `input_spec` (one input) or `inputs` (named): what queries are checked against;
        `answers`: what the model's answers are checked against before they go out."""
        self.batcher = batcher
        self.answers = answers or AnswerCheck()
        self.input_spec = input_spec
        self.inputs = inputs
        self.max_message_bytes = max_message_bytes

    @handle_stream_errors
    async def Predict(
        self,
        request_iterator: AsyncIterator[pb.ContainerRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ContainerResponse]:
        send_limit = await accept_stream(context, self.max_message_bytes)
        replies: Replies = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, replies, send_limit))
        packer = MessagePacker(replies, encoded_size, send_limit)
        async for batch in replies_until_done(packer, reader):
            yield self._response(batch)

    async def _read(self, request_iterator: AsyncIterator[pb.ContainerRequest],
                    replies: Replies, send_limit: int) -> None:
        """Read queries until the stream ends, then wait for their answers and close."""
        async with answering(replies) as in_flight:
            async for message in request_iterator:
                for query in message.queries:
                    try:
                        value = self._decode(query)
                        deadline = clock.now() + query.budget_us / 1e6
                        future = self.batcher.submit(
                            value, deadline, tracing.extract(query.trace_context)
                            if tracing.enabled and query.trace_context else None)
                    except ClipperError as exc:
                        replies.put_nowait(_error_reply(query.id, exc))
                        continue
                    in_flight.add(future)
                    future.add_done_callback(
                        _reply_when_done(query.id, replies, in_flight, send_limit, self.answers))

    def _decode(self, query: pb.ContainerQuery) -> Any:
        """The query's array, or its dict of named arrays, checked against the specs."""
        if not query.inputs:
            if self.inputs:
                raise InvalidInput(f"this model takes named inputs "
                                   f"({named_tensors.describe(self.inputs)}), not one input")
            value = tensors.decode(query.input)
            if self.input_spec is not None:
                self.input_spec.check(value)
            return value
        if self.input_spec is not None:
            raise InvalidInput(f"this model takes one input {self.input_spec.describe()}, "
                               "not named inputs")
        if self.inputs:
            return named_tensors.decode(query.inputs, self.inputs)
        return named_tensors.decode_any(query.inputs)

    def _response(self, replies: list[pb.ContainerReply]) -> pb.ContainerResponse:
        load = self.batcher.load()
        return pb.ContainerResponse(
            replies=replies,
            load=pb.ReplicaLoad(queue_depth=load.queue_depth,
                                est_wait_us=int(load.est_wait_s * 1e6)),
        )


def _reply_when_done(
    query_id: int, replies: Replies, in_flight: set[asyncio.Future[Any]], send_limit: int,
    answers: AnswerCheck,
) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that queues the reply to a query; an answer that does not match the
    model's declared outputs, or too large for any message the frontend accepts, is
    replaced by an error saying so."""
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
                answers.served(future.result())
                reply = _output_reply(query_id, future.result())
            except ClipperError as err:
                reply = _error_reply(query_id, err)
            except Exception as err:
                reply = _error_reply(query_id, ClipperError(f"cannot encode model output: {err}"))
            if (size := reply.ByteSize()) > item_budget(send_limit):
                reply = _error_reply(query_id, InvalidInput(
                    f"the model's answer of {size} bytes exceeds the {send_limit}-byte limit "
                    "of a message on this stream (--max-message-bytes of the container, or "
                    "the frontend's receive limit)"))
        replies.put_nowait(reply)

    return done


def _output_reply(query_id: int, output: Any) -> pb.ContainerReply:
    """The reply carrying the model's answer: one tensor, or named ones (a dict)."""
    if isinstance(output, dict):
        return pb.ContainerReply(id=query_id, outputs=named_tensors.encode(output))
    return pb.ContainerReply(id=query_id, output=tensors.encode(output))


def _error_reply(query_id: int, exc: ClipperError) -> pb.ContainerReply:
    return pb.ContainerReply(id=query_id, error=to_error_proto(exc))
