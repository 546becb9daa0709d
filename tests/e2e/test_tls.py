"""TLS with client certificates (mTLS) on every channel of a real mesh, and rotation.

The module's mesh runs every server with TLS requiring client certificates, and every
service dials with TLS presenting one: frontend -> selection and -> containers,
containers -> frontend. Clients from outside (the client library, the CLI,
tritonclient, the example clients, ghz) dial it with the test CA and certificate.
Certificates are made at test time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.__main__ import main as loadtest_main
from loadtest.ghz import CONFIGS, errors
from services.client import Client, ClientTLS, UnavailableError
from services.common.processes import REPO_ROOT, ServiceProcess, start_service
from services.common.tls import sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits
from testkit.mesh import ENV, Mesh
from tests.helpers.certs import Pki, make_pki
from tests.helpers.tools import require_tool, tool_missing

APP = "digits"
LEARNING_APP = "digits-learning"  # decided by the selection service, over its stream
MODEL = "digits-logreg"
TRITON_PYTHON = REPO_ROOT / ".venv-tritonclient" / "bin" / "python"
TRITON_CHECKS = REPO_ROOT / "tests" / "outside" / "tritonclient_checks.py"
EXAMPLES = REPO_ROOT / "examples"
HEALTH_PORT_LOG = re.compile(r"health checks \(plaintext, health only\) on port (\d+)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA, which the mesh does not trust."""
    return make_pki(tmp_path_factory.mktemp("stranger"), "stranger")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, digits_models: dict[str, Path],
         pki: Pki) -> Iterator[Mesh]:
    both = [*pki.serve(mtls=True), *pki.dial(mtls=True)]
    mesh = Mesh(tmp_path_factory.mktemp("tls-mesh"), flags={
        "services.selection": [*pki.serve(mtls=True), "--health-port", "0"],
        "services.frontend": both,
        "services.model_container": both,
    }, tls=pki.client_tls(mtls=True))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_digits_models(digits_models, [MODEL])
        mesh.create_app(APP, [MODEL], shape=digits.INPUT_SHAPE, slo_ms=5000)
        mesh.create_app(LEARNING_APP, [MODEL], shape=digits.INPUT_SHAPE, slo_ms=5000,
                        policy="epsilon_greedy")
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="module")
def sample(digits_models: dict[str, Path]) -> tuple[np.ndarray, int]:
    """A test digit and what the model itself says about it."""
    _, x_test, _, _ = digits.split()
    x = x_test[0].astype(np.float32)
    return x, int(joblib.load(digits_models[MODEL]).predict(x.reshape(1, -1))[0])


def test_query_and_feedback_cross_every_tls_channel(
        mesh: Mesh, pki: Pki, sample: tuple[np.ndarray, int]) -> None:
    x, want = sample
    with Client(mesh.address, tls=pki.client_tls(mtls=True), timeout_s=10) as client:
        p = client.predict(APP, x)  # client -> frontend -> container, all TLS
        assert not p.default_used, p.default_reason
        assert int(p.output) == want and p.models == (f"{MODEL}:1",)
        # A learning policy's decision and feedback ride the frontend's stream to the
        # selection service: feedback fails unless that stream is up.
        learned = client.predict(LEARNING_APP, x)
        assert int(learned.output) == want
        assert client.feedback(LEARNING_APP, np.int64(want), query_id=learned.query_id) == [
            MODEL]


@pytest.mark.parametrize("how", ["plaintext", "untrusted CA", "no client certificate"])
def test_clients_without_the_right_credentials_are_refused(
        mesh: Mesh, pki: Pki, stranger: Pki, sample: tuple[np.ndarray, int], how: str) -> None:
    tls = {"plaintext": None, "untrusted CA": stranger.client_tls(mtls=True),
           "no client certificate": pki.client_tls(mtls=False)}[how]
    with Client(mesh.address, tls=tls, timeout_s=5) as client, \
            pytest.raises(UnavailableError) as refused:
        client.predict(APP, sample[0])
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def _health_port(proc: ServiceProcess, log: Path) -> int:
    match = HEALTH_PORT_LOG.search(log.read_text())
    assert match, f"{proc.name} logged no health port"
    return int(match.group(1))


def test_the_health_port_answers_in_plaintext_and_serves_nothing_else(mesh: Mesh) -> None:
    assert mesh.selection is not None
    port = _health_port(mesh.selection, mesh.workdir / f"{mesh.selection.name}.log")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="clipper.v1.Selection"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            next(pb_grpc.SelectionStub(channel).Decide(iter([pb.DecideRequest()]), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _values(x: np.ndarray) -> str:
    return ",".join(f"{v:g}" for v in x)


def test_cli_over_mtls(mesh: Mesh, pki: Pki, sample: tuple[np.ndarray, int]) -> None:
    x, want = sample
    tls = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert),
           "--tls-key", str(pki.client.key)]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "--frontend", mesh.address, *tls,
         "predict", APP, "--values", _values(x)],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == want


def _triton(address: str, calls: list[dict[str, Any]], *tls: str) -> dict[str, dict[str, Any]]:
    if not TRITON_PYTHON.exists():
        tool_missing("tritonclient's virtual environment is missing: run `make tritonclient`")
    done = subprocess.run([str(TRITON_PYTHON), str(TRITON_CHECKS), address, *tls],
                          input=json.dumps(calls), capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr
    return {r["call"]: r for r in json.loads(done.stdout)}


def test_tritonclient_over_mtls(mesh: Mesh, pki: Pki, sample: tuple[np.ndarray, int]) -> None:
    x, want = sample
    calls = [{"name": "ready", "op": "ready"},
             {"name": "infer", "op": "infer", "model": APP, "datatype": "FP32",
              "shape": [64], "values": x.tolist()}]
    results = _triton(mesh.address, calls, str(pki.ca.cert), str(pki.client.cert),
                      str(pki.client.key))
    assert results["ready"] == {"call": "ready", "ok": True, "ready": True}
    assert results["infer"]["ok"] and results["infer"]["values"] == [want]
    # The same client with the CA but without a certificate is refused.
    refused = _triton(mesh.address, calls[:1], str(pki.ca.cert))["ready"]
    assert refused["ok"] is False and "UNAVAILABLE" in refused["status"], refused


def _example(language: str) -> list[str]:
    if language == "python":
        return [sys.executable, str(EXAMPLES / "python" / "digits_client.py")]
    tools = {"go": ("go",), "node": ("node", "npm")}[language]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        tool_missing(f"the {language} example client needs {', '.join(missing)} on PATH")
    done = subprocess.run(["make", "-s", "-C", str(EXAMPLES), language], capture_output=True,
                          text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    if language == "go":
        return [str(EXAMPLES / ".bin" / "digits-client-go")]
    return [shutil.which("node") or "node", str(EXAMPLES / "node" / "digits_client.js")]


@pytest.mark.parametrize("language", ["python", "go", "node"])
def test_example_clients_over_mtls(mesh: Mesh, pki: Pki, sample: tuple[np.ndarray, int],
                                   language: str) -> None:
    x, want = sample
    command = [*_example(language), "--target", mesh.address, "--app", APP,
               "--values", _values(x)]
    tls = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert),
           "--tls-key", str(pki.client.key)]
    done = subprocess.run([*command, *tls], capture_output=True, text=True, timeout=30,
                          cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"] == want
    plaintext = subprocess.run(command, capture_output=True, text=True, timeout=30,
                               cwd=REPO_ROOT, check=False)
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr, plaintext.stderr


def test_ghz_over_mtls(mesh: Mesh, pki: Pki, tmp_path: Path) -> None:
    ghz = require_tool("ghz", "the load generator; `make ghz` needs Go")
    calls = 50
    code = loadtest_main(["--ghz", ghz, "--target", mesh.address, "--results", str(tmp_path),
                          "--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert),
                          "--tls-key", str(pki.client.key), "--", "-n", str(calls), "-c", "4"])
    for config in CONFIGS:
        report = json.loads((tmp_path / f"{config.stem}.json").read_text())
        assert errors(report) == {} and report["count"] == calls, config.name
    assert code == 0


# ---------------------------------------------------------------- rotation without restart

def _health(address: str, tls: ClientTLS) -> str:
    """SERVING, or the status code name a fresh connection fails with."""
    with sync_channel(address, tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=5)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _replace(source: Path, target: Path) -> None:
    """Atomically, as a Secret volume update swaps its files."""
    staged = target.with_suffix(".new")
    shutil.copyfile(source, staged)
    os.replace(staged, target)


def test_a_rotated_certificate_from_a_new_ca_is_served_without_restart(
        tmp_path: Path, pki: Pki, stranger: Pki) -> None:
    live = tmp_path / "secret"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    _replace(pki.server.cert, cert)
    _replace(pki.server.key, key)
    selection = start_service(
        "services.selection",
        ["--port", "0", "--state", str(tmp_path / "state.json"),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        env=ENV, log_path=tmp_path / "selection.log")
    try:
        address = selection.address
        assert _health(address, pki.client_tls()) == "SERVING"
        assert _health(address, stranger.client_tls()) == "UNAVAILABLE"
        # A half-done rotation (the new certificate, the old key) is not taken up.
        _replace(stranger.server.cert, cert)
        assert _health(address, pki.client_tls()) == "SERVING"
        _replace(stranger.server.key, key)
        assert _health(address, stranger.client_tls()) == "SERVING"
        assert _health(address, pki.client_tls()) == "UNAVAILABLE"
        assert selection.proc.poll() is None, "the server restarted"
    finally:
        selection.stop()
    log = (tmp_path / "selection.log").read_text()
    assert "not reloaded" in log and "TLS certificate reloaded" in log, log
