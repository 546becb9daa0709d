"""The Open Inference Protocol (KServe V2) core: what the frontend's
`inference.GRPCInferenceService` does, behind a servicer that only decodes and encodes
(services/frontend/inference_servicer.py).

A model here is an application: `infer` sends its inputs through the same query
path as `clipper.v1.Frontend/Predict` and answers with its outputs. An application
with one input takes one input tensor (of any name) and answers one output named
"output"; one with named inputs (`Application.inputs`) takes each of them by name
(a missing or unknown name is INVALID_ARGUMENT) and answers the outputs its models
give, named (`Application.outputs` lists them). A version, when given, pins the
version of the application's models. Inputs of shape `[N, *input shape]` (every
input with the same N) are a batch of N queries answered as `[N, ...]` outputs.
Raw inputs get raw outputs; typed inputs typed outputs.

Request parameters: `timeout` (int64, microseconds) becomes the deadline when tighter
than the SLO; `priority` is accepted; `context_key` (string) is the key the selection
policy personalises on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from services.common import named_tensors
from services.common.errors import ClipperError, InvalidInput, NotFound
from services.common.limits import Limits, short_repr
from services.common.named_tensors import Value
from services.common.tensors import TensorSpec
from services.frontend import access
from services.frontend import inference_tensors as oip_tensors
from services.frontend.model_router import ModelRouter
from services.frontend.query_path import Prediction, QueryPath
from services.frontend.records import Application
from services.frontend.registry import Registry
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.inference import grpc_service_pb2 as oip

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Most rows one batched ModelInfer may carry (each row is one query).
MAX_BATCH_ROWS = 4096
# Most inputs, outputs or raw contents one ModelInfer may list.
MAX_TENSORS = named_tensors.MAX_NAMED


@dataclass(frozen=True)
class InferAnswer:
    """What ModelInfer answers: the output (rows stacked) and each row's prediction."""

    outputs: dict[str, pb.Tensor]  # by output name, in the order they go out
    predictions: list[Prediction]
    raw: bool  # the input came as raw bytes: so does the output


@dataclass(frozen=True)
class ModelInfo:
    """An application as an OIP model: its input spec, versions and default output."""

    app: Application
    versions: list[str]


class InferencePlane:
    """Applications as OIP models: their readiness, metadata and inference."""

    def __init__(self, registry: Registry, router: ModelRouter, query_path: QueryPath,
                 limits: Limits) -> None:
        self.registry = registry
        self.router = router
        self.query_path = query_path
        self.limits = limits

    def ready(self, name: str, version: str = "") -> bool:
        """Whether some linked model has a connected replica (of the version, if given)."""
        app = self.registry.apps.get(name)
        return app is not None and any(self.router.ready(model, version)
                                       for model in app.linked_models)

    def metadata(self, name: str, version: str = "") -> ModelInfo:
        app = self.registry.get_app(name)
        versions = self._versions(app)
        if version:
            _check_version(app, version, versions)
        return ModelInfo(app, versions)

    async def infer(self, request: oip.ModelInferRequest,
                    remaining_s: float | None) -> InferAnswer:
        """Check the request, split a batch into rows, ask the query path for each
        (`remaining_s`: the client's gRPC deadline) and stack the answers."""
        limits = self.limits
        _check_request(request, limits)
        app = self.registry.get_app(request.model_name)
        access.authorize(app, access.QUERY)  # before any work on the input
        if request.model_version:
            _check_version(app, request.model_version, self._versions(app))
        specs = input_specs(app)
        _check_input_names(app, specs, request)
        known_outputs = output_names(app)
        for wanted in request.outputs:
            if wanted.name not in known_outputs:
                raise InvalidInput(f"unknown output {short_repr(wanted.name)}: the outputs are "
                                   f"{', '.join(map(repr, known_outputs))}")
        raw = bool(request.raw_input_contents)
        if raw and len(request.raw_input_contents) != len(request.inputs):
            raise InvalidInput(f"expected one raw_input_contents entry per input "
                               f"({len(request.inputs)}), got {len(request.raw_input_contents)}")
        by_name = {spec.name: spec for spec in specs}
        values: dict[str, pb.Tensor] = {}
        split: dict[str, list[pb.Tensor] | None] = {}
        for i, inp in enumerate(request.inputs):
            spec = by_name.get(inp.name, specs[0])
            value = oip_tensors.to_tensor(inp, request.raw_input_contents[i] if raw else None,
                                          spec, limits)
            values[spec.name] = value
            split[spec.name] = oip_tensors.split_rows(value, spec, MAX_BATCH_ROWS, limits)
        queries = _queries(app, values, split)
        remaining_s = _remaining_s(remaining_s, request.parameters)
        context_key = _string_param(request.parameters, "context_key")

        async def predict(query: Value, query_id: str) -> Prediction:
            return await self.query_path.predict(
                app.name, query, context_key, query_id, remaining_s, request.model_version
            )

        if queries is None:
            one = values if app.inputs else values[specs[0].name]
            prediction = await predict(one, request.id)
            return InferAnswer(_named(app, prediction.output), [prediction], raw)
        predictions = await _gather([
            predict(query, f"{request.id}/{i}" if request.id else "")
            for i, query in enumerate(queries)
        ])
        return InferAnswer(_stack([_named(app, p.output) for p in predictions]), predictions,
                           raw)

    def _versions(self, app: Application) -> list[str]:
        """Every known version of the application's linked models."""
        models = self.registry.models
        return sorted({v for m in app.linked_models if m in models for v in models[m].versions})


def input_specs(app: Application) -> tuple[TensorSpec, ...]:
    """The application's inputs as OIP names them: its named inputs, or its one input
    named "input"."""
    if app.inputs:
        return app.inputs
    assert app.input_spec is not None
    return (TensorSpec(app.input_spec.dtype, app.input_spec.shape, INPUT_NAME),)


def output_names(app: Application) -> list[str]:
    """The outputs an answer may carry: the declared ones, else "output"."""
    return [spec.name for spec in app.outputs] or [OUTPUT_NAME]


def _check_input_names(app: Application, specs: tuple[TensorSpec, ...],
                       request: oip.ModelInferRequest) -> None:
    if app.inputs:
        names = [inp.name for inp in request.inputs]
        if len(set(names)) != len(names):
            raise InvalidInput(f"input {short_repr(names[0])} given more than once")
        named_tensors.check_names(specs, names)
    elif len(request.inputs) != 1:
        raise InvalidInput(f"application {app.name!r} takes one input "
                           f"{specs[0].describe()}, got {len(request.inputs)}")


def _queries(app: Application, values: dict[str, pb.Tensor],
             split: dict[str, list[pb.Tensor] | None]) -> list[Value] | None:
    """One query per row of a batch (None: the inputs are one query); every input
    must be one query, or a batch of the same N."""
    counts = {name: None if rows is None else len(rows) for name, rows in split.items()}
    if len(set(counts.values())) > 1:
        described = ", ".join(f"{short_repr(n)}: {'one query' if c is None else f'{c} rows'}"
                              for n, c in counts.items())
        raise InvalidInput(f"the inputs disagree on the batch ({described}); every input "
                           "carries one query, or N rows of the same N")
    if next(iter(counts.values())) is None:
        return None
    rows = {name: batch for name, batch in split.items() if batch is not None}
    count = len(next(iter(rows.values())))
    if not app.inputs:
        return list(next(iter(rows.values())))
    return [{name: batch[i] for name, batch in rows.items()} for i in range(count)]


def _named(app: Application, output: Value) -> dict[str, pb.Tensor]:
    """An answer's outputs by name: one tensor is the application's one declared output
    (when it declares one), else "output"."""
    if isinstance(output, pb.Tensor):
        return {output_names(app)[0] if len(app.outputs) == 1 else OUTPUT_NAME: output}
    return dict(output)


def _stack(answers: list[dict[str, pb.Tensor]]) -> dict[str, pb.Tensor]:
    """Each output's rows stacked; every row must have answered the same outputs."""
    names = list(answers[0])
    for answer in answers[1:]:
        if sorted(answer) != sorted(names):
            raise ClipperError(f"rows of the batch were answered with outputs "
                               f"{', '.join(sorted(names))} and {', '.join(sorted(answer))}; "
                               "send them as separate requests")
    return {name: oip_tensors.stack_rows([a[name] for a in answers]) for name in names}


def _check_version(app: Application, version: str, versions: list[str]) -> None:
    if version not in versions:
        raise NotFound(f"application {app.name!r} has no model version {version!r}; "
                       f"known: {', '.join(versions) or 'none'}")


def _check_request(request: oip.ModelInferRequest, limits: Limits) -> None:
    """The request's names, id and counts within their limits, before any lookup."""
    for what, value in (("model_name", request.model_name),
                        ("model_version", request.model_version)):
        limits.check_length(what, value, limits.name_length, "--max-name-length")
    limits.check_query_id(request.id)
    for what, count in (("inputs", len(request.inputs)), ("outputs", len(request.outputs)),
                        ("raw_input_contents", len(request.raw_input_contents))):
        if count > MAX_TENSORS:
            raise InvalidInput(f"{count} {what} exceed the limit of {MAX_TENSORS}")
    if len(request.parameters) > limits.policy_params:
        raise InvalidInput(f"{len(request.parameters)} parameters exceed the limit of "
                           f"{limits.policy_params} (--max-policy-params)")


async def _gather(calls: list[Coroutine[Any, Any, Prediction]]) -> list[Prediction]:
    """Run every row's query; the first error (in row order) fails the request."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    predictions: list[Prediction] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        predictions.append(result)
    return predictions


def _remaining_s(remaining: float | None,
                 params: Mapping[str, oip.InferParameter]) -> float | None:
    """The client's gRPC deadline, or its `timeout` parameter when tighter."""
    if "timeout" not in params:
        return remaining
    param = params["timeout"]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"parameter 'timeout' must be an integer (microseconds), got {kind}")
    timeout_us = getattr(param, kind)
    if timeout_us <= 0:
        raise InvalidInput(f"parameter 'timeout' must be > 0 microseconds, got {timeout_us}")
    timeout_s = float(timeout_us) / 1e6
    return timeout_s if remaining is None else min(remaining, timeout_s)


def _string_param(params: Mapping[str, oip.InferParameter], name: str) -> str:
    if name not in params:
        return ""
    param = params[name]
    if param.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInput(f"parameter {short_repr(name)} must be a string")
    return param.string_param
