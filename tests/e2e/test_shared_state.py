"""Policy state shared on a real redis-server by several selection service processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np

from services.common import tensors
from services.common.auth import bearer
from services.common.processes import start_service
from services.common.redis_store import RedisStore
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.selection.decider import state_key
from testkit.mesh import ENV, SELECTION_TOKEN

ROUNDS = 60  # per client, two clients per selection replica


def observation(i: int) -> pb.SelectionRequest:
    return pb.SelectionRequest(id=i, budget_us=5_000_000, observe=pb.Observation(
        application="app", context_key="user", policy="exp4",
        candidates=["a", "b"], label=tensors.encode(np.int64(1)),
        outputs={"a": tensors.encode(np.int64(1)), "b": tensors.encode(np.int64(i % 2))},
    ))


async def send_feedback(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stream = pb_grpc.SelectionStub(channel).Decide(metadata=bearer(SELECTION_TOKEN))
        for i in range(ROUNDS):
            await stream.write(pb.DecideRequest(requests=[observation(i)]))
            reply = (await stream.read()).replies[0]
            assert reply.WhichOneof("result") == "observed", reply
        await stream.done_writing()


async def test_concurrent_feedback_through_two_replicas_loses_no_update(
    redis_url: str, tmp_path: Path,
) -> None:
    replicas = [
        start_service("services.selection", ["--port", "0", "--state", redis_url],
                      name=f"selection-{i}", env=ENV, log_path=tmp_path / f"selection-{i}.log")
        for i in range(2)
    ]
    try:
        await asyncio.gather(*(send_feedback(r.address) for r in replicas for _ in range(2)))
    finally:
        for replica in replicas:
            replica.stop()
    store = RedisStore(redis_url)
    try:
        for context in ("", "user"):
            state = await store.get(state_key("app", context))
            assert state is not None
            assert state["rounds"] == 4 * ROUNDS
            assert state["models"]["a"]["n"] == 4 * ROUNDS
            assert state["models"]["b"]["reward"] == 4 * ROUNDS / 2
    finally:
        await store.aclose()
