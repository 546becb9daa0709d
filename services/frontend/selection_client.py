"""The frontend's stream to the selection service, with a fallback when it is down.

Stateless policies are evaluated in the frontend with the same policy code;
learning policies are decided by the service, which holds their state.

Decisions are multiplexed by id on one bidi stream. If the service is
unreachable, slow past the query's deadline, or errs, the frontend keeps
serving: it uses the last decision it got for that context key (or for the
application), or all linked models with equal weights, and counts the fallback.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from opentelemetry import trace

from services.common import clock, tracing
from services.common.auth import bearer
from services.common.errors import ClipperError, InvalidInput, Unavailable, error_from_code
from services.common.stream_client import StreamClient
from services.common.streams import encoded_size
from services.common.tls import ClientTLS
from services.frontend import metrics
from services.frontend.records import Application
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.policies import Decision, SelectContext, get_policy

logger = logging.getLogger(__name__)

# Longest a decision may take before the frontend falls back: this, and at most this
# share of the time left to the query.
SELECT_TIMEOUT_S = 0.05
SELECT_SHARE = 0.25
# Decisions remembered for the fallback (per application and context key).
MAX_REMEMBERED = 10_000
# Longest feedback waits for the selection service (reconnecting included).
OBSERVE_TIMEOUT_S = 5.0


class SelectionClient:
    def __init__(self, address: str, token: str, tls: ClientTLS | None = None) -> None:
        """`token`: the selection token (derived from the mesh secret)."""
        self.fallbacks = 0
        # The last decision per (application, context key), most recent last.
        self._last: OrderedDict[tuple[str, str], Decision] = OrderedDict()
        self._stream: StreamClient[pb.SelectionRequest, pb.SelectionReply] = StreamClient(
            address,
            lambda channel, metadata: pb_grpc.SelectionStub(channel).Decide(
                metadata=(*bearer(token), *metadata)),
            lambda requests: pb.DecideRequest(requests=requests),
            lambda response: response.replies,
            encoded_size,
            tls=tls,
        )

    async def start(self) -> None:
        await self._stream.start()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def select(self, app: Application, context_key: str, deadline: float,
                     versions: dict[str, str] | None = None,
                     trace_context: tracing.Carrier | None = None) -> Decision:
        """Models to ask and their weights; falls back rather than fail the query.

        A stateless policy (static, all) is evaluated here, with the selection
        service's own code, rather than asked for over the stream. `trace_context`:
        what the request carries (set by the traced path).
        """
        if tracing.enabled and trace_context is None and tracing.active():
            return await self._traced_select(app, context_key, deadline, versions)
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
            versions=versions,
        )
        try:
            reply = await self._call(pb.SelectionRequest(select=query,
                                                         trace_context=trace_context), deadline)
            decision = [(m.model, m.weight) for m in reply.decision.models]
        except InvalidInput:
            raise  # the application's policy settings are wrong: say so
        except (ClipperError, TimeoutError) as exc:
            self.fallbacks += 1
            metrics.selection_fallbacks.add(1, {"application": app.name})
            if trace_context:
                trace.get_current_span().set_attribute("clipper.selection.fallback", True)
            logger.debug("selection fallback for %s: %r", app.name, exc)
            return self._fallback(app, context_key)
        self._remember(app, context_key, decision)
        return decision

    async def _traced_select(self, app: Application, context_key: str, deadline: float,
                             versions: dict[str, str] | None) -> Decision:
        """`select` in its span (`clipper.select`: the policy and the models chosen)."""
        with tracing.tracer().start_as_current_span(
                "clipper.select", kind=trace.SpanKind.CLIENT,
                attributes={"clipper.policy": app.policy,
                            "clipper.selection.local": get_policy(app.policy).stateless},
        ) as span:
            decision = await self.select(app, context_key, deadline, versions,
                                         tracing.carrier() or {})
            span.set_attributes({"clipper.models": [m for m, _ in decision],
                                 "clipper.weights": [w for _, w in decision]})
            return decision

    async def observe(
        self, app: Application, context_key: str, label: pb.Tensor,
        outputs: dict[str, pb.Tensor], weights: dict[str, float],
        versions: dict[str, str] | None = None,
    ) -> None:
        observation = pb.Observation(
            application=app.name,
            context_key=context_key,
            policy=app.policy,
            policy_params=app.policy_params,
            candidates=app.linked_models,
            label=label,
            outputs=outputs,
            weights=weights,
            versions=versions,
        )
        deadline = clock.now() + OBSERVE_TIMEOUT_S
        try:  # feedback is not latency-bound: ride out a reconnect of the stream
            await asyncio.wait_for(self._stream.wait_connected(), OBSERVE_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(
                "the selection service is unreachable; the feedback was not recorded"
            ) from None
        await self._call(pb.SelectionRequest(
            observe=observation, trace_context=tracing.carrier() if tracing.enabled else None),
            deadline)

    async def policy_state(self, app: Application, context_key: str,
                           versions: dict[str, str]) -> pb.PolicyState:
        """What the application's policy has learnt for the context key (management)."""
        query = pb.SelectQuery(application=app.name, context_key=context_key,
                               policy=app.policy, policy_params=app.policy_params,
                               candidates=app.linked_models, versions=versions)
        reply = await self._call(pb.SelectionRequest(inspect=query),
                                 clock.now() + OBSERVE_TIMEOUT_S)
        return reply.state

    async def reset_policy_state(self, application: str, context_key: str) -> int:
        """Forget the context's policy state (no key: the application's and every context's)."""
        reset = pb.ResetPolicy(application=application, context_key=context_key)
        reply = await self._call(pb.SelectionRequest(reset=reset),
                                 clock.now() + OBSERVE_TIMEOUT_S)
        return reply.reset.states_deleted

    def _remember(self, app: Application, context_key: str, decision: Decision) -> None:
        for key in {(app.name, context_key), (app.name, "")}:
            self._last[key] = decision
            self._last.move_to_end(key)
        while len(self._last) > MAX_REMEMBERED:
            self._last.popitem(last=False)

    def _fallback(self, app: Application, context_key: str) -> Decision:
        """The context's last decision, else the application's, else all linked models."""
        linked = set(app.linked_models)
        for key in ((app.name, context_key), (app.name, "")):
            last = self._last.get(key)
            if last and all(m in linked for m, _ in last):
                return last
        if not app.linked_models:
            raise Unavailable(f"application {app.name!r} has no linked model")
        return [(m, 1.0) for m in app.linked_models]

    async def _call(self, request: pb.SelectionRequest, deadline: float) -> pb.SelectionReply:
        now = clock.now()
        timeout_at = deadline
        if request.HasField("select"):  # leave most of the query's time to the models
            timeout_at = now + min(SELECT_TIMEOUT_S, max(deadline - now, 0.0) * SELECT_SHARE)
        request.id = self._stream.next_id()
        request.budget_us = max(int((timeout_at - now) * 1e6), 0)
        reply = await self._stream.request(request.id, request, timeout_at)
        if reply.WhichOneof("result") == "error":
            raise error_from_code(reply.error.code, reply.error.message)
        return reply
