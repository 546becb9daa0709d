"""What the registry keeps: applications, models and replicas, as frozen records that
read from and write to the state store's JSON (`to_json`/`from_json`, `asdict`), and
the one rule for who may change a replica."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from services.common import named_tensors
from services.common.credentials import same
from services.common.errors import PermissionDenied
from services.common.kv_store import Value as StoredValue
from services.common.named_tensors import Value
from services.common.tensors import TensorSpec


@dataclass(frozen=True)
class Application:
    name: str
    # The one input; None when the application takes named inputs (`inputs`).
    input_spec: TensorSpec | None
    slo_ms: int
    policy: str = "static"
    policy_params: dict[str, str] = field(default_factory=dict)
    linked_models: tuple[str, ...] = ()
    # The default output as named_tensors.to_bytes keeps it (a serialized
    # clipper.v1.Tensor, or named tensors), or None when the application has no default.
    default_output: bytes | None = None
    # Below this combined confidence the default output is served instead (0: off).
    confidence_threshold: float = 0.0
    # Whether inputs may hold NaN or infinity (refused by default).
    allow_non_finite: bool = False
    # SHA-256 of the API keys queries (and feedback) need; of the keys feedback needs
    # (empty: as queries). See services/frontend/access.py.
    api_key_sha256: tuple[str, ...] = ()
    feedback_key_sha256: tuple[str, ...] = ()
    # Queries per second per client (0: the frontend's default) and burst (0: one
    # second's worth). See services/frontend/quotas.py.
    client_quota_qps: float = 0.0
    client_quota_burst: int = 0
    # Named inputs and outputs (services/common/named_tensors.py); empty: one of each.
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    # How many times the stored record was written (see the module docstring).
    rev: int = 0

    def default_value(self) -> Value:
        if self.default_output is None:
            raise ValueError(f"application {self.name!r} has no default output")
        return named_tensors.from_bytes(self.default_output)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_spec"] = _spec_json(self.input_spec) if self.input_spec else None
        data["inputs"] = [_spec_json(s) for s in self.inputs]
        data["outputs"] = [_spec_json(s) for s in self.outputs]
        data["linked_models"] = list(self.linked_models)
        data["api_key_sha256"] = list(self.api_key_sha256)
        data["feedback_key_sha256"] = list(self.feedback_key_sha256)
        data["default_output"] = (
            base64.b64encode(self.default_output).decode() if self.default_output else None
        )
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Application:
        default = data.get("default_output")
        return cls(
            name=data["name"],
            input_spec=_spec(data["input_spec"]) if data.get("input_spec") else None,
            slo_ms=int(data["slo_ms"]),
            policy=data.get("policy", "static"),
            policy_params=dict(data.get("policy_params", {})),
            linked_models=tuple(data.get("linked_models", ())),
            default_output=base64.b64decode(default) if default else None,
            confidence_threshold=float(data.get("confidence_threshold", 0.0)),
            allow_non_finite=bool(data.get("allow_non_finite", False)),
            api_key_sha256=tuple(data.get("api_key_sha256", ())),
            feedback_key_sha256=tuple(data.get("feedback_key_sha256", ())),
            client_quota_qps=float(data.get("client_quota_qps", 0.0)),
            client_quota_burst=int(data.get("client_quota_burst", 0)),
            inputs=tuple(_spec(s) for s in data.get("inputs", ())),
            outputs=tuple(_spec(s) for s in data.get("outputs", ())),
            rev=int(data.get("rev", 0)),
        )


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    data: dict[str, Any] = {"dtype": spec.dtype, "shape": list(spec.shape)}
    if spec.name:
        data["name"] = spec.name
    return data


def _spec(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(data["dtype"], tuple(data["shape"]), data.get("name", ""))


@dataclass(frozen=True)
class ModelRecord:
    name: str
    active_version: str
    # version -> input spec as {"dtype", "shape"} (empty dict when undeclared), or, for
    # named tensors, {"inputs": [{"name", "dtype", "shape"}...], "outputs": [...]}
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How many times the stored record was written (see the module docstring).
    rev: int = 0


@dataclass(frozen=True)
class ReplicaRecord:
    replica_id: str
    model: str
    version: str
    address: str
    # SHA-256 of the secret the replica first announced itself with ("" in records
    # written before replicas had one: the next announce claims it).
    secret_sha256: str = ""


def check_owner(current: ReplicaRecord | None, model: str, secret_sha256: str) -> None:
    """The one rule for changing a known replica id: only the container that first
    announced it (holder of its secret) may, and never to another model."""
    if current is None:
        return
    rid = current.replica_id[:8]
    if current.secret_sha256 and not same(current.secret_sha256, secret_sha256):
        raise PermissionDenied(f"replica {rid} belongs to another container: only the "
                               "holder of its replica secret may re-announce or deregister it")
    if current.model != model:
        raise PermissionDenied(f"replica {rid} serves model {current.model!r}, not {model!r}")


_REPLICA_FIELDS = frozenset(f.name for f in fields(ReplicaRecord))
_MODEL_FIELDS = frozenset(f.name for f in fields(ModelRecord))


def replica_record(data: StoredValue) -> ReplicaRecord:
    return ReplicaRecord(**{k: v for k, v in data.items() if k in _REPLICA_FIELDS})


def model_record(data: StoredValue) -> ModelRecord:
    return ModelRecord(**{k: v for k, v in data.items() if k in _MODEL_FIELDS})
