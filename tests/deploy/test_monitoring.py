"""deploy/components/monitoring: ServiceMonitors that reach every pod's metrics port, and
the alert rules of deploy/observability/alerts.yaml as a PrometheusRule (one source)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.cli import k8s
from services.cli.monitoring import prometheus_rule
from tests.deploy.conftest import DEPLOY
from tests.deploy.manifests import (
    SERVICES,
    component,
    env_values,
    main_container,
    named,
    of_kind,
    ours,
    port_named,
    selects,
    validate,
)
from tests.helpers.tools import require_tool

Docs = list[dict[str, Any]]
ALERTS = DEPLOY / "observability" / "alerts.yaml"
COMPONENT = DEPLOY / "components" / "monitoring"
ALERTS_SOURCE = "deploy/observability/alerts.yaml"


def test_the_prometheus_rule_is_printed_from_the_alert_rules() -> None:
    printed = (COMPONENT / "prometheus-rule.yaml").read_text()
    assert printed == prometheus_rule(ALERTS.read_text(), ALERTS_SOURCE), (
        f"run: python -m services.cli prometheus-rule {ALERTS_SOURCE} "
        "> deploy/components/monitoring/prometheus-rule.yaml")
    assert yaml.safe_load(printed)["spec"] == yaml.safe_load(ALERTS.read_text())


def test_prometheus_rule_refuses_what_is_not_a_rule_file() -> None:
    with pytest.raises(ValueError, match="groups"):
        prometheus_rule("apiVersion: v1\nkind: ConfigMap\n", "x.yaml")
    with pytest.raises(ValueError, match="one YAML document"):
        prometheus_rule("groups: []\n---\ngroups: []\n", "x.yaml")


def test_prod_includes_the_component_and_dev_does_not(prod: Docs, dev: Docs) -> None:
    assert of_kind(dev, "ServiceMonitor", "PrometheusRule") == []
    rule = named(prod, "PrometheusRule", "clipper-alerts")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rule["metadata"]["namespace"] == k8s.NAMESPACE


@pytest.mark.parametrize("overlay_name", ["prod", "prod-tls"])
def test_service_monitors_reach_every_pod_metrics_port(
        overlay_name: str, prod: Docs, prod_tls: Docs) -> None:
    docs = {"prod": prod, "prod-tls": prod_tls}[overlay_name]
    monitors = of_kind(docs, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == set(SERVICES)
    scraped: set[str] = set()
    for monitor in monitors:
        name = monitor["metadata"]["name"]
        services = [s for s in of_kind(docs, "Service")
                    if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert len(services) == 1, f"ServiceMonitor {name} selects {len(services)} Services"
        (service,) = services
        assert service["spec"]["clusterIP"] == "None", "headless: one target per pod"
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        port = ports[endpoint["port"]]
        workloads = [w for w in ours(docs) if all(
            w["spec"]["template"]["metadata"]["labels"].get(k) == v
            for k, v in service["spec"]["selector"].items())]
        assert workloads, f"Service {service['metadata']['name']} selects no pod"
        for workload in workloads:
            assert component(workload) == name
            container = main_container(workload)
            assert port_named(container, port["targetPort"]) == k8s.METRICS_PORT
            prefix = f"CLIPPER_{SERVICES[name][0].upper()}_"
            assert env_values(container)[prefix + "METRICS_PORT"] == str(k8s.METRICS_PORT)
            scraped.add(workload["metadata"]["name"])
        if name == "model":
            assert monitor["spec"]["podTargetLabels"] == [k8s.MODEL_LABEL, k8s.VERSION_LABEL]
    assert scraped == {w["metadata"]["name"] for w in ours(docs)}


def test_the_schemas_catch_a_misspelt_monitoring_field(prod: Docs) -> None:
    monitor = named(prod, "ServiceMonitor", "frontend")
    validate(monitor)
    with pytest.raises(jsonschema.ValidationError):
        validate({**monitor, "spec": {**monitor["spec"], "endpoint": []}})
    rule = named(prod, "PrometheusRule", "clipper-alerts")
    broken = yaml.safe_load(yaml.safe_dump(rule))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_promtool_accepts_the_rules_kubernetes_gets(prod: Docs, tmp_path: Path) -> None:
    promtool = require_tool("promtool", "checks the alert rules; Debian's prometheus package")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(named(prod, "PrometheusRule", "clipper-alerts")["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(rules)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
