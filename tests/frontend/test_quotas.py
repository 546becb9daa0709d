"""Token buckets per (application, client): refill, burst, pushback, the key or host that
names a client, and the bound on how many are kept."""

from __future__ import annotations

import pytest

from services.common.auth import CLIENT, Caller, peer_host
from services.common.errors import QuotaExceeded
from services.common.tensors import TensorSpec
from services.frontend.quotas import QuotaLimits, Quotas
from services.frontend.records import Application
from tests.helpers.clock import ManualClock


@pytest.fixture
def now() -> ManualClock:
    return ManualClock()


def app(qps: float = 0.0, burst: int = 0, keys: tuple[str, ...] = ()) -> Application:
    return Application("a", TensorSpec("float32", (4,)), 100, client_quota_qps=qps,
                       client_quota_burst=burst, api_key_sha256=keys)


def client(peer: str = "10.0.0.1", key: str = "") -> Caller:
    return Caller(CLIENT, api_key_sha256=key, peer=peer)


def spend(quotas: Quotas, application: Application, caller: Caller, n: int) -> int:
    """How many of `n` queries the quota lets through."""
    taken = 0
    for _ in range(n):
        try:
            quotas.take(application, caller)
            taken += 1
        except QuotaExceeded:
            pass
    return taken


def test_no_quota_by_default(now: ManualClock) -> None:
    assert spend(Quotas(QuotaLimits(), now.now), app(), client(), 10_000) == 10_000


def test_a_burst_then_the_rate_with_a_pushback_until_the_next_token(now: ManualClock) -> None:
    quotas, a = Quotas(QuotaLimits(), now.now), app(qps=4, burst=2)
    assert spend(quotas, a, client(), 5) == 2
    with pytest.raises(QuotaExceeded) as caught:
        quotas.take(a, client())
    assert caught.value.retry_after_ms == 250 and "4 queries/s" in caught.value.message
    now.advance(0.125)  # half a token
    with pytest.raises(QuotaExceeded) as caught:
        quotas.take(a, client())
    assert caught.value.retry_after_ms == 125
    now.advance(0.125)
    assert spend(quotas, a, client(), 3) == 1
    now.advance(100)  # refills to the burst, no further
    assert spend(quotas, a, client(), 5) == 2


def test_the_frontend_default_applies_to_applications_that_set_none(now: ManualClock) -> None:
    quotas = Quotas(QuotaLimits(client_qps=3), now.now)
    assert quotas.rate(app()) == (3, 3)  # burst: one second's worth
    assert quotas.rate(app(qps=0.5)) == (0.5, 1)
    assert spend(quotas, app(), client(), 10) == 3


def test_clients_are_told_apart_by_host_or_by_checked_key(now: ManualClock) -> None:
    quotas = Quotas(QuotaLimits(), now.now)
    open_app, keyed = app(qps=1), app(qps=1, keys=("k1", "k2"))
    assert spend(quotas, open_app, client("10.0.0.1", key="k1"), 2) == 1
    # On an open application a made-up key buys nothing: the host is the client.
    assert spend(quotas, open_app, client("10.0.0.1", key="k2"), 2) == 0
    assert spend(quotas, open_app, client("10.0.0.2"), 2) == 1
    # Where keys are checked, each key is a client, wherever it calls from.
    assert spend(quotas, keyed, client("10.0.0.1", key="k1"), 2) == 1
    assert spend(quotas, keyed, client("10.0.0.1", key="k2"), 2) == 1


def test_buckets_kept_are_bounded(now: ManualClock) -> None:
    quotas = Quotas(QuotaLimits(max_clients=10), now.now)
    for i in range(1000):
        quotas.take(app(qps=1), client(f"10.0.{i // 256}.{i % 256}"))
    assert len(quotas._buckets) == 10


def test_a_peer_is_named_by_its_host() -> None:
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "[::1]"
    assert peer_host("unix:/run/clipper.sock") == "unix:/run/clipper.sock"
