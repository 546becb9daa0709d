"""The query path: validate, select, fan out to replicas, wait until the deadline, combine.

The deadline is the application's SLO, or the client's gRPC deadline when that
is tighter, less a margin to send the answer back: 2 ms, or a tenth of the
client's remaining time when its deadline decides, since an answer that reaches
the client late is lost to it. The answer goes out as soon as every selected
model has answered; at the deadline, whatever arrived is combined; with nothing
usable, the application's default output goes back, flagged, or the query fails
with the most telling error.

Inputs are validated by decoding them (zero-copy) and then forwarded to the
containers as the original message, so the hot path never re-encodes.
A model's answer comes from the prediction cache when it has it; the answers
given are kept there for feedback by query id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from services.common import clock, named_tensors, telemetry, tensors, tracing
from services.common.admission import Admission, AdmissionLimits
from services.common.auth import current_caller
from services.common.errors import (
    ClipperError,
    DeadlineExpired,
    InvalidInput,
    NotFound,
    Overloaded,
    QuotaExceeded,
    Unavailable,
)
from services.common.limits import DEFAULT_LIMITS, Limits
from services.common.named_tensors import Value
from services.frontend import access, metrics, query_trace
from services.frontend.access_log import AccessLog
from services.frontend.combine import Answer, combine
from services.frontend.model_router import ModelRouter
from services.frontend.prediction_cache import PredictionCache
from services.frontend.quotas import QuotaLimits, Quotas
from services.frontend.records import Application
from services.frontend.registry import Registry
from services.frontend.selection_client import SelectionClient
from services.generated.clipper.v1 import clipper_pb2 as pb

logger = logging.getLogger(__name__)

# Share of a client's remaining time kept back when its own deadline is the tighter one.
CLIENT_MARGIN_SHARE = 0.1


def answer_deadline(slo_ms: int, client_remaining_s: float | None, now: float,
                    waited_s: float = 0.0) -> float:
    """When the query's answer must be settled (`clock.now()` time), margins kept back.

    `waited_s`: how long the call waited inside gRPC core before its handler ran (the
    SLO counts from its arrival; a client's deadline already does)."""
    deadline = now - waited_s + slo_ms / 1000.0 - clock.REPLY_MARGIN_S
    if client_remaining_s is not None:
        margin = max(clock.REPLY_MARGIN_S, CLIENT_MARGIN_SHARE * client_remaining_s)
        deadline = min(deadline, now + client_remaining_s - margin)
    return deadline


@dataclass
class Prediction:
    query_id: str
    output: Value  # one tensor, or named outputs
    default_used: bool = False
    default_reason: str = ""
    models: list[str] = field(default_factory=list)
    missing_models: list[str] = field(default_factory=list)
    confidence: float = 0.0
    # The models' combined answer when the default replaced it for low confidence.
    ensemble_output: Value | None = None
    # For metrics: deadline, low_confidence, error or overload.
    default_cause: str = ""
    # For admission: a model was still unanswered at the deadline or refused for load
    # (a model merely absent, with no replica, says nothing of the load).
    congested: bool = False


@dataclass
class _FanOut:
    answers: list[Answer]
    missing: list[str]
    errors: list[ClipperError]
    timed_out: bool

    @property
    def congested(self) -> bool:
        return self.timed_out or any(isinstance(e, (Overloaded, DeadlineExpired))
                                     for e in self.errors)


class QueryPath:
    def __init__(
        self,
        registry: Registry,
        router: ModelRouter,
        selection: SelectionClient,
        cache: PredictionCache,
        limits: Limits = DEFAULT_LIMITS,
        admission: Admission | None = None,
        quotas: Quotas | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.registry = registry
        self.router = router
        self.selection = selection
        self.cache = cache
        self.limits = limits
        self.admission = admission or Admission(AdmissionLimits())
        self.quotas = quotas or Quotas(QuotaLimits())
        self.access_log = access_log or AccessLog()
        # Decided once, here: with tracing off and no access log, a query does no
        # observation work at all (services/frontend/query_trace.py).
        if tracing.enabled or self.access_log.on:
            self.predict = functools.partial(  # type: ignore[method-assign]
                query_trace.observed_predict, self, QueryPath.predict)
        if tracing.enabled:
            self.feedback = functools.partial(  # type: ignore[method-assign]
                query_trace.observed_feedback, self, QueryPath.feedback)

    def validate(self, app: Application, value: Value) -> None:
        """Raise InvalidInput unless `value` is the input (or named inputs) the
        application takes."""
        why = "; the application does not allow them (allow_non_finite)"
        if app.inputs:
            if isinstance(value, pb.Tensor):
                raise InvalidInput(
                    f"application {app.name!r} takes named inputs "
                    f"({named_tensors.describe(app.inputs)}): send them in `inputs`"
                    + ("" if not value.dtype and not value.shape else ", not `input`"))
            arrays = named_tensors.decode(value, app.inputs, self.limits)
            if not app.allow_non_finite:
                for name, array in arrays.items():
                    _require_finite(array, f"input {name!r}", why)
            return
        assert app.input_spec is not None
        if not isinstance(value, pb.Tensor):
            raise InvalidInput(f"application {app.name!r} takes one input "
                               f"{app.input_spec.describe()}: send it in `input`, not `inputs`")
        if not value.dtype and not value.shape:
            raise InvalidInput(f"missing input: expected a tensor {app.input_spec.describe()}")
        array = tensors.decode(value, self.limits)
        app.input_spec.check(array)
        if not app.allow_non_finite:
            _require_finite(array, "input", why)

    def _check_request(self, app_name: str, context_key: str, query_id: str) -> Application:
        """The application, once the request's strings are within their limits."""
        self.limits.check_length("application name", app_name, self.limits.name_length,
                                 "--max-name-length")
        self.limits.check_context_key(context_key)
        self.limits.check_query_id(query_id)
        return self.registry.get_app(app_name)

    async def predict(
        self,
        app_name: str,
        value: Value,
        context_key: str = "",
        query_id: str = "",
        client_remaining_s: float | None = None,
        version: str = "",
    ) -> Prediction:
        """Answer one query; `version`, when given, pins the models' version.

        Counted in the frontend's metrics (outcome, latency, defaults, missing models).
        """
        started = time.perf_counter()
        attrs = {"application": app_name if app_name in self.registry.apps else ""}
        try:
            prediction = await self._predict(
                app_name, value, context_key, query_id, client_remaining_s, version
            )
        except ClipperError as exc:
            outcome = ("quota" if isinstance(exc, QuotaExceeded)
                       else "shed" if isinstance(exc, Overloaded) else "error")
            metrics.queries.add(1, {**attrs, "outcome": outcome})
            raise
        metrics.queries.add(1, {**attrs, "outcome": "default" if prediction.default_used
                                else "answered"})
        metrics.query_duration.record((time.perf_counter() - started) * 1000, attrs)
        if prediction.default_used:
            metrics.defaults.add(1, {**attrs, "cause": prediction.default_cause})
        for model in prediction.missing_models:
            metrics.missing_models.add(1, {**attrs, "model": model})
        return prediction

    async def _predict(
        self,
        app_name: str,
        value: Value,
        context_key: str,
        query_id: str,
        client_remaining_s: float | None,
        version: str,
    ) -> Prediction:
        app = self._check_request(app_name, context_key, query_id)
        caller = current_caller()
        access.authorize(app, access.QUERY, caller)
        self.quotas.take(app, caller)
        self.validate(app, value)
        deadline = answer_deadline(app.slo_ms, client_remaining_s, clock.now(),
                                   self.admission.accept_wait_s)
        query_id = query_id or uuid.uuid4().hex
        try:
            self.admission.check(app.name, deadline - clock.now())
        except Overloaded as exc:
            if app.default_output is None:
                raise
            return _default(app, query_id, exc.message, "overload")
        with self.admission.hold(app.name):
            try:
                prediction = await self._answer(app, value, context_key, query_id, deadline,
                                                version)
            except DeadlineExpired:
                self.admission.observe(app.name, in_time=False)
                raise
            # In time counts the backlog before the handler ran (the loop's lag) too: the
            # client waited through it.
            late = (prediction.default_cause == "deadline" or prediction.congested
                    or clock.now() + self.admission.lag.lag_s > deadline)
            self.admission.observe(app.name, in_time=not late)
            return prediction

    async def _answer(
        self, app: Application, value: Value, context_key: str, query_id: str,
        deadline: float, version: str,
    ) -> Prediction:
        """Select, fan out and combine, for an admitted query."""
        telemetry.set_query(query_id, app.name)  # named in what is logged about it
        if tracing.enabled:
            query_trace.mark_admitted()
        if not app.linked_models:
            return self._fallback(app, query_id, _FanOut([], [], [], timed_out=False))
        decision = await self.selection.select(app, context_key, deadline,
                                               self.router.versions(app.linked_models, version))
        fan = await self._fan_out(decision, value, deadline, version)
        if not tracing.enabled:
            return self._combine(app, context_key, query_id, fan)
        with query_trace.combine_span() as span:
            prediction = self._combine(app, context_key, query_id, fan)
            query_trace.describe_combine(span, prediction)
            return prediction

    def _combine(self, app: Application, context_key: str, query_id: str,
                 fan: _FanOut) -> Prediction:
        """The answer from what the models gave (kept for feedback), or the default."""
        if not fan.answers:
            return self._fallback(app, query_id, fan)
        combined = combine(fan.answers, app.outputs)
        self.cache.remember_query(query_id, pb.RecentQuery(
            application=app.name, context_key=context_key,
            outputs={a.model: named_tensors.first(a.output, app.outputs) for a in fan.answers},
            weights={a.model: a.weight for a in fan.answers},
            versions=_answering_versions(fan.answers),
            trace_context=tracing.carrier() if tracing.enabled else None,
        ))
        prediction = Prediction(
            query_id=query_id,
            output=combined.output,
            models=[a.served_by for a in fan.answers],
            missing_models=fan.missing,
            confidence=combined.confidence,
            congested=fan.congested,
        )
        if combined.confidence < app.confidence_threshold and app.default_output is not None:
            prediction.ensemble_output = prediction.output
            prediction.output = app.default_value()
            prediction.default_used = True
            prediction.default_cause = "low_confidence"
            prediction.default_reason = (
                f"low confidence: {combined.confidence:.2f} is below the application's "
                f"threshold {app.confidence_threshold:.2f}"
            )
        return prediction

    async def feedback(
        self,
        app_name: str,
        context_key: str,
        query_id: str,
        value: Value | None,
        label: pb.Tensor,
        client_remaining_s: float | None = None,
    ) -> list[str]:
        """Score each model's answer against `label` and update the policy state.

        By query id, the answers given then are scored, under the context key the
        query was made with; with an input, every linked model answers it first.
        """
        app = self._check_request(app_name, context_key, query_id)
        access.authorize(app, access.FEEDBACK)
        telemetry.set_query(query_id, app.name)
        # A label that is not a number would make every reward NaN: never learnt from.
        _require_finite(tensors.decode(label, self.limits), "label")
        weights: dict[str, float] = {}
        versions = self.router.versions(app.linked_models)
        if query_id:
            recent = await self.cache.recall_query(query_id)
            if recent is None or recent.application != app_name:
                raise NotFound(f"no recent prediction {query_id!r} for application {app_name!r}")
            if context_key and recent.context_key and context_key != recent.context_key:
                raise InvalidInput(f"query {query_id!r} was made with context key "
                                   f"{recent.context_key!r}, not {context_key!r}")
            context_key = context_key or recent.context_key
            outputs, weights = dict(recent.outputs), dict(recent.weights)
            if tracing.enabled:
                query_trace.link_query(recent.trace_context)
            versions.update(recent.versions)
        elif value is not None:
            self.validate(app, value)
            if not app.linked_models:
                raise Unavailable(f"application {app_name!r} has no linked model")
            deadline = answer_deadline(app.slo_ms, client_remaining_s, clock.now())
            candidates = [(m, 1.0) for m in app.linked_models]
            fan = await self._fan_out(candidates, value, deadline)
            if not fan.answers:
                raise Unavailable(f"no model of {app_name!r} answered to score the feedback")
            outputs = {a.model: named_tensors.first(a.output, app.outputs) for a in fan.answers}
            versions.update(_answering_versions(fan.answers))
        else:
            raise InvalidInput("feedback needs a query_id or an input")
        await self.selection.observe(app, context_key, label, outputs, weights, versions)
        return sorted(outputs)

    async def _fan_out(
        self, decision: list[tuple[str, float]], value: Value, deadline: float,
        version: str = "",
    ) -> _FanOut:
        if len(decision) == 1:  # one model: awaited here, no task to race the deadline with
            model, weight = decision[0]
            fan = _FanOut([], [], [], timed_out=False)
            try:
                async with asyncio.timeout_at(deadline):
                    served_by, output = await self.router.ask(model, value, deadline, version)
            except TimeoutError:
                fan.missing.append(model)
                fan.timed_out = True
            except Exception as exc:  # kept as the model's error, as below
                _failed(fan, model, exc)
            else:
                fan.answers.append(Answer(model, served_by, output, weight))
            return fan
        weights = dict(decision)
        tasks = {
            asyncio.create_task(self.router.ask(model, value, deadline, version)): model
            for model, _ in decision
        }
        timeout = max(deadline - clock.now(), 0.0)
        try:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished ones; stops stragglers and our own cancel
        fan = _FanOut([], [tasks[t] for t in pending], [], timed_out=bool(pending))
        for task in tasks:  # policy order, so ties break the policy's way
            if task not in done:
                continue
            model = tasks[task]
            error = task.exception()
            if error is None:
                served_by, output = task.result()
                fan.answers.append(Answer(model, served_by, output, weights[model]))
            else:
                _failed(fan, model, error)
        return fan

    def _fallback(self, app: Application, query_id: str, fan: _FanOut) -> Prediction:
        cause = "deadline" if fan.timed_out else "error"
        if fan.timed_out:
            reason = f"no model answered within the deadline ({app.slo_ms} ms SLO)"
            error: ClipperError = DeadlineExpired(f"application {app.name!r}: {reason}")
        elif fan.errors:
            error = fan.errors[0]
            reason = error.message
        else:
            error = Unavailable(f"application {app.name!r} has no linked model")
            reason = error.message
        if app.default_output is None:
            raise error
        prediction = _default(app, query_id, reason, cause, fan.missing)
        prediction.congested = fan.congested
        return prediction


def _failed(fan: _FanOut, model: str, exc: BaseException) -> None:
    """`model` failed with `exc`: missing from the answer, its error kept."""
    fan.missing.append(model)
    fan.errors.append(exc if isinstance(exc, ClipperError) else ClipperError(repr(exc)))
    if not isinstance(exc, ClipperError):
        logger.error("query to %s failed", model, exc_info=exc)


def _default(app: Application, query_id: str, reason: str, cause: str,
             missing: list[str] | None = None) -> Prediction:
    """The application's default output, flagged with why it went out."""
    return Prediction(query_id=query_id, output=app.default_value(), default_used=True,
                      default_reason=reason, default_cause=cause, missing_models=missing or [])


def _answering_versions(answers: list[Answer]) -> dict[str, str]:
    """model -> the version that answered (from `served_by`, "name:version")."""
    return {a.model: a.served_by.partition(":")[2] for a in answers}


def _require_finite(array: np.ndarray, what: str, why: str = "") -> None:
    """Raise InvalidInput when a floating-point `array` holds NaN or infinity."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{what} holds NaN or infinity{why}")
