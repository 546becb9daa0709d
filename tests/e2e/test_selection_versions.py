"""A model's version is part of its selection arm, over real processes: a new version is
judged on its own answers, a rollback restores the old record, feedback is credited to the
version that answered, and the operator can read and reset what the policy believes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.processes import REPO_ROOT
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, MGMT, Mesh

RIGHT = 1  # the label every feedback gives: flip v1 (VersionOne) is right, v2 and other wrong


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("selection-versions"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:VersionOne", "flip", "1")
        mesh.start_container("tests.helpers.models:VersionTwo", "flip", "2")
        mesh.start_container("tests.helpers.models:VersionTwo", "other", "1")
        mesh.wait_connected("flip", 2)
        mesh.wait_connected("other", 1)
        with mesh.management() as mgmt:
            mgmt.SetModelVersion(pb.SetModelVersionRequest(model="flip", version="1"),
                                 metadata=MGMT, timeout=5)
        mesh.create_app("rollout", ["flip", "other"], policy="exp4", params={"eta": "1"})
        yield mesh
    finally:
        mesh.close()


def query(app: str = "rollout", context_key: str = "") -> pb.PredictRequest:
    return pb.PredictRequest(application=app, context_key=context_key,
                             input=tensors.encode(np.ones(4, np.float32)))


async def predict_and_teach(stub: pb_grpc.FrontendStub, rounds: int) -> list[int]:
    """`rounds` queries each followed by feedback by query id; the answers."""
    answers = []
    for _ in range(rounds):
        reply = await stub.Predict(query(), timeout=5)
        answers.append(int(tensors.decode(reply.output).item()))
        await stub.Feedback(pb.FeedbackRequest(application="rollout", query_id=reply.query_id,
                                               label=tensors.encode(np.int64(RIGHT))),
                            timeout=5)
    return answers


def set_version(mesh: Mesh, version: str) -> None:
    with mesh.management() as mgmt:
        mgmt.SetModelVersion(pb.SetModelVersionRequest(model="flip", version=version),
                             metadata=MGMT, timeout=5)


def policy_state(mesh: Mesh, context_key: str = "") -> dict[tuple[str, str], pb.ArmState]:
    with mesh.management() as mgmt:
        state = mgmt.GetPolicyState(pb.PolicyStateRequest(application="rollout",
                                                          context_key=context_key),
                                    metadata=MGMT, timeout=5)
    assert state.policy == "exp4"
    return {(a.model, a.version): a for a in state.arms}


async def test_a_bad_build_is_judged_on_its_own_answers_and_a_rollback_restores_the_record(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    assert await predict_and_teach(stub, 4) == [1, 1, 1, 1]  # a tie goes to flip, then it leads
    arms = policy_state(mesh)
    assert arms[("flip", "1")].weight > 0.9 and arms[("flip", "1")].count == 4
    before_switch = await stub.Predict(query(), timeout=5)  # answered by flip v1

    set_version(mesh, "2")  # a bad build: answers 2
    arms = policy_state(mesh)
    assert arms[("flip", "2")].current and arms[("flip", "2")].estimate == -1
    assert arms[("flip", "2")].weight == pytest.approx(arms[("other", "1")].weight)
    assert not arms[("flip", "1")].current and arms[("flip", "1")].estimate == 1.0

    # Feedback for the query v1 answered before the switch is credited to v1.
    await stub.Feedback(pb.FeedbackRequest(application="rollout",
                                           query_id=before_switch.query_id,
                                           label=tensors.encode(np.int64(RIGHT))), timeout=5)
    arms = policy_state(mesh)
    assert arms[("flip", "1")].count == 5 and arms[("flip", "2")].count == 0

    await predict_and_teach(stub, 3)  # v2 is wrong: its weight falls
    arms = policy_state(mesh)
    assert arms[("flip", "2")].estimate == 0.0 and arms[("flip", "2")].count == 3

    set_version(mesh, "1")  # rollback: v1's record, not a fresh start
    arms = policy_state(mesh)
    assert arms[("flip", "1")].current and arms[("flip", "1")].count == 5
    assert arms[("flip", "1")].estimate == 1.0 and ("flip", "2") in arms
    # It left as the leader, so it comes back level with the best (Exp weights are relative).
    assert arms[("flip", "1")].weight == pytest.approx(arms[("other", "1")].weight)
    assert await predict_and_teach(stub, 2) == [1, 1]
    assert policy_state(mesh)[("flip", "1")].weight > 0.8


def cli(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "--frontend", mesh.address, *args],
        cwd=REPO_ROOT, env={**ENV, "PATH": "/usr/bin:/bin"}, capture_output=True,
        text=True, timeout=30,
    )


async def test_the_operator_reads_and_resets_the_policy_state(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    reply = await stub.Predict(query(context_key="alice"), timeout=5)
    await stub.Feedback(pb.FeedbackRequest(application="rollout", query_id=reply.query_id,
                                           label=tensors.encode(np.int64(RIGHT))), timeout=5)
    shown = cli(mesh, "apps", "policy", "rollout", "--context", "alice")
    assert shown.returncode == 0, shown.stderr
    alice = json.loads(shown.stdout)
    assert alice["source"] == "context" and alice["rounds"] >= 1
    assert {(a["model"], a["version"]) for a in alice["arms"] if a["current"]} == {
        ("flip", alice_version(alice)), ("other", "1")}
    assert all(a["count"] >= 0 for a in alice["arms"])

    reset = cli(mesh, "apps", "reset-policy", "rollout", "--context", "alice")
    assert reset.returncode == 0 and json.loads(reset.stdout) == {"states_deleted": 1}
    assert json.loads(cli(mesh, "apps", "policy", "rollout", "--context",
                          "alice").stdout)["source"] == "application"
    everything = json.loads(cli(mesh, "apps", "reset-policy", "rollout").stdout)
    assert everything["states_deleted"] >= 1
    cleared = json.loads(cli(mesh, "apps", "policy", "rollout").stdout)
    assert cleared["source"] == "none" and cleared["rounds"] == 0
    assert all(a["estimate"] is None for a in cleared["arms"])


def alice_version(state: dict[str, object]) -> str:
    arms = state["arms"]
    assert isinstance(arms, list)
    return next(str(a["version"]) for a in arms if a["model"] == "flip" and a["current"])


def test_policy_state_calls_refuse_bad_input(mesh: Mesh) -> None:
    with mesh.management() as mgmt:
        for request, code in [
            (pb.PolicyStateRequest(application="nope"), grpc.StatusCode.NOT_FOUND),
            (pb.PolicyStateRequest(application="rollout", context_key="k" * 10_000),
             grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            for method in (mgmt.GetPolicyState, mgmt.ResetPolicyState):
                with pytest.raises(grpc.RpcError) as info:
                    method(request, metadata=MGMT, timeout=5)
                assert info.value.code() == code, info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            mgmt.GetPolicyState(pb.PolicyStateRequest(application="rollout"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
