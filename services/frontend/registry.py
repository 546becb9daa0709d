"""Applications, models and replicas, kept in the state store so they survive a restart.

Applications and models change rarely and are written through on every change.
Replicas announce themselves on a heartbeat; a replica record is written when it
first appears or changes, and dropped when it deregisters or its TTL passes
without a heartbeat (expiry times are kept in memory, measured on `loop.time()`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from services.common.errors import AlreadyExists, InvalidInput, NotFound
from services.common.kv_store import KeyValueStore
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb

logger = logging.getLogger(__name__)

APP_PREFIX = "app/"
MODEL_PREFIX = "model/"
REPLICA_PREFIX = "replica/"


@dataclass(frozen=True)
class Application:
    name: str
    input_spec: TensorSpec
    slo_ms: int
    policy: str = "static"
    policy_params: dict[str, str] = field(default_factory=dict)
    linked_models: tuple[str, ...] = ()
    # Serialized clipper.v1.Tensor, or None when the application has no default.
    default_output: bytes | None = None
    # Below this combined confidence the default output is served instead (0: off).
    confidence_threshold: float = 0.0

    def default_tensor(self) -> pb.Tensor:
        if self.default_output is None:
            raise ValueError(f"application {self.name!r} has no default output")
        output = pb.Tensor()
        output.ParseFromString(self.default_output)
        return output

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_spec"] = {"dtype": self.input_spec.dtype, "shape": list(self.input_spec.shape)}
        data["linked_models"] = list(self.linked_models)
        data["default_output"] = (
            base64.b64encode(self.default_output).decode() if self.default_output else None
        )
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Application:
        default = data.get("default_output")
        return cls(
            name=data["name"],
            input_spec=TensorSpec(data["input_spec"]["dtype"], tuple(data["input_spec"]["shape"])),
            slo_ms=int(data["slo_ms"]),
            policy=data.get("policy", "static"),
            policy_params=dict(data.get("policy_params", {})),
            linked_models=tuple(data.get("linked_models", ())),
            default_output=base64.b64decode(default) if default else None,
            confidence_threshold=float(data.get("confidence_threshold", 0.0)),
        )


@dataclass(frozen=True)
class ModelRecord:
    name: str
    active_version: str
    # version -> input spec as {"dtype", "shape"} (empty dict when undeclared)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaRecord:
    replica_id: str
    model: str
    version: str
    address: str


class Registry:
    """The frontend's view of applications, models and live replicas."""

    def __init__(self, store: KeyValueStore, replica_ttl_s: float) -> None:
        self.store = store
        self.replica_ttl_s = replica_ttl_s
        self.apps: dict[str, Application] = {}
        self.models: dict[str, ModelRecord] = {}
        self.replicas: dict[str, ReplicaRecord] = {}
        self._expires: dict[str, float] = {}

    async def load(self) -> None:
        """Read everything from the store; stored replicas get one TTL to heartbeat again."""
        now = asyncio.get_running_loop().time()
        for data in (await self.store.scan(APP_PREFIX)).values():
            app = Application.from_json(data)
            self.apps[app.name] = app
        for data in (await self.store.scan(MODEL_PREFIX)).values():
            model = ModelRecord(**data)
            self.models[model.name] = model
        for data in (await self.store.scan(REPLICA_PREFIX)).values():
            replica = ReplicaRecord(**data)
            self.replicas[replica.replica_id] = replica
            self._expires[replica.replica_id] = now + self.replica_ttl_s
        logger.info(
            "loaded %d applications, %d models, %d replicas",
            len(self.apps), len(self.models), len(self.replicas),
        )

    # ------------------------------------------------------------ applications

    def get_app(self, name: str) -> Application:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"unknown application {name!r}")
        return app

    async def create_app(self, app: Application) -> Application:
        if app.name in self.apps:
            raise AlreadyExists(f"application {app.name!r} already exists")
        return await self._save_app(app)

    async def update_app(self, app: Application) -> Application:
        self.get_app(app.name)
        return await self._save_app(app)

    async def delete_app(self, name: str) -> None:
        self.get_app(name)
        del self.apps[name]
        await self.store.delete(APP_PREFIX + name)

    async def link(self, app_name: str, model: str) -> Application:
        app = self.get_app(app_name)
        if not model:
            raise InvalidInput("model name is empty")
        if model in app.linked_models:
            return app
        return await self._save_app(replace(app, linked_models=(*app.linked_models, model)))

    async def unlink(self, app_name: str, model: str) -> Application:
        app = self.get_app(app_name)
        if model not in app.linked_models:
            raise NotFound(f"model {model!r} is not linked to application {app_name!r}")
        linked = tuple(m for m in app.linked_models if m != model)
        return await self._save_app(replace(app, linked_models=linked))

    async def _save_app(self, app: Application) -> Application:
        self.apps[app.name] = app
        await self.store.put(APP_PREFIX + app.name, app.to_json())
        return app

    # ------------------------------------------------------------ models

    def get_model(self, name: str) -> ModelRecord:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r} (no replica of it has announced itself)")
        return model

    async def set_version(self, name: str, version: str) -> ModelRecord:
        model = self.get_model(name)
        if version not in model.versions:
            raise NotFound(
                f"model {name!r} has no version {version!r}; known: {', '.join(model.versions)}"
            )
        return await self._save_model(replace(model, active_version=version))

    async def _save_model(self, model: ModelRecord) -> ModelRecord:
        self.models[model.name] = model
        await self.store.put(MODEL_PREFIX + model.name, asdict(model))
        return model

    # ------------------------------------------------------------ replicas

    async def announce(self, replica: ReplicaRecord, input_spec: TensorSpec | None) -> None:
        """Record a heartbeat; a new model or version is added (the first version is active)."""
        self._expires[replica.replica_id] = asyncio.get_running_loop().time() + self.replica_ttl_s
        spec = {"dtype": input_spec.dtype, "shape": list(input_spec.shape)} if input_spec else {}
        model = self.models.get(replica.model)
        if model is None:
            record = ModelRecord(replica.model, replica.version, {replica.version: spec})
            await self._save_model(record)
        elif replica.version not in model.versions:
            versions = {**model.versions, replica.version: spec}
            await self._save_model(replace(model, versions=versions))
        if self.replicas.get(replica.replica_id) != replica:
            self.replicas[replica.replica_id] = replica
            await self.store.put(REPLICA_PREFIX + replica.replica_id, asdict(replica))
            logger.info("replica %s of %s:%s at %s joined",
                        replica.replica_id[:8], replica.model, replica.version, replica.address)

    async def deregister(self, replica_id: str) -> bool:
        self._expires.pop(replica_id, None)
        replica = self.replicas.pop(replica_id, None)
        if replica is None:
            return False
        await self.store.delete(REPLICA_PREFIX + replica_id)
        logger.info("replica %s of %s:%s left", replica_id[:8], replica.model, replica.version)
        return True

    async def expire_replicas(self) -> list[str]:
        """Drop replicas whose heartbeat is overdue; return their ids."""
        now = asyncio.get_running_loop().time()
        overdue = [rid for rid, at in self._expires.items() if at <= now]
        for rid in overdue:
            await self.deregister(rid)
        return overdue

    def replicas_of(self, model_name: str, version: str = "") -> list[ReplicaRecord]:
        """Live replicas of the model's active version, or of `version` when given."""
        model = self.models.get(model_name)
        if model is None:
            return []
        wanted = version or model.active_version
        return [r for r in self.replicas.values() if r.model == model_name and r.version == wanted]

