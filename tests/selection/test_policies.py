from pathlib import Path

import pytest

from services.common.errors import InvalidInput
from services.common.kv_store import FileStore
from services.selection.decider import Decider
from services.selection.policies import Observation, SelectContext, get_policy


def ctx(candidates: tuple[str, ...], **params: str) -> SelectContext:
    return SelectContext("app", "user-1", candidates, params)


def test_static_picks_the_named_or_first_model() -> None:
    static = get_policy("static")
    assert static.select(ctx(("a", "b")), {}) == [("a", 1.0)]
    assert static.select(ctx(("a", "b"), model="b"), {}) == [("b", 1.0)]
    with pytest.raises(InvalidInput, match="not linked"):
        static.select(ctx(("a",), model="z"), {})
    with pytest.raises(InvalidInput, match="no linked model"):
        static.select(ctx(()), {})


def test_all_asks_every_model_equally() -> None:
    assert get_policy("all").select(ctx(("a", "b", "c")), {}) == [
        ("a", 1.0), ("b", 1.0), ("c", 1.0)
    ]


def test_unknown_policy() -> None:
    with pytest.raises(InvalidInput, match="unknown policy 'nope'"):
        get_policy("nope")


async def test_outcomes_persist_per_context(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    decider = Decider(FileStore(path))
    obs = Observation(outputs={"a": b"1", "b": b"2"}, label=b"1")
    await decider.observe("all", ctx(("a", "b")), obs)
    await decider.observe("all", ctx(("a", "b")), obs)
    state = await Decider(FileStore(path)).store.get("policy-state/app/user-1")
    assert state == {"models": {"a": {"n": 2, "correct": 2}, "b": {"n": 2, "correct": 0}}}
