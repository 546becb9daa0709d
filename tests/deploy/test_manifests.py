"""The rendered overlays: schema-valid, and consistent with the code they run."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from services.cli import k8s
from services.cli.settings import SERVICES as SETTING_SERVICES
from services.cli.settings import SHARED_SETTINGS, env_names, service_settings
from services.common.credentials import container_token, selection_token
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.mesh.certs import make_ca, make_leaf
from tests.deploy.manifests import (
    SERVICES,
    component,
    effective_env,
    env_values,
    main_container,
    named,
    of_kind,
    ours,
    pod_spec,
    port_named,
    registered_health_names,
    validate,
)

Docs = list[dict[str, Any]]
# With the password of the Secret, expanded by Kubernetes from the pod's REDIS_PASSWORD.
REDIS_URL = r"redis://:\$\(REDIS_PASSWORD\)@([a-z0-9-]+):(\d+)/(\d+)"
TLS_MOUNT = k8s.TLS_MOUNT


def _default(service: str, flag: str) -> Any:
    module = {s: m for s, m, _ in SETTING_SERVICES}[service]
    return next(s.default for s in service_settings(service, module) if s.flag == flag)


def test_every_document_validates_against_the_kubernetes_schemas(
        overlay: tuple[str, Docs]) -> None:
    name, docs = overlay
    assert docs, f"overlay {name} rendered nothing"
    for doc in docs:
        try:
            validate(doc)
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: no schema for {doc['kind']} {doc['apiVersion']}: {exc.message}")
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at {where}: "
                        f"{exc.message}")


def test_the_validation_catches_a_misspelt_field(dev: Docs) -> None:
    broken = {**named(dev, "Deployment", "frontend")}
    broken["spec"] = {**broken["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_base_has_every_part_in_one_namespace(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    namespaces = of_kind(docs, "Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == [k8s.NAMESPACE]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == k8s.NAMESPACE, doc["metadata"]["name"]
    for kind, name in [("Deployment", "frontend"), ("Service", "frontend"),
                       ("Deployment", "selection"), ("Service", "selection"),
                       ("StatefulSet", "redis"), ("Service", "redis"),
                       ("ConfigMap", k8s.SETTINGS_CONFIGMAP),
                       ("Deployment", k8s.deployment_name("digits-logreg", "1"))]:
        named(docs, kind, name)


def test_commands_run_real_entrypoints(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    seen = set()
    for workload in ours(docs):
        command = main_container(workload)["command"]
        _, module = SERVICES[component(workload)]
        assert command == ["python", "-m", module], workload["metadata"]["name"]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
        seen.add(component(workload))
    assert seen == set(SERVICES)


def test_ports_probes_and_services_agree_with_the_code(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    for workload in ours(docs):
        comp = component(workload)
        service, entrypoint = SERVICES[comp]
        container = main_container(workload)
        env = env_values(container)
        prefix = f"CLIPPER_{service.upper()}_"
        grpc_port = port_named(container, "grpc")
        assert env[prefix + "PORT"] == str(grpc_port)
        assert env[prefix + "HOST"] == "0.0.0.0", "pods must listen on every interface"
        if comp == "model":
            # The container's own default is any free port: the pod must fix it.
            assert _default(service, "--port") == 0
            assert grpc_port == k8s.CONTAINER_PORT
        else:
            assert grpc_port == _default(service, "--port"), f"{comp}: the code's default port"
        # Probes: native gRPC health checks on the service name the server registers,
        # on the gRPC port, or on the plaintext health port when that one serves TLS
        # (the kubelet's gRPC probes cannot speak TLS).
        probed_port = grpc_port
        if prefix + "TLS_CERT" in effective_env(docs, container):
            probed_port = port_named(container, "health")
            assert env[prefix + "HEALTH_PORT"] == str(probed_port)
        registered = registered_health_names(entrypoint)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = container[probe]["grpc"]
            assert check["port"] == probed_port, f"{comp} {probe}"
            assert check["service"] in registered, f"{comp} {probe}: {check['service']}"
            short = check["service"].removeprefix("clipper.v1.")
            assert short in pb.DESCRIPTOR.services_by_name, check["service"]
        # Metrics: served on the port Prometheus is told to scrape.
        metrics_port = port_named(container, "metrics")
        assert env[prefix + "METRICS_PORT"] == str(metrics_port) == str(k8s.METRICS_PORT)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(metrics_port)
        if comp != "model":
            svc = named(docs, "Service", comp)
            (port,) = svc["spec"]["ports"]
            assert port["port"] == grpc_port and port["targetPort"] == "grpc"
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_every_clipper_variable_is_a_setting_the_code_reads(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    known = env_names()
    for config_map in of_kind(docs, "ConfigMap"):
        for name in config_map["data"]:
            assert name in known, f"ConfigMap {config_map['metadata']['name']}: {name}"
    shared = {name for name, _, _ in SHARED_SETTINGS}
    for workload in ours(docs):
        service, _ = SERVICES[component(workload)]
        env = env_values(main_container(workload))
        for name in env:
            if not name.startswith("CLIPPER_"):  # only for $(NAME) in the pod's other values
                assert any(f"$({name})" in str(v) for v in env.values()), (
                    f"{workload['metadata']['name']}: {name} is used by nothing")
                continue
            assert name in known, f"{workload['metadata']['name']}: {name} is read by no service"
            if name not in shared:
                assert name.startswith(f"CLIPPER_{service.upper()}_"), (
                    f"{workload['metadata']['name']} sets {name}, which its service never reads")


def _service_address(docs: Docs, address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    svc = named(docs, "Service", host)
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]], address
    return host, int(port)


def test_services_find_each_other_and_redis(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    secret_refs = []
    for workload in ours(docs):
        container = main_container(workload)
        env = effective_env(docs, container)
        comp = component(workload)
        if comp == "frontend":
            for name in ("CLIPPER_FRONTEND_STATE", "CLIPPER_FRONTEND_CACHE"):
                match = re.fullmatch(REDIS_URL, env[name])
                assert match, f"{name}={env[name]}: the frontends must share Redis"
                _service_address(docs, f"{match[1]}:{match[2]}")
            assert _service_address(docs, env["CLIPPER_FRONTEND_SELECTION"])[0] == "selection"
            assert "CLIPPER_CONTAINER_TOKEN" not in env, "frontends hold the mesh secret"
            secret_refs += [(env["CLIPPER_MANAGEMENT_TOKEN"], k8s.MANAGEMENT_TOKEN_KEY),
                            (env["CLIPPER_MESH_SECRET"], k8s.MESH_SECRET_KEY)]
        if comp in ("frontend", "selection"):
            secret_refs.append((env["REDIS_PASSWORD"], k8s.REDIS_PASSWORD_KEY))
        if comp == "selection":
            secret_refs.append((env["CLIPPER_SELECTION_TOKEN"], k8s.SELECTION_TOKEN_KEY))
            match = re.fullmatch(REDIS_URL, env["CLIPPER_SELECTION_STATE"])
            assert match, "the selection replicas must share Redis"
            _service_address(docs, f"{match[1]}:{match[2]}")
        if comp == "model":
            front = env["CLIPPER_CONTAINER_FRONTEND"]
            assert _service_address(docs, front) == ("frontend", _default("frontend", "--port"))
            assert env["CLIPPER_CONTAINER_ADVERTISE_HOST"] == {
                "fieldRef": {"fieldPath": "status.podIP"}}
            assert env["CLIPPER_CONTAINER_MODEL"] and env["CLIPPER_CONTAINER_NAME"]
            # Its own model's token, from that model's own Secret.
            assert env["CLIPPER_CONTAINER_TOKEN"] == {"secretKeyRef": {
                "name": k8s.model_secret_name(env["CLIPPER_CONTAINER_NAME"]),
                "key": k8s.CONTAINER_TOKEN_KEY}}
    for ref, key in secret_refs:
        assert ref == {"secretKeyRef": {"name": k8s.TOKENS_SECRET, "key": key}}


def test_redis_persists_append_only_on_a_volume(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    redis = named(docs, "StatefulSet", "redis")
    command = main_container(redis)["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in main_container(redis)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == data_dir


def test_pods_are_locked_down(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        name = workload["metadata"]["name"]
        pod = pod_spec(workload)
        assert pod["automountServiceAccountToken"] is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] != 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if workload in ours(docs):
            assert security["runAsUser"] == k8s.IMAGE_UID, f"{name}: the image's user"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            assert container["securityContext"] == k8s.container_security_context(), name
            for mount in container.get("volumeMounts", []):
                # Writable paths are scratch or data volumes, never the image; Secrets
                # (certificates) are mounted read-only.
                volume = volumes.get(mount["name"], {})
                assert (mount["name"] in claims or "emptyDir" in volume
                        or ("secret" in volume and mount.get("readOnly") is True)), name


def test_prod_is_highly_available_and_bounded(prod: Docs) -> None:
    frontend = named(prod, "Deployment", "frontend")
    assert frontend["spec"]["replicas"] >= 2
    pdbs = of_kind(prod, "PodDisruptionBudget")
    for workload in ours(prod):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if all(labels.get(k) == v for k, v in
                                           p["spec"]["selector"]["matchLabels"].items())]
        assert len(covering) == 1, f"{workload['metadata']['name']}: one PDB expected"
        if component(workload) == "model":
            (hpa,) = [h for h in of_kind(prod, "HorizontalPodAutoscaler")
                      if h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]]
            assert hpa["spec"]["minReplicas"] >= 2
            assert "replicas" not in workload["spec"], "the autoscaler owns the replica count"
    for workload in of_kind(prod, "Deployment", "StatefulSet"):
        for container in pod_spec(workload)["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), workload["metadata"]["name"]
            assert {"cpu", "memory"} <= set(resources["limits"]), workload["metadata"]["name"]


def test_prod_ships_no_placeholder_tokens(prod: Docs, dev: Docs) -> None:
    assert not of_kind(prod, "Secret"), "prod credentials are created out of band"
    tokens = named(dev, "Secret", k8s.TOKENS_SECRET)["stringData"]
    assert set(tokens) == {k8s.MANAGEMENT_TOKEN_KEY, k8s.MESH_SECRET_KEY,
                           k8s.SELECTION_TOKEN_KEY, k8s.REDIS_PASSWORD_KEY}
    assert all(tokens[k].startswith("replace-me") for k in (
        k8s.MANAGEMENT_TOKEN_KEY, k8s.MESH_SECRET_KEY, k8s.REDIS_PASSWORD_KEY))
    # The derived ones are what the CLI derives from the placeholder mesh secret.
    secret = tokens[k8s.MESH_SECRET_KEY]
    assert tokens[k8s.SELECTION_TOKEN_KEY] == selection_token(secret)
    for workload in of_kind(dev, "Deployment"):
        if component(workload) == "model":
            model = env_values(main_container(workload))["CLIPPER_CONTAINER_NAME"]
            stored = named(dev, "Secret", k8s.model_secret_name(model))["stringData"]
            assert stored == {k8s.CONTAINER_TOKEN_KEY: container_token(secret, model)}


def test_dev_runs_one_of_each(dev: Docs) -> None:
    for workload in of_kind(dev, "Deployment", "StatefulSet"):
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    assert not of_kind(dev, "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy")


def test_pods_get_the_time_their_services_take_to_stop(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    for workload in ours(docs):
        service, _ = SERVICES[component(workload)]
        container = main_container(workload)
        env = effective_env(docs, container)
        grace_s = float(env.get(f"CLIPPER_{service.upper()}_GRACE_S",
                                _default(service, "--grace-s")))
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep_s = float(pre_stop["command"][1]) if pre_stop else 0.0
        budget = pod_spec(workload)["terminationGracePeriodSeconds"]
        # SIGTERM comes after preStop; leave a few seconds to deregister and exit.
        assert sleep_s + grace_s + 5 <= budget, (
            f"{workload['metadata']['name']}: preStop {sleep_s}s + --grace-s {grace_s}s "
            f"does not fit terminationGracePeriodSeconds {budget}")


def test_each_pod_environment_is_a_valid_config(
        overlay: tuple[str, Docs], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each service's own config_from_args accepts the environment its pod gets."""
    _, docs = overlay
    # What cert-manager puts in a certificate's Secret, made here.
    ca = make_ca(tmp_path, "ca")
    leaf = make_leaf(tmp_path, "tls", ca)
    tls_files = {"tls.crt": leaf.cert, "tls.key": leaf.key, "ca.crt": ca.cert}
    modules = {s: m for s, m, _ in SETTING_SERVICES}
    for workload in ours(docs):
        service, _ = SERVICES[component(workload)]
        env = effective_env(docs, main_container(workload))
        for name in [n for n in os.environ if n.startswith("CLIPPER_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if isinstance(value, dict):  # from a Secret or the downward API
                value = "10.1.2.3" if "fieldRef" in value else _secret_value(docs, value)
            elif value.startswith(TLS_MOUNT + "/"):  # a file of the mounted certificate
                value = str(tls_files[value.removeprefix(TLS_MOUNT + "/")])
            value = value.replace("$(REDIS_PASSWORD)", "a-password")
            monkeypatch.setenv(name, value)
        config = importlib.import_module(modules[service]).config_from_args([])
        container = main_container(workload)
        assert config.host == "0.0.0.0"
        assert config.port == port_named(container, "grpc")
        assert config.metrics_port == port_named(container, "metrics")
        if service == "container":
            assert config.advertise_host == "10.1.2.3"
            assert config.frontends == ("frontend:1337",)


def _secret_value(docs: Docs, ref: dict[str, Any]) -> str:
    """A stand-in for a Secret's value: derived ones derived from a stand-in secret."""
    key = ref["secretKeyRef"]["key"]
    if key == k8s.CONTAINER_TOKEN_KEY:
        model = ref["secretKeyRef"]["name"].removeprefix("clipper-model-")
        return container_token("a-mesh-secret-for-tests", model)
    return "a-mesh-secret-for-tests" if key == k8s.MESH_SECRET_KEY else "a-token"
