"""What a container replies for a finished query (services/model_container/servicer.py):
the answer, or an error whose code says whose fault it is."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from services.common import tensors
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.model_container.answer_check import AnswerCheck
from services.model_container.servicer import _reply_when_done

LIMIT = 4 * 1024 * 1024


async def reply_to(answer: Any, answers: AnswerCheck) -> pb.ContainerReply:
    replies: asyncio.Queue[pb.ContainerReply | None] = asyncio.Queue()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.add_done_callback(_reply_when_done(7, replies, set(), LIMIT, answers))
    future.set_result(answer)
    await asyncio.sleep(0)  # the callback runs
    reply = replies.get_nowait()
    assert reply is not None and reply.id == 7
    return reply


async def test_an_answer_goes_back_as_its_tensor() -> None:
    reply = await reply_to(np.float32([1, 2]), AnswerCheck(TensorSpec("float32", (2,))))
    np.testing.assert_array_equal(tensors.decode(reply.output), [1, 2])


async def test_a_model_answering_what_it_did_not_declare_is_internal() -> None:
    reply = await reply_to(np.float32([1, 2, 3]), AnswerCheck(TensorSpec("float32", (2,))))
    assert reply.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "does not match its declared outputs" in reply.error.message


async def test_an_answer_that_cannot_be_encoded_is_internal() -> None:
    reply = await reply_to(np.complex64([1j]), AnswerCheck())
    assert reply.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert reply.error.message.startswith("cannot encode model output")
