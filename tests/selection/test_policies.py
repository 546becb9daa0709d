import asyncio
import math
import random
from collections import Counter
from pathlib import Path

import pytest

from services.common.errors import InvalidInput
from services.common.kv_store import FileStore
from services.common.stores import open_store
from services.policies import POLICIES, Observation, SelectContext, State, get_policy
from services.policies.ab_split import WeightedSplit
from services.policies.epsilon_greedy import EpsilonGreedy
from services.policies.exp3 import Exp3
from services.policies.exp4 import Exp4
from services.policies.log_weights import MAX_RATIO
from services.policies.thompson import ThompsonSampling
from services.policies.ucb import UCB1
from services.selection.decider import Decider, state_key


def ctx(candidates: tuple[str, ...], context_key: str = "user-1", **params: str) -> SelectContext:
    return SelectContext("app", context_key, candidates, params)


def feed(policy: object, c: SelectContext, state: State, rewards: list[dict[str, float]]) -> State:
    for r in rewards:
        state = policy.observe(c, state, Observation(r))  # type: ignore[attr-defined]
    return state


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


def test_unknown_policy_and_bad_parameters() -> None:
    with pytest.raises(InvalidInput, match="unknown policy 'nope'"):
        get_policy("nope")
    with pytest.raises(InvalidInput, match=r"epsilon=2\.0 must be in"):
        EpsilonGreedy().select(ctx(("a",), epsilon="2"), {"models": {"a": {"n": 1, "reward": 1}}})
    with pytest.raises(InvalidInput, match="eta='x' is not a number"):
        Exp4().observe(ctx(("a",), eta="x"), {}, Observation({"a": 1.0}))


def test_every_policy_is_registered() -> None:
    assert set(POLICIES) == {
        "static", "all", "ab", "exp3", "exp4", "epsilon_greedy", "ucb1", "thompson"
    }


def test_ab_split_follows_weights_and_keeps_a_user_on_one_variant() -> None:
    split = WeightedSplit(random.Random(7))
    c = ctx(("v1", "v2"), "", **{"weight.v1": "90", "weight.v2": "10"})
    drawn = Counter(split.select(c, {})[0][0] for _ in range(4000))
    assert 0.87 < drawn["v1"] / 4000 < 0.93
    users = [ctx(("v1", "v2"), f"user-{i}", **{"weight.v1": "50", "weight.v2": "50"})
             for i in range(200)]
    first = [split.select(u, {})[0][0] for u in users]
    assert first == [split.select(u, {})[0][0] for u in users]  # sticky per user
    assert 70 < first.count("v1") < 130
    assert split.select(ctx(("v1", "v2"), "", **{"weight.v2": "1"}), {}) == [("v2", 1.0)]
    with pytest.raises(InvalidInput, match="not linked"):
        split.select(ctx(("v1",), **{"weight.v9": "1"}), {})
    with pytest.raises(InvalidInput, match="all be zero"):
        split.select(ctx(("v1",), **{"weight.v1": "0"}), {})


def test_exp4_weights_follow_the_multiplicative_rule() -> None:
    exp4, c = Exp4(), ctx(("a", "b"), eta="0.5")
    assert exp4.select(c, {}) == [("a", 0.5), ("b", 0.5)]
    state = feed(exp4, c, {}, [{"a": 1.0, "b": 0.0}] * 4)  # b wrong 4 times: log_w -2
    weights = dict(exp4.select(c, state))
    assert weights["b"] == pytest.approx(math.exp(-2) / (1 + math.exp(-2)))
    assert state["models"]["a"] == {"n": 4.0, "reward": 4.0, "log_w": 0.0}
    state = feed(exp4, c, state, [{"a": 1.0, "b": 0.0}] * 100)
    assert state["models"]["b"]["log_w"] == pytest.approx(-math.log(MAX_RATIO))  # floored
    # The leader degrades: overtaken after at most ln(MAX_RATIO) / eta losses.
    rounds = 0
    while dict(exp4.select(c, state))["a"] >= 0.5:
        state = feed(exp4, c, state, [{"a": 0.0, "b": 1.0}])
        rounds += 1
    assert rounds <= math.log(MAX_RATIO) / 0.5 + 1


def test_exp4_does_not_punish_a_missing_model() -> None:
    exp4, c = Exp4(), ctx(("a", "b", "c"))
    state = feed(exp4, c, {}, [{"a": 1.0, "b": 0.0}] * 3)  # c never answered
    weights = dict(exp4.select(c, state))
    assert weights["c"] == pytest.approx(weights["a"])
    assert weights["b"] < weights["a"]


def test_exp3_importance_weights_a_single_answer() -> None:
    exp3, c = Exp3(random.Random(1)), ctx(("a", "b"), eta="0.2", gamma="0.1")
    assert exp3.probabilities(c, {}) == {"a": 0.5, "b": 0.5}
    state = feed(exp3, c, {}, [{"a": 0.0}])  # loss 1 at p=0.5: log_w(a) = -0.2 / 0.5
    assert state["models"]["a"]["log_w"] == pytest.approx(-0.4)
    assert state["models"]["b"]["log_w"] == 0.0
    soft_a = math.exp(-0.4) / (1 + math.exp(-0.4))
    assert exp3.probabilities(c, state)["a"] == pytest.approx(0.9 * soft_a + 0.05)
    # Several answers (feedback that re-ran all models): full information, no division.
    state = feed(exp3, c, {}, [{"a": 0.0, "b": 1.0}])
    assert state["models"]["a"]["log_w"] == pytest.approx(-0.2)
    # The probability the model was drawn with comes back with the feedback.
    model, p = exp3.select(c, {})[0]
    assert p == 0.5
    state = exp3.observe(c, {}, Observation({model: 0.0}, {model: 0.25}))
    assert state["models"][model]["log_w"] == pytest.approx(-0.8)


def test_exp3_converges_to_the_best_model() -> None:
    rng = random.Random(3)
    exp3, c = Exp3(random.Random(4)), ctx(("bad", "ok", "best"))
    accuracy = {"bad": 0.3, "ok": 0.6, "best": 0.9}
    state: State = {}
    for _ in range(600):
        model = exp3.select(c, state)[0][0]
        state = feed(exp3, c, state, [{model: float(rng.random() < accuracy[model])}])
    assert max(exp3.probabilities(c, state).items(), key=lambda kv: kv[1])[0] == "best"
    assert exp3.probabilities(c, state)["best"] > 0.6


def test_exp3_drops_a_leader_whose_answers_turn_wrong_at_once() -> None:
    """Page-Hinkley on the leader's reward: once its answers turn wrong it falls to the
    weight floor within a few of them, instead of ln(max_ratio) / eta losses."""
    exp3 = Exp3(random.Random(5))
    c, off = ctx(("a", "b")), ctx(("a", "b"), change_threshold="0")
    right = [{"a": 1.0, "b": 0.8}] * 50
    wrong = [{"a": 0.0, "b": 0.8}] * 8
    on_state = feed(exp3, c, {}, right + wrong)
    off_state = feed(exp3, off, {}, right + wrong)
    assert exp3.probabilities(c, on_state)["a"] < 0.02
    assert exp3.probabilities(off, off_state)["a"] > 0.1  # without it, still drawn often


def test_epsilon_greedy_tries_every_model_then_exploits() -> None:
    eg, c = EpsilonGreedy(random.Random(0)), ctx(("a", "b"), epsilon="0", decay="1")
    state: State = {}
    tried = {eg.select(c, state)[0][0]}
    state = feed(eg, c, state, [{next(iter(tried)): 1.0}])
    second = eg.select(c, state)[0][0]
    assert {second} | tried == {"a", "b"}
    state = feed(eg, c, {}, [{"a": 0.0}, {"b": 1.0}])
    assert eg.select(c, state) == [("b", 1.0)]


def test_decay_discounts_a_models_own_older_answers() -> None:
    eg, c = EpsilonGreedy(), ctx(("a", "b"), decay="0.5", change_threshold="0")
    state = feed(eg, c, {}, [{"b": 1.0}, {"a": 1.0}, {"a": 0.0}])
    assert state["models"]["a"] == {"n": 1.5, "reward": 0.5}
    assert state["models"]["b"] == {"n": 1.0, "reward": 1.0}  # not asked: record kept
    assert state["rounds"] == 3


def test_ucb1_scores() -> None:
    ucb, c = UCB1(), ctx(("a", "b"), decay="1", c="1", change_threshold="0")
    state = feed(ucb, c, {}, [{"a": 1.0}])
    assert ucb.select(c, state) == [("b", 1.0)]  # untried first
    state = feed(ucb, c, state, [{"a": 1.0}, {"a": 0.0}, {"b": 1.0}])  # a: 2/3, b: 1/1
    scores = ucb.scores(c, state)
    assert scores["a"] == pytest.approx(2 / 3 + math.sqrt(2 * math.log(4) / 3))
    assert scores["b"] == pytest.approx(1 + math.sqrt(2 * math.log(4) / 1))


def test_thompson_prefers_the_model_that_wins_more() -> None:
    ts, c = ThompsonSampling(random.Random(5)), ctx(("a", "b"), decay="1")
    state = feed(ts, c, {}, [{"a": 1.0, "b": 0.0}] * 20 + [{"a": 0.0, "b": 1.0}] * 5)
    picks = Counter(ts.select(c, state)[0][0] for _ in range(500))
    assert picks["a"] > 450


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_contexts_start_from_the_application_and_persist(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "s.json") if backend == "file" else request.getfixturevalue("redis_url")
    decider = Decider(open_store(url))
    app_wide = ctx(("a", "b"), "")
    for _ in range(3):
        await decider.observe("exp4", app_wide, Observation({"a": 1.0, "b": 0.0}))
    await decider.observe("exp4", ctx(("a", "b"), "alice"), Observation({"a": 0.0, "b": 1.0}))
    await decider.store.aclose()

    reopened = Decider(open_store(url))  # a restart of the selection service
    alice = await reopened.load("app", "alice")
    assert alice["models"]["a"]["n"] == 4  # three app-wide rounds, then her own
    assert alice["models"]["b"]["log_w"] == pytest.approx(-0.6 + 0.2)
    everyone = await reopened.load("app", "")
    assert everyone["rounds"] == 4  # her feedback also teaches the application
    assert (await reopened.load("app", "bob")) == everyone  # new context: app-wide state
    assert await reopened.store.get(state_key("app", "bob")) is None
    await reopened.store.aclose()


async def test_an_evicted_context_falls_back_to_the_application(tmp_path: Path) -> None:
    decider = Decider(FileStore(tmp_path / "s.json", max_volatile_keys=2), context_ttl_s=3600)
    for user, reward in (("alice", 1.0), ("bob", 0.0), ("carol", 0.0)):
        await decider.observe("exp4", ctx(("a", "b"), user), Observation({"a": reward}))
    assert await decider.store.get(state_key("app", "alice")) is None  # least recent: evicted
    assert await decider.store.get(state_key("app", "carol")) is not None
    assert await decider.load("app", "alice") == await decider.load("app", "")
    assert (await decider.load("app", ""))["rounds"] == 3  # the application learnt from all


async def test_an_application_sets_its_own_context_ttl(tmp_path: Path) -> None:
    decider = Decider(FileStore(tmp_path / "s.json"), context_ttl_s=3600)
    short = SelectContext("app", "alice", ("a",), {"context_ttl_s": "0.001"})
    await decider.observe("exp4", short, Observation({"a": 1.0}))
    await asyncio.sleep(0.05)
    assert await decider.store.get(state_key("app", "alice")) is None
    with pytest.raises(InvalidInput, match="context_ttl_s"):
        await decider.observe("exp4", SelectContext("app", "bob", ("a",), {"context_ttl_s": "-1"}),
                              Observation({"a": 1.0}))
