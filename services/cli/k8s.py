"""Kubernetes manifests for a model: the Deployment that `deploy/base` uses for its example.

`python -m services.cli deploy-model ...` prints what `model_manifests` builds, for
`kubectl apply -f -`. The pod matches the rest of deploy/: the same image user,
securityContext, gRPC health probes, Prometheus annotations, the `clipper-settings`
ConfigMap, the model's own token Secret (`clipper-model-<name>`), and the labels the
production NetworkPolicy selects (`app.kubernetes.io/component: model`), so a model deployed
this way is reachable from the frontends only.

YAML is written here (block style; every string that YAML could read as anything
else is JSON-quoted, which YAML reads back as the same string), so the tool needs
no YAML library.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from services.generated.clipper.v1 import clipper_pb2 as pb

NAMESPACE = "clipper"
PART_OF = {"app.kubernetes.io/name": "clipper"}
SETTINGS_CONFIGMAP = "clipper-settings"
TOKENS_SECRET = "clipper-tokens"
MANAGEMENT_TOKEN_KEY = "management-token"
MESH_SECRET_KEY = "mesh-secret"
SELECTION_TOKEN_KEY = "selection-token"
REDIS_PASSWORD_KEY = "redis-password"
# Each model's token lives in its own Secret (clipper-model-<name>), which only that
# model's pods mount: `python -m services.cli tokens container NAME` prints the value.
CONTAINER_TOKEN_KEY = "container-token"
# Ports inside every pod; services take them from CLIPPER_<SERVICE>_PORT / _METRICS_PORT.
CONTAINER_PORT = 7000
METRICS_PORT = 9090
# With TLS (deploy/overlays/prod-tls): the plaintext health-only port the probes use,
# and where a certificate's Secret is mounted.
HEALTH_PORT = 8081
TLS_MOUNT = "/etc/clipper/tls"
# Where a model directory (model file and model.json) is mounted: from a PVC, or copied
# there by an init container from an image that holds it.
MODEL_MOUNT = "/models"
# The image's user (Dockerfile USER); pods run as it.
IMAGE_UID = 10001
CONTAINER_ENTRYPOINT = "services.model_container"
CONTAINER_HEALTH_SERVICE: str = pb.DESCRIPTOR.services_by_name["ModelContainer"].full_name
MODEL_LABEL = "clipper.io/model"
VERSION_LABEL = "clipper.io/model-version"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


@dataclass(frozen=True)
class ModelSpec:
    """What a user says about a model to deploy; `env` holds CLIPPER_CONTAINER_* extras."""

    image: str
    model: str
    name: str
    version: str = "1"
    replicas: int = 1
    namespace: str | None = NAMESPACE
    input_dtype: str = ""
    input_shape: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cpu: str = "250m"
    memory: str = "512Mi"
    max_replicas: int = 0  # > replicas: a HorizontalPodAutoscaler on CPU as well
    tls_secret: str = ""  # a certificate's Secret: mounted, and probes on HEALTH_PORT
    # A model directory served with --model-dir, from one of two sources:
    model_pvc: str = ""  # a PersistentVolumeClaim holding it (mounted read-only)
    model_pvc_path: str = ""  # the directory inside the claim (default: its root)
    model_image: str = ""  # an image holding it, copied by an init container
    model_image_path: str = "/model"  # the directory inside that image

    @property
    def model_dir(self) -> bool:
        """The model comes from a model directory on a volume, not from the image."""
        return bool(self.model_pvc or self.model_image)

    def __post_init__(self) -> None:
        problems = []
        if not self.image:
            problems.append("--image is required")
        if not self.model and not self.model_dir:
            problems.append("--model is required (or a model directory: --model-pvc or "
                            "--model-image)")
        if self.model and self.model_dir:
            problems.append("--model names a model in the image; a model directory "
                            "(--model-pvc, --model-image) names its own in model.json")
        if self.model_pvc and self.model_image:
            problems.append("--model-pvc and --model-image: one source of the model directory")
        if self.model_pvc and not _DNS_SUBDOMAIN.match(self.model_pvc):
            problems.append(f"--model-pvc={self.model_pvc!r}: not a valid claim name")
        if self.model_pvc_path.startswith("/") or ".." in self.model_pvc_path.split("/"):
            problems.append(f"--model-pvc-path={self.model_pvc_path!r}: a relative path "
                            "inside the claim")
        if self.model_image and not self.model_image_path.startswith("/"):
            problems.append(f"--model-image-path={self.model_image_path!r}: an absolute path")
        if not _DNS_LABEL.match(self.name):
            problems.append(f"--name={self.name!r}: lower-case letters, digits and '-'")
        if not _LABEL_VALUE.match(self.version) or not self.version:
            problems.append(f"--version={self.version!r}: letters, digits, '-', '_', '.' "
                            "(a Kubernetes label value)")
        elif len(deployment_name(self.name, self.version)) > 63:
            problems.append(f"--name and --version: {deployment_name(self.name, self.version)!r}"
                            " is longer than a Kubernetes name may be (63)")
        if self.namespace is not None and not _DNS_LABEL.match(self.namespace):
            problems.append(f"--namespace={self.namespace!r}: not a valid namespace name")
        if self.replicas < 0:
            problems.append(f"--replicas={self.replicas}: must be >= 0")
        if self.max_replicas and self.max_replicas < max(self.replicas, 1):
            problems.append(f"--max-replicas={self.max_replicas}: must be >= --replicas")
        for flag, quantity in (("--cpu", self.cpu), ("--memory", self.memory)):
            if not _QUANTITY.match(quantity):
                problems.append(f"{flag}={quantity!r}: not a Kubernetes quantity (e.g. 500m, 1Gi)")
        if self.tls_secret and not _DNS_LABEL.match(self.tls_secret):
            problems.append(f"--tls-secret={self.tls_secret!r}: not a valid Secret name")
        if problems:
            raise ValueError("; ".join(problems))


def deployment_name(model: str, version: str) -> str:
    """One Deployment per model version, so a new version runs beside the old one."""
    return f"model-{model}-v{version.lower().replace('_', '-').replace('.', '-')}"


def pod_security_context() -> dict[str, Any]:
    """The pod-level securityContext of every pod running the image."""
    return {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        "fsGroup": IMAGE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The container-level securityContext: read-only root, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def grpc_probes(port: int, service: str) -> dict[str, Any]:
    """Startup, readiness and liveness probes on the server's grpc.health.v1."""
    check = {"grpc": {"port": port, "service": service}}
    return {
        # Loading a model may take a while; liveness waits for the first SERVING.
        "startupProbe": {**check, "periodSeconds": 2, "failureThreshold": 90},
        "readinessProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 2,
                           "failureThreshold": 2},
        # Generous: a short outage of what readiness depends on must not restart pods.
        "livenessProbe": {**check, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 6},
    }


def metrics_annotations() -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
            "prometheus.io/path": "/metrics"}


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _container_env(spec: ModelSpec) -> list[dict[str, Any]]:
    source = (_env("CLIPPER_CONTAINER_MODEL_DIR", MODEL_MOUNT) if spec.model_dir
              else _env("CLIPPER_CONTAINER_MODEL", spec.model))
    env = [
        source,
        _env("CLIPPER_CONTAINER_NAME", spec.name),
        _env("CLIPPER_CONTAINER_VERSION", spec.version),
        _env("CLIPPER_CONTAINER_HOST", "0.0.0.0"),
        _env("CLIPPER_CONTAINER_PORT", str(CONTAINER_PORT)),
        _env("CLIPPER_CONTAINER_METRICS_PORT", str(METRICS_PORT)),
        # Frontends dial the pod directly: announce the pod's own IP.
        {"name": "CLIPPER_CONTAINER_ADVERTISE_HOST",
         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "CLIPPER_CONTAINER_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": model_secret_name(spec.name),
                                        "key": CONTAINER_TOKEN_KEY}}},
    ]
    if spec.tls_secret:  # the TLS file settings come from the ConfigMap (prod-tls)
        env.append(_env("CLIPPER_CONTAINER_HEALTH_PORT", str(HEALTH_PORT)))
    if spec.input_dtype:
        env.append(_env("CLIPPER_CONTAINER_INPUT_DTYPE", spec.input_dtype))
    if spec.input_shape:
        env.append(_env("CLIPPER_CONTAINER_INPUT_SHAPE", spec.input_shape))
    fixed = {e["name"] for e in env}
    for name, value in sorted(spec.env.items()):
        if name in fixed:
            raise ValueError(f"{name} is set from the other options; give it with its own flag")
        env.append(_env(name, value))
    return env


def model_secret_name(model: str) -> str:
    """The Secret holding a model's container token (key `container-token`)."""
    return f"clipper-model-{model}"


def model_labels(spec: ModelSpec) -> dict[str, str]:
    """The labels every version of the model's pods carry (PodDisruptionBudgets and
    NetworkPolicies select on these; a Deployment adds the version)."""
    return {**PART_OF, "app.kubernetes.io/component": "model", MODEL_LABEL: spec.name}


def _metadata(spec: ModelSpec, labels: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": deployment_name(spec.name, spec.version)}
    if spec.namespace is not None:
        metadata["namespace"] = spec.namespace
    metadata["labels"] = labels
    return metadata


def model_deployment(spec: ModelSpec) -> dict[str, Any]:
    """The Deployment of one model: `spec.replicas` containers announcing to the frontends."""
    labels = selector = {**model_labels(spec), VERSION_LABEL: spec.version}
    metadata = _metadata(spec, labels)
    container = {
        "name": "model",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", CONTAINER_ENTRYPOINT],
        "envFrom": [{"configMapRef": {"name": SETTINGS_CONFIGMAP}}],
        "env": _container_env(spec),
        "ports": [
            {"name": "grpc", "containerPort": CONTAINER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        **grpc_probes(CONTAINER_PORT, CONTAINER_HEALTH_SERVICE),
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory},
            "limits": {"memory": spec.memory},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    init_containers = _model_volume(spec, container, volumes)
    if spec.tls_secret:
        # The whole Secret, no subPath: cert-manager's renewals reach the running pod.
        container["ports"].append({"name": "health", "containerPort": HEALTH_PORT,
                                   "protocol": "TCP"})
        container.update(grpc_probes(HEALTH_PORT, CONTAINER_HEALTH_SERVICE))
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_MOUNT,
                                          "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": spec.tls_secret,
                                                   "defaultMode": 0o440}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": metrics_annotations()},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # The container deregisters and finishes its batches on SIGTERM.
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security_context(),
                    **({"initContainers": init_containers} if init_containers else {}),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _model_volume(spec: ModelSpec, container: dict[str, Any],
                  volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mount the model directory at MODEL_MOUNT (read-only); the init containers that
    fill it. A new model, or a new version, is a new directory: not a new image."""
    if not spec.model_dir:
        return []
    mount: dict[str, Any] = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
    container["volumeMounts"].append(mount)
    if spec.model_pvc:
        if spec.model_pvc_path:
            mount["subPath"] = spec.model_pvc_path
        volumes.append({"name": "model", "persistentVolumeClaim": {
            "claimName": spec.model_pvc, "readOnly": True}})
        return []
    volumes.append({"name": "model", "emptyDir": {"sizeLimit": "2Gi"}})
    return [{
        "name": "copy-model",
        "image": spec.model_image,
        "imagePullPolicy": "IfNotPresent",
        # The image needs only `cp` and the directory, readable by the pod's user.
        "command": ["cp", "-R", f"{spec.model_image_path.rstrip('/')}/.", MODEL_MOUNT],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                      "limits": {"memory": "256Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}],
    }]


def model_autoscaler(spec: ModelSpec) -> dict[str, Any]:
    """A HorizontalPodAutoscaler on CPU for the model's Deployment."""
    name = deployment_name(spec.name, spec.version)
    metadata = _metadata(spec, {**model_labels(spec), VERSION_LABEL: spec.version})
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": max(spec.replicas, 1),
            "maxReplicas": spec.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    }


def model_manifests(spec: ModelSpec) -> list[dict[str, Any]]:
    """The Deployment, and an autoscaler when `max_replicas` asks for one.

    With an autoscaler the Deployment leaves `replicas` out, so that applying it again
    does not undo the autoscaler's choice; the autoscaler keeps at least `spec.replicas`.
    """
    deployment = model_deployment(spec)
    if not spec.max_replicas:
        return [deployment]
    del deployment["spec"]["replicas"]
    return [deployment, model_autoscaler(spec)]


# YAML 1.1 and 1.2 plain scalars that do not read back as strings.
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "~", ""}
_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def _yaml_lines(value: Any, indent: str) -> list[str]:
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{indent}{_scalar(key)}:"
            if isinstance(item, dict | list) and item:
                lines.append(head)
                lines += _yaml_lines(item, indent + "  ")
            else:
                lines.append(f"{head} {_inline(item)}")
    else:
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _yaml_lines(item, indent + "  ")
                lines.append(f"{indent}- {nested[0].lstrip()}")
                lines += nested[1:]
            else:
                lines.append(f"{indent}- {_inline(item)}")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """The documents as block-style YAML, separated by `---`."""
    return "".join("---\n" + "\n".join(_yaml_lines(doc, "")) + "\n" for doc in documents)
