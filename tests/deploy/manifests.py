"""Reading rendered manifests: workloads, their pods and containers, by component."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

# The Kubernetes release the manifests are validated against (kubernetes-validate ships
# its schemas); native gRPC probes need 1.27 or newer.
KUBERNETES_VERSION = "1.32"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
COMPONENT_LABEL = "app.kubernetes.io/component"
# What each of our components runs: (service in CLIPPER_<SERVICE>_*, entrypoint module).
SERVICES = {
    "frontend": ("frontend", "services.frontend"),
    "selection": ("selection", "services.selection"),
    "model": ("container", "services.model_container"),
}
REPO = Path(__file__).resolve().parents[2]


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


_STR = {"type": "string"}
_METADATA = _closed({"name": _STR, "namespace": _STR, "labels": {"type": "object"},
                     "annotations": {"type": "object"}}, ("name",))
_ISSUER_REF = _closed({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                       "group": _STR}, ("name",))
# The cert-manager.io/v1 fields our overlays use, from its CRDs (kubernetes-validate
# ships only Kubernetes' own schemas); any other field fails, as strict validation does.
CERT_MANAGER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Certificate": _closed({
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": {"const": "Certificate"},
        "metadata": _METADATA,
        "spec": _closed({
            "secretName": _STR, "commonName": _STR, "isCA": {"type": "boolean"},
            "duration": {"type": "string", "pattern": r"^\d+h$"},
            "renewBefore": {"type": "string", "pattern": r"^\d+h$"},
            "dnsNames": {"type": "array", "items": _STR, "minItems": 1},
            "usages": {"type": "array", "items": {
                "enum": ["server auth", "client auth", "digital signature",
                         "key encipherment", "cert sign"]}},
            "privateKey": _closed({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                                   "size": {"type": "integer"},
                                   "rotationPolicy": {"enum": ["Never", "Always"]}}),
            "issuerRef": _ISSUER_REF,
        }, ("secretName", "issuerRef")),
    }, ("apiVersion", "kind", "metadata", "spec")),
    "Issuer": _closed({
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": {"const": "Issuer"},
        "metadata": _METADATA,
        "spec": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
            "selfSigned": _closed({}), "ca": _closed({"secretName": _STR}, ("secretName",)),
        }, "additionalProperties": False},
    }, ("apiVersion", "kind", "metadata", "spec")),
}

_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
_LABEL_SELECTOR = _closed({"matchLabels": {"type": "object",
                                           "additionalProperties": _STR}}, ("matchLabels",))
_RULE = _closed({
    "alert": _STR, "record": _STR, "expr": {"type": "string", "minLength": 1},
    "for": _DURATION, "labels": {"type": "object", "additionalProperties": _STR},
    "annotations": {"type": "object", "additionalProperties": _STR},
}, ("expr",))
# The monitoring.coreos.com/v1 fields our component uses, from the Prometheus Operator's
# CRDs; any other field fails.
MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _closed({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": _closed({
            "selector": _LABEL_SELECTOR,
            "podTargetLabels": {"type": "array", "items": _STR},
            "endpoints": {"type": "array", "minItems": 1, "items": _closed(
                {"port": _STR, "path": _STR, "interval": _DURATION}, ("port",))},
        }, ("selector", "endpoints")),
    }, ("apiVersion", "kind", "metadata", "spec")),
    "PrometheusRule": _closed({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": _closed({"groups": {"type": "array", "minItems": 1, "items": _closed({
            "name": _STR, "interval": _DURATION,
            "rules": {"type": "array", "minItems": 1, "items": _RULE},
        }, ("name", "rules"))}}, ("groups",)),
    }, ("apiVersion", "kind", "metadata", "spec")),
}
CUSTOM_SCHEMAS = {"cert-manager.io/": CERT_MANAGER_SCHEMAS,
                  "monitoring.coreos.com/": MONITORING_SCHEMAS}


def validate(doc: dict[str, Any]) -> None:
    """Raise unless `doc` validates strictly (no unknown fields) against the schemas."""
    for group, schemas in CUSTOM_SCHEMAS.items():
        if doc["apiVersion"].startswith(group):
            jsonschema.validate(doc, schemas[doc["kind"]])
            return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def of_kind(docs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def component(workload: dict[str, Any]) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"][COMPONENT_LABEL])


def ours(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments that run our image (frontend, selection, models)."""
    return [d for d in of_kind(docs, "Deployment") if component(d) in SERVICES]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def main_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    container: dict[str, Any] = containers[0]
    return container


def env_values(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (a string, or the valueFrom object)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def effective_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, Any]:
    """The container's environment: its envFrom ConfigMaps, then its own env over them."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(named(docs, "ConfigMap", ref)["data"])
    env.update(env_values(container))
    return env


def port_named(container: dict[str, Any], name: str) -> int:
    ports = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    assert len(ports) == 1, f"{container['name']}: one port named {name} expected"
    return int(ports[0])


def registered_health_names(entrypoint: str) -> set[str]:
    """The service names an entrypoint registers (its start_server call's string literals)."""
    path = REPO / Path(*entrypoint.split(".")) / "__main__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "start_server"
                and node.args):
            names |= {c.value for c in ast.walk(node.args[0])
                      if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert names, f"no start_server(...) service names found in {path}"
    return names


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as ours are) selects `labels`."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
