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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.processes import free_port

MESH_READY = "Mesh ready"
MESH_START_S = 180.0


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

    The frontend serves its metrics on a free port found here (the mesh prints no
    metrics address), and the management token is `management_token` or a new one."""
    metrics_port = free_port()
    token = management_token or secrets.token_urlsafe(16)
    env = {"CLIPPER_FRONTEND_METRICS_PORT": str(metrics_port),
           "CLIPPER_MANAGEMENT_TOKEN": token}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.mesh", "--port", str(port)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, **env},
    )
    mesh = LocalMesh(proc, f"http://127.0.0.1:{metrics_port}/metrics", token)
    assert proc.stdout is not None
    give_up = threading.Timer(MESH_START_S, proc.terminate)  # ends a silent mesh too
    give_up.start()
    try:
        for line in proc.stdout:  # ends when the mesh exits
            if line.startswith(MESH_READY):
                print(line.rstrip(), flush=True)
                return mesh
    finally:
        give_up.cancel()
    mesh.stop()
    raise RuntimeError(f"the local mesh did not start within {MESH_START_S:.0f} s")

