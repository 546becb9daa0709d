"""The selection service's gRPC edge: one multiplexed Decide stream per frontend.

Requests on a stream are handled concurrently, so a decision never waits behind
a feedback that is writing its state; the replies waiting go out together, as many
as fit a message. The stream's initial metadata states the largest message the
service receives, so that frontends pack their requests to fit.
Each request passes admission first (services/common/admission.py, as in the
frontend): one that cannot be decided within its budget is refused at once
(RESOURCE_EXHAUSTED), and the frontend falls back to its last decision.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common import clock, tracing
from services.common.admission import Admission, AdmissionLimits
from services.common.channels import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import (
    ClipperError,
    InvalidInput,
    Overloaded,
    handle_stream_errors,
    to_error_proto,
)
from services.common.streams import (
    MessagePacker,
    accept_stream,
    answering,
    encoded_size,
    replies_until_done,
)
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.policies import DEFAULT_POLICY, Observation, SelectContext, get_policy
from services.selection import metrics
from services.selection.decider import Decider
from services.selection.policy_state import describe
from services.selection.reward import reward

logger = logging.getLogger(__name__)


class SelectionServicer(pb_grpc.SelectionServicer):
    def __init__(self, decider: Decider, admission: Admission | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        """`max_message_bytes`: the server's receive and send limit, stated to frontends."""
        self.decider = decider
        self.admission = admission or Admission(AdmissionLimits())
        self.max_message_bytes = max_message_bytes

    @handle_stream_errors
    async def Decide(
        self,
        request_iterator: AsyncIterator[pb.DecideRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.DecideResponse]:
        send_limit = await accept_stream(context, self.max_message_bytes)
        replies: asyncio.Queue[pb.SelectionReply | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, replies))
        packer = MessagePacker(replies, encoded_size, send_limit)
        async for batch in replies_until_done(packer, reader):
            yield pb.DecideResponse(replies=batch)

    async def _read(self, request_iterator: AsyncIterator[pb.DecideRequest],
                    replies: asyncio.Queue[pb.SelectionReply | None]) -> None:
        """Start a task per request until the stream ends; then wait for them and close."""
        async def answer(request: pb.SelectionRequest, key: str) -> None:
            started = clock.now()
            reply = await (self._traced(request) if tracing.enabled and request.trace_context
                           else self._handle(request))
            _count(request, reply, clock.now() - started)
            if request.budget_us:
                self.admission.observe(key, clock.now() - started <= request.budget_us / 1e6)
            replies.put_nowait(reply)

        async with answering(replies) as tasks:
            async for message in request_iterator:
                for request in message.requests:
                    key = _application(request)
                    try:
                        self.admission.check(key, request.budget_us / 1e6 if request.budget_us
                                             else math.inf)
                    except Overloaded as exc:
                        replies.put_nowait(_error_reply(request.id, exc))
                        continue
                    self.admission.enter(key)  # now: the next request's check counts it
                    task = asyncio.create_task(answer(request, key))
                    # Left when done, even if cancelled before it ran.
                    task.add_done_callback(functools.partial(self._leave, key))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    def _leave(self, key: str, _: asyncio.Task[None]) -> None:
        self.admission.leave(key)

    async def _handle(self, request: pb.SelectionRequest) -> pb.SelectionReply:
        try:
            body = request.WhichOneof("body")
            if body == "select":
                chosen = await self.decider.select(request.select.policy,
                                                   _context(request.select))
                decision = pb.Decision(
                    models=[pb.WeightedModel(model=m, weight=w) for m, w in chosen]
                )
                return pb.SelectionReply(id=request.id, decision=decision)
            if body == "observe":
                o = request.observe
                obs = Observation({m: reward(t, o.label) for m, t in o.outputs.items()},
                                  dict(o.weights))
                await self.decider.observe(o.policy, _context(o), obs)
                return pb.SelectionReply(id=request.id, observed=pb.Observed())
            if body == "inspect":
                return pb.SelectionReply(id=request.id,
                                         state=await self._inspect(request.inspect))
            if body == "reset":
                r = request.reset
                deleted = await self.decider.reset(r.application, r.context_key)
                return pb.SelectionReply(id=request.id,
                                         reset=pb.PolicyReset(states_deleted=deleted))
            raise InvalidInput("selection request has no body (select, observe, inspect or reset)")
        except ClipperError as exc:
            return _error_reply(request.id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("selection request failed")
            return pb.SelectionReply(id=request.id, error=to_error_proto(exc))

    async def _traced(self, request: pb.SelectionRequest) -> pb.SelectionReply:
        """`_handle` in a span continuing the query's (or feedback's) trace."""
        body = request.WhichOneof("body") or "unknown"
        with tracing.tracer().start_as_current_span(
                f"clipper.selection.{body}", context=tracing.extract(request.trace_context),
                kind=SpanKind.SERVER,
                attributes={"clipper.application": _application(request),
                            "clipper.policy": _policy(request)}) as span:
            reply = await self._handle(request)
            if reply.HasField("decision"):
                span.set_attribute("clipper.models", [m.model for m in reply.decision.models])
            elif reply.HasField("error"):
                span.set_status(Status(StatusCode.ERROR, reply.error.message))
            return reply

    async def _inspect(self, q: pb.SelectQuery) -> pb.PolicyState:
        ctx = _context(q)
        state, source = await self.decider.inspect(ctx)
        arm_states = [pb.ArmState(model=a.model, version=a.version, current=a.current,
                                  weight=a.weight, estimate=a.estimate, count=a.count)
                      for a in describe(get_policy(q.policy), ctx, state)]
        return pb.PolicyState(application=q.application, context_key=q.context_key,
                              policy=q.policy or DEFAULT_POLICY,
                              rounds=int(state.get("rounds", 0)), source=source,
                              arms=arm_states)


def _context(q: pb.SelectQuery | pb.Observation) -> SelectContext:
    return SelectContext(q.application, q.context_key, tuple(q.candidates),
                         dict(q.policy_params), dict(q.versions))


def _application(request: pb.SelectionRequest) -> str:
    body = request.WhichOneof("body")
    return getattr(request, body).application if body else ""


def _policy(request: pb.SelectionRequest) -> str:
    body = request.WhichOneof("body")
    policy = getattr(request, body).policy if body in ("select", "observe") else ""
    return str(policy or DEFAULT_POLICY)


def _count(request: pb.SelectionRequest, reply: pb.SelectionReply, elapsed_s: float) -> None:
    """Decisions and feedback in the metrics, by policy and outcome."""
    body = request.WhichOneof("body")
    if body not in ("select", "observe"):
        return
    policy = _policy(request)
    outcome = "error" if reply.HasField("error") else "ok"
    if body == "select":
        metrics.decisions.add(1, {"policy": policy, "outcome": outcome})
        metrics.decision_duration.record(elapsed_s * 1000, {"policy": policy})
    else:
        metrics.feedback.add(1, {"policy": policy, "outcome": outcome})


def _error_reply(request_id: int, exc: ClipperError) -> pb.SelectionReply:
    return pb.SelectionReply(id=request_id, error=to_error_proto(exc))
