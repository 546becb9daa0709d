"""The pods' own startup and readiness probes, run from outside as a kubelet would.

kube play 4.3 runs none of them (no gRPC probes; exec and TCP ones only as systemd
timers, and this machine has no systemd), so the tests run each container's probes,
as the manifests state them, to know when a pod is ready.
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.pods import engine

PROBE_TIMEOUT_S = 2.0


def _grpc(probe: dict[str, Any]) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{probe['port']}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe.get("service", "")),
                timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _tcp(probe: dict[str, Any]) -> bool:
    try:
        socket.create_connection(("127.0.0.1", probe["port"]), PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _exec(container: str, probe: dict[str, Any]) -> bool:
    done = engine.podman("exec", container, *probe["command"], check=False, timeout_s=10)
    return done.returncode == 0


def passes(container: str, probe: dict[str, Any]) -> bool:
    """Whether one probe of the podman container `container` succeeds now."""
    if "grpc" in probe:
        return _grpc(probe["grpc"])
    if "tcpSocket" in probe:
        return _tcp(probe["tcpSocket"])
    if "exec" in probe:
        return _exec(container, probe["exec"])
    raise AssertionError(f"{container}: probe kind not handled here: {probe}")


def ready(container: str, spec: dict[str, Any]) -> bool:
    """Started and ready: its startup probe, then its readiness probe, pass."""
    return all(passes(container, spec[kind]) for kind in ("startupProbe", "readinessProbe")
               if kind in spec)
