import asyncio
import json
from pathlib import Path

from services.common.kv_store import FileStore


async def test_values_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    await store.put("app/a", {"x": 1})
    await store.put("app/b", {"x": 2})
    await store.put("model/m", {"v": "1"})
    assert await store.delete("app/b")
    assert not await store.delete("app/missing")
    reopened = FileStore(path)
    assert await reopened.get("app/a") == {"x": 1}
    assert await reopened.get("app/b") is None
    assert await reopened.scan("app/") == {"app/a": {"x": 1}}


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
