import pytest

from services.frontend.query_path import answer_deadline


def test_the_slo_decides_when_the_client_has_no_deadline() -> None:
    assert answer_deadline(100, None, now=50.0) == pytest.approx(50.098)


def test_a_looser_client_deadline_leaves_the_slo_in_charge() -> None:
    assert answer_deadline(100, 5.0, now=50.0) == pytest.approx(50.098)


def test_a_tighter_client_deadline_keeps_back_a_tenth_for_the_way_back() -> None:
    assert answer_deadline(900, 0.3, now=50.0) == pytest.approx(50.27)


def test_a_very_tight_client_deadline_still_keeps_back_2_ms() -> None:
    assert answer_deadline(900, 0.01, now=50.0) == pytest.approx(50.008)


def test_the_slo_counts_from_the_calls_arrival_a_clients_deadline_already_does() -> None:
    # 30 ms in gRPC core before the handler ran: 30 ms less of a 100 ms SLO
    assert answer_deadline(100, None, now=50.0, waited_s=0.03) == pytest.approx(50.068)
    assert answer_deadline(900, 0.3, now=50.0, waited_s=0.03) == pytest.approx(50.27)
