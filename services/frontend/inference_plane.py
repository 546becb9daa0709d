"""The Open Inference Protocol (KServe V2) core: what the frontend's
`inference.GRPCInferenceService` does, behind a servicer that only decodes and encodes
(services/frontend/inference_servicer.py).

A model here is an application: `infer` sends its one input through the same query
path as `clipper.v1.Frontend/Predict` and answers with one output named "output". A
version, when given, pins the version of the application's models. An input of shape
`[N, *input shape]` is a batch of N queries answered as one `[N, ...]` output. Raw
inputs get raw outputs; typed inputs typed outputs.

Request parameters: `timeout` (int64, microseconds) becomes the deadline when tighter
than the SLO; `priority` is accepted; `context_key` (string) is the key the selection
policy personalises on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInput, NotFound
from services.common.limits import Limits, short_repr
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
# Most inputs, outputs or raw contents one ModelInfer may list (an application takes one).
MAX_TENSORS = 16


@dataclass(frozen=True)
class InferAnswer:
    """What ModelInfer answers: the output (rows stacked) and each row's prediction."""

    output: pb.Tensor
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
        if len(request.inputs) != 1:
            raise InvalidInput(f"application {app.name!r} takes one input "
                               f"{app.input_spec.describe()}, got {len(request.inputs)}")
        for wanted in request.outputs:
            if wanted.name != OUTPUT_NAME:
                raise InvalidInput(f"unknown output {short_repr(wanted.name)}: the only output is "
                                   f"{OUTPUT_NAME!r}")
        raw = bool(request.raw_input_contents)
        if raw and len(request.raw_input_contents) != 1:
            raise InvalidInput(f"expected one raw_input_contents entry per input (1), got "
                               f"{len(request.raw_input_contents)}")
        value = oip_tensors.to_tensor(
            request.inputs[0], request.raw_input_contents[0] if raw else None, app.input_spec,
            limits,
        )
        rows = oip_tensors.split_rows(value, app.input_spec, MAX_BATCH_ROWS, limits)
        remaining_s = _remaining_s(remaining_s, request.parameters)
        context_key = _string_param(request.parameters, "context_key")

        async def predict(row: pb.Tensor, query_id: str) -> Prediction:
            return await self.query_path.predict(
                app.name, row, context_key, query_id, remaining_s, request.model_version
            )

        if rows is None:
            prediction = await predict(value, request.id)
            return InferAnswer(prediction.output, [prediction], raw)
        predictions = await _gather([
            predict(row, f"{request.id}/{i}" if request.id else "")
            for i, row in enumerate(rows)
        ])
        return InferAnswer(oip_tensors.stack_rows([p.output for p in predictions]),
                           predictions, raw)

    def _versions(self, app: Application) -> list[str]:
        """Every known version of the application's linked models."""
        models = self.registry.models
        return sorted({v for m in app.linked_models if m in models for v in models[m].versions})


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
