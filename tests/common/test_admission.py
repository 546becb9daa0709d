"""Admission: the backlog and the work in flight decide, and a refusal says when to retry."""

from __future__ import annotations

import contextlib

import pytest

from services.common.admission import Admission, AdmissionLimits
from services.common.errors import PUSHBACK_KEY, Overloaded, trailers


def test_queries_in_flight_are_bounded_in_all_and_per_key() -> None:
    admission = Admission(AdmissionLimits(max_inflight=3, max_inflight_per_key=2))
    with admission.hold("a"), admission.hold("a"):
        with pytest.raises(Overloaded, match=r"2 queries of 'a' in flight.*--max-inflight-per-app"):
            admission.check("a", 1.0)
        admission.check("b", 1.0)
        with admission.hold("b"):
            with pytest.raises(Overloaded, match="3 queries in flight"):
                admission.check("c", 1.0)
    assert admission.inflight == 0
    admission.check("a", 1.0)


def test_a_lasting_backlog_over_the_limit_or_half_the_time_left_sheds() -> None:
    admission = Admission(AdmissionLimits(max_backlog_s=0.05))
    admission.lag.lag_s = 0.02
    admission.check("a", 1.0)
    with pytest.raises(Overloaded, match="backlog of 20 ms") as caught:
        admission.check("a", 0.03)  # would spend most of its 30 ms waiting
    assert caught.value.retry_after_ms == 40
    assert trailers(caught.value) == ((PUSHBACK_KEY, "40"),)
    admission.lag.lag_s = 0.06  # one stall: a query with time to spare is taken
    admission.check("a", 10.0)
    admission.lag.mean_s = 0.06  # a backlog that lasts
    with pytest.raises(Overloaded, match="60 ms on average"):
        admission.check("a", 10.0)


def test_the_limit_per_key_adapts_to_queries_late_and_in_time() -> None:
    admission = Admission(AdmissionLimits(max_inflight_per_key=100, min_inflight_per_key=2))
    with contextlib.ExitStack() as stack:
        for _ in range(20):
            stack.enter_context(admission.hold("a"))
        admission.observe("a", in_time=False)  # late with 20 in flight: cut below 20
        assert admission.limit("a") == pytest.approx(18.9)
        admission.observe("a", in_time=False)  # same window: no second cut
        assert admission.limit("a") == pytest.approx(18.9)
    for _ in range(30):
        admission.observe("a", in_time=True)  # one more per window of answers in time
    assert 19.9 < admission.limit("a") < 21
    for _ in range(200):
        admission.observe("a", in_time=False)
    assert admission.limit("a") == 2  # never under the floor
    admission.check("a", 1.0)


def test_fixed_keeps_the_limit_and_off_sheds_nothing() -> None:
    fixed = Admission(AdmissionLimits(max_inflight_per_key=3, mode="fixed"))
    with fixed.hold("a"):
        fixed.observe("a", in_time=False)
        assert fixed.limit("a") == 3
    off = Admission(AdmissionLimits(max_inflight=1, mode="off"))
    off.lag.lag_s = 10.0
    with off.hold("a"):
        off.check("a", 0.001)
