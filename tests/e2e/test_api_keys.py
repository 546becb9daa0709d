"""Per-application API keys over real processes: Predict, PredictStream, ModelInfer and
Feedback, a feedback-only key, the CLI and the client library."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.client import Client
from services.client.errors import ClientError
from services.common import tensors
from services.common.auth import api_key
from services.common.credentials import sha256_hex
from services.common.processes import REPO_ROOT
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc
from testkit.mesh import ENV, MGMT, Mesh

KEY, ROTATED, FEEDBACK_KEY = "key-of-keyed", "next-key-of-keyed", "key-for-feedback"
MISSING, WRONG = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("api-keys"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        with mesh.management() as mgmt:
            for name, keys, feedback_keys in (("keyed", [KEY, ROTATED], []),
                                              ("feedback-only", [], [FEEDBACK_KEY])):
                app = pb.Application(
                    name=name, input_spec=pb.TensorSpec(dtype="float32", shape=[4]),
                    slo_ms=2000, linked_models=["sum"],
                    api_key_sha256=[sha256_hex(k) for k in keys],
                    feedback_key_sha256=[sha256_hex(k) for k in feedback_keys])
                mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT,
                                       timeout=5)
        mesh.wait_connected("sum", 1)
        yield mesh
    finally:
        mesh.close()


def query(app: str) -> pb.PredictRequest:
    return pb.PredictRequest(application=app,
                             input=tensors.encode(np.arange(4, dtype=np.float32)))


def infer(app: str) -> oip.ModelInferRequest:
    contents = oip.InferTensorContents(fp32_contents=[0, 1, 2, 3])
    return oip.ModelInferRequest(model_name=app, inputs=[oip.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[4], contents=contents)])


async def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def test_queries_need_a_key_of_the_application(channel: grpc.aio.Channel) -> None:
    front = pb_grpc.FrontendStub(channel)
    oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
    for metadata, code in (((), MISSING), (api_key("wrong"), WRONG),
                           (api_key(FEEDBACK_KEY), WRONG)):
        assert await status_of(front.Predict(query("keyed"), metadata=metadata,
                                             timeout=5)) == code
        assert await status_of(oip_stub.ModelInfer(infer("keyed"), metadata=metadata,
                                                   timeout=5)) == code
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await front.Predict(query("keyed"), timeout=5)
    assert "x-api-key" in (err.value.details() or "")
    for key in (KEY, ROTATED):  # both keys of a rotation answer
        reply = await front.Predict(query("keyed"), metadata=api_key(key), timeout=5)
        assert float(tensors.decode(reply.output)) == 6.0, reply.default_reason
        answer = await oip_stub.ModelInfer(infer("keyed"), metadata=api_key(key), timeout=5)
        assert answer.outputs[0].contents.fp64_contents == [6.0]


async def test_a_stream_answers_each_query_by_its_application(
    channel: grpc.aio.Channel,
) -> None:
    front = pb_grpc.FrontendStub(channel)
    requests = [query("keyed"), query("feedback-only")]
    unkeyed = [r async for r in front.PredictStream(iter(requests), timeout=5)]
    by_index = {r.index: r for r in unkeyed}
    assert by_index[0].error.code == MISSING.value[0]
    assert by_index[1].WhichOneof("result") == "response"
    keyed = [r async for r in front.PredictStream(iter(requests), metadata=api_key(KEY),
                                                  timeout=5)]
    assert all(r.WhichOneof("result") == "response" for r in keyed)


async def test_feedback_needs_the_key_too(channel: grpc.aio.Channel) -> None:
    front = pb_grpc.FrontendStub(channel)
    made = await front.Predict(query("keyed"), metadata=api_key(KEY), timeout=5)
    feedback = pb.FeedbackRequest(application="keyed", query_id=made.query_id,
                                  label=tensors.encode(np.float64(6.0)))
    for metadata, code in (((), MISSING), (api_key("wrong"), WRONG)):
        assert await status_of(front.Feedback(feedback, metadata=metadata, timeout=5)) == code
    reply = await front.Feedback(feedback, metadata=api_key(KEY), timeout=5)
    assert list(reply.models) == ["sum"]


async def test_a_feedback_key_guards_feedback_alone(channel: grpc.aio.Channel) -> None:
    front = pb_grpc.FrontendStub(channel)
    made = await front.Predict(query("feedback-only"), timeout=5)  # queries stay open
    assert not made.default_used
    feedback = pb.FeedbackRequest(application="feedback-only", query_id=made.query_id,
                                  label=tensors.encode(np.float64(6.0)))
    for metadata, code in (((), MISSING), (api_key(KEY), WRONG)):
        assert await status_of(front.Feedback(feedback, metadata=metadata, timeout=5)) == code
    reply = await front.Feedback(feedback, metadata=api_key(FEEDBACK_KEY), timeout=5)
    assert list(reply.models) == ["sum"]


async def test_only_digests_are_accepted_and_shown(channel: grpc.aio.Channel) -> None:
    mgmt = pb_grpc.ManagementStub(channel)
    app = await mgmt.GetApplication(pb.ApplicationName(name="keyed"), metadata=MGMT, timeout=5)
    assert list(app.api_key_sha256) == [sha256_hex(KEY), sha256_hex(ROTATED)]
    app.name = "plain-key"
    app.api_key_sha256[:] = [KEY]  # a key instead of its digest
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT,
                                     timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SHA-256" in (err.value.details() or "")


def test_the_cli_and_the_client_library_send_keys(mesh: Mesh) -> None:
    def cli(*args: str, key: str = "") -> subprocess.CompletedProcess[str]:
        env = {**ENV, "PATH": "/usr/bin:/bin", **({"CLIPPER_API_KEY": key} if key else {})}
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "--frontend", mesh.address, *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)

    made = json.loads(cli("tokens", "api-key").stdout)
    assert made["sha256"] == sha256_hex(made["key"])
    created = cli("apps", "create", "cli-keyed", "--input-dtype", "float32", "--input-shape",
                  "4", "--model", "sum", "--slo-ms", "2000", "--api-key-sha256", made["sha256"])
    assert created.returncode == 0, created.stderr
    refused = cli("predict", "cli-keyed", "--values", "1,2,3,4")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    answered = cli("predict", "cli-keyed", "--values", "1,2,3,4", key=made["key"])
    assert json.loads(answered.stdout)["output"] == 10.0, answered.stderr
    with Client(mesh.address, api_key=made["key"]) as client:
        assert float(client.predict("cli-keyed", np.ones(4, np.float32)).output) == 4.0
    with Client(mesh.address) as client, pytest.raises(ClientError) as err:
        client.predict("cli-keyed", np.ones(4, np.float32))
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    # Keys replaced: the old one stops working.
    fresh = json.loads(cli("tokens", "api-key").stdout)
    replaced = cli("apps", "keys", "cli-keyed", "--api-key-sha256", fresh["sha256"])
    assert json.loads(replaced.stdout)["api_key_sha256"] == [fresh["sha256"]], replaced.stderr
    stale = cli("predict", "cli-keyed", "--values", "1,2,3,4", key=made["key"])
    assert stale.returncode == 1 and "PERMISSION_DENIED" in stale.stderr
    assert cli("apps", "keys", "cli-keyed").returncode != 0  # no silent removal
    opened = cli("apps", "keys", "cli-keyed", "--none")
    assert "api_key_sha256" not in json.loads(opened.stdout), opened.stderr
    assert cli("predict", "cli-keyed", "--values", "1,2,3,4").returncode == 0
