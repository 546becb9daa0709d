import asyncio
import gc

import numpy as np
import pytest

from services.common import clock, tensors
from services.common.errors import DeadlineExpired
from services.frontend.prediction_cache import PredictionCache
from services.generated.clipper.v1 import clipper_pb2 as pb


def tensor(value: float) -> pb.Tensor:
    return tensors.encode(np.full(3, value, np.float32))


class Model:
    """Counts its calls; answers with the call number after `delay_s`."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.fail = fail

    async def __call__(self) -> tuple[str, pb.Tensor]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model failed")
        return "m:1", tensors.encode(np.int64(self.calls))


async def answer(cache: PredictionCache, model: Model, value: float, version: str = "1",
                 deadline_s: float = 5.0) -> int:
    deadline = clock.now() + deadline_s
    served_by, output = await cache.answer("m", version, tensor(value), deadline, model)
    assert served_by == "m:1" or version != "1"
    result = tensors.decode(output).item()
    assert isinstance(result, int)
    return result


async def test_repeats_are_served_from_memory_within_the_bound() -> None:
    cache, model = PredictionCache.open("memory", max_entries=2, ttl_s=60), Model()
    assert await answer(cache, model, 1.0) == 1
    assert await answer(cache, model, 1.0) == 1 and model.calls == 1
    assert await answer(cache, model, 1.0, version="2") == 2  # another version: another key
    assert await answer(cache, model, 2.0) == 3  # evicts the oldest entry (1.0, version 1)
    assert await answer(cache, model, 1.0) == 4
    assert cache.hits == 1
    await cache.aclose()


async def test_entries_expire() -> None:
    cache, model = PredictionCache.open("memory", max_entries=10, ttl_s=0.05), Model()
    await answer(cache, model, 1.0)
    await asyncio.sleep(0.1)  # past the TTL: the entry reads as a miss
    assert await answer(cache, model, 1.0) == 2
    cache.remember_query("q", pb.RecentQuery(application="a"))
    await cache.writes_done()
    await asyncio.sleep(0.1)
    assert await cache.recall_query("q") is None
    await cache.aclose()


async def test_memory_entries_hold_no_object_the_garbage_collector_walks() -> None:
    """An entry is a key and bytes: 20,000 remembered queries add no timer, no copied
    context, nothing a full collection must walk (it did, with aiocache's TTL timers:
    pauses of 160 ms at 100,000 entries)."""
    cache = PredictionCache.open("none", max_entries=100_000, ttl_s=600)
    record = pb.RecentQuery(application="a")
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        cache.remember_query(f"q{i}", record)
    await cache.writes_done()
    await asyncio.sleep(0)  # the finished writes' tasks are freed
    gc.collect()
    assert len(gc.get_objects()) - before < 1_000
    assert await cache.recall_query("q19999") == record
    await cache.aclose()


async def test_identical_queries_in_flight_are_coalesced() -> None:
    cache, model = PredictionCache.open("memory", max_entries=10, ttl_s=60), Model(0.05)
    results = await asyncio.gather(*(answer(cache, model, 5.0) for _ in range(10)))
    assert results == [1] * 10 and model.calls == 1 and cache.coalesced == 9
    await cache.aclose()


async def test_errors_are_not_cached() -> None:
    cache, model = PredictionCache.open("memory", max_entries=10, ttl_s=60), Model(fail=True)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await answer(cache, model, 1.0)
    assert model.calls == 2
    await cache.aclose()


async def test_off_always_asks_the_model_but_keeps_queries_for_feedback() -> None:
    cache, model = PredictionCache.open("none", max_entries=10, ttl_s=60), Model()
    assert [await answer(cache, model, 1.0) for _ in range(2)] == [1, 2]
    cache.remember_query("q", pb.RecentQuery(application="a"))
    await cache.writes_done()  # written in the background
    assert await cache.recall_query("q") == pb.RecentQuery(application="a")
    await cache.aclose()


async def test_a_joined_query_still_in_time_asks_on_its_own() -> None:
    """The fetch that started first is bounded by its own (short) deadline."""
    cache = PredictionCache.open("memory", max_entries=10, ttl_s=60)

    async def late() -> tuple[str, pb.Tensor]:
        await asyncio.sleep(0.05)
        raise DeadlineExpired("first caller's deadline passed")

    first = asyncio.ensure_future(cache.answer("m", "1", tensor(1.0), 0.0, late))
    await asyncio.sleep(0)
    model = Model()
    assert await answer(cache, model, 1.0) == 1 and cache.coalesced == 1
    with pytest.raises(DeadlineExpired):
        await first
    await cache.aclose()


async def test_a_hung_cache_read_is_a_miss() -> None:
    cache, model = PredictionCache.open("memory", max_entries=10, ttl_s=60), Model()

    async def hang(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(10)

    cache.answers.get = hang  # type: ignore[union-attr]
    assert await answer(cache, model, 1.0) == 1
    await cache.aclose()


async def test_redis_shares_answers_and_queries_between_frontends(redis_url: str) -> None:
    first = PredictionCache.open(redis_url, max_entries=10, ttl_s=60)
    second = PredictionCache.open(redis_url, max_entries=10, ttl_s=60)
    model = Model()
    assert await answer(first, model, 1.0) == 1
    assert await answer(second, model, 1.0) == 1 and model.calls == 1
    record = pb.RecentQuery(application="app", context_key="u",
                            outputs={"m": tensors.encode(np.int64(4))})
    first.remember_query("q1", record)
    await first.writes_done()  # written in the background
    assert await second.recall_query("q1") == record
    assert await second.recall_query("q2") is None
    await first.aclose()
    await second.aclose()


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="expected memory, none or redis"):
        PredictionCache.open("memcached://x", 1, 1)
