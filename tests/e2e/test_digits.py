"""Predictions through the whole mesh equal the models' own predictions, unary and streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits
from testkit.mesh import Mesh

MODELS = list(digits.MODEL_NAMES)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory,
         digits_models: dict[str, Path]) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("digits-mesh"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_digits_models(digits_models, MODELS)
        mesh.create_app("one", ["digits-logreg"], shape=(64,), slo_ms=2000)
        mesh.create_app("vote", MODELS, shape=(64,), slo_ms=2000, policy="all")
        yield mesh
    finally:
        mesh.close()



@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    _, x_test, _, y_test = digits.split()
    return x_test, y_test


async def predict_all(stub: pb_grpc.FrontendStub, app: str, x: np.ndarray) -> list[int]:
    limit = asyncio.Semaphore(32)

    async def one(row: np.ndarray) -> int:
        async with limit:
            reply = await stub.Predict(
                pb.PredictRequest(application=app, input=tensors.encode(row)), timeout=10
            )
        assert not reply.default_used, reply.default_reason
        return int(tensors.decode(reply.output).item())

    return await asyncio.gather(*(one(row) for row in x))


async def test_unary_predictions_equal_the_model(
    stub: pb_grpc.FrontendStub, digits_models: dict[str, Path],
    test_split: tuple[np.ndarray, np.ndarray],
) -> None:
    x_test, _ = test_split
    expected = joblib.load(digits_models["digits-logreg"]).predict(x_test).tolist()
    assert await predict_all(stub, "one", x_test) == expected


async def test_streamed_predictions_equal_the_model(
    stub: pb_grpc.FrontendStub, digits_models: dict[str, Path],
    test_split: tuple[np.ndarray, np.ndarray],
) -> None:
    x_test, _ = test_split
    expected = joblib.load(digits_models["digits-logreg"]).predict(x_test).tolist()

    async def requests() -> AsyncIterator[pb.PredictRequest]:
        for i, row in enumerate(x_test):
            yield pb.PredictRequest(application="one", input=tensors.encode(row), query_id=str(i))

    got: dict[int, int] = {}
    async for reply in stub.PredictStream(requests(), timeout=60):
        assert reply.WhichOneof("result") == "response", reply.error.message
        assert reply.response.query_id == str(reply.index)
        got[reply.index] = int(tensors.decode(reply.response.output).item())
    assert [got[i] for i in range(len(x_test))] == expected


async def test_all_models_answer_and_the_majority_wins(
    stub: pb_grpc.FrontendStub, digits_models: dict[str, Path],
    test_split: tuple[np.ndarray, np.ndarray],
) -> None:
    x_test, y_test = test_split
    x, y = x_test[:120], y_test[:120]
    each = np.stack([joblib.load(digits_models[m]).predict(x) for m in MODELS])
    expected = []
    for column in each.T:  # majority, ties to the first model
        values, counts = np.unique(column, return_counts=True)
        best = counts.max()
        expected.append(next(v for v in column if counts[values == v][0] == best))
    reply = await stub.Predict(pb.PredictRequest(application="vote",
                                                     input=tensors.encode(x[0])), timeout=10)
    assert sorted(reply.models) == sorted(f"{m}:1" for m in MODELS)
    assert 0 < reply.confidence <= 1
    assert await predict_all(stub, "vote", x) == [int(v) for v in expected]
    assert np.mean(np.array(expected) == y) > 0.9
