"""Management (applications, links, versions) and the container Registry.

Callers are authenticated by the AuthInterceptor (the management token for
Management, a model's container token for Registry); Registry methods check here
that the caller's model and replica secret match the replica.
"""

from __future__ import annotations

import math
from typing import Any

import grpc

from services import policies
from services.common import named_tensors, tensors
from services.common.auth import current_caller, require_model
from services.common.credentials import sha256_hex
from services.common.errors import InvalidInput, Unavailable, handle_errors
from services.common.limits import DEFAULT_LIMITS, Limits, short_repr
from services.common.tensors import TensorSpec, spec_from_proto, spec_to_proto
from services.frontend.access import key_hashes
from services.frontend.model_router import ModelRouter
from services.frontend.records import Application, ModelRecord, ReplicaRecord, check_owner
from services.frontend.registry import Registry
from services.frontend.selection_client import SelectionClient
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.policies import DEFAULT_POLICY, POLICIES, SelectContext, get_policy

MAX_SLO_MS = 60_000


class ManagementServicer(pb_grpc.ManagementServicer):
    def __init__(self, registry: Registry, router: ModelRouter,
                 selection: SelectionClient | None = None) -> None:
        """`selection`: the selection service, for the policy state calls."""
        self.registry = registry
        self.router = router
        self.selection = selection

    @handle_errors
    async def CreateApplication(
        self, request: pb.ApplicationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Application:
        app = application_from_proto(request.application, self.registry.limits)
        app = await self.registry.create_app(app)
        return application_to_proto(app)

    @handle_errors
    async def UpdateApplication(
        self, request: pb.ApplicationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Application:
        app = application_from_proto(request.application, self.registry.limits)
        app = await self.registry.update_app(app)
        return application_to_proto(app)

    @handle_errors
    async def DeleteApplication(
        self, request: pb.ApplicationName, context: grpc.aio.ServicerContext
    ) -> pb.Empty:
        await self.registry.delete_app(request.name)
        return pb.Empty()

    @handle_errors
    async def GetApplication(
        self, request: pb.ApplicationName, context: grpc.aio.ServicerContext
    ) -> pb.Application:
        return application_to_proto(self.registry.get_app(request.name))

    @handle_errors
    async def ListApplications(
        self, request: pb.ListApplicationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApplicationsResponse:
        apps = sorted(self.registry.apps.values(), key=lambda a: a.name)
        return pb.ListApplicationsResponse(applications=[application_to_proto(a) for a in apps])

    @handle_errors
    async def LinkModel(
        self, request: pb.LinkRequest, context: grpc.aio.ServicerContext
    ) -> pb.Application:
        app = await self.registry.link(request.application, request.model)
        return application_to_proto(app)

    @handle_errors
    async def UnlinkModel(
        self, request: pb.LinkRequest, context: grpc.aio.ServicerContext
    ) -> pb.Application:
        app = await self.registry.unlink(request.application, request.model)
        return application_to_proto(app)

    @handle_errors
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = sorted(self.registry.models.values(), key=lambda m: m.name)
        return pb.ListModelsResponse(models=[model_to_proto(m) for m in models])

    @handle_errors
    async def SetModelVersion(
        self, request: pb.SetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Model:
        return model_to_proto(await self.registry.set_version(request.model, request.version))

    @handle_errors
    async def ListReplicas(
        self, request: pb.ListReplicasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReplicasResponse:
        out = []
        for rid, r in sorted(self.registry.replicas.items()):
            if request.model and r.model != request.model:
                continue
            status = self.router.replica_status(rid)
            out.append(pb.Replica(
                replica_id=rid, model=r.model, version=r.version, address=r.address,
                connected=status.connected, outstanding=status.outstanding,
                queue_depth=status.queue_depth, est_wait_us=int(status.est_wait_s * 1e6),
                ejected_ms=math.ceil(status.ejected_s * 1000),
            ))
        return pb.ListReplicasResponse(replicas=out)

    @handle_errors
    async def GetPolicyState(
        self, request: pb.PolicyStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.PolicyState:
        app = self._policy_app(request)
        if get_policy(app.policy).stateless:
            return pb.PolicyState(application=app.name, context_key=request.context_key,
                                  policy=app.policy or DEFAULT_POLICY, source="none")
        return await self._selection().policy_state(
            app, request.context_key, self.router.versions(app.linked_models))

    @handle_errors
    async def ResetPolicyState(
        self, request: pb.PolicyStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetPolicyStateResponse:
        app = self._policy_app(request)
        deleted = await self._selection().reset_policy_state(app.name, request.context_key)
        return pb.ResetPolicyStateResponse(states_deleted=deleted)

    def _policy_app(self, request: pb.PolicyStateRequest) -> Application:
        limits = self.registry.limits
        limits.check_length("application name", request.application, limits.name_length,
                            "--max-name-length")
        limits.check_context_key(request.context_key)
        return self.registry.get_app(request.application)

    def _selection(self) -> SelectionClient:
        if self.selection is None:
            raise Unavailable("this frontend has no selection service")
        return self.selection


class RegistryServicer(pb_grpc.RegistryServicer):
    """Containers announce themselves here (their model's token) on a heartbeat."""

    def __init__(self, registry: Registry, heartbeat_ms: int) -> None:
        self.registry = registry
        self.heartbeat_ms = heartbeat_ms

    @handle_errors
    async def Announce(
        self, request: pb.AnnounceRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnnounceResponse:
        for field, value in (("model", request.model), ("version", request.version),
                             ("address", request.address), ("replica_id", request.replica_id),
                             ("replica_secret", request.replica_secret)):
            if not value:
                raise InvalidInput(f"announce needs a {field}")
        require_model(current_caller(), request.model)
        limits = self.registry.limits
        spec = spec_from_proto(request.input_spec) if request.input_spec.dtype else None
        inputs = named_tensors.specs_from_proto(request.inputs, "inputs", limits)
        outputs = named_tensors.specs_from_proto(request.outputs, "outputs", limits)
        record = ReplicaRecord(request.replica_id, request.model, request.version,
                               request.address, sha256_hex(request.replica_secret))
        await self.registry.announce(record, spec, inputs, outputs)
        return pb.AnnounceResponse(heartbeat_ms=self.heartbeat_ms)

    @handle_errors
    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.Empty:
        record = self.registry.replicas.get(request.replica_id)
        if record is None:
            return pb.Empty()  # gone already (expired, or deregistered through another frontend)
        require_model(current_caller(), record.model)
        check_owner(record, record.model, sha256_hex(request.replica_secret))
        await self.registry.deregister(request.replica_id)
        return pb.Empty()


# ---------------------------------------------------------------- conversions


def application_from_proto(msg: pb.Application, limits: Limits = DEFAULT_LIMITS) -> Application:
    """The domain application, validated against `limits` (names and sizes first)."""
    limits.check_name("application", msg.name)
    inputs = named_tensors.specs_from_proto(msg.inputs, "inputs", limits)
    outputs = named_tensors.specs_from_proto(msg.outputs, "outputs", limits)
    if inputs and msg.input_spec.dtype:
        raise InvalidInput("application has both an input_spec and named inputs: give one "
                           "(input_spec for one input, inputs for several by name)")
    if not inputs and not msg.input_spec.dtype:
        raise InvalidInput("application needs an input_spec (dtype and shape), or named "
                           "inputs")
    if len(msg.input_spec.shape) > limits.rank:
        raise InvalidInput(f"input_spec of rank {len(msg.input_spec.shape)} exceeds the limit "
                           f"of {limits.rank} dimensions (--max-rank)")
    if not 0 < msg.slo_ms <= MAX_SLO_MS:
        raise InvalidInput(f"slo_ms must be in 1..{MAX_SLO_MS}, got {msg.slo_ms}")
    policy = msg.policy or DEFAULT_POLICY
    if policy not in POLICIES:
        raise InvalidInput(f"unknown policy {short_repr(policy)}; expected one of "
                           f"{', '.join(POLICIES)}")
    limits.check_params(dict(msg.policy_params))
    linked_models = tuple(dict.fromkeys(msg.linked_models))
    if len(linked_models) > limits.linked_models:
        raise InvalidInput(f"{len(linked_models)} linked models exceed the limit of "
                           f"{limits.linked_models} (--max-linked-models)")
    for model in linked_models:
        limits.check_name("model", model)
    policies.check(policy, SelectContext(msg.name, "", linked_models, dict(msg.policy_params)))
    if not 0.0 <= msg.confidence_threshold <= 1.0:
        raise InvalidInput(
            f"confidence_threshold must be in [0, 1], got {msg.confidence_threshold}"
        )
    if not (0.0 <= msg.client_quota_qps < math.inf):
        raise InvalidInput(f"client_quota_qps must be >= 0 (0: the frontend's default), "
                           f"got {msg.client_quota_qps}")
    has_default = msg.HasField("default_output") or bool(msg.default_outputs)
    if msg.confidence_threshold > 0 and not has_default:
        raise InvalidInput("a confidence_threshold needs a default_output to serve below it")
    default = _default_output(msg, outputs, limits)
    return Application(
        name=msg.name,
        input_spec=spec_from_proto(msg.input_spec) if msg.input_spec.dtype else None,
        inputs=inputs,
        outputs=outputs,
        slo_ms=msg.slo_ms,
        policy=policy,
        policy_params=dict(msg.policy_params),
        linked_models=linked_models,
        default_output=default,
        confidence_threshold=msg.confidence_threshold,
        allow_non_finite=msg.allow_non_finite,
        api_key_sha256=key_hashes(list(msg.api_key_sha256), "api_key_sha256"),
        feedback_key_sha256=key_hashes(list(msg.feedback_key_sha256), "feedback_key_sha256"),
        client_quota_qps=msg.client_quota_qps,
        client_quota_burst=msg.client_quota_burst,
    )


def _default_output(msg: pb.Application, outputs: tuple[TensorSpec, ...],
                    limits: Limits) -> bytes | None:
    """The default as the record keeps it: one tensor (`default_output`), or, for an
    application with named outputs, one per output (`default_outputs`)."""
    if msg.HasField("default_output") and msg.default_outputs:
        raise InvalidInput("give default_output (one output) or default_outputs (named "
                           "outputs), not both")
    if msg.default_outputs:
        if not outputs:
            raise InvalidInput("default_outputs are for an application with named outputs; "
                               "declare its outputs, or give one default_output")
        named_tensors.decode(msg.default_outputs, outputs, limits, "default output")
        return named_tensors.to_bytes(msg.default_outputs)
    if msg.HasField("default_output"):
        if len(outputs) > 1:
            names = named_tensors.describe(outputs)
            raise InvalidInput(f"an application with named outputs ({names}) takes "
                               "default_outputs, one per output, not default_output")
        tensors.decode(msg.default_output, limits)
        return named_tensors.to_bytes(msg.default_output)
    return None


def application_to_proto(app: Application) -> pb.Application:
    msg = pb.Application(
        name=app.name,
        input_spec=spec_to_proto(app.input_spec) if app.input_spec else None,
        inputs=[spec_to_proto(s) for s in app.inputs],
        outputs=[spec_to_proto(s) for s in app.outputs],
        slo_ms=app.slo_ms,
        policy=app.policy,
        policy_params=app.policy_params,
        linked_models=app.linked_models,
        confidence_threshold=app.confidence_threshold,
        allow_non_finite=app.allow_non_finite,
        api_key_sha256=app.api_key_sha256,
        feedback_key_sha256=app.feedback_key_sha256,
        client_quota_qps=app.client_quota_qps,
        client_quota_burst=app.client_quota_burst,
    )
    if app.default_output is not None:
        default = app.default_value()
        if isinstance(default, pb.Tensor):
            msg.default_output.CopyFrom(default)
        else:
            for name, tensor in default.items():
                msg.default_outputs[name].CopyFrom(tensor)
    return msg


def model_to_proto(model: ModelRecord) -> pb.Model:
    versions = [_version_to_proto(v, spec) for v, spec in sorted(model.versions.items())]
    return pb.Model(name=model.name, active_version=model.active_version, versions=versions)


def _version_to_proto(version: str, spec: dict[str, Any]) -> pb.ModelVersion:
    msg = pb.ModelVersion(version=version)
    if "dtype" in spec:
        msg.input_spec.CopyFrom(pb.TensorSpec(dtype=spec["dtype"], shape=spec["shape"]))
    msg.inputs.extend(pb.TensorSpec(**t) for t in spec.get("inputs", ()))
    msg.outputs.extend(pb.TensorSpec(**t) for t in spec.get("outputs", ()))
    return msg
