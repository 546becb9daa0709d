"""deploy/overlays/podman rendered, then made playable by `podman kube play` on one host.

The kustomize overlay does what is static (host network, loopback listen addresses,
local images). What depends on the run is done here, and nothing else is touched:

- each container port gets a free port of the host (one host network: the three pods'
  metrics ports cannot all be 9090, and a developer's `make run` may hold 1337), and
  the env values, `--port` arguments and probes (exec commands too) that name it follow;
- each Service address (`frontend:1337`, `redis:6379`, ...) in the ConfigMap and the
  env becomes `127.0.0.1:<the port of the pod it selects>`: kube play has no Services;
- `$(VAR)` references in env values and commands are expanded as Kubernetes does
  (kube play 4.3 leaves them as they are: Redis's password would be "$(REDIS_PASSWORD)");
- Secrets become podman secrets (kube play 4.3 stores a Secret document in a form its
  own secretKeyRef cannot read), created by the caller from `Playable.secrets`;
- the containers' `ports` lists are dropped once moved: kube play 4.3 turns them into
  port mappings, which it refuses beside the host network;
- Redis's StatefulSet becomes a Deployment (kube play has no StatefulSets) whose
  volume claim is an emptyDir; Namespace and Services are dropped.
"""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field
from typing import Any

from services.common.processes import free_port
from tests.deploy.conftest import DEPLOY, render

OVERLAY = DEPLOY / "overlays" / "podman"
PLAYED_KINDS = ("ConfigMap", "Deployment")
Doc = dict[str, Any]


@dataclass
class Playable:
    """What kube play runs, and what it needs from the caller around it."""

    docs: list[Doc]
    # podman secret name -> {key: value}
    secrets: dict[str, dict[str, str]]
    # (Deployment name, container port in deploy/) -> host port it listens on here
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    # Service name -> 127.0.0.1:port
    addresses: dict[str, str] = field(default_factory=dict)

    def port(self, deployment: str, declared: int) -> int:
        return self.ports[(deployment, declared)]


def _secret(doc: Doc) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    values.update(doc.get("stringData", {}))
    return values


def _as_deployment(doc: Doc) -> Doc:
    """A StatefulSet of one replica as a Deployment; claims become emptyDirs."""
    dep = copy.deepcopy(doc)
    dep["kind"] = "Deployment"
    spec = dep["spec"]
    spec.pop("serviceName", None)
    claims = spec.pop("volumeClaimTemplates", [])
    volumes = spec["template"]["spec"].setdefault("volumes", [])
    volumes += [{"name": c["metadata"]["name"], "emptyDir": {}} for c in claims]
    return dep


def _containers(doc: Doc) -> list[Doc]:
    containers: list[Doc] = doc["spec"]["template"]["spec"]["containers"]
    return containers


def _move_ports(dep: Doc, ports: dict[tuple[str, int], int]) -> None:
    """Give each container port a host port; env, command and probes follow it."""
    name = dep["metadata"]["name"]
    assert dep["spec"].get("replicas", 1) == 1, f"{name}: one replica per port on one host"
    for container in _containers(dep):
        moved: dict[int, int] = {}
        by_name: dict[str, int] = {}
        for port in container.get("ports", []):
            # The pods bind it a moment later: the host network leaves no port 0 to ask
            # for, since probes and Services name the port in advance.
            new = ports[(name, port["containerPort"])] = free_port()
            moved[port["containerPort"]] = new
            by_name[port["name"]] = new
            port["containerPort"] = new
        for env in container.get("env", []):
            if env["name"].endswith("_PORT") and env.get("value", "").isdigit():
                env["value"] = str(moved.get(int(env["value"]), env["value"]))
        command = container.get("command", [])
        for i, word in enumerate(command[1:], start=1):
            if command[i - 1] == "--port" and word.isdigit():
                command[i] = str(moved[int(word)])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind, {})
            for handler in ("grpc", "tcpSocket", "httpGet"):
                if handler in probe:
                    old = probe[handler]["port"]
                    probe[handler]["port"] = by_name[old] if isinstance(old, str) else moved[old]
            if "exec" in probe:  # e.g. redis-cli -p 6379
                probe["exec"]["command"] = [_renumber(w, moved) for w in probe["exec"]["command"]]


def _expand_text(text: str, known: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: known.get(m.group(1), m.group(0)), text)


def _expand(dep: Doc, config_maps: dict[str, dict[str, str]],
            secrets: dict[str, dict[str, str]]) -> None:
    """Expand `$(NAME)` in env values and the command from the variables defined before."""
    for container in _containers(dep):
        known: dict[str, str] = {}
        for source in container.get("envFrom", []):
            known.update(config_maps[source["configMapRef"]["name"]])

        for env in container.get("env", []):
            if "value" in env:
                env["value"] = known[env["name"]] = _expand_text(env["value"], known)
            elif "secretKeyRef" in env.get("valueFrom", {}):
                ref = env["valueFrom"]["secretKeyRef"]
                known[env["name"]] = secrets[ref["name"]][ref["key"]]
        for key in ("command", "args"):
            if key in container:
                container[key] = [_expand_text(word, known) for word in container[key]]


def _renumber(text: str, moved: dict[int, int]) -> str:
    for old, new in moved.items():
        text = re.sub(rf"(?<![\d.:]){old}(?!\d)", str(new), text)
    return text


def _addresses(services: list[Doc], deployments: list[Doc]) -> dict[str, str]:
    """Service name -> 127.0.0.1:<host port of the (one) pod it selects>."""
    found: dict[str, str] = {}
    for svc in services:
        if svc["spec"].get("clusterIP") == "None":
            continue  # headless: a StatefulSet's pod names, nothing here dials them
        selector = svc["spec"]["selector"]
        (dep,) = [d for d in deployments if selector.items()
                  <= d["spec"]["template"]["metadata"]["labels"].items()]
        (svc_port,) = svc["spec"]["ports"]
        target = svc_port["targetPort"]
        (port,) = [p["containerPort"] for c in _containers(dep) for p in c.get("ports", [])
                   if target in (p["name"], p["containerPort"])]
        found[f"{svc['metadata']['name']}:{svc_port['port']}"] = f"127.0.0.1:{port}"
    return found


def _readdress(text: str, addresses: dict[str, str]) -> str:
    for service, address in addresses.items():
        text = re.sub(rf"(?<![\w.-]){re.escape(service)}(?!\d)", address, text)
    return text


def playable() -> Playable:
    """Render deploy/overlays/podman and adapt it as the module docstring says."""
    docs = render(OVERLAY)
    secrets = {d["metadata"]["name"]: _secret(d) for d in docs if d["kind"] == "Secret"}
    services = [d for d in docs if d["kind"] == "Service"]
    deployments = [d if d["kind"] == "Deployment" else _as_deployment(d)
                   for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    result = Playable(docs=[], secrets=secrets)
    for dep in deployments:
        _move_ports(dep, result.ports)
    result.addresses = _addresses(services, deployments)
    for dep in deployments:
        for container in _containers(dep):
            container.pop("ports", None)
    for doc in [d for d in docs if d["kind"] == "ConfigMap"]:
        doc["data"] = {k: _readdress(v, result.addresses) for k, v in doc["data"].items()}
        result.docs.append(doc)
    config_maps = {d["metadata"]["name"]: d["data"] for d in result.docs}
    for dep in deployments:
        for container in _containers(dep):
            for env in container.get("env", []):
                if "value" in env:
                    env["value"] = _readdress(env["value"], result.addresses)
        _expand(dep, config_maps, secrets)
        result.docs.append(dep)
    assert {d["kind"] for d in result.docs} <= set(PLAYED_KINDS)
    return result
