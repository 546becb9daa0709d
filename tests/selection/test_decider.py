"""Policy state rewritten by the selection service when its store comes back empty."""

from services.common.redis_store import RedisStore
from services.policies import Observation, SelectContext
from services.selection.decider import Decider, state_key

APP_WIDE = SelectContext("app", "", ("a", "b"), {})
ALICE = SelectContext("app", "alice", ("a", "b"), {})


async def feed(decider: Decider, ctx: SelectContext, rounds: int) -> None:
    for _ in range(rounds):
        await decider.observe("exp4", ctx, Observation({"a": 1.0, "b": 0.0}))


async def test_a_lost_store_gets_the_policy_states_back(redis_url: str) -> None:
    store = RedisStore(redis_url)
    decider = Decider(store, context_ttl_s=3600)
    await decider.start()
    try:
        await feed(decider, APP_WIDE, 3)
        await feed(decider, ALICE, 2)
        before = await decider.load("app", "")
        await store.client.flushdb()  # Redis restarted without its data
        # Until the store is rewritten, decisions use the application-wide state known here.
        assert await decider.load("app", "") == before
        await feed(decider, ALICE, 1)  # finds the state missing: the store is rewritten first
        everyone = await store.get(state_key("app", ""))
        alice = await store.get(state_key("app", "alice"))
        assert everyone is not None and everyone["rounds"] == 5 + 1
        assert alice is not None and alice["rounds"] == 3 + 2 + 1  # from the app's 3, then hers
        assert decider.generation.restores == 1
        assert 0 < await store.client.pttl("clipper:" + state_key("app", "alice")) <= 3600_000
    finally:
        await decider.aclose()
        await store.aclose()


async def test_the_replica_that_saw_more_rounds_wins_the_rewrite(redis_url: str) -> None:
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    ahead, behind = Decider(stores[0]), Decider(stores[1])
    for decider in (ahead, behind):
        await decider.start()
    try:
        await feed(behind, APP_WIDE, 2)
        await behind.load("app", "")  # behind remembers 2 rounds
        await feed(ahead, APP_WIDE, 3)  # ahead wrote the 5th
        await stores[0].client.flushdb()
        await ahead.generation.ensure()
        await behind.generation.ensure()  # rewrites second: its older copy must not win
        state = await stores[0].get(state_key("app", ""))
        assert state is not None and state["rounds"] == 5
        assert [d.generation.restores for d in (ahead, behind)] == [1, 1]
    finally:
        for decider in (ahead, behind):
            await decider.aclose()
        for store in stores:
            await store.aclose()


async def test_a_state_rolled_back_by_the_store_continues_from_this_replicas_copy(
    redis_url: str,
) -> None:
    """As a Redis restarted from an older copy: states with fewer rounds than seen here."""
    store = RedisStore(redis_url)
    decider = Decider(store, context_ttl_s=3600)
    await decider.start()
    try:
        await feed(decider, ALICE, 2)
        older_app = await store.get(state_key("app", ""))
        older_alice = await store.get(state_key("app", "alice"))
        await feed(decider, ALICE, 3)
        assert older_app is not None and older_alice is not None
        await store.put(state_key("app", ""), older_app)
        await store.put(state_key("app", "alice"), older_alice)
        await feed(decider, ALICE, 1)
        for context in ("", "alice"):
            state = await store.get(state_key("app", context))
            assert state is not None and state["rounds"] == 6
    finally:
        await decider.aclose()
        await store.aclose()
