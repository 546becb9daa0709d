"""Outlier ejection of one replica: when it is ejected, for how long, and when it is back."""

from __future__ import annotations

from services.frontend.outliers import (
    BASE_EJECTION_S,
    CONSECUTIVE_FAILURES,
    MAX_EJECTION_S,
    ReplicaHealth,
)

CONNECTED_AT = 1.0  # the stream was accepted then, and never broke


def fail_until_ejected(health: ReplicaHealth, now: float) -> int:
    """Failures it took (each of a query sent at `now`) before ejection was due."""
    for count in range(1, 100):
        if health.record_failure(now, CONNECTED_AT):
            return count
    raise AssertionError("never ejected")


def test_repeated_failures_eject_and_an_answer_in_between_resets_the_count() -> None:
    health = ReplicaHealth()
    for _ in range(CONSECUTIVE_FAILURES - 1):
        assert not health.record_failure(10.0, CONNECTED_AT)
    health.record_success()
    assert fail_until_ejected(health, 10.0) == CONSECUTIVE_FAILURES
    assert health.eject(10.0) == BASE_EJECTION_S
    assert health.ejected_for(10.5, CONNECTED_AT) == BASE_EJECTION_S - 0.5
    assert health.ejected_for(10.0 + BASE_EJECTION_S, CONNECTED_AT) == 0


def test_queries_it_held_when_ejected_do_not_eject_it_again() -> None:
    health = ReplicaHealth()
    fail_until_ejected(health, 10.0)
    health.eject(10.0)
    for _ in range(3 * CONSECUTIVE_FAILURES):  # sent before or during the ejection
        assert not health.record_failure(10.5, CONNECTED_AT)
    assert health.ejected_for(10.5, CONNECTED_AT) > 0


def test_on_probation_one_failure_ejects_again_for_twice_as_long_up_to_the_cap() -> None:
    health, now = ReplicaHealth(), 10.0
    fail_until_ejected(health, now)
    backoffs = []
    for _ in range(8):
        backoff_s = health.eject(now)
        backoffs.append(backoff_s)
        now += backoff_s  # back: the first failure of a query sent now ejects it again
        assert fail_until_ejected(health, now) == 1
    assert backoffs[:4] == [BASE_EJECTION_S * 2 ** i for i in range(4)]
    assert max(backoffs) == MAX_EJECTION_S == backoffs[-1]

    health.record_success()  # it answered: a clean record, the next back-off is short again
    assert fail_until_ejected(health, now) == CONSECUTIVE_FAILURES
    assert health.eject(now) == BASE_EJECTION_S


def test_a_new_stream_ends_the_ejection_and_puts_it_on_probation() -> None:
    health = ReplicaHealth()
    fail_until_ejected(health, 10.0)
    health.eject(10.0)
    reconnected_at = 10.2
    assert health.ejected_for(10.3, reconnected_at) == 0
    assert not health.record_failure(10.1, reconnected_at)  # sent on the old stream
    assert health.record_failure(10.3, reconnected_at)  # on probation: once is enough
