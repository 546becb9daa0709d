"""The generation marker tells a store that lost its data from one that is new."""

import asyncio
from pathlib import Path

import pytest

from services.common.generation import GenerationGuard
from services.common.kv_store import FileStore
from services.common.redis_store import RedisStore


class Restores:
    """Counts the rewrites a guard asks for (each a real await, as a store write is)."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        await asyncio.sleep(0.01)
        self.count += 1


async def test_a_new_store_is_not_lost_but_an_emptied_one_is(redis_url: str) -> None:
    store = RedisStore(redis_url)
    restores = Restores()
    guard = GenerationGuard(store, "things", restores)
    assert not await guard.ensure()  # first start: marker written, nothing to rewrite
    assert not await guard.ensure()
    first = guard.generation
    await store.client.flushdb()  # Redis came back without its data
    assert await guard.ensure()
    assert restores.count == 1 and guard.generation != first
    assert not await guard.ensure()  # repaired once
    await store.aclose()


async def test_a_marker_rewritten_by_another_process_means_lost_too(redis_url: str) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    restores = [Restores(), Restores()]
    a, b = (GenerationGuard(s, "things", r) for s, r in zip(stores, restores, strict=True))
    await a.ensure()
    await b.ensure()  # adopts a's marker: nothing lost
    assert a.generation == b.generation and restores[1].count == 0
    await stores[0].client.flushdb()
    assert await a.ensure()  # a finds it missing and writes a new one...
    assert await b.ensure()  # ...b finds another generation than its own: lost as well
    assert a.generation == b.generation
    assert [r.count for r in restores] == [1, 1]
    for store in stores:
        await store.aclose()


async def test_concurrent_checks_rewrite_once_and_a_failed_rewrite_is_retried(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "s.json")
    restores = Restores()
    guard = GenerationGuard(store, "things", restores)
    await guard.ensure()
    await store.delete("generation/things")
    assert sorted(await asyncio.gather(*(guard.ensure() for _ in range(5)))) == [
        False, False, False, False, True]
    assert restores.count == 1

    async def fails() -> None:
        raise RuntimeError("store went away mid-rewrite")

    failing = GenerationGuard(store, "other", fails)
    await failing.ensure()
    await store.delete("generation/other")
    with pytest.raises(RuntimeError):
        await failing.ensure()
    failing.restore = restores
    assert await failing.ensure()  # the rewrite that failed is done on the next check
    assert restores.count == 2


async def test_the_periodic_check_repairs_a_store_nobody_touches(redis_url: str) -> None:
    store = RedisStore(redis_url)
    restores = Restores()
    guard = GenerationGuard(store, "things", restores, check_interval_s=0.05)
    await guard.ensure()
    await guard.start()
    try:
        await store.client.flushdb()
        for _ in range(200):  # bounded: 10 s at most
            if restores.count:
                break
            await asyncio.sleep(0.05)
        assert restores.count == 1
    finally:
        await guard.aclose()
        await store.aclose()
