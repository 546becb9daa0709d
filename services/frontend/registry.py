"""Applications, models and replicas, kept in the state store so they survive a restart
and are shared by every frontend on the same store.

Each frontend serves from its copy in memory. Its own changes are written
through; changes made by other frontends arrive through the store's change
feed (`watch`) and are read back key by key, or all at once after the feed was
interrupted. Replicas announce themselves on a heartbeat to any frontend; each
heartbeat writes a new token into the replica's record, and every frontend
drops a replica whose token has not changed for a TTL by its own monotonic
clock (liveness.py). When the store is unreachable, heartbeats still keep
replicas alive in memory and are written again once it is back: no
registration is lost.

A frontend never replaces what it knows with a store that lost its data: a
generation marker (services/common/generation.py) tells a lost store from an
empty one, or from one restarted from an older copy (it counts management
writes), and such a store is rewritten from memory (`restore`) before it is
read. Every application and model record carries a revision `rev`, raised by
each write, so that when several frontends rewrite one record the newest copy
wins. A model's active version is set by its first version and then only by
`set_version`: announcing replicas never change it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from services.common import clock
from services.common.errors import (
    AlreadyExists,
    ClipperError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.common.generation import GenerationGuard
from services.common.kv_store import (
    Feed,
    KeyValueStore,
    Updater,
    Value,
    retry_while_unavailable,
)
from services.common.limits import DEFAULT_LIMITS, Limits, short_repr
from services.common.tasks import BackgroundTask, every
from services.common.tensors import TensorSpec
from services.frontend.liveness import Liveness, beat_of, new_beat
from services.frontend.records import (
    Application,
    ModelRecord,
    ReplicaRecord,
    check_owner,
    model_record,
    replica_record,
)

logger = logging.getLogger(__name__)

APP_PREFIX = "app/"
MODEL_PREFIX = "model/"
REPLICA_PREFIX = "replica/"


class Registry:
    """The frontend's view of applications, models and live replicas."""

    def __init__(self, store: KeyValueStore, replica_ttl_s: float,
                 limits: Limits = DEFAULT_LIMITS, expiry_interval_s: float = 0.25,
                 now: clock.Now = clock.now) -> None:
        self.store = store
        self.replica_ttl_s = replica_ttl_s
        self.limits = limits
        self.apps: dict[str, Application] = {}
        self.models: dict[str, ModelRecord] = {}
        self.replicas: dict[str, ReplicaRecord] = {}
        self.liveness = Liveness(replica_ttl_s, now)  # expiry on `now`'s clock
        self.generation = GenerationGuard(store, "registry", self.restore)
        self._watcher = BackgroundTask("registry watch", self.watch, restart_s=1.0)
        self._expiry = every("replica expiry", expiry_interval_s, self.expire_replicas)
        self._replica_listeners: list[Callable[[], None]] = []
        # False while the change feed is down: replicas are not expired then, since
        # heartbeats other frontends receive do not reach this one.
        self._in_sync = True

    async def load(self) -> None:
        """Read everything from the store (rewritten from memory first if it was lost);
        stored replicas new to this frontend get a TTL to heartbeat."""
        await self.generation.ensure()
        apps = {
            app.name: app
            for app in map(Application.from_json, (await self.store.scan(APP_PREFIX)).values())
        }
        models = {
            m.name: m for m in map(model_record, (await self.store.scan(MODEL_PREFIX)).values())
        }
        replicas = await self.store.scan(REPLICA_PREFIX)
        # Replicas that heartbeat here while the store was away are kept (and written
        # back): a resync after an outage must not drop live replicas.
        held = {rid: r for rid, r in self.replicas.items()
                if self.liveness.alive(rid) and REPLICA_PREFIX + rid not in replicas}
        self.apps, self.models = apps, models
        self.replicas = dict(held)
        for data in replicas.values():
            self._put_replica(data)
        self.liveness.keep_only(set(self.replicas))  # the gone ones out
        self._replicas_changed()
        for rid in held:
            await self._restore_replica(rid)
        logger.info(
            "loaded %d applications, %d models, %d replicas",
            len(self.apps), len(self.models), len(self.replicas),
        )

    async def restore(self) -> None:
        """Rewrite what this frontend knows into a store that lost it (the generation
        guard calls this). A record already there wins if it is newer (another frontend
        rewrote it, or changed it since); a model keeps the versions of both copies."""
        for app in list(self.apps.values()):
            self._remember_app(await self.store.update(
                APP_PREFIX + app.name, functools.partial(_newer, app.to_json())))
        for model in list(self.models.values()):
            self._remember_model(await self.store.update(
                MODEL_PREFIX + model.name, functools.partial(_merge_model, asdict(model))))
        for rid in [rid for rid in self.replicas if self.liveness.alive(rid)]:
            await self._restore_replica(rid)
        logger.info("rewrote %d applications, %d models and the live replicas into the store",
                    len(self.apps), len(self.models))

    async def start(self) -> None:
        """Load, retrying while the store is unreachable, then follow its changes."""
        await retry_while_unavailable(self.load, "state store")
        self._watcher.start()
        self._expiry.start()
        await self.generation.start()

    async def aclose(self) -> None:
        await self.generation.aclose()
        await self._expiry.aclose()
        await self._watcher.aclose()

    def on_replicas_changed(self, listener: Callable[[], None]) -> None:
        """Call `listener` (at once, without awaiting) whenever a replica joins, moves or
        leaves; it reads `replicas` for the new set."""
        self._replica_listeners.append(listener)

    def _replicas_changed(self) -> None:
        for listener in self._replica_listeners:
            listener()

    async def watch(self) -> None:
        """Apply changes made through other frontends, until cancelled."""
        async for key in self.store.changes():
            try:
                if key is Feed.LOST:
                    self._in_sync = False  # others' heartbeats are unseen: expire nothing
                elif key is Feed.RESYNC:
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
                self.models[name] = model_record(data)
        elif key.startswith(REPLICA_PREFIX):
            replica_id = key[len(REPLICA_PREFIX):]
            if data is None:
                if self.replicas.pop(replica_id, None) is not None:
                    self._replicas_changed()
                self.liveness.forget(replica_id)
            else:
                self._put_replica(data)

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
            return _revised(app.to_json(), None)

        return self._remember_app(await self._change(APP_PREFIX + app.name, create))

    async def update_app(self, app: Application) -> Application:
        def overwrite(current: Value | None) -> Value:
            _require_app(current, app.name)
            return _revised(app.to_json(), current)

        return self._remember_app(await self._change(APP_PREFIX + app.name, overwrite))

    async def delete_app(self, name: str) -> None:
        await self.generation.ensure()
        if not await self.store.delete(APP_PREFIX + name):
            raise NotFound(f"unknown application {short_repr(name)}")
        self.apps.pop(name, None)
        await self.generation.count_write()

    async def link(self, app_name: str, model: str) -> Application:
        self.limits.check_name("model", model)
        limit = self.limits.linked_models

        def add(current: Value | None) -> Value:
            app = _require_app(current, app_name)
            if model not in app["linked_models"]:
                self.limits.check_count(f"models linked to {short_repr(app_name)}",
                                        len(app["linked_models"]), limit, "--max-linked-models")
                app["linked_models"] = [*app["linked_models"], model]
            return _revised(app, current)

        return self._remember_app(await self._change(APP_PREFIX + app_name, add))

    async def unlink(self, app_name: str, model: str) -> Application:
        def remove(current: Value | None) -> Value:
            app = _require_app(current, app_name)
            if model not in app["linked_models"]:
                raise NotFound(f"model {short_repr(model)} is not linked to application "
                               f"{short_repr(app_name)}")
            app["linked_models"] = [m for m in app["linked_models"] if m != model]
            return _revised(app, current)

        return self._remember_app(await self._change(APP_PREFIX + app_name, remove))

    async def _change(self, key: str, fn: Updater) -> Value:
        """A management change: checked against a lost store first, so that it applies
        to what every frontend knows, not to an empty store; then counted, so that a
        store that comes back without it is noticed."""
        await self.generation.ensure()
        new = await self.store.update(key, fn)
        await self.generation.count_write()
        return new

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
        """The one way to change a model's active version."""
        def activate(current: Value | None) -> Value:
            if current is None:
                raise NotFound(
                f"unknown model {short_repr(name)} (no replica of it has announced itself)")
            if version not in current["versions"]:
                known = ", ".join(current["versions"])
                raise NotFound(f"model {short_repr(name)} has no version {short_repr(version)}; "
                               f"known: {known}")
            current["active_version"] = version
            return _revised(current, current)

        return self._remember_model(await self._change(MODEL_PREFIX + name, activate))

    async def _add_version(self, name: str, version: str, spec: dict[str, Any]) -> None:
        """Record a model's new version, never changing its active one; the first version
        of a model becomes active. A record missing from the store but known here (the
        store was lost, and not yet rewritten) is added to, not started again."""
        known = self.models.get(name)

        def add(current: Value | None) -> Value:
            if current is None and known is not None:
                current = asdict(known)
            if current is None:
                return asdict(ModelRecord(name, version, {version: spec}, rev=1))
            current["versions"].setdefault(version, spec)
            return _revised(current, current)

        self._remember_model(await self.store.update(MODEL_PREFIX + name, add))

    def _remember_model(self, data: Value) -> ModelRecord:
        model = model_record(data)
        self.models[model.name] = model
        return model

    # ------------------------------------------------------------ replicas

    async def announce(self, replica: ReplicaRecord, input_spec: TensorSpec | None,
                       inputs: tuple[TensorSpec, ...] = (),
                       outputs: tuple[TensorSpec, ...] = ()) -> None:
        """Record a heartbeat; a new model or version is added (the first version is active).

        Memory first, then the store: if the store is down, the replica stays live
        here and the next heartbeat writes it again.
        """
        self._check_replica(replica)
        previous = self.replicas.get(replica.replica_id)
        check_owner(previous, replica.model, replica.secret_sha256)
        self.replicas[replica.replica_id] = replica
        if previous != replica:
            logger.info("replica %s of %s:%s at %s joined",
                        replica.replica_id[:8], replica.model, replica.version, replica.address)
            self._replicas_changed()
        beat = new_beat()
        spec: dict[str, Any] = (
            {"dtype": input_spec.dtype, "shape": list(input_spec.shape)} if input_spec else {})
        for key, named in (("inputs", inputs), ("outputs", outputs)):
            if named:
                spec[key] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
                             for t in named]

        def claim(current: Value | None) -> Value:
            # Checked again in the store: another frontend may know the id already.
            check_owner(replica_record(current) if current else None,
                        replica.model, replica.secret_sha256)
            return {**asdict(replica), "beat": beat}

        try:
            model = self.models.get(replica.model)
            if model is None or replica.version not in model.versions:
                await self._add_version(replica.model, replica.version, spec)
            await self.store.update(REPLICA_PREFIX + replica.replica_id, claim)
        except PermissionDenied:
            if previous is None:
                self.replicas.pop(replica.replica_id, None)
            else:
                self.replicas[replica.replica_id] = previous
            self._replicas_changed()
            raise
        except Unavailable as exc:
            logger.warning("replica %s kept in memory only: %s", replica.replica_id[:8], exc)
        self.liveness.saw(replica.replica_id, beat)

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
        self.liveness.forget(replica_id)
        replica = self.replicas.pop(replica_id, None)
        try:
            await self.store.delete(REPLICA_PREFIX + replica_id)
        except Unavailable as exc:
            logger.warning("replica %s dropped here only: %s", replica_id[:8], exc)
        if replica is None:
            return False
        logger.info("replica %s of %s:%s left", replica_id[:8], replica.model, replica.version)
        self._replicas_changed()
        return True

    async def expire_replicas(self) -> list[str]:
        """Drop replicas whose heartbeat token has not changed for a TTL (here and in the
        store); return their ids.

        The store is asked first: another frontend may have had a heartbeat whose
        change notice has not arrived here yet.
        """
        dropped: list[str] = []
        if not self._in_sync:
            return dropped
        for rid in self.liveness.overdue(self.replicas):
            try:
                stored = await self.store.get(REPLICA_PREFIX + rid)
            except Unavailable:
                # The store is away, and with it other frontends' heartbeats: keep what
                # is known (a dead replica's stream breaks, which takes it out of use).
                continue
            if stored is not None and beat_of(stored) != self.liveness.beat(rid):
                self._put_replica(stored)
                continue
            await self.deregister(rid)
            dropped.append(rid)
        return dropped

    def _put_replica(self, data: Value) -> None:
        """A replica record from the store; its heartbeat token, if new here, counts as
        a heartbeat now."""
        record = replica_record(data)
        if self.replicas.get(record.replica_id) != record:
            self.replicas[record.replica_id] = record
            self._replicas_changed()
        self.liveness.saw(record.replica_id, beat_of(data))

    async def _restore_replica(self, replica_id: str) -> None:
        """Write a replica known here back into a store that lacks it (kept if there)."""
        mine = {**asdict(self.replicas[replica_id]), "beat": self.liveness.beat(replica_id)}
        await self.store.update(REPLICA_PREFIX + replica_id, functools.partial(_keep, mine))

    def replicas_of(self, model_name: str, version: str = "") -> list[ReplicaRecord]:
        """Live replicas of the model's active version, or of `version` when given."""
        model = self.models.get(model_name)
        if model is None:
            return []
        wanted = version or model.active_version
        return [r for r in self.replicas.values() if r.model == model_name and r.version == wanted]


def _revised(new: Value, current: Value | None) -> Value:
    """`new` as the next revision of `current` (`new` may be `current`, changed)."""
    new["rev"] = int((current or {}).get("rev", 0)) + 1
    return new


def _newer(mine: Value, current: Value | None) -> Value:
    """The stored record if it is newer than this frontend's copy, else this copy."""
    if current is not None and int(current.get("rev", 0)) > int(mine.get("rev", 0)):
        return current
    return mine


def _merge_model(mine: Value, current: Value | None) -> Value:
    """The newer of two copies of a model record (this frontend's on a tie: a record
    started again by an announce after the loss is not newer), with both's versions."""
    newer = _newer(mine, current)
    older = mine if newer is current else current
    versions = {**(older or {}).get("versions", {}), **newer["versions"]}
    return {**newer, "versions": versions}


def _keep(mine: Value, current: Value | None) -> Value:
    return current if current is not None else mine


def _require_app(current: Value | None, name: str) -> Value:
    if current is None:
        raise NotFound(f"unknown application {short_repr(name)}")
    current.setdefault("linked_models", [])
    return current
