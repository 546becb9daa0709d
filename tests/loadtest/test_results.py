"""How a run is judged: latency and SLO share from ghz's details, defaults as misses,
the rate that held, the rates of a sweep, and the frontend's counters."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.frontend import cache_use, defaults_served, parse
from loadtest.results import RunResult
from loadtest.runner import Load, duration_s, workers
from loadtest.sweep import held_rate, parse_rates, verdict


def report(latencies_ms: list[float], statuses: list[str] | None = None) -> dict[str, Any]:
    """A ghz JSON report with these calls (the fields the load test reads)."""
    statuses = statuses or ["OK"] * len(latencies_ms)
    codes: dict[str, int] = {}
    for s in statuses:
        codes[s] = codes.get(s, 0) + 1
    return {"name": "clipper.v1.Frontend/Predict", "count": len(latencies_ms),
            "total": 1e9, "rps": float(len(latencies_ms)), "statusCodeDistribution": codes,
            "details": [{"latency": ms * 1e6, "status": s}
                        for ms, s in zip(latencies_ms, statuses, strict=True)]}


def test_within_slo_counts_late_answers_errors_and_defaults_as_misses() -> None:
    calls = [10.0] * 996 + [150.0, 5.0, 5.0, 5.0]
    statuses = ["OK"] * 997 + ["Unavailable", "ResourceExhausted", "ResourceExhausted"]
    result = RunResult.from_report(report(calls, statuses), slo_ms=100, offered_rps=100,
                                   defaults={"deadline": 2})
    assert result.errors == {"Unavailable": 1, "ResourceExhausted": 2}
    assert result.ok_within_slo == 996
    assert result.within_slo == pytest.approx(994 / 1000)
    assert not result.held
    assert result.latency_ms[50] == pytest.approx(10.0)


def test_a_rate_holds_with_p99_within_the_slo_and_999_per_mille_within_it() -> None:
    fast = RunResult.from_report(report([10.0] * 1000), slo_ms=100, offered_rps=50)
    assert fast.held and fast.within_slo == 1.0
    one_late = RunResult.from_report(report([10.0] * 999 + [500.0]), slo_ms=100,
                                     offered_rps=100)
    assert one_late.held  # 99.9% within, p99 10 ms
    two_late = RunResult.from_report(report([10.0] * 998 + [500.0] * 2), slo_ms=100,
                                     offered_rps=150)
    assert not two_late.held
    unjudged = RunResult.from_report(report([10.0] * 10), offered_rps=200)
    assert unjudged.within_slo is None and not unjudged.held
    assert held_rate([fast, one_late, two_late]) is one_late
    assert verdict([fast, one_late, two_late]).startswith("held: 100 q/s")
    assert verdict([two_late]).startswith("held: no rate")


def test_a_run_with_no_ok_call_has_no_latency_but_a_summary_and_json() -> None:
    result = RunResult.from_report(report([1.0] * 3, ["Unavailable"] * 3), slo_ms=100)
    assert result.within_slo == 0.0
    assert "errors 3" in result.summary()
    assert result.to_json()["latency_ms"]["99"] is None


@pytest.mark.parametrize(("text", "rates"), [
    ("50,100,200", [50, 100, 200]), ("200,50", [50, 200]), ("50:200:50", [50, 100, 150, 200]),
    ("25:100:50", [25, 75]),
])
def test_sweep_rates(text: str, rates: list[float]) -> None:
    assert parse_rates(text) == rates


@pytest.mark.parametrize("text", ["", "a,b", "0,10", "-5", "10:5:0", "1:1000:1", "nan"])
def test_bad_sweep_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected rates"):
        parse_rates(text)


def test_durations_and_how_many_inputs_a_run_needs() -> None:
    assert duration_s("30s") == 30 and duration_s("2m") == 120 and duration_s("500ms") == 0.5
    with pytest.raises(ValueError, match="30s"):
        duration_s("30")
    config = {"total": 5000}
    assert Load().expected_calls(config) == 5000
    assert Load(calls=300).expected_calls(config) == 300
    assert Load(rate=200, duration="30s").expected_calls(config) >= 6000
    assert Load(rate=200, duration="30s").ghz_flags() == ["-z", "30s", "--rps", "200",
                                                          "--async"]


METRICS = """\
# TYPE clipper_queries_total counter
clipper_queries_total{application="digits",outcome="answered"} 90.0
clipper_queries_total{application="digits",outcome="default"} 10.0
clipper_queries_total{application="digits",outcome="shed"} 50.0
clipper_queries_total{application="other",outcome="answered"} 7.0
# TYPE clipper_cache_hits_total counter
clipper_cache_hits_total{model="digits-logreg"} 100.0
clipper_cache_hits_total{model="digits-svm"} 80.0
# TYPE clipper_cache_coalesced_total counter
clipper_cache_coalesced_total{model="digits-svm"} 20.0
# TYPE clipper_defaults_total counter
clipper_defaults_total{application="digits",cause="deadline"} 10.0
clipper_defaults_total{application="other",cause="error"} 3.0
# TYPE clipper_query_duration_milliseconds histogram
clipper_query_duration_milliseconds_count{application="digits"} 100.0
"""


def test_counters_from_the_frontends_metrics() -> None:
    totals = parse(METRICS)
    use = cache_use(totals, "digits", models=2)
    assert (use.queries, use.hits, use.coalesced) == (100, 180, 20)
    assert use.hit_ratio == pytest.approx(200 / (100 * 2))
    assert cache_use(totals, "digits").models == 2  # the models seen, without the record
    assert defaults_served(totals, "digits") == {"deadline": 10}
    before = parse(METRICS)
    before.subtract(parse(METRICS))
    assert cache_use(before, "digits").hit_ratio == 0.0


@pytest.mark.parametrize(("ghz_args", "expected"), [
    ([], 32), (["-c", "4"], 4), (["-c4"], 4), (["--concurrency=6"], 6),
    (["--concurrency", "7", "-n", "5"], 7), (["-n", "5"], 32),
])
def test_ghz_workers_bound_the_connections(ghz_args: list[str], expected: int) -> None:
    assert workers({"concurrency": 32}, ghz_args) == expected
