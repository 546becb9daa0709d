"""One long-lived bidi stream from this frontend to one container replica.

Queries are multiplexed by id: `query` puts a message on the outgoing queue and
waits for the reply with the same id. When the stream breaks, every waiting
query fails at once with Unavailable (the caller may retry elsewhere) and the
client reconnects with backoff until the registry drops the replica.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc

from services.common.auth import bearer
from services.common.errors import ClipperError, Unavailable, error_from_code
from services.common.streams import pump
from services.frontend.registry import ReplicaRecord
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
MAX_BACKOFF_S = 2.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Kept back from the budget a container is given: the reply's way back and combining.
REPLY_RESERVE_S = 0.002


class ReplicaClient:
    """Sends queries to one replica over one stream and matches the replies."""

    def __init__(self, record: ReplicaRecord, token: str) -> None:
        self.record = record
        self.token = token
        self.connected = False
        # As last reported by the replica with its replies.
        self.queue_depth = 0
        self.est_wait_s = 0.0
        self._pending: dict[int, asyncio.Future[pb.Tensor]] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[pb.ContainerQuery] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def expected_load(self) -> tuple[int, float]:
        """Queries ahead of a new one (ours in flight, or the replica's queue when longer:
        other frontends send to it too), then its reported wait to break ties."""
        return max(self.outstanding, self.queue_depth), self.est_wait_s

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.record.address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._task = asyncio.create_task(self._run(), name=f"replica-{self.record.address}")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._fail_pending(Unavailable(f"replica {self.record.address} left"))
        if self._channel is not None:
            await self._channel.close()

    async def query(self, value: pb.Tensor, deadline: float, trace: dict[str, str]) -> pb.Tensor:
        """Send one query; return the replica's output or raise its error."""
        if not self.connected:
            raise Unavailable(f"replica {self.record.address} is not connected")
        loop = asyncio.get_running_loop()
        budget_us = max(int((deadline - loop.time() - REPLY_RESERVE_S) * 1e6), 0)
        query_id = next(self._ids)
        future: asyncio.Future[pb.Tensor] = loop.create_future()
        self._pending[query_id] = future
        self._outbox.put_nowait(
            pb.ContainerQuery(id=query_id, input=value, budget_us=budget_us, trace_context=trace)
        )
        try:
            return await future
        finally:
            self._pending.pop(query_id, None)

    async def _run(self) -> None:
        assert self._channel is not None
        stub = pb_grpc.ModelContainerStub(self._channel)
        backoff_s = 0.05
        while True:
            try:
                await self._serve_stream(stub)
                backoff_s = 0.05
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    logger.error("replica %s refused us: %s", self.record.address, exc.details())
                    backoff_s = MAX_BACKOFF_S
            except TimeoutError:
                pass
            finally:
                self.connected = False
                self._fail_pending(Unavailable(f"lost the stream to {self.record.address}"))
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    async def _serve_stream(self, stub: pb_grpc.ModelContainerStub) -> None:
        assert self._channel is not None
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await self._channel.channel_ready()
        self._outbox = asyncio.Queue()
        call = stub.Predict(metadata=bearer(self.token))
        writer = asyncio.create_task(
            pump(self._outbox, call, lambda queries: pb.ContainerRequest(queries=queries))
        )
        try:
            await call.initial_metadata()
            self.connected = True
            logger.info("connected to replica %s", self.record.address)
            async for response in call:
                self.queue_depth = response.load.queue_depth
                self.est_wait_s = response.load.est_wait_us / 1e6
                for reply in response.replies:
                    future = self._pending.get(reply.id)
                    if future is None or future.done():
                        continue  # the caller gave up (deadline) before the answer came
                    if reply.WhichOneof("result") == "output":
                        future.set_result(reply.output)
                    else:
                        future.set_exception(
                            error_from_code(reply.error.code, reply.error.message)
                        )
        finally:
            writer.cancel()
            call.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _fail_pending(self, exc: ClipperError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
