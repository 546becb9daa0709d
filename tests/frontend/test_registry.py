import asyncio
import time
from dataclasses import asdict

import pytest

from services.common.credentials import sha256_hex
from services.common.errors import AlreadyExists, PermissionDenied
from services.common.redis_store import RedisStore
from services.common.tensors import TensorSpec
from services.frontend.records import Application, ReplicaRecord
from services.frontend.registry import Registry
from tests.helpers.clock import ManualClock


async def test_two_frontends_changing_one_record_lose_nothing(redis_url: str) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    a, b = (Registry(store, replica_ttl_s=5.0) for store in stores)
    spec = TensorSpec("float32", (4,))
    await a.create_app(Application("app", spec, slo_ms=100))
    await a.announce(ReplicaRecord("r1", "m", "1", "127.0.0.1:1"), spec)
    await b.load()  # b's copy is now stale for everything that follows

    await asyncio.gather(*(
        registry.link("app", f"m{i}") for i in range(10) for registry in (a, b)
    ))
    await asyncio.gather(a.set_version("m", "1"),
                         b.announce(ReplicaRecord("r2", "m", "2", "127.0.0.1:2"), spec))
    await a.set_version("m", "2")
    await b.announce(ReplicaRecord("r3", "m", "3", "127.0.0.1:3"), spec)  # b: stale model

    fresh = Registry(RedisStore(redis_url), replica_ttl_s=5.0)
    await fresh.load()
    assert sorted(fresh.apps["app"].linked_models) == sorted(f"m{i}" for i in range(10))
    assert fresh.models["m"].active_version == "2"  # b's announce did not undo it
    assert sorted(fresh.models["m"].versions) == ["1", "2", "3"]
    for store in (*stores, fresh.store):
        await store.aclose()


async def test_a_frontend_that_does_not_know_a_replica_yet_refuses_its_takeover(
    redis_url: str,
) -> None:
    """Ownership is checked in the store too, not only in the announcing frontend's copy."""
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    a, b = (Registry(store, replica_ttl_s=5.0) for store in stores)
    owner = ReplicaRecord("r1", "m", "1", "127.0.0.1:1", secret_sha256=sha256_hex("mine"))
    await a.announce(owner, None)
    assert "r1" not in b.replicas  # b has not followed the change feed
    thief = ReplicaRecord("r1", "m", "1", "127.0.0.1:666", secret_sha256=sha256_hex("guess"))
    with pytest.raises(PermissionDenied):
        await b.announce(thief, None)
    assert "r1" not in b.replicas
    await b.announce(ReplicaRecord("r1", "m", "1", "127.0.0.1:2",
                                   secret_sha256=sha256_hex("mine")), None)  # the owner moves
    fresh = Registry(RedisStore(redis_url), replica_ttl_s=5.0)
    await fresh.load()
    assert fresh.replicas["r1"].address == "127.0.0.1:2"
    for store in (*stores, fresh.store):
        await store.aclose()


SPEC = TensorSpec("float32", (4,))


async def known_setup(registry: Registry) -> None:
    """An application linked to a model of two versions, the second one made active."""
    await registry.create_app(Application("app", SPEC, slo_ms=100, linked_models=("m",)))
    await registry.announce(ReplicaRecord("r1", "m", "1", "127.0.0.1:1"), SPEC)
    await registry.announce(ReplicaRecord("r2", "m", "2", "127.0.0.1:2"), SPEC)
    await registry.set_version("m", "2")


async def test_a_store_that_came_back_empty_is_rewritten_not_believed(redis_url: str) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    a, b = (Registry(store, replica_ttl_s=5.0) for store in stores)
    await a.load()
    await known_setup(a)
    await b.load()
    await stores[0].client.flushdb()  # Redis restarted without its data

    # A frontend that starts now finds an empty store; a replica of version 1
    # announcing to it re-creates the model with version 1 active.
    late = Registry(RedisStore(redis_url), replica_ttl_s=5.0)
    await late.load()
    assert late.apps == {}
    await late.announce(ReplicaRecord("r1", "m", "1", "127.0.0.1:1"), SPEC)

    await b.load()  # a resync after the outage: b keeps what it knows and writes it back
    assert set(b.apps) == {"app"} and b.models["m"].active_version == "2"
    assert set(b.replicas) == {"r1", "r2"}

    fresh = Registry(RedisStore(redis_url), replica_ttl_s=5.0)
    await fresh.load()
    assert fresh.apps["app"].linked_models == ("m",)
    assert fresh.models["m"].active_version == "2"  # set_version survives the announce
    assert sorted(fresh.models["m"].versions) == ["1", "2"]
    assert set(fresh.replicas) == {"r1", "r2"}
    for store in (*stores, late.store, fresh.store):
        await store.aclose()


async def test_after_a_loss_the_newest_copy_of_a_record_wins(redis_url: str) -> None:
    """A change made once the store is back is kept over another frontend's older copy,
    whichever frontend rewrites first."""
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    a, b = (Registry(store, replica_ttl_s=5.0) for store in stores)
    await a.load()
    await known_setup(a)
    await b.load()
    await stores[0].client.flushdb()
    # Through a (which rewrites the store first): a new SLO, and a new version made active.
    await a.update_app(Application("app", SPEC, slo_ms=250, linked_models=("m",)))
    await a.announce(ReplicaRecord("r3", "m", "3", "127.0.0.1:3"), SPEC)
    await a.set_version("m", "3")
    await b.generation.ensure()  # b finds the store lost and rewrites its (older) copy
    fresh = Registry(RedisStore(redis_url), replica_ttl_s=5.0)
    await fresh.load()
    assert fresh.apps["app"].slo_ms == 250
    assert fresh.models["m"].active_version == "3"
    assert sorted(fresh.models["m"].versions) == ["1", "2", "3"]
    assert b.models["m"].active_version == "3"  # b took the newer copy into memory too
    for store in (*stores, fresh.store):
        await store.aclose()


async def test_a_management_change_after_a_loss_sees_what_every_frontend_knew(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url)
    a = Registry(store, replica_ttl_s=5.0)
    await a.load()
    await known_setup(a)
    await store.client.flushdb()
    with pytest.raises(AlreadyExists):  # checked against the rewritten store, not an empty one
        await a.create_app(Application("app", SPEC, slo_ms=100))
    await a.link("app", "other")  # found, though the store had lost it
    assert (await store.get("app/app") or {})["linked_models"] == ["m", "other"]
    await store.aclose()


def replica_data(replica_id: str, **extra: object) -> dict[str, object]:
    return {"replica_id": replica_id, "model": "m", "version": "1",
            "address": "127.0.0.1:1", "secret_sha256": "", **extra}


async def test_liveness_reads_no_wall_clock(redis_url: str) -> None:
    """Records written by frontends with skewed clocks (an earlier release wrote its wall
    clock's expiry time): a replica whose record keeps changing stays, however far in the
    past its time says it expired; one whose record stops changing is dropped after a TTL
    of this frontend's own clock, however far in the future its time says it expires."""
    store = RedisStore(redis_url)
    clock = ManualClock()
    registry = Registry(store, replica_ttl_s=0.5, now=clock.now)
    now = time.time()
    await store.put("replica/behind", replica_data("behind", expires_at=now - 86400))
    await store.put("replica/ahead", replica_data("ahead", expires_at=now + 86400))
    await registry.load()
    dropped: list[str] = []
    for i in range(16):  # 1.6 s: three TTLs
        clock.advance(0.1)
        # The clock behind a day heartbeats "behind" (through another frontend).
        await store.put("replica/behind", replica_data("behind", expires_at=now - 86400 + i))
        dropped += await registry.expire_replicas()
    assert dropped == ["ahead"]
    assert set(registry.replicas) == {"behind"}
    await store.aclose()


async def test_a_heartbeat_writes_a_token_and_no_time(redis_url: str) -> None:
    store = RedisStore(redis_url)
    registry = Registry(store, replica_ttl_s=5.0)
    await registry.announce(ReplicaRecord("r1", "m", "1", "127.0.0.1:1"), SPEC)
    first = await store.get("replica/r1")
    await registry.announce(ReplicaRecord("r1", "m", "1", "127.0.0.1:1"), SPEC)
    second = await store.get("replica/r1")
    assert first is not None and second is not None
    assert set(first) == {"replica_id", "model", "version", "address", "secret_sha256", "beat"}
    assert first["beat"] != second["beat"]
    await store.aclose()


async def test_a_replica_heartbeating_only_elsewhere_stays_and_one_that_stops_goes(
    redis_url: str,
) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    clock = ManualClock()
    a, b = (Registry(store, replica_ttl_s=0.5, now=clock.now) for store in stores)
    await b.start()  # b follows the change feed; replicas announce to a only
    try:
        for i in range(16):  # 1.6 s: three TTLs
            await a.announce(ReplicaRecord("steady", "m", "1", "127.0.0.1:1"), SPEC)
            if i < 2:
                await a.announce(ReplicaRecord("stops", "m", "1", "127.0.0.1:2"), SPEC)
            clock.advance(0.1)
            await b.expire_replicas()
        assert set(b.replicas) == {"steady"}
        assert await stores[0].get("replica/stops") is None  # dropped from the store too
    finally:
        await b.aclose()
        for store in stores:
            await store.aclose()


async def test_a_store_restarted_from_an_older_copy_gets_the_lost_writes_back(
    redis_url: str,
) -> None:
    """As a Redis with `appendfsync everysec` killed and restarted: its last writes gone,
    the marker's write count with them."""
    store = RedisStore(redis_url)
    a = Registry(store, replica_ttl_s=5.0)
    await a.load()
    await known_setup(a)
    marker = await store.get("generation/registry")
    assert marker is not None and marker["writes"] == a.generation.writes == 2
    await a.update_app(Application("app", SPEC, slo_ms=250, linked_models=("m",)))
    await a.set_version("m", "1")
    # The last two writes were lost:
    await store.put("generation/registry", marker)
    await store.put("app/app", {**a.apps["app"].to_json(), "slo_ms": 100, "rev": 1})
    await store.put("model/m", {**asdict(a.models["m"]), "active_version": "2",
                                "rev": a.models["m"].rev - 1})
    assert await a.generation.ensure()
    fresh = Registry(RedisStore(redis_url), replica_ttl_s=5.0)
    await fresh.load()
    assert fresh.apps["app"].slo_ms == 250 and fresh.models["m"].active_version == "1"
    assert not await a.generation.ensure()  # repaired once
    for s in (store, fresh.store):
        await s.aclose()
