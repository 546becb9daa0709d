"""deploy/observability/: the Grafana dashboard and the Prometheus alert rules query only
metrics the services export (scraped from a real mesh driven through the events they
count), and the services' own metrics say what they should."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from services.common import tensors
from services.common.metrics import Samples, sample, scrape
from services.common.processes import free_port
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh
from tests.helpers.tools import require_tool

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yaml"
PORTS = {name: free_port() for name in ("selection", "frontend", "sum", "slow")}


def scrape_until(port: int, done: Callable[[Samples], bool], timeout_s: float = 15.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    samples = scrape(port)
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = scrape(port)
    return samples


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Samples]]:
    """Each service's metrics after queries, feedback, a refused input, a default, a
    container refusal and a selection fallback."""
    mesh = Mesh(tmp_path_factory.mktemp("observability"))
    try:
        # Nothing shed on a busy machine (--max-backlog-ms): the test counts queries.
        mesh.flags["services.selection"] = ("--metrics-port", str(PORTS["selection"]),
                                            "--max-backlog-ms", "60000")
        mesh.start_selection()
        mesh.start_frontend("--metrics-port", str(PORTS["frontend"]), "--max-backlog-ms", "60000")
        mesh.start_container("tests.helpers.models:SumModel", "sum", "1",
                             "--metrics-port", str(PORTS["sum"]))
        mesh.start_container("tests.helpers.models:SlowModel", "slow", "1",
                             "--metrics-port", str(PORTS["slow"]), "--max-queue", "1")
        mesh.create_app("learns", ["sum"], policy="exp3", slo_ms=10_000)
        mesh.create_app("late", ["slow"], slo_ms=100, default=tensors.encode(np.int64(-1)))
        mesh.wait_connected("sum", 1)
        mesh.wait_connected("slow", 1)
        yield drive(mesh)
    finally:
        mesh.close()


def drive(mesh: Mesh) -> dict[str, Samples]:
    def query(app: str, value: float = 1.0) -> pb.PredictRequest:
        return pb.PredictRequest(application=app,
                                 input=tensors.encode(np.full(4, value, np.float32)))

    with grpc.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        replies = [stub.Predict(query("learns"), timeout=15) for _ in range(3)]  # cache hits
        stub.Feedback(pb.FeedbackRequest(application="learns", query_id=replies[0].query_id,
                                         label=tensors.encode(np.float64(4.0))), timeout=15)
        bad = query("learns")
        bad.input.shape[:] = [5]
        with pytest.raises(grpc.RpcError):
            stub.Predict(bad, timeout=15)
        assert stub.Predict(query("late"), timeout=15).default_used
        scrape_until(PORTS["slow"],
                     lambda s: sample(s, "clipper_batch_duration_milliseconds_count") > 0)
        # Three at once to the slow model (queue of one): one runs, one waits, one (at
        # least) is refused; each client gets the default.
        for attempt in range(5):
            calls = [stub.Predict.future(query("late", 3 * attempt + i), timeout=15)
                     for i in range(3)]
            assert all(call.result().default_used for call in calls)
            if sample(scrape(PORTS["slow"]), "clipper_queries_refused_total") > 0:
                break
        out = {"selection": scrape(PORTS["selection"])}
        assert mesh.selection is not None
        mesh.selection.kill()  # the frontend falls back to its last decision
        for attempt in range(50):
            stub.Predict(query("learns", 10 + attempt), timeout=15)
            if sample(scrape(PORTS["frontend"]), "clipper_selection_fallbacks_total") > 0:
                break
            time.sleep(0.1)
    return {**out, "frontend": scrape(PORTS["frontend"]), "sum": scrape(PORTS["sum"]),
            "slow": scrape(PORTS["slow"])}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers and by/without lists
    are not names)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    return set(re.findall(r"\b(?:clipper|rpc)_[a-z0-9_]+\b", expr))


def exported(scraped: dict[str, Samples]) -> set[str]:
    return {name for samples in scraped.values() for name, _, _ in samples}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    return exprs


def test_the_dashboard_queries_only_exported_metrics(scraped: dict[str, Samples]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("request rate", "p99", "slo", "defaults", "shed", "batch size",
                  "queue delay", "replicas", "cache", "selection", "weights"):
        assert topic in titles, topic
    names = set().union(*map(metric_names, dashboard_exprs()))
    assert len(names) > 15
    assert names <= exported(scraped), sorted(names - exported(scraped))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_the_alert_rules_are_valid_and_query_exported_metrics(
    scraped: dict[str, Samples],
) -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [g["name"] for g in groups] == ["clipper-slo", "clipper-load", "clipper-replicas"]
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "ClipperSLOBurnFast", "ClipperSLOBurnSlow", "ClipperShedding", "ClipperDefaultsRising",
        "ClipperModelWithoutReplica", "ClipperReplicaReconnectStorm"}
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    names = set().union(*(metric_names(r["expr"]) for r in rules))
    assert names <= exported(scraped), sorted(names - exported(scraped))


def test_promtool_checks_the_alert_rules() -> None:
    promtool = require_tool("promtool", "checks the alert rules; Debian's prometheus package")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _firing(rule: str, eval_time: str, **labels: str) -> dict[str, Any]:
    """A promtool test case: `rule` fires at `eval_time` with `labels` (and its severity)."""
    (spec,) = [r for r in alert_rules() if r["alert"] == rule]
    annotations = {}
    for key, text in spec["annotations"].items():
        for name, value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", value)
        annotations[key] = text
    return {"eval_time": eval_time, "alertname": rule, "exp_alerts": [
        {"exp_labels": {**labels, "severity": spec["labels"]["severity"]},
         "exp_annotations": annotations}]}


def test_the_alerts_fire_on_what_they_watch_for(tmp_path: Path) -> None:
    """promtool's rule unit tests on made-up series, one case per alert: SLO attainment
    below target (fast and slow burn), shedding, defaults rising, no live replica for a
    linked model, stream reconnect storms. Each case lists every alert of its name that
    fires, so the quiet neighbours (an application that meets its SLO, a model no
    application uses, a replica that reconnected once) must stay quiet."""
    promtool = require_tool("promtool", "tests the alert rules; Debian's prometheus package")
    queries = "clipper_queries_total"
    series = [  # per minute: "late" misses half its queries, "busy" sheds 5.5%, "fine" none
        (f'{queries}{{application="late",outcome="answered"}}', "0+50x400"),
        (f'{queries}{{application="late",outcome="default"}}', "0+50x400"),
        (f'{queries}{{application="fine",outcome="answered"}}', "0+100x400"),
        (f'{queries}{{application="busy",outcome="answered"}}', "0+945x400"),
        (f'{queries}{{application="busy",outcome="shed"}}', "0+55x400"),
        ('clipper_defaults_total{application="late",cause="deadline"}', "0+50x400"),
        # "m" is linked and lost its replicas; "unused" has none and no application.
        ('clipper_replicas_connected{model="m"}', "0x400"),
        ('clipper_model_applications{model="m"}', "1x400"),
        ('clipper_replicas_connected{model="unused"}', "0x400"),
        ('clipper_model_applications{model="unused"}', "0x400"),
        ('clipper_replicas_connected{model="ok"}', "2x400"),
        ('clipper_model_applications{model="ok"}', "1x400"),
        # 5 reconnects a minute to one replica; another one reconnected once.
        ('clipper_replica_reconnects_total{model="m",replica="10.0.0.1:7000"}', "0+5x400"),
        ('clipper_replica_reconnects_total{model="ok",replica="10.0.0.2:7000"}', "0+0x30 1x370"),
    ]
    cases = [
        _firing("ClipperSLOBurnFast", "10m", application="late"),
        _firing("ClipperSLOBurnSlow", "6h", application="late"),
        _firing("ClipperShedding", "10m", application="busy"),
        _firing("ClipperDefaultsRising", "30m", application="late"),
        _firing("ClipperModelWithoutReplica", "5m", model="m"),
        _firing("ClipperReplicaReconnectStorm", "10m", model="m", replica="10.0.0.1:7000"),
    ]
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(ALERTS)], "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": s, "values": v} for s, v in series],
                   "alert_rule_test": cases}]}))
    result = subprocess.run([promtool, "test", "rules", str(tests)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grpc_methods_are_counted_by_status(scraped: dict[str, Samples]) -> None:
    frontend = scraped["frontend"]
    count = "rpc_server_duration_milliseconds_count"
    assert sample(frontend, count, rpc_service="Frontend", rpc_method="Predict",
                  rpc_grpc_status_code="OK") >= 4
    assert sample(frontend, count, rpc_service="Frontend", rpc_method="Predict",
                  rpc_grpc_status_code="INVALID_ARGUMENT") == 1
    assert sample(frontend, count, rpc_service="Frontend", rpc_method="Feedback",
                  rpc_grpc_status_code="OK") == 1
    assert sample(frontend, count, rpc_service="Management", rpc_method="CreateApplication",
                  rpc_grpc_status_code="OK") == 2
    assert sample(frontend, count, rpc_service="Registry", rpc_method="Announce",
                  rpc_grpc_status_code="OK") >= 2


def test_selection_counts_decisions_and_feedback_per_policy(
    scraped: dict[str, Samples],
) -> None:
    selection = scraped["selection"]
    # At least the first: on a busy machine a later one may come after the frontend's
    # 50 ms for a decision, and be refused by the selection service's admission.
    assert sample(selection, "clipper_selection_decisions_total", policy="exp3",
                  outcome="ok") >= 1
    assert sample(selection, "clipper_selection_feedback_total", policy="exp3",
                  outcome="ok") == 1
    assert sample(selection, "clipper_selection_decision_duration_milliseconds_count",
                  policy="exp3") >= 1
    assert sample(selection, "clipper_selection_states", scope="application") >= 1
    # Its one model, weighed by its policy, and right once (the feedback's label).
    arm = {"application": "learns", "policy": "exp3", "model": "sum", "version": "1"}
    assert sample(selection, "clipper_selection_weight", **arm) == 1.0
    assert sample(selection, "clipper_selection_reward_estimate", **arm) == 1.0


def test_the_frontend_reports_each_replica_stream(scraped: dict[str, Samples]) -> None:
    frontend = scraped["frontend"]
    for model in ("sum", "slow"):
        assert sample(frontend, "clipper_replica_connected", model=model) == 1
        assert sample(frontend, "clipper_replicas_connected", model=model) == 1
        assert sample(frontend, "clipper_replica_reconnects_total", model=model) == 0
        assert sample(frontend, "clipper_replica_ejected", model=model) == 0
        assert sample(frontend, "clipper_model_applications", model=model) == 1
    assert sample(frontend, "clipper_replica_in_flight", model="sum") == 0
    assert sample(frontend, "clipper_application_slo_milliseconds", application="late") == 100
