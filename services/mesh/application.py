"""The example application `digits`: registered once the mesh runs, and a query to paste."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import numpy as np

from services.common.auth import bearer
from services.common.tensors import encode
from services.common.tls import ClientTLS, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits

APP = "digits"


def digits_apps(models: list[str]) -> dict[str, list[str]]:
    """The applications `make run` registers: `digits`, the scikit-learn models' majority
    vote, and `digits-onnx`, the ONNX model alone, when it is served."""
    apps = {APP: [m for m in models if m in digits.MODEL_NAMES]}
    if digits.ONNX_MODEL in models:
        apps[digits.ONNX_MODEL] = [digits.ONNX_MODEL]
    return apps


def register_apps(address: str, token: str, apps: dict[str, list[str]], slo_ms: int,
                  expected_replicas: int, tls: ClientTLS | None = None) -> None:
    """Create each application (name -> linked models; or give the one kept from an
    earlier run this SLO), and wait for every replica to connect."""
    channel = sync_channel(address, tls)
    mgmt = pb_grpc.ManagementStub(channel)
    md = bearer(token)
    existing = {a.name: a for a in mgmt.ListApplications(
        pb.ListApplicationsRequest(), metadata=md, timeout=5).applications}
    for name, models in apps.items():
        if name not in existing:
            app = pb.Application(
                name=name,
                input_spec=pb.TensorSpec(dtype=digits.INPUT_DTYPE,
                                         shape=list(digits.INPUT_SHAPE)),
                slo_ms=slo_ms,
                policy="all",
                linked_models=models,
                default_output=encode(np.int64(-1)),
            )
            mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=md,
                                   timeout=5)
        elif existing[name].slo_ms != slo_ms:
            app = existing[name]
            app.slo_ms = slo_ms
            mgmt.UpdateApplication(pb.ApplicationRequest(application=app), metadata=md,
                                   timeout=5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replicas = mgmt.ListReplicas(pb.ListReplicasRequest(), metadata=md, timeout=5).replicas
        if sum(r.connected for r in replicas) >= expected_replicas:
            break
        time.sleep(0.05)
    channel.close()


def query_commands(address: str, model_dir: Path,
                   tls: ClientTLS | None = None) -> tuple[str, str, int]:
    """A ready-to-paste query (our CLI and grpcurl) for one test digit, and its label."""
    saved = json.loads(digits.sample_path(model_dir).read_text())
    sample = np.array(saved["values"], dtype=np.float32)
    values = ",".join(str(int(v)) for v in sample)
    cli_tls, grpcurl_tls = "", "-plaintext"
    if tls is not None and tls.enabled:
        cli_tls = f" --tls-ca {tls.ca}" + (f" --tls-cert {tls.cert} --tls-key {tls.key}"
                                           if tls.cert else "")
        grpcurl_tls = f"-cacert {tls.ca}" + (f" -cert {tls.cert} -key {tls.key}"
                                             if tls.cert else "")
    cli = (f"{sys.executable} -m services.cli --frontend {address}{cli_tls} predict {APP} "
           f"--values {values}")
    raw = base64.b64encode(sample.astype("<f4").tobytes()).decode()
    body = json.dumps({"application": APP,
                       "input": {"dtype": "float32", "shape": [64], "raw": raw}})
    grpcurl = f"grpcurl {grpcurl_tls} -d '{body}' {address} clipper.v1.Frontend/Predict"
    return cli, grpcurl, int(saved["label"])
