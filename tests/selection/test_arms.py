"""A model's version is part of its arm: fresh prior, rollback, bounds, contexts, resets."""

from __future__ import annotations

import random
from pathlib import Path

from services.common.kv_store import FileStore
from services.policies import Observation, SelectContext, State, get_policy
from services.policies.base import ChangeDetector
from services.policies.epsilon_greedy import EpsilonGreedy
from services.policies.exp4 import Exp4
from services.selection import arms
from services.selection.decider import Decider, state_key
from services.selection.policy_state import describe


def ctx(versions: dict[str, str], context_key: str = "", **params: str) -> SelectContext:
    return SelectContext("app", context_key, tuple(versions), params, versions)


def teach(policy: object, c: SelectContext, state: State, rewards: dict[str, float],
          rounds: int) -> State:
    for _ in range(rounds):
        state = arms.learn(policy, c, state, Observation(rewards))  # type: ignore[arg-type]
    return state


def test_a_new_version_starts_level_with_the_best_other_model_not_with_its_old_record() -> None:
    exp4, v1 = Exp4(), ctx({"m": "1", "n": "1", "o": "1"}, eta="1")
    state = teach(exp4, v1, {}, {"m": 1.0, "n": 0.5, "o": 0.0}, 5)
    before = dict(arms.decide(exp4, v1, state))
    assert before["m"] > 0.8
    v2 = ctx({"m": "2", "n": "1", "o": "1"}, eta="1")
    after = dict(arms.decide(exp4, v2, state))
    assert after["m"] == after["n"] > after["o"]  # judged on its own answers from here
    assert set(state["models"]) == {"m:1", "n:1", "o:1"}


def test_a_rollback_finds_the_old_versions_record() -> None:
    eg = EpsilonGreedy(random.Random(0))
    v1, v2 = ctx({"m": "1", "n": "1"}, epsilon="0"), ctx({"m": "2", "n": "1"}, epsilon="0")
    state = teach(eg, v1, {}, {"m": 1.0, "n": 0.5}, 10)
    assert arms.decide(eg, v2, state) == [("m", 1.0)]  # v2 untried: it goes first
    state = teach(eg, v2, state, {"m": 0.0, "n": 0.5}, 10)
    assert arms.decide(eg, v2, state) == [("n", 1.0)]
    assert arms.decide(eg, v1, state) == [("m", 1.0)]  # rolled back: v1's record is intact
    views = {(v.model, v.version): v for v in describe(eg, v1, state)}
    assert views[("m", "1")].current and views[("m", "1")].estimate == 1.0
    assert not views[("m", "2")].current and views[("m", "2")].estimate == 0.0


def test_feedback_is_credited_to_the_version_that_answered() -> None:
    eg = EpsilonGreedy()
    answered_by_v1 = ctx({"m": "1"})  # the frontend sends the answering version
    state = teach(eg, answered_by_v1, {}, {"m": 1.0}, 3)
    assert state["models"]["m:1"]["n"] > 2.9 and "m:2" not in state["models"]


def test_old_versions_are_dropped_past_the_bound_the_current_one_kept() -> None:
    eg, state = EpsilonGreedy(), {}
    for version in range(1, 7):
        state = teach(eg, ctx({"m": str(version), "n": "1"}), state, {"m": 1.0, "n": 1.0}, 1)
    state = arms.learn(eg, ctx({"m": "1", "n": "1"}), state, Observation({"m": 1.0}),
                       versions_kept=3)
    assert sorted(state["models"]) == ["m:1", "m:5", "m:6", "n:1"]


def test_stateless_policies_see_models_as_they_are() -> None:
    static = get_policy("static")
    c = SelectContext("app", "", ("a", "b"), {"model": "b"}, {"a": "1", "b": "2"})
    assert arms.decide(static, c, {}) == [("b", 1.0)]


def test_the_change_detector_resets_a_model_whose_answers_turn_wrong() -> None:
    eg = EpsilonGreedy()
    c = ctx({"m": "1", "n": "1"})
    state = teach(eg, c, {}, {"m": 1.0, "n": 0.9}, 200)
    for _ in range(7):
        state = teach(eg, c, state, {"m": 0.0}, 1)
    stats = state["models"]["m:1"]
    assert stats["n"] < 10 and stats["reward"] / stats["n"] < 0.2  # judged on the drop alone
    without = teach(eg, ctx({"m": "1"}, change_threshold="0"), {}, {"m": 1.0}, 200)
    without = teach(eg, ctx({"m": "1"}, change_threshold="0"), without, {"m": 0.0}, 7)
    assert without["models"]["m:1"]["reward"] / without["models"]["m:1"]["n"] > 0.5


def test_the_change_detector_lets_a_steady_noisy_model_be() -> None:
    detector, rng = ChangeDetector(5.0, 0.1), random.Random(1)
    stats = {"n": 0.0, "reward": 0.0}
    resets = 0
    for _ in range(2000):
        before = stats["n"]
        value = float(rng.random() < 0.7)
        detector.update(stats, value)
        resets += stats["n"] < before - 1
        stats["n"] = stats["n"] * 0.99 + 1
        stats["reward"] = stats["reward"] * 0.99 + value
    assert resets <= 10


async def test_a_context_starts_a_version_from_the_applications_record(tmp_path: Path) -> None:
    decider = Decider(FileStore(tmp_path / "state.json"))
    await decider.start()
    try:
        v1 = ctx({"m": "1", "n": "1"}, "alice", epsilon="0")
        await decider.observe("epsilon_greedy", v1, Observation({"m": 1.0, "n": 0.5}))
        everyone_v2 = ctx({"m": "2", "n": "1"}, epsilon="0")
        for _ in range(3):  # the application learns that m:2 is bad
            await decider.observe("epsilon_greedy", everyone_v2,
                                  Observation({"m": 0.0, "n": 1.0}))
        alice_v2 = ctx({"m": "2", "n": "1"}, "alice", epsilon="0")
        state, source = await decider.inspect(alice_v2)
        assert source == "context" and state["models"]["m:2"]["reward"] == 0.0
        assert await decider.select("epsilon_greedy", alice_v2) == [("n", 1.0)]
    finally:
        await decider.aclose()


async def test_a_reset_is_not_undone_by_a_remembered_copy(tmp_path: Path) -> None:
    decider = Decider(FileStore(tmp_path / "state.json"), context_ttl_s=3600)
    await decider.start()
    try:
        for key in ("", "alice", "bob"):
            await decider.observe("exp4", ctx({"m": "1"}, key), Observation({"m": 1.0}))
        assert await decider.reset("app", "bob") == 1
        assert await decider.store.get(state_key("app", "bob")) is None
        assert await decider.reset("app", "") == 2  # alice's, and the application's
        assert await decider.store.get(state_key("app", "alice")) is None
        state, source = await decider.inspect(ctx({"m": "1"}))
        assert source == "none" and state["rounds"] == 0
        await decider.observe("exp4", ctx({"m": "1"}), Observation({"m": 1.0}))
        after = await decider.store.get(state_key("app", ""))
        assert after is not None and after["rounds"] == 1 and after["epoch"] == 1
        assert await decider.reset("app", "nobody") == 0
    finally:
        await decider.aclose()
