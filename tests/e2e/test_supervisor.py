"""The mesh `make run` starts keeps serving through `kill -9` of any of its processes.

Each test drives steady, bounded load through the launcher-started mesh
(`python -m services.mesh`), kills one process as a crash would, and checks what
clients saw and what came back: a container replica (with a twin: no query fails;
alone: flagged defaults, then real answers again within REAL_AGAIN_S), the selection
service (serving goes on; its learnt state survives), the frontend (the same client
reconnects; applications, links and versions survive). Past the restart limit one
container stays down while the rest serve, and SIGTERM drains the mesh in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import joblib
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits
from testkit.mesh import ENV, MGMT
from tests.helpers.launcher import Launcher

# A replacement container loads its model before it serves: seconds on a quiet
# machine; this bound allows for a busy 2-core one.
REAL_AGAIN_S = 30.0
SLO_MS = "2000"  # generous: the tests are about crashes, not speed
pytestmark = pytest.mark.timeout(300)
DISTINCT = itertools.count()  # numbers every query of the module


@pytest.fixture(scope="module")
def x_test() -> np.ndarray:
    return digits.split()[1]


@pytest.fixture(scope="module")
def model_dir(digits_models: dict[str, Path]) -> Path:
    return next(iter(digits_models.values())).parent


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Launcher]:
    """Two replicas of each model."""
    launcher = Launcher(tmp_path_factory.mktemp("twins"), model_dir,
                        "--replicas", "2", "--slo-ms", SLO_MS)
    try:
        yield launcher.start()
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def singles(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Launcher]:
    """One replica of each model; a service restarted twice in a minute is left down."""
    launcher = Launcher(tmp_path_factory.mktemp("singles"), model_dir,
                        "--slo-ms", SLO_MS, "--max-restarts-per-min", "2")
    try:
        yield launcher.start()
    finally:
        launcher.close()


class Load:
    """Steady load: `workers` loops on one channel, each query a distinct digit, bounded
    in count (`max_queries`) and by `stop`. Failures are recorded, not raised."""

    def __init__(self, address: str, app: str, x: np.ndarray, workers: int = 3,
                 pause_s: float = 0.02, max_queries: int = 4000) -> None:
        self.address, self.app, self.x = address, app, x
        self.workers, self.pause_s, self.max_queries = workers, pause_s, max_queries
        self.answers: list[tuple[float, pb.PredictResponse]] = []
        self.errors: list[tuple[float, grpc.StatusCode]] = []
        self.stop = asyncio.Event()
        self._sent = 0

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.FrontendStub(channel)
            await asyncio.gather(*(self._worker(stub) for _ in range(self.workers)))

    async def _worker(self, stub: pb_grpc.FrontendStub) -> None:
        while not self.stop.is_set() and self._sent < self.max_queries:
            i, self._sent = next(DISTINCT), self._sent + 1
            x = self.x[i % len(self.x)].copy()
            x[0] = i / 1000  # distinct: no answer comes from the cache
            try:
                reply = await stub.Predict(pb.PredictRequest(
                    application=self.app, input=tensors.encode(x)), timeout=5)
                self.answers.append((time.monotonic(), reply))
            except grpc.aio.AioRpcError as exc:
                self.errors.append((time.monotonic(), exc.code()))
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.pause_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        """Run the load while the block runs; then stop it and wait for its workers."""
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self.stop.set()
            await asyncio.wait_for(task, 30)

    async def answered(self, more: int, timeout_s: float = 60.0, real: bool = True) -> None:
        """Wait until `more` further answers (real ones, unless `real` is False) came."""
        def count() -> int:
            return sum(1 for _, r in self.answers if not (real and r.default_used))
        target = count() + more
        deadline = time.monotonic() + timeout_s
        while count() < target:
            assert time.monotonic() < deadline, f"{count()} of {target} answers"
            assert self._sent < self.max_queries, "the load ran out of queries"
            await asyncio.sleep(0.05)


async def kill_under_load(launcher: Launcher, load: Load, module: str, model: str,
                          back: str) -> tuple[float, str]:
    """Under `load`, kill -9 one child; wait for the launcher's `back` line (its
    address group); returns when it was killed and that line."""
    await load.answered(50)
    after = len(launcher.lines)
    await asyncio.to_thread(launcher.kill9, module, model)
    killed = time.monotonic()
    match = await asyncio.to_thread(launcher.wait_for_line, back, 90.0, after)
    return killed, match.group(0)


async def test_a_killed_replica_with_a_twin_fails_no_query(
        twins: Launcher, x_test: np.ndarray) -> None:
    async with Load(twins.address, "digits", x_test).running() as load:
        _, line = await kill_under_load(
            twins, load, "services.model_container", "digits-logreg",
            r"digits-logreg-\d is back \(pid \d+, (127\.0\.0\.1:\d+)\)")
        await load.answered(100)
    assert load.errors == []
    assert [r for _, r in load.answers if r.default_used] == []
    assert re.search(r"digits-logreg-\d killed by SIGKILL after [\d.]+ s; restarting in",
                     "\n".join(twins.lines))
    # The replacement is what `services.cli replicas list` shows, beside the twin.
    address = line.split(", ")[1].rstrip(")")
    deadline = time.monotonic() + 30
    while True:
        listed = await asyncio.to_thread(cli_replicas, twins, "digits-logreg")
        if sorted(r.get("connected", False) for r in listed) == [True, True] and address in {
                r["address"] for r in listed}:
            break
        assert time.monotonic() < deadline, f"the replacement on {address} is not listed"
        await asyncio.sleep(0.2)


def cli_replicas(launcher: Launcher, model: str) -> list[dict[str, object]]:
    """`services.cli replicas list --model MODEL`, as a user would run it."""
    listed: list[dict[str, object]] = json.loads(subprocess.run(
        [sys.executable, "-m", "services.cli", "--frontend", launcher.address,
         "replicas", "list", "--model", model],
        env={**os.environ, **ENV}, capture_output=True, text=True, check=True).stdout)
    return listed


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def disagreement(model_dir: Path, x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A digit that digits-logreg and digits-svm answer differently, and both answers."""
    logreg = joblib.load(model_dir / "digits-logreg.joblib").predict(x)
    svm = joblib.load(model_dir / "digits-svm.joblib").predict(x)
    i = int(np.flatnonzero(logreg != svm)[0])
    return x[i], int(logreg[i]), int(svm[i])


async def test_the_selection_service_comes_back_with_its_state_while_serving_goes_on(
        twins: Launcher, x_test: np.ndarray, model_dir: Path) -> None:
    digit, _, svm_says = disagreement(model_dir, x_test)
    app = pb.Application(
        name="learner", input_spec=pb.TensorSpec(dtype="float32", shape=[64]),
        slo_ms=int(SLO_MS), policy="exp4", linked_models=["digits-logreg", "digits-svm"])
    with twins.management() as mgmt:
        mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT,
                               timeout=5)
    query = pb.PredictRequest(application="learner", input=tensors.encode(digit))
    truth = pb.FeedbackRequest(application="learner", input=tensors.encode(digit),
                               label=tensors.encode(np.int64(svm_says)))
    async with grpc.aio.insecure_channel(twins.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        for _ in range(3):  # svm right, logreg wrong: svm's weight grows
            await stub.Feedback(truth, timeout=10)
        learnt = await stub.Predict(query, timeout=10)
        assert tensors.decode(learnt.output).item() == svm_says and 0.5 < learnt.confidence

        # exp4 asks the selection service
        async with Load(twins.address, "learner", x_test).running() as load:
            await kill_under_load(twins, load, "services.selection", "",
                                  r"selection is back \(pid \d+, (127\.0\.0\.1:\d+)\)")
            await load.answered(100)
        assert load.errors == []
        assert [r for _, r in load.answers if r.default_used] == []

        # One more round on the restarted service. Kept state: svm's share grows past
        # what it was; lost state would start again from even weights (below it), and
        # the frontend's fallback would repeat the last decision (equal to it).
        deadline = time.monotonic() + 60
        while True:
            try:
                await stub.Feedback(truth, timeout=10)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "feedback never reached the selection"
                await asyncio.sleep(0.2)
        after = await stub.Predict(query, timeout=10)
    assert tensors.decode(after.output).item() == svm_says
    assert after.confidence > learnt.confidence + 1e-3


async def test_clients_reconnect_to_a_restarted_frontend_that_kept_its_registry(
        twins: Launcher, x_test: np.ndarray) -> None:
    with twins.management() as mgmt:
        mgmt.CreateApplication(pb.ApplicationRequest(application=pb.Application(
            name="kept", input_spec=pb.TensorSpec(dtype="float32", shape=[64]),
            slo_ms=int(SLO_MS), policy="static", linked_models=["digits-knn"],
            default_output=tensors.encode(np.int64(-1)))), metadata=MGMT, timeout=5)
        mgmt.LinkModel(pb.LinkRequest(application="kept", model="digits-svm"),
                       metadata=MGMT, timeout=5)
        mgmt.SetModelVersion(pb.SetModelVersionRequest(model="digits-knn", version="1"),
                             metadata=MGMT, timeout=5)
        apps = mgmt.ListApplications(pb.ListApplicationsRequest(), metadata=MGMT, timeout=5)
        models = mgmt.ListModels(pb.ListModelsRequest(), metadata=MGMT, timeout=5)
    async with Load(twins.address, "kept", x_test).running() as load:  # one channel
        killed, _ = await kill_under_load(twins, load, "services.frontend", "",
                                          r"frontend is back \(pid \d+, (127\.0\.0\.1:\d+)\)")
        back = time.monotonic()
        await load.answered(100, timeout_s=REAL_AGAIN_S + 30)
    # While it was down, and until the client reconnected: UNAVAILABLE, nothing else.
    assert load.errors and all(killed <= t < back + REAL_AGAIN_S for t, _ in load.errors)
    assert {code for _, code in load.errors} == {grpc.StatusCode.UNAVAILABLE}
    with twins.management() as mgmt:
        assert mgmt.ListApplications(pb.ListApplicationsRequest(), metadata=MGMT,
                                     timeout=5) == apps
        assert mgmt.ListModels(pb.ListModelsRequest(), metadata=MGMT, timeout=5) == models


def test_the_onnx_example_is_served_from_its_model_directory(singles: Launcher,
                                                             x_test: np.ndarray) -> None:
    """With onnxruntime installed, `make run` also serves the ONNX digits model (its
    model directory) as the application digits-onnx, answering what onnxruntime does."""
    if not digits.onnx_available():
        pytest.skip("onnxruntime or skl2onnx is not installed")
    import onnxruntime

    onnx_dir = digits.onnx_model_dir(singles.state_dir / "models")
    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"))
    rows = x_test[:50]
    expected = session.run(["label"], {"input": rows})[0].tolist()
    with grpc.insecure_channel(singles.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        replies = [stub.Predict(pb.PredictRequest(application=digits.ONNX_MODEL,
                                                  input=tensors.encode(row)), timeout=10)
                   for row in rows]
    assert [r.models for r in replies] == [[f"{digits.ONNX_MODEL}:1"]] * len(rows)
    assert [int(tensors.decode(r.output)) for r in replies] == expected


def test_the_banner_prints_a_top_command_that_sees_every_service(singles: Launcher,
                                                                x_test: np.ndarray) -> None:
    """`make run` gives every service a metrics port and lists them; the `top` command
    its banner prints reads them, as a person at the terminal would run it."""
    urls = (singles.state_dir / "metrics-urls").read_text().split()
    served = digits.model_flags(singles.state_dir / "models")
    assert len(urls) == 2 + len(served)  # selection, frontend, a container per model
    command = next(line for line in singles.lines if "services.cli" in line
                   and " top" in line).split()
    app = "top-check"
    with grpc.insecure_channel(singles.address) as channel:
        mgmt = pb_grpc.ManagementStub(channel)
        digits_app = mgmt.GetApplication(pb.ApplicationName(name="digits"), metadata=MGMT,
                                         timeout=10)
        digits_app.name = app
        mgmt.CreateApplication(pb.ApplicationRequest(application=digits_app), metadata=MGMT,
                               timeout=10)
        stub = pb_grpc.FrontendStub(channel)
        for row in x_test[:7]:
            stub.Predict(pb.PredictRequest(application=app, input=tensors.encode(row)),
                         timeout=10)
    frame = subprocess.run([*command, "--once", "--interval-s", "0.5"],
                           env={**os.environ, **ENV}, capture_output=True, text=True,
                           check=True, timeout=60).stdout
    row = next(line.split() for line in frame.splitlines() if line.startswith(app))
    assert "7" in row, frame  # the frontend's metrics were read: its 7 queries
    assert "unreadable" not in frame and "no frontend metrics" not in frame, frame


async def test_with_one_replica_defaults_are_flagged_until_real_answers_return(
        singles: Launcher, x_test: np.ndarray) -> None:
    with singles.management() as mgmt:
        mgmt.CreateApplication(pb.ApplicationRequest(application=pb.Application(
            name="solo", input_spec=pb.TensorSpec(dtype="float32", shape=[64]),
            slo_ms=int(SLO_MS), policy="static", linked_models=["digits-logreg"],
            default_output=tensors.encode(np.int64(-1)))), metadata=MGMT, timeout=5)
    async with Load(singles.address, "solo", x_test).running() as load:
        killed, _ = await kill_under_load(singles, load, "services.model_container",
                                          "digits-logreg", r"digits-logreg-0 is back")
        await load.answered(50, timeout_s=REAL_AGAIN_S)
    assert load.errors == []
    defaults = [(t, r) for t, r in load.answers if r.default_used]
    assert defaults, "no query came while the only replica was down"
    assert all(tensors.decode(r.output).item() == -1 and r.default_reason
               for _, r in defaults)
    last_default = max(t for t, _ in defaults)
    assert killed <= last_default < killed + REAL_AGAIN_S
    assert not [r for t, r in load.answers if t > last_default and r.default_used]


async def test_past_the_limit_a_container_stays_down_the_rest_serve_and_sigterm_drains(
        singles: Launcher, x_test: np.ndarray) -> None:
    for _ in range(3):  # at most the limit (2) + 1 kills, whatever came before
        after = len(singles.lines)
        await asyncio.to_thread(singles.kill9, "services.model_container", "digits-knn")
        match = await asyncio.to_thread(
            singles.wait_for_line, r"digits-knn-0 .*(is back|left down)", 90.0, after)
        if "left down" in match.group(0):
            break
    else:
        raise AssertionError("digits-knn-0 was never left down")
    assert not singles.pids("services.model_container", "digits-knn")
    with singles.management() as mgmt:
        mgmt.CreateApplication(pb.ApplicationRequest(application=pb.Application(
            name="pair", input_spec=pb.TensorSpec(dtype="float32", shape=[64]),
            slo_ms=int(SLO_MS), policy="all", linked_models=["digits-logreg", "digits-svm"],
            default_output=tensors.encode(np.int64(-1)))), metadata=MGMT, timeout=5)
    pair, ensemble = (Load(singles.address, app, x_test, max_queries=200)
                      for app in ("pair", "digits"))
    async with pair.running(), ensemble.running():
        await pair.answered(30)
        await ensemble.answered(10)
    assert pair.errors == [] and ensemble.errors == []
    # The other models serve as before; the ensemble that includes the model left down
    # answers with the others, or with its flagged default: no query fails.
    assert not [r for _, r in pair.answers if r.default_used or r.missing_models]
    assert all(list(r.missing_models) == ["digits-knn"]
               for _, r in ensemble.answers if not r.default_used)

    children = singles.pids("-m")
    started = time.monotonic()
    assert await asyncio.to_thread(singles.stop, 120.0) == 0
    assert time.monotonic() - started < 90  # three stages, each within its grace
    stops = [line.split("] ", 1)[1] for line in singles.lines if "] stopping " in line]
    served = [f"{name}-0" for name in digits.model_flags(singles.state_dir / "models")
              if name != "digits-knn"]
    assert stops == ["stopping frontend", f"stopping {', '.join(served)}",
                     "stopping selection"]
    assert singles.wait_for_line(r"^mesh stopped$", 10)
    assert not [pid for pid in children if alive(pid)]
