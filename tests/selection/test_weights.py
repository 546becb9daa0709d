"""The selection weights the metrics export: each application's latest candidates, as its
application-wide state weighs them (the same figures as GetPolicyState)."""

from pathlib import Path

from services.common.stores import open_store
from services.policies import Observation, SelectContext, get_policy
from services.selection.decider import Decider
from services.selection.policy_state import describe
from services.selection.weights import current_weights


async def test_weights_follow_feedback_per_application(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "state.json"))
    decider = Decider(store)
    await decider.start()
    try:
        learns = SelectContext("learns", "", ("a", "b"), {}, {"a": "1", "b": "2"})
        alice = SelectContext("learns", "alice", ("a", "b"), {}, {"a": "1", "b": "2"})
        greedy = SelectContext("greedy", "", ("a", "b"), {})
        assert list(current_weights(decider)) == []  # nothing decided yet
        for _ in range(5):  # "b" is right, "a" wrong; alice's feedback counts for all too
            await decider.observe("exp3", alice, Observation({"a": 0.0, "b": 1.0}))
        await decider.select("exp3", alice)
        await decider.select("static", SelectContext("fixed", "", ("a",), {"model": "a"}))
        await decider.observe("epsilon_greedy", greedy, Observation({"a": 1.0}))
        await decider.select("epsilon_greedy", greedy)
        weights = {(w.application, w.model): w for w in current_weights(decider)}
        assert set(weights) == {("learns", "a"), ("learns", "b"), ("greedy", "a"),
                                ("greedy", "b")}, "learning policies only, per application"
        a, b = weights["learns", "a"], weights["learns", "b"]
        assert (a.policy, a.version, b.version) == ("exp3", "1", "2")
        assert a.weight is not None and b.weight is not None
        assert abs(a.weight + b.weight - 1.0) < 1e-9 and b.weight > 0.75
        assert (a.estimate, b.estimate) == (0.0, 1.0)
        state = await decider.load("learns", "")
        shown = {v.model: v.weight for v in describe(get_policy("exp3"), learns, state)}
        assert shown == {"a": a.weight, "b": b.weight}
        # epsilon-greedy weighs no models: only its estimates, for the models answered.
        assert weights["greedy", "a"].weight is None
        assert weights["greedy", "a"].estimate == 1.0
        assert weights["greedy", "b"].estimate is None
    finally:
        await decider.aclose()
        await store.aclose()
