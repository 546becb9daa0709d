"""The local mesh `make loadtest` uses when no target is given: started when nothing
serves on its address (with the frontend's metrics and a management token, so that
the run can read the cache counters and the application's SLO), stopped at the end."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.metrics import read_metrics
from services.mesh.specs import METRICS_URLS

MESH_READY = "Mesh ready"
MESH_START_S = 180.0
# The mesh's state directory, as `make run` has it.
STATE_DIR = Path(".run")


@dataclass
class LocalMesh:
    """`python -m services.mesh` started by the load test."""

    proc: subprocess.Popen[str]
    metrics_url: str
    management_token: str

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serving(target: str, timeout_s: float = 2.0) -> bool:
    """Whether a gRPC health check at `target` answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_mesh(port: int, management_token: str = "") -> LocalMesh:
    """`python -m services.mesh` on `port`; returns once it prints its ready line.

    The frontend's metrics URL is the one of those the mesh lists in its state
    directory that the frontend serves; the management token is `management_token` or
    a new one."""
    token = management_token or secrets.token_urlsafe(16)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.mesh", "--port", str(port),
         "--state-dir", str(STATE_DIR)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "CLIPPER_MANAGEMENT_TOKEN": token},
    )
    mesh = LocalMesh(proc, "", token)
    assert proc.stdout is not None
    give_up = threading.Timer(MESH_START_S, proc.terminate)  # ends a silent mesh too
    give_up.start()
    try:
        for line in proc.stdout:  # ends when the mesh exits
            if line.startswith(MESH_READY):
                print(line.rstrip(), flush=True)
                mesh.metrics_url = frontend_metrics_url(STATE_DIR / METRICS_URLS)
                return mesh
    finally:
        give_up.cancel()
    mesh.stop()
    raise RuntimeError(f"the local mesh did not start within {MESH_START_S:.0f} s")


def frontend_metrics_url(listing: Path) -> str:
    """Of the /metrics URLs in `listing` (one per line, a mesh's every service), the
    frontend's: the one whose `target_info` names the service clipper-frontend."""
    for url in listing.read_text().split():
        try:
            samples = read_metrics(url)
        except OSError:  # a service that is restarting: not the one looked for, or later
            continue
        if any(name == "target_info" and labels.get("service_name") == "clipper-frontend"
               for name, labels, _ in samples):
            return url
    raise RuntimeError(f"no frontend among the metrics URLs in {listing}")
