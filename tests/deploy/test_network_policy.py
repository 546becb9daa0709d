"""The production NetworkPolicies, evaluated: who may reach which port of which pod."""

from __future__ import annotations

from typing import Any

from services.cli import k8s
from tests.deploy.manifests import (
    COMPONENT_LABEL,
    component,
    main_container,
    of_kind,
    port_named,
    selects,
)

Docs = list[dict[str, Any]]
# Callers: each component's pod, a pod of another app in the namespace, and a pod
# in another namespace (a client, an ingress controller, Prometheus).
STRANGER = "another pod in the namespace"
OUTSIDE = "a pod in another namespace"


def _callers(docs: Docs) -> dict[str, tuple[str, dict[str, str]]]:
    callers = {component(w): (k8s.NAMESPACE, w["spec"]["template"]["metadata"]["labels"])
               for w in of_kind(docs, "Deployment", "StatefulSet")}
    callers[STRANGER] = (k8s.NAMESPACE, {"app": "something-else"})
    callers[OUTSIDE] = ("elsewhere", {"app": "client"})
    return callers


def _peer_admits(peer: dict[str, Any], namespace: str, labels: dict[str, str]) -> bool:
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    assert "ipBlock" not in peer
    if namespaces is None:
        in_scope = namespace == k8s.NAMESPACE
    else:
        in_scope = selects(namespaces, {"kubernetes.io/metadata.name": namespace})
    return in_scope and (pods is None or selects(pods, labels))


def allowed(docs: Docs, target: dict[str, str], port: int) -> set[str]:
    """Which callers may open `port` on a pod labelled `target` (in the mesh namespace)."""
    policies = [p for p in of_kind(docs, "NetworkPolicy")
                if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"],
                                                                    target)]
    callers = _callers(docs)
    if not policies:
        return set(callers)
    admitted = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for name, (namespace, labels) in callers.items():
                peers = rule.get("from")
                if peers is None or any(_peer_admits(p, namespace, labels) for p in peers):
                    admitted.add(name)
    return admitted


def test_only_the_frontend_reaches_containers_and_selection(prod: Docs) -> None:
    everyone = set(_callers(prod))
    expected = {
        "frontend": everyone,
        "selection": {"frontend"},
        "model": {"frontend"},
        "redis": {"frontend", "selection"},
    }
    for workload in of_kind(prod, "Deployment", "StatefulSet"):
        comp = component(workload)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        container = main_container(workload)
        service_port = port_named(container, "redis" if comp == "redis" else "grpc")
        assert allowed(prod, labels, service_port) == expected[comp], comp
        if comp != "redis":
            # Prometheus, from its own namespace, scrapes every mesh pod.
            assert OUTSIDE in allowed(prod, labels, port_named(container, "metrics")), comp
        # Nothing else is open.
        assert allowed(prod, labels, 12345) == set(), comp


def test_models_deployed_with_the_cli_are_covered(prod: Docs) -> None:
    spec = k8s.ModelSpec(image="example/model:1", model="m.joblib", name="my-model")
    labels = k8s.model_deployment(spec)["spec"]["template"]["metadata"]["labels"]
    assert labels[COMPONENT_LABEL] == "model"
    assert allowed(prod, labels, k8s.CONTAINER_PORT) == {"frontend"}
