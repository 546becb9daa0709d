"""The frontend's stream to the selection service, with a fallback when it is down.

Stateless policies are evaluated in the frontend with the same policy code;
learning policies are decided by the service, which holds their state.

Decisions are multiplexed by id on one bidi stream. If the service is
unreachable, slow past the query's deadline, or errs, the frontend keeps
serving: it uses the last decision it got for the application, or all linked
models with equal weights, and counts the fallback.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc

from services.common.errors import ClipperError, InvalidInput, Unavailable, error_from_code
from services.common.streams import pump
from services.frontend.registry import Application
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.selection.policies import SelectContext, get_policy

logger = logging.getLogger(__name__)

Decision = list[tuple[str, float]]
# Longest a decision may take before the frontend falls back (also bounded by the deadline).
SELECT_TIMEOUT_S = 0.05


class SelectionClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.connected = False
        self.fallbacks = 0
        self._last: dict[str, Decision] = {}
        self._pending: dict[int, asyncio.Future[pb.SelectionReply]] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[pb.SelectionRequest] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._task = asyncio.create_task(self._run(), name="selection-stream")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._channel is not None:
            await self._channel.close()

    async def select(self, app: Application, context_key: str, deadline: float) -> Decision:
        """Models to ask and their weights; falls back rather than fail the query.

        A stateless policy (static, all) is evaluated here, with the selection
        service's own code, rather than asked for over the stream.
        """
        policy = get_policy(app.policy)
        if policy.stateless:
            ctx = SelectContext(app.name, context_key, app.linked_models, app.policy_params)
            return policy.select(ctx, {})
        query = pb.SelectQuery(
            application=app.name,
            context_key=context_key,
            policy=app.policy,
            policy_params=app.policy_params,
            candidates=app.linked_models,
        )
        try:
            reply = await self._call(pb.SelectionRequest(select=query), deadline)
            decision = [(m.model, m.weight) for m in reply.decision.models]
        except InvalidInput:
            raise  # the application's policy settings are wrong: say so
        except (ClipperError, TimeoutError) as exc:
            self.fallbacks += 1
            logger.debug("selection fallback for %s: %r", app.name, exc)
            return self._fallback(app)
        self._last[app.name] = decision
        return decision

    async def observe(
        self, app: Application, context_key: str, label: pb.Tensor, outputs: dict[str, pb.Tensor]
    ) -> None:
        observation = pb.Observation(
            application=app.name,
            context_key=context_key,
            policy=app.policy,
            policy_params=app.policy_params,
            candidates=app.linked_models,
            label=label,
            outputs=outputs,
        )
        deadline = asyncio.get_running_loop().time() + 5.0
        await self._call(pb.SelectionRequest(observe=observation), deadline)

    def _fallback(self, app: Application) -> Decision:
        last = self._last.get(app.name)
        linked = set(app.linked_models)
        if last and all(m in linked for m, _ in last):
            return last
        if not app.linked_models:
            raise Unavailable(f"application {app.name!r} has no linked model")
        return [(m, 1.0) for m in app.linked_models]

    async def _call(self, request: pb.SelectionRequest, deadline: float) -> pb.SelectionReply:
        if not self.connected:
            raise Unavailable("selection service is not connected")
        loop = asyncio.get_running_loop()
        timeout_at = min(deadline, loop.time() + SELECT_TIMEOUT_S) if request.HasField(
            "select"
        ) else deadline
        request.id = next(self._ids)
        request.budget_us = max(int((timeout_at - loop.time()) * 1e6), 0)
        future: asyncio.Future[pb.SelectionReply] = loop.create_future()
        self._pending[request.id] = future
        self._outbox.put_nowait(request)
        try:
            async with asyncio.timeout_at(timeout_at):
                reply = await future
        finally:
            self._pending.pop(request.id, None)
        if reply.WhichOneof("result") == "error":
            raise error_from_code(reply.error.code, reply.error.message)
        return reply

    async def _run(self) -> None:
        assert self._channel is not None
        stub = pb_grpc.SelectionStub(self._channel)
        backoff_s = 0.05
        while True:
            try:
                async with asyncio.timeout(2.0):
                    await self._channel.channel_ready()
                self._outbox = asyncio.Queue()
                call = stub.Decide()
                writer = asyncio.create_task(
                    pump(self._outbox, call, lambda reqs: pb.DecideRequest(requests=reqs))
                )
                try:
                    self.connected = True
                    logger.info("connected to selection service %s", self.address)
                    backoff_s = 0.05
                    async for response in call:
                        for reply in response.replies:
                            future = self._pending.get(reply.id)
                            if future is not None and not future.done():
                                future.set_result(reply)
                finally:
                    writer.cancel()
                    call.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                if self.connected:
                    logger.warning("selection stream broke: %r", exc)
            finally:
                self.connected = False
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(Unavailable("selection stream broke"))
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 2.0)

