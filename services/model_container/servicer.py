"""The container's gRPC edge: one multiplexed query stream per frontend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.common import clock, named_tensors, tensors, tracing
from services.common.auth import bearer_token
from services.common.channels import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import (
    ClipperError,
    InvalidInput,
    Unavailable,
    handle_stream_errors,
    to_error_proto,
)
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
from services.model_container import metrics
from services.model_container.answer_check import AnswerCheck
from services.model_container.batcher import Batcher

logger = logging.getLogger(__name__)

Replies = asyncio.Queue[pb.ContainerReply | None]


@dataclass(frozen=True)
class Replica:
    """One model the process serves, as a replica: its batcher, and what its queries
    (`input_spec`, or named `inputs`) and answers (`answers`) are checked against."""

    replica_id: str
    batcher: Batcher
    input_spec: TensorSpec | None = None
    inputs: tuple[TensorSpec, ...] = ()
    answers: AnswerCheck = field(default_factory=AnswerCheck)


class ContainerServicer(pb_grpc.ModelContainerServicer):
    """Decodes queries, hands them to their replica's batcher and streams replies as they
    finish.

    A process serves one model or several, each its own replica; a query names its
    replica (`replica_id`; empty: the one whose credential opened the stream, as frontends
    that name none send it), so that one stream from a frontend
    carries the queries of every model here, and one message those of an ensemble's.
    Every response message carries the replies that were waiting (a whole batch,
    typically), as many as fit the message limit, and the replicas' current load.
    The stream's initial metadata states the largest message the container receives,
    so that frontends pack their queries to fit. Only frontends reach it: the
    AuthInterceptor checks their replica credential first (see __main__).
    """

    def __init__(self, replicas: list[Replica], credentials: dict[str, str],
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        """`credentials`: replica credential -> replica id (a query that names no replica
        is for the one whose credential opened its stream); `max_message_bytes`: the
        server's receive and send limit, stated to frontends."""
        self.replicas = {r.replica_id: r for r in replicas}
        self.first = replicas[0]
        self.credentials = credentials
        self.max_message_bytes = max_message_bytes

    @handle_stream_errors
    async def Predict(
        self,
        request_iterator: AsyncIterator[pb.ContainerRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ContainerResponse]:
        send_limit = await accept_stream(context, self.max_message_bytes)
        replies: Replies = asyncio.Queue()
        own = self.replicas[self.credentials.get(bearer_token(context.invocation_metadata()),
                                                 self.first.replica_id)]
        reader = asyncio.create_task(self._read(request_iterator, replies, send_limit, own))
        packer = MessagePacker(replies, encoded_size, send_limit)
        metrics.streams.add(1)
        try:
            async for batch in replies_until_done(packer, reader):
                yield self._response(batch)
        finally:
            metrics.streams.add(-1)

    async def _read(self, request_iterator: AsyncIterator[pb.ContainerRequest],
                    replies: Replies, send_limit: int, own: Replica) -> None:
        """Read queries until the stream ends, then wait for their answers and close;
        a query naming no replica is for `own`."""
        async with answering(replies) as in_flight:
            async for message in request_iterator:
                for query in message.queries:
                    try:
                        replica = self._replica(query.replica_id) if query.replica_id else own
                        value = _decode(replica, query)
                        deadline = clock.now() + query.budget_us / 1e6
                        future = replica.batcher.submit(
                            value, deadline, tracing.extract(query.trace_context)
                            if tracing.enabled and query.trace_context else None)
                    except ClipperError as exc:
                        replies.put_nowait(_error_reply(query.id, exc))
                        continue
                    in_flight.add(future)
                    future.add_done_callback(_reply_when_done(
                        query.id, replies, in_flight, send_limit, replica.answers))

    def _replica(self, replica_id: str) -> Replica:
        replica = self.replicas.get(replica_id)
        if replica is None:  # a frontend's stale record: it asks another replica
            raise Unavailable(f"replica {replica_id!r} is not served here")
        return replica

    def _response(self, replies: list[pb.ContainerReply]) -> pb.ContainerResponse:
        response = pb.ContainerResponse(replies=replies)
        if len(self.replicas) == 1:
            _load(self.first, response.load)
            return response
        for replica_id, replica in self.replicas.items():
            _load(replica, response.loads[replica_id])
        response.load.CopyFrom(response.loads[self.first.replica_id])
        return response


def _load(replica: Replica, into: pb.ReplicaLoad) -> None:
    load = replica.batcher.load()
    into.queue_depth = load.queue_depth
    into.est_wait_us = int(load.est_wait_s * 1e6)


def _decode(replica: Replica, query: pb.ContainerQuery) -> Any:
    """The query's array, or its dict of named arrays, checked against the specs."""
    if not query.inputs:
        if replica.inputs:
            raise InvalidInput(f"this model takes named inputs "
                               f"({named_tensors.describe(replica.inputs)}), not one input")
        value = tensors.decode(query.input)
        if replica.input_spec is not None:
            replica.input_spec.check(value)
        return value
    if replica.input_spec is not None:
        raise InvalidInput(f"this model takes one input {replica.input_spec.describe()}, "
                           "not named inputs")
    if replica.inputs:
        return named_tensors.decode(query.inputs, replica.inputs)
    return named_tensors.decode_any(query.inputs)


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
            answer = future.result()
            try:
                answers.served(answer)
            except ClipperError as err:  # the model's fault: INTERNAL, with what it answered
                reply = _error_reply(query_id, err)
            else:
                try:
                    reply = _output_reply(query_id, answer)
                except Exception as err:
                    reply = _error_reply(query_id, ClipperError(
                        f"cannot encode model output: {err}"))
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
