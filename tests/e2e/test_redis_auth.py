"""The mesh on a Redis that needs a password (requirepass, an ACL user) or TLS (rediss://):
registry, prediction cache and policy state all work, and no log shows the password."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from services.common import tensors
from services.common.errors import Unavailable
from services.common.redis_store import RedisStore
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh
from tests.helpers.redis_server import RedisServer

PASSWORD = "pa55-for-redis-tests"


@pytest.mark.parametrize(("user", "tls"), [("", False), ("clipper", False), ("", True)],
                         ids=["requirepass", "acl-user", "tls"])
async def test_the_mesh_runs_on_a_redis_with_a_password(
    tmp_path: Path, user: str, tls: bool,
) -> None:
    redis = RedisServer(tmp_path / "redis", password=PASSWORD, user=user, tls=tls).start()
    mesh = Mesh(tmp_path)
    try:
        mesh.start_selection(state=redis.url_for(1))
        mesh.start_frontend("--cache", redis.url_for(2), state=redis.url_for(0))
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.create_app("sum", ["sum"], policy="exp3")
        mesh.wait_connected("sum", 1)
        async with grpc.aio.insecure_channel(mesh.address) as channel:
            front = pb_grpc.FrontendStub(channel)
            query = pb.PredictRequest(application="sum", context_key="user-1",
                                      input=tensors.encode(np.arange(4, dtype=np.float32)))
            replies = [await front.Predict(query, timeout=5) for _ in range(2)]
            assert [float(tensors.decode(r.output)) for r in replies] == [6.0, 6.0]
            feedback = pb.FeedbackRequest(application="sum", query_id=replies[0].query_id,
                                          label=tensors.encode(np.float64(6.0)))
            assert list((await front.Feedback(feedback, timeout=5)).models) == ["sum"]
        for db, prefix in ((0, "app/"), (1, "")):
            store = RedisStore(redis.url_for(db))
            try:
                assert await store.scan(prefix), f"nothing written to db {db}"
            finally:
                await store.aclose()
        cache = aioredis.Redis.from_url(redis.url_for(2))
        try:
            assert await cache.dbsize(), "the prediction cache wrote nothing"
        finally:
            await cache.aclose()
    finally:
        mesh.close()
        redis.stop()
    assert not logs_showing(tmp_path, PASSWORD)


def logs_showing(folder: Path, text: str) -> list[str]:
    """The service logs in `folder` that contain `text`."""
    return [log.name for log in folder.glob("*.log") if text in log.read_text()]


async def test_a_wrong_password_is_reported_without_it(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path, password=PASSWORD).start()
    try:
        store = RedisStore(redis.url.replace(PASSWORD, "not-the-password"))
        try:
            with pytest.raises(Unavailable) as err:
                await store.ping()
        finally:
            await store.aclose()
    finally:
        redis.stop()
    assert "not-the-password" not in str(err.value)
    assert ":***@127.0.0.1" in str(err.value)
