"""The prod-tls overlay: every pod gets a cert-manager certificate, and the names agree.

Containers are dialled at their pod IP, so the frontend verifies the one name their
certificate carries; the other hops dial Service names their certificates list.
"""

from __future__ import annotations

from typing import Any

from services.cli import k8s
from tests.deploy.manifests import (
    SERVICES,
    component,
    effective_env,
    main_container,
    named,
    of_kind,
    ours,
    pod_spec,
    port_named,
    validate,
)
from tests.deploy.test_network_policy import allowed

Docs = list[dict[str, Any]]
TLS_MOUNT = k8s.TLS_MOUNT
SECRET_FILES = {"tls.crt", "tls.key", "ca.crt"}  # what cert-manager writes in each Secret


def _certificate_of(docs: Docs, secret: str) -> dict[str, Any]:
    (cert,) = [c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret]
    return cert


def _tls_secret(docs: Docs, workload: dict[str, Any]) -> dict[str, Any]:
    """The certificate whose Secret the pod mounts at TLS_MOUNT."""
    container = main_container(workload)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TLS_MOUNT]
    # Read-only, and the whole volume (a subPath mount never sees a renewal).
    assert mount.get("readOnly") is True and "subPath" not in mount
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
    return _certificate_of(docs, volume["secret"]["secretName"])


def _host(address: str) -> str:
    return address.rpartition(":")[0]


def test_every_issuer_referenced_is_in_the_overlay(prod_tls: Docs) -> None:
    issuers = {i["metadata"]["name"]: i for i in of_kind(prod_tls, "Issuer")}
    for cert in of_kind(prod_tls, "Certificate"):
        ref = cert["spec"]["issuerRef"]
        assert ref["kind"] == "Issuer" and ref["name"] in issuers, cert["metadata"]["name"]
    ca_secret = issuers["clipper-ca"]["spec"]["ca"]["secretName"]
    assert _certificate_of(prod_tls, ca_secret)["spec"]["isCA"] is True


def test_every_service_serves_and_dials_with_its_mounted_certificate(prod_tls: Docs) -> None:
    for workload in ours(prod_tls):
        service, _ = SERVICES[component(workload)]
        _tls_secret(prod_tls, workload)
        env = effective_env(prod_tls, main_container(workload))
        prefix = f"CLIPPER_{service.upper()}_TLS_"
        files = {k.removeprefix(prefix): v for k, v in env.items() if k.startswith(prefix)
                 and k != prefix + "CONTAINER_NAME"}
        assert {"CERT", "KEY"} <= set(files), workload["metadata"]["name"]
        for name, path in files.items():
            assert path.removeprefix(TLS_MOUNT + "/") in SECRET_FILES, f"{name}={path}"


def test_internal_hops_are_mutual_and_names_match(prod_tls: Docs) -> None:
    by_component = {component(w): w for w in ours(prod_tls)}
    env = {c: effective_env(prod_tls, main_container(w)) for c, w in by_component.items()}
    certs = {c: _tls_secret(prod_tls, w)["spec"] for c, w in by_component.items()}
    # The selection service and the containers take only clients with a mesh certificate.
    assert env["selection"]["CLIPPER_SELECTION_TLS_CLIENT_CA"].endswith("/ca.crt")
    assert env["model"]["CLIPPER_CONTAINER_TLS_CLIENT_CA"].endswith("/ca.crt")
    # The frontend presents one, usable as a client certificate, and trusts the mesh CA.
    assert env["frontend"]["CLIPPER_FRONTEND_TLS_CLIENT_CERT"].endswith("/tls.crt")
    assert env["frontend"]["CLIPPER_FRONTEND_TLS_CA"].endswith("/ca.crt")
    assert "client auth" in certs["frontend"]["usages"]
    # Names: what each dialler verifies is in the certificate it is shown.
    selection_host = _host(env["frontend"]["CLIPPER_FRONTEND_SELECTION"])
    assert selection_host in certs["selection"]["dnsNames"]
    assert env["frontend"]["CLIPPER_FRONTEND_TLS_CONTAINER_NAME"] in certs["model"]["dnsNames"]
    assert _host(env["model"]["CLIPPER_CONTAINER_FRONTEND"]) in certs["frontend"]["dnsNames"]
    assert env["model"]["CLIPPER_CONTAINER_TLS_CA"].endswith("/ca.crt")


def test_probes_use_a_health_port_no_network_policy_opens(prod_tls: Docs) -> None:
    for workload in ours(prod_tls):
        container = main_container(workload)
        health = port_named(container, "health")
        labels = workload["spec"]["template"]["metadata"]["labels"]
        # Kubelet traffic from the node is always allowed; no pod may reach it.
        assert allowed(prod_tls, labels, health) == set(), workload["metadata"]["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == health
    front = named(prod_tls, "Deployment", "frontend")
    assert allowed(prod_tls, front["spec"]["template"]["metadata"]["labels"],
                   port_named(main_container(front), "grpc"))  # the public entry stays open
    for svc in ("frontend", "selection"):  # no longer cleartext HTTP/2
        (port,) = named(prod_tls, "Service", svc)["spec"]["ports"]
        assert "appProtocol" not in port


def test_deploy_model_with_tls_matches_the_overlay_model(prod_tls: Docs) -> None:
    """`deploy-model --tls-secret` gives a user's model what the overlay gives its own."""
    overlay_model = named(prod_tls, "Deployment", k8s.deployment_name("digits-logreg", "1"))
    spec = k8s.ModelSpec(image="clipper-mesh", model="/m.joblib", name="my-model",
                         tls_secret=_tls_secret(prod_tls, overlay_model)["spec"]["secretName"])
    (cli_model,) = k8s.model_manifests(spec)
    validate(cli_model)
    ours_, theirs = main_container(cli_model), main_container(overlay_model)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ours_[probe]["grpc"] == theirs[probe]["grpc"]
    assert port_named(ours_, "health") == port_named(theirs, "health") == k8s.HEALTH_PORT
    health_env = {e["name"]: e["value"] for e in ours_["env"] if "HEALTH_PORT" in e["name"]}
    assert health_env == {"CLIPPER_CONTAINER_HEALTH_PORT": str(k8s.HEALTH_PORT)}
    assert _tls_secret(prod_tls, cli_model) == _tls_secret(prod_tls, overlay_model)
