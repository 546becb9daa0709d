import asyncio

import pytest

from services.common.credentials import sha256_hex
from services.common.errors import PermissionDenied
from services.common.redis_store import RedisStore
from services.common.tensors import TensorSpec
from services.frontend.registry import Application, Registry, ReplicaRecord


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
