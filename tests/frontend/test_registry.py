import asyncio

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
