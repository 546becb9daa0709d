import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.common.kv_store import FileStore, KeyValueStore
from services.common.redis_store import RedisStore
from services.common.stores import open_store


@pytest.fixture(params=["file", "redis"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "file":
        yield str(tmp_path / "state.json")
    else:
        yield request.getfixturevalue("redis_url")


async def test_values_survive_a_reopen(store_url: str) -> None:
    store = open_store(store_url)
    await store.put("app/a", {"x": 1})
    await store.put("app/b", {"x": 2})
    await store.put("model/m", {"v": "1"})
    assert await store.delete("app/b")
    assert not await store.delete("app/missing")
    await store.aclose()
    reopened = open_store(store_url)
    assert await reopened.get("app/a") == {"x": 1}
    assert await reopened.get("app/b") is None
    assert await reopened.scan("app/") == {"app/a": {"x": 1}}
    await reopened.aclose()


async def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "s.json")), FileStore)
    redis = open_store("redis://127.0.0.1:1/0")
    assert isinstance(redis, RedisStore)
    await redis.aclose()


async def test_scan_takes_glob_characters_literally(store_url: str) -> None:
    store = open_store(store_url)
    await store.put("app/a*", {"x": 1})
    await store.put("app/ab", {"x": 2})
    assert await store.scan("app/a*") == {"app/a*": {"x": 1}}
    await store.aclose()


async def test_concurrent_updates_lose_nothing(store_url: str) -> None:
    """Two clients (two connections for Redis) increment one counter concurrently."""
    stores: list[KeyValueStore] = [open_store(store_url), open_store(store_url)]
    if isinstance(stores[0], FileStore):
        stores = [stores[0], stores[0]]  # one process owns an embedded file

    def increment(value: dict[str, Any] | None) -> dict[str, Any]:
        value = value or {"n": 0}
        value["n"] += 1
        return value

    async def worker(store: KeyValueStore) -> None:
        for _ in range(100):
            await store.update("counter", increment)

    await asyncio.gather(*(worker(stores[i % 2]) for i in range(6)))
    assert await stores[0].get("counter") == {"n": 600}
    for store in {id(s): s for s in stores}.values():
        await store.aclose()


async def test_returned_values_are_copies(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s.json")
    await store.put("k", {"list": [1]})
    got = await store.get("k")
    assert got is not None
    got["list"].append(2)
    assert await store.get("k") == {"list": [1]}


async def test_concurrent_writes_leave_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = FileStore(path)
    await asyncio.gather(*(store.put(f"k{i}", {"i": i}) for i in range(50)))
    assert len(json.loads(path.read_text())) == 50
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # noqa: ASYNC240
    assert not leftovers  # no temp files left behind


async def test_a_key_written_with_a_ttl_expires(store_url: str) -> None:
    store = open_store(store_url)
    await store.update("ctx/short", lambda _: {"x": 1}, ttl_s=0.001)
    await store.update("ctx/long", lambda _: {"x": 2}, ttl_s=3600)
    await store.put("app/a", {"x": 3})
    await asyncio.sleep(0.05)
    assert await store.get("ctx/short") is None
    assert await store.scan("ctx/") == {"ctx/long": {"x": 2}}
    assert await store.get("app/a") == {"x": 3}
    # An expired key starts again from nothing.
    assert await store.update("ctx/short", lambda v: {"was": v}, ttl_s=3600) == {"was": None}
    await store.aclose()


async def test_the_file_store_keeps_the_most_recently_updated_volatile_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.json"
    store = FileStore(path, max_volatile_keys=3)
    await store.put("app/a", {"kept": True})
    for i in range(5):
        await store.update(f"ctx/{i}", lambda _, i=i: {"i": i}, ttl_s=3600)
    await store.update("ctx/2", lambda v: v or {}, ttl_s=3600)  # used again: most recent
    await store.update("ctx/5", lambda _: {"i": 5}, ttl_s=3600)
    assert sorted(await store.scan("ctx/")) == ["ctx/2", "ctx/4", "ctx/5"]
    assert await store.get("app/a") == {"kept": True}  # keys without a TTL are never evicted
    reopened = FileStore(path, max_volatile_keys=3)  # expiry and order survive a restart
    assert reopened.volatile_keys == 3
    await reopened.update("ctx/6", lambda _: {"i": 6}, ttl_s=3600)
    assert sorted(await reopened.scan("ctx/")) == ["ctx/2", "ctx/5", "ctx/6"]
    assert "~expires" not in await reopened.scan("")
