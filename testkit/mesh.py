"""Start real mesh processes for tests and talk to them over real gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.auth import bearer
from services.common.credentials import container_token, selection_token
from services.common.processes import ServiceProcess, start_service
from services.common.tls import ClientTLS, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

MANAGEMENT_TOKEN = "test-management-token"
MESH_SECRET = "test-mesh-secret-0123456789"
SELECTION_TOKEN = selection_token(MESH_SECRET)
# What frontends and the selection service read (and the CLI: the management token).
ENV = {"CLIPPER_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN, "CLIPPER_MESH_SECRET": MESH_SECRET,
       "CLIPPER_SELECTION_TOKEN": SELECTION_TOKEN}
MGMT = bearer(MANAGEMENT_TOKEN)


def container_env(model: str) -> dict[str, str]:
    """A container's environment: the token of its model only."""
    return {"CLIPPER_CONTAINER_TOKEN": container_token(MESH_SECRET, model)}


def container_metadata(model: str) -> tuple[tuple[str, str]]:
    """Call metadata a container of `model` announces itself with."""
    return bearer(container_token(MESH_SECRET, model))


class Mesh:
    """Selection service, frontend and containers as child processes in `workdir`.

    `flags` adds flags per module (e.g. TLS); `tls` is how the tests dial the frontend.
    """

    def __init__(self, workdir: Path, flags: Mapping[str, Sequence[str]] | None = None,
                 tls: ClientTLS | None = None) -> None:
        self.workdir = workdir
        self.flags = dict(flags or {})
        self.tls = tls
        self.procs: list[ServiceProcess] = []
        self.selection: ServiceProcess | None = None
        self.selection_state = ""
        self.frontend: ServiceProcess | None = None

    def _start(self, module: str, args: list[str], name: str,
               env: dict[str, str] | None = None) -> ServiceProcess:
        args = [*args, *self.flags.get(module, ())]
        proc = start_service(module, args, name=name, env=env if env is not None else ENV,
                             log_path=self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_selection(self, port: int = 0, state: str = "") -> ServiceProcess:
        self.selection_state = state or str(self.workdir / "selection.json")
        self.selection = self._start(
            "services.selection",
            ["--port", str(port), "--state", self.selection_state],
            f"selection-{len(self.procs)}",
        )
        return self.selection

    def restart_selection(self) -> ServiceProcess:
        """Kill the selection service and start it again on its port with its state."""
        assert self.selection is not None
        port = self.selection.port
        self.selection.kill()
        return self.start_selection(port, self.selection_state)

    def start_frontend(self, *extra: str, state: str = "") -> ServiceProcess:
        """A frontend; the first one started is `self.frontend`, where containers announce."""
        assert self.selection is not None
        frontend = self._start(
            "services.frontend",
            ["--port", "0", "--selection", self.selection.address,
             "--state", state or str(self.workdir / "frontend.json"),
             "--heartbeat-ms", "200", "--replica-ttl-s", "1.0", *extra],
            f"frontend-{len(self.procs)}",
        )
        self.frontend = self.frontend or frontend
        return frontend

    def start_container(self, model: str, name: str, version: str = "1",
                        *extra: str, env: dict[str, str] | None = None) -> ServiceProcess:
        assert self.frontend is not None
        return self._start(
            "services.model_container",
            ["--model", model, "--name", name, "--version", version,
             "--frontend", self.frontend.address, "--heartbeat-s", "0.2", *extra],
            f"{name}-{version}-{len(self.procs)}", env={**container_env(name), **(env or {})},
        )

    def start_digits_models(self, paths: Mapping[str, Path], names: Sequence[str]) -> None:
        """The trained digits example models (float32[64]), one connected replica each."""
        for name in names:
            self.start_container(str(paths[name]), name, "1",
                                 "--input-dtype", "float32", "--input-shape", "64")
        for name in names:
            self.wait_connected(name, 1)

    @property
    def address(self) -> str:
        assert self.frontend is not None
        return self.frontend.address

    @contextmanager
    def management(self, address: str = "") -> Iterator[Any]:
        with sync_channel(address or self.address, self.tls) as channel:
            yield pb_grpc.ManagementStub(channel)

    def create_app(self, name: str, models: list[str], dtype: str = "float32",
                   shape: tuple[int, ...] = (4,), slo_ms: int = 1000, policy: str = "static",
                   default: pb.Tensor | None = None, params: dict[str, str] | None = None,
                   confidence_threshold: float = 0.0, via: str = "",
                   allow_non_finite: bool = False) -> None:
        app = pb.Application(name=name, input_spec=pb.TensorSpec(dtype=dtype, shape=list(shape)),
                             slo_ms=slo_ms, policy=policy, linked_models=models,
                             policy_params=params or {},
                             confidence_threshold=confidence_threshold,
                             allow_non_finite=allow_non_finite)
        if default is not None:
            app.default_output.CopyFrom(default)
        with self.management(via) as mgmt:
            mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT,
                                   timeout=5)

    def replicas(self, model: str = "", via: str = "") -> list[pb.Replica]:
        with self.management(via) as mgmt:
            reply = mgmt.ListReplicas(pb.ListReplicasRequest(model=model), metadata=MGMT,
                                      timeout=5)
        return list(reply.replicas)

    def wait_connected(self, model: str, count: int, timeout_s: float = 20.0,
                       via: str = "") -> None:
        """Wait until `count` replicas of `model` are registered and connected (and no more)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = self.replicas(model, via)
            if len(live) == count and all(r.connected for r in live):
                return
            time.sleep(0.02)
        raise TimeoutError(f"{model}: wanted {count} connected replicas, have {live}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
