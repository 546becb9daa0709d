"""Applications, models and replicas, kept in the state store so they survive a restart
and are shared by every frontend on the same store.

Each frontend serves from its copy in memory. Its own changes are written
through; changes made by other frontends arrive through the store's change
feed (`watch`) and are read back key by key, or all at once after the feed was
interrupted. Replicas announce themselves on a heartbeat to any frontend; each
heartbeat writes the replica's record with its expiry time (wall clock, so that
every frontend agrees), and every frontend drops a replica whose expiry has
passed. When the store is unreachable, heartbeats still keep replicas alive in
memory and are written again once it is back: no registration is lost.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.credentials import same
from services.common.errors import (
    AlreadyExists,
    ClipperError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.common.kv_store import (
    FEED_LOST,
    RESYNC,
    KeyValueStore,
    Value,
    retry_while_unavailable,
)
from services.common.limits import DEFAULT_LIMITS, Limits, short_repr
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
            input_spec=TensorSpec(data["input_spec"]["dtype"], tuple(data["input_spec"]["shape"])),
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


class Registry:
    """The frontend's view of applications, models and live replicas."""

    def __init__(self, store: KeyValueStore, replica_ttl_s: float,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.store = store
        self.replica_ttl_s = replica_ttl_s
        self.limits = limits
        self.apps: dict[str, Application] = {}
        self.models: dict[str, ModelRecord] = {}
        self.replicas: dict[str, ReplicaRecord] = {}
        # replica id -> expiry time (time.time()), as last written by any frontend
        self._expires: dict[str, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        # False while the change feed is down: replicas are not expired then, since
        # heartbeats other frontends receive do not reach this one.
        self._in_sync = True

    async def load(self) -> None:
        """Read everything from the store; stored replicas get at least one TTL to heartbeat."""
        apps = {
            app.name: app
            for app in map(Application.from_json, (await self.store.scan(APP_PREFIX)).values())
        }
        models = {
            m.name: m for m in (ModelRecord(**d) for d in
                                (await self.store.scan(MODEL_PREFIX)).values())
        }
        replicas = await self.store.scan(REPLICA_PREFIX)
        # Replicas that heartbeat here while the store was away are kept (and written
        # back): a resync after an outage must not drop live replicas.
        now = time.time()
        held = {rid: (r, at) for rid, r in self.replicas.items()
                if (at := self._expires.get(rid, 0.0)) > now
                and REPLICA_PREFIX + rid not in replicas}
        self.apps, self.models = apps, models
        self.replicas = {rid: replica for rid, (replica, _) in held.items()}
        grace = now + self.replica_ttl_s
        for data in replicas.values():
            self._put_replica(data, max(float(data.get("expires_at", 0.0)), grace))
        self._expires = {rid: self._expires[rid] for rid in self.replicas}  # the gone ones out
        for rid, (replica, expires_at) in held.items():
            await self.store.put(REPLICA_PREFIX + rid,
                                 {**asdict(replica), "expires_at": expires_at})
        logger.info(
            "loaded %d applications, %d models, %d replicas",
            len(self.apps), len(self.models), len(self.replicas),
        )

    async def start(self) -> None:
        """Load, retrying while the store is unreachable, then follow its changes."""
        await retry_while_unavailable(self.load, "state store")
        self._watcher = asyncio.create_task(self.watch(), name="registry-watch")
        self._watcher.add_done_callback(_log_if_failed)

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass

    async def watch(self) -> None:
        """Apply changes made through other frontends, until cancelled."""
        async for key in self.store.changes():
            try:
                if key == FEED_LOST:
                    self._in_sync = False  # others' heartbeats are unseen: expire nothing
                elif key is RESYNC:
                    await self.load()
                    self._in_sync = True
                else:
                    await self.refresh(key)
            except ClipperError as exc:  # the store went away again: the feed resyncs
                logger.warning("could not read change %r: %s", key, exc)
            except Exception:  # a malformed record must not stop this frontend following
                logger.exception("could not apply change %r", key)

    async def refresh(self, key: str) -> None:
        """Read one key back from the store into memory."""
        data = await self.store.get(key)
        if key.startswith(APP_PREFIX):
            name = key[len(APP_PREFIX):]
            if data is None:
                self.apps.pop(name, None)
            else:
                self.apps[name] = Application.from_json(data)
        elif key.startswith(MODEL_PREFIX):
            name = key[len(MODEL_PREFIX):]
            if data is None:
                self.models.pop(name, None)
            else:
                self.models[name] = ModelRecord(**data)
        elif key.startswith(REPLICA_PREFIX):
            replica_id = key[len(REPLICA_PREFIX):]
            if data is None:
                self.replicas.pop(replica_id, None)
                self._expires.pop(replica_id, None)
            else:
                self._put_replica(data, float(data.get("expires_at", 0.0)))

    # ------------------------------------------------------------ applications

    def get_app(self, name: str) -> Application:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"unknown application {short_repr(name)}")
        return app

    async def create_app(self, app: Application) -> Application:
        self.limits.check_count("applications", len(self.apps), self.limits.applications,
                                "--max-applications")

        def create(current: Value | None) -> Value:
            if current is not None:
                raise AlreadyExists(f"application {short_repr(app.name)} already exists")
            return app.to_json()

        return self._remember_app(await self.store.update(APP_PREFIX + app.name, create))

    async def update_app(self, app: Application) -> Application:
        def overwrite(current: Value | None) -> Value:
            _require_app(current, app.name)
            return app.to_json()

        return self._remember_app(await self.store.update(APP_PREFIX + app.name, overwrite))

    async def delete_app(self, name: str) -> None:
        if not await self.store.delete(APP_PREFIX + name):
            raise NotFound(f"unknown application {short_repr(name)}")
        self.apps.pop(name, None)

    async def link(self, app_name: str, model: str) -> Application:
        self.limits.check_name("model", model)
        limit = self.limits.linked_models

        def add(current: Value | None) -> Value:
            app = _require_app(current, app_name)
            if model not in app["linked_models"]:
                self.limits.check_count(f"models linked to {short_repr(app_name)}",
                                        len(app["linked_models"]), limit, "--max-linked-models")
                app["linked_models"] = [*app["linked_models"], model]
            return app

        return self._remember_app(await self.store.update(APP_PREFIX + app_name, add))

    async def unlink(self, app_name: str, model: str) -> Application:
        def remove(current: Value | None) -> Value:
            app = _require_app(current, app_name)
            if model not in app["linked_models"]:
                raise NotFound(f"model {short_repr(model)} is not linked to application "
                               f"{short_repr(app_name)}")
            app["linked_models"] = [m for m in app["linked_models"] if m != model]
            return app

        return self._remember_app(await self.store.update(APP_PREFIX + app_name, remove))

    def _remember_app(self, data: Value) -> Application:
        app = Application.from_json(data)
        self.apps[app.name] = app
        return app

    # ------------------------------------------------------------ models

    def get_model(self, name: str) -> ModelRecord:
        model = self.models.get(name)
        if model is None:
            raise NotFound(
                f"unknown model {short_repr(name)} (no replica of it has announced itself)")
        return model

    async def set_version(self, name: str, version: str) -> ModelRecord:
        def activate(current: Value | None) -> Value:
            if current is None:
                raise NotFound(
                f"unknown model {short_repr(name)} (no replica of it has announced itself)")
            if version not in current["versions"]:
                known = ", ".join(current["versions"])
                raise NotFound(f"model {short_repr(name)} has no version {short_repr(version)}; "
                               f"known: {known}")
            current["active_version"] = version
            return current

        return self._remember_model(await self.store.update(MODEL_PREFIX + name, activate))

    async def _add_version(self, name: str, version: str, spec: dict[str, Any]) -> None:
        """Record a model's new version; the first version of a model becomes active."""
        def add(current: Value | None) -> Value:
            if current is None:
                return asdict(ModelRecord(name, version, {version: spec}))
            current["versions"].setdefault(version, spec)
            return current

        self._remember_model(await self.store.update(MODEL_PREFIX + name, add))

    def _remember_model(self, data: Value) -> ModelRecord:
        model = ModelRecord(**data)
        self.models[model.name] = model
        return model

    # ------------------------------------------------------------ replicas

    async def announce(self, replica: ReplicaRecord, input_spec: TensorSpec | None) -> None:
        """Record a heartbeat; a new model or version is added (the first version is active).

        Memory first, then the store: if the store is down, the replica stays live
        here and the next heartbeat writes it again.
        """
        self._check_replica(replica)
        expires_at = time.time() + self.replica_ttl_s
        previous = self.replicas.get(replica.replica_id)
        check_owner(previous, replica.model, replica.secret_sha256)
        if previous != replica:
            logger.info("replica %s of %s:%s at %s joined",
                        replica.replica_id[:8], replica.model, replica.version, replica.address)
        self.replicas[replica.replica_id] = replica
        self._expires[replica.replica_id] = expires_at
        spec = {"dtype": input_spec.dtype, "shape": list(input_spec.shape)} if input_spec else {}

        def claim(current: Value | None) -> Value:
            # Checked again in the store: another frontend may know the id already.
            check_owner(_replica_record(current) if current else None,
                        replica.model, replica.secret_sha256)
            return {**asdict(replica), "expires_at": expires_at}

        try:
            model = self.models.get(replica.model)
            if model is None or replica.version not in model.versions:
                await self._add_version(replica.model, replica.version, spec)
            await self.store.update(REPLICA_PREFIX + replica.replica_id, claim)
        except PermissionDenied:
            if previous is None:
                self.replicas.pop(replica.replica_id, None)
                self._expires.pop(replica.replica_id, None)
            else:
                self.replicas[replica.replica_id] = previous
            raise
        except Unavailable as exc:
            logger.warning("replica %s kept in memory only: %s", replica.replica_id[:8], exc)

    def _check_replica(self, replica: ReplicaRecord) -> None:
        """Names and counts of an announcing replica within the limits."""
        limits = self.limits
        limits.check_name("model", replica.model)
        limits.check_name("version", replica.version)
        limits.check_name("replica id", replica.replica_id)
        limits.check_address(replica.address)
        if replica.replica_id in self.replicas:
            return
        model = self.models.get(replica.model)
        if model is None:
            limits.check_count("models", len(self.models), limits.models, "--max-models")
        elif replica.version not in model.versions:
            limits.check_count(f"versions of model {replica.model!r}", len(model.versions),
                               limits.versions, "--max-versions")
        live = sum(1 for r in self.replicas.values() if r.model == replica.model)
        limits.check_count(f"replicas of model {replica.model!r}", live, limits.replicas,
                           "--max-replicas")

    async def deregister(self, replica_id: str) -> bool:
        """Drop a replica here and from the store (other frontends expire it if the store
        is away)."""
        self._expires.pop(replica_id, None)
        replica = self.replicas.pop(replica_id, None)
        try:
            await self.store.delete(REPLICA_PREFIX + replica_id)
        except Unavailable as exc:
            logger.warning("replica %s dropped here only: %s", replica_id[:8], exc)
        if replica is None:
            return False
        logger.info("replica %s of %s:%s left", replica_id[:8], replica.model, replica.version)
        return True

    async def expire_replicas(self) -> list[str]:
        """Drop replicas whose heartbeat is overdue (here and in the store); return their ids.

        The store is asked first: another frontend may have had a heartbeat whose
        change notice has not arrived here yet.
        """
        now = time.time()
        dropped: list[str] = []
        if not self._in_sync:
            return dropped
        for rid in [rid for rid, at in self._expires.items() if at <= now]:
            try:
                stored = await self.store.get(REPLICA_PREFIX + rid)
            except Unavailable:
                # The store is away, and with it other frontends' heartbeats: keep what
                # is known (a dead replica's stream breaks, which takes it out of use).
                continue
            if stored is not None and float(stored.get("expires_at", 0.0)) > now:
                self._put_replica(stored, float(stored["expires_at"]))
                continue
            await self.deregister(rid)
            dropped.append(rid)
        return dropped

    def _put_replica(self, data: dict[str, Any], expires_at: float) -> None:
        """A replica record from the store; a stored expiry never shortens a later one
        this frontend already knows (its own heartbeats may not be written yet)."""
        record = _replica_record(data)
        self.replicas[record.replica_id] = record
        rid = record.replica_id
        self._expires[rid] = max(expires_at, self._expires.get(rid, 0.0))

    def replicas_of(self, model_name: str, version: str = "") -> list[ReplicaRecord]:
        """Live replicas of the model's active version, or of `version` when given."""
        model = self.models.get(model_name)
        if model is None:
            return []
        wanted = version or model.active_version
        return [r for r in self.replicas.values() if r.model == model_name and r.version == wanted]



def _replica_record(data: Value) -> ReplicaRecord:
    return ReplicaRecord(**{k: v for k, v in data.items() if k != "expires_at"})


def _require_app(current: Value | None, name: str) -> Value:
    if current is None:
        raise NotFound(f"unknown application {short_repr(name)}")
    current.setdefault("linked_models", [])
    return current


def _log_if_failed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("registry watcher stopped", exc_info=task.exception())
