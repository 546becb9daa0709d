"""The frontend's public query API: Predict, PredictStream, Feedback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from services.common.errors import (
    ClipperError,
    InvalidInput,
    handle_errors,
    handle_stream_errors,
    to_error_proto,
)
from services.common.named_tensors import Value
from services.common.streams import MessagePacker, answering, replies_until_done
from services.frontend.query_path import Prediction, QueryPath
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

# Most queries one PredictStream may have in flight before it stops reading.
STREAM_WINDOW = 256


class FrontendServicer(pb_grpc.FrontendServicer):
    def __init__(self, query_path: QueryPath) -> None:
        self.query_path = query_path

    @handle_errors
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        prediction = await self.query_path.predict(
            request.application,
            _input(request),
            request.context_key,
            request.query_id,
            context.time_remaining(),
        )
        return _to_proto(prediction)

    @handle_stream_errors
    async def PredictStream(
        self,
        request_iterator: AsyncIterator[pb.PredictRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.PredictStreamResponse]:
        """Queries run concurrently; each answer (or error) goes out when ready, with its index."""
        out: asyncio.Queue[pb.PredictStreamResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        reader = asyncio.create_task(self._read_stream(request_iterator, context, out, window))
        async for responses in replies_until_done(MessagePacker(out), reader):
            for response in responses:
                yield response

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[pb.PredictRequest],
        context: grpc.aio.ServicerContext,
        out: asyncio.Queue[pb.PredictStreamResponse | None],
        window: asyncio.Semaphore,
    ) -> None:
        async with answering(out) as tasks:
            index = 0
            async for request in request_iterator:
                await window.acquire()
                task = asyncio.create_task(self._answer(index, request, context, out))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: window.release())
                index += 1

    async def _answer(
        self,
        index: int,
        request: pb.PredictRequest,
        context: grpc.aio.ServicerContext,
        out: asyncio.Queue[pb.PredictStreamResponse | None],
    ) -> None:
        try:
            prediction = await self.query_path.predict(
                request.application,
                _input(request),
                request.context_key,
                request.query_id,
                context.time_remaining(),
            )
        except Exception as exc:
            if not isinstance(exc, ClipperError):
                logger.exception("stream query failed")
            out.put_nowait(pb.PredictStreamResponse(index=index, error=to_error_proto(exc)))
        else:
            out.put_nowait(pb.PredictStreamResponse(index=index, response=_to_proto(prediction)))

    @handle_errors
    async def Feedback(
        self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.FeedbackResponse:
        models = await self.query_path.feedback(
            request.application,
            request.context_key,
            request.query_id,
            _input(request) if request.HasField("input") or request.inputs else None,
            request.label,
            context.time_remaining(),
        )
        return pb.FeedbackResponse(models=models)


def _input(request: pb.PredictRequest | pb.FeedbackRequest) -> Value:
    """The query's one input, or its named inputs (never both)."""
    if not request.inputs:
        return request.input
    if request.HasField("input"):
        raise InvalidInput("give the input either as `input` (one tensor) or as `inputs` "
                           "(named tensors), not both")
    return request.inputs


def _to_proto(p: Prediction) -> pb.PredictResponse:
    response = pb.PredictResponse(
        query_id=p.query_id,
        default_used=p.default_used,
        default_reason=p.default_reason,
        models=p.models,
        missing_models=p.missing_models,
        confidence=p.confidence,
    )
    if isinstance(p.output, pb.Tensor):
        response.output.CopyFrom(p.output)
    else:
        for name, tensor in p.output.items():
            response.outputs[name].CopyFrom(tensor)
    if isinstance(p.ensemble_output, pb.Tensor):
        response.ensemble_output.CopyFrom(p.ensemble_output)
    elif p.ensemble_output is not None:
        for name, tensor in p.ensemble_output.items():
            response.ensemble_outputs[name].CopyFrom(tensor)
    return response
