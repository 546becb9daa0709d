"""The Open Inference Protocol (KServe V2) on the frontend: `inference.GRPCInferenceService`.

A model here is an application: ModelInfer sends its one input through the same
query path as `clipper.v1.Frontend/Predict` and answers with one output named
"output". A version, when given, pins the version of the application's models.
An input of shape `[N, *input shape]` is a batch of N queries answered as one
`[N, ...]` output. Raw inputs get raw outputs; typed inputs typed outputs.

Request parameters: `timeout` (int64, microseconds) becomes the deadline when
tighter than the SLO; `priority` is accepted; `context_key` (string) is the
key the selection policy personalises on. Response parameters: `default_used`
(bool), `default_reason` (string, when used), `models` (string, "name:version"
of the models that answered, comma-separated).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Coroutine, Mapping
from typing import Any

import grpc

from services.common.errors import InvalidInput, NotFound, handle_errors
from services.common.limits import Limits, short_repr
from services.frontend import access
from services.frontend import inference_tensors as oip_tensors
from services.frontend.query_path import Prediction, QueryPath
from services.frontend.records import Application
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc

SERVER_NAME = "clipper-mesh"
PLATFORM = "clipper"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Most rows one batched ModelInfer may carry (each row is one query).
MAX_BATCH_ROWS = 4096
# Most inputs, outputs or raw contents one ModelInfer may list (an application takes one).
MAX_TENSORS = 16


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, query_path: QueryPath) -> None:
        self.query_path = query_path
        self.registry = query_path.registry

    @handle_errors
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @handle_errors
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=True)

    @handle_errors
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=_server_version())

    @handle_errors
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        """Ready when some linked model has a connected replica (of the version, if given)."""
        app = self.registry.apps.get(request.name)
        if app is None:
            return oip.ModelReadyResponse(ready=False)
        ready = any(self.query_path.router.ready(model, request.version)
                    for model in app.linked_models)
        return oip.ModelReadyResponse(ready=ready)

    @handle_errors
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        app = self.registry.get_app(request.name)
        versions = self._versions(app)
        if request.version:
            self._check_version(app, request.version, versions)
        spec = app.input_spec
        response = oip.ModelMetadataResponse(
            name=app.name,
            versions=versions,
            platform=PLATFORM,
            inputs=[oip.ModelMetadataResponse.TensorMetadata(
                name=INPUT_NAME, datatype=oip_tensors.datatype(spec.dtype), shape=spec.shape,
            )],
        )
        output = response.outputs.add(name=OUTPUT_NAME, shape=[-1])
        if app.default_output is not None:  # the only output type the frontend knows
            default = pb.Tensor.FromString(app.default_output)
            output.datatype = oip_tensors.datatype(default.dtype)
            output.shape[:] = default.shape
        return response

    @handle_errors
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        limits = self.query_path.limits
        _check_request(request, limits)
        app = self.registry.get_app(request.model_name)
        access.authorize(app, access.QUERY)  # before any work on the input
        if request.model_version:
            self._check_version(app, request.model_version, self._versions(app))
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
        remaining_s = _client_remaining_s(context, request.parameters)
        context_key = _string_param(request.parameters, "context_key")

        async def predict(row: pb.Tensor, query_id: str) -> Prediction:
            return await self.query_path.predict(
                app.name, row, context_key, query_id, remaining_s, request.model_version
            )

        if rows is None:
            predictions = [await predict(value, request.id)]
            output = predictions[0].output
        else:
            predictions = await _gather([
                predict(row, f"{request.id}/{i}" if request.id else "")
                for i, row in enumerate(rows)
            ])
            output = oip_tensors.stack_rows([p.output for p in predictions])
        return _response(request, predictions, output, raw)

    def _versions(self, app: Application) -> list[str]:
        """Every known version of the application's linked models."""
        versions = {
            v for m in app.linked_models if m in self.registry.models
            for v in self.registry.models[m].versions
        }
        return sorted(versions)

    def _check_version(self, app: Application, version: str, versions: list[str]) -> None:
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


def _response(
    request: oip.ModelInferRequest, predictions: list[Prediction],
    output: pb.Tensor, raw: bool,
) -> oip.ModelInferResponse:
    response = oip.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    out, raw_bytes = oip_tensors.to_output(output, OUTPUT_NAME, raw)
    response.outputs.append(out)
    if raw_bytes is not None:
        response.raw_output_contents.append(raw_bytes)
    defaults = [p for p in predictions if p.default_used]
    params = response.parameters
    params["default_used"].bool_param = bool(defaults)
    if defaults:
        params["default_reason"].string_param = defaults[0].default_reason
    models = sorted({m for p in predictions for m in p.models})
    params["models"].string_param = ",".join(models)
    return response


async def _gather(calls: list[Coroutine[Any, Any, Prediction]]) -> list[Prediction]:
    """Run every row's query; the first error (in row order) fails the request."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    predictions: list[Prediction] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        predictions.append(result)
    return predictions


def _client_remaining_s(
    context: grpc.aio.ServicerContext, params: Mapping[str, oip.InferParameter]
) -> float | None:
    """The client's gRPC deadline, or its `timeout` parameter when tighter."""
    remaining: float | None = context.time_remaining()
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


def _server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
