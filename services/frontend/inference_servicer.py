"""The Open Inference Protocol (KServe V2) edge: `inference.GRPCInferenceService`.

Each RPC decodes, calls the core (services/frontend/inference_plane.py) and encodes.
Response parameters of ModelInfer: `default_used` (bool), `default_reason` (string,
when used), `models` (string, "name:version" of the models that answered,
comma-separated).
"""

from __future__ import annotations

import importlib.metadata

import grpc

from services.common.errors import handle_errors
from services.frontend import inference_tensors as oip_tensors
from services.frontend.inference_plane import (
    OUTPUT_NAME,
    InferAnswer,
    InferencePlane,
    ModelInfo,
    input_specs,
)
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc

SERVER_NAME = "clipper-mesh"
PLATFORM = "clipper"


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: InferencePlane) -> None:
        self.plane = plane

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
        return oip.ModelReadyResponse(ready=self.plane.ready(request.name, request.version))

    @handle_errors
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        return _metadata_response(self.plane.metadata(request.name, request.version))

    @handle_errors
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        answer = await self.plane.infer(request, context.time_remaining())
        return _infer_response(request, answer)


def _metadata_response(info: ModelInfo) -> oip.ModelMetadataResponse:
    app = info.app
    response = oip.ModelMetadataResponse(
        name=app.name,
        versions=info.versions,
        platform=PLATFORM,
        inputs=[oip.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=oip_tensors.datatype(spec.dtype), shape=spec.shape,
        ) for spec in input_specs(app)],
    )
    if app.outputs:
        response.outputs.extend(oip.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=oip_tensors.datatype(spec.dtype), shape=spec.shape,
        ) for spec in app.outputs)
        return response
    output = response.outputs.add(name=OUTPUT_NAME, shape=[-1])
    default = app.default_value() if app.default_output is not None else None
    if isinstance(default, pb.Tensor):  # the only output type the frontend knows
        output.datatype = oip_tensors.datatype(default.dtype)
        output.shape[:] = default.shape
    return response


def _infer_response(request: oip.ModelInferRequest,
                    answer: InferAnswer) -> oip.ModelInferResponse:
    response = oip.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    wanted = {o.name for o in request.outputs}
    outputs = {n: v for n, v in answer.outputs.items() if not wanted or n in wanted}
    # Raw contents go for every output or none: all raw if one travels only raw (FP16).
    raw = answer.raw or any(v.dtype not in oip_tensors.CONTENTS_FIELD for v in outputs.values())
    for name, value in outputs.items():
        out, raw_bytes = oip_tensors.to_output(value, name, raw)
        response.outputs.append(out)
        if raw_bytes is not None:
            response.raw_output_contents.append(raw_bytes)
    defaults = [p for p in answer.predictions if p.default_used]
    params = response.parameters
    params["default_used"].bool_param = bool(defaults)
    if defaults:
        params["default_reason"].string_param = defaults[0].default_reason
    models = sorted({m for p in answer.predictions for m in p.models})
    params["models"].string_param = ",".join(models)
    return response


def _server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
