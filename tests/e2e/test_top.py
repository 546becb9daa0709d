"""`python -m services.cli top --once` against a real mesh: its figures are the queries sent."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.cli.top import quantile
from services.common import tensors
from services.common.processes import REPO_ROOT, free_port
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, Mesh

PORTS = {name: free_port() for name in ("frontend", "sum", "slow")}
Rows = dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("top"))
    try:
        mesh.flags["services.selection"] = ("--max-backlog-ms", "60000")
        mesh.start_selection()
        # Nothing shed on a busy machine (--max-backlog-ms): the test counts queries.
        mesh.start_frontend("--metrics-port", str(PORTS["frontend"]), "--max-backlog-ms", "60000",
                            "--cache", "none")
        mesh.start_container("tests.helpers.models:SumModel", "sum", "1",
                             "--metrics-port", str(PORTS["sum"]))
        mesh.start_container("tests.helpers.models:SlowModel", "slow", "1")
        mesh.create_app("adds", ["sum"], slo_ms=10_000)
        mesh.create_app("late", ["slow"], slo_ms=100, default=tensors.encode(np.int64(-1)))
        mesh.wait_connected("sum", 1)
        mesh.wait_connected("slow", 1)
        yield mesh
    finally:
        mesh.close()


def query(app: str, value: float) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.full(4, value, np.float32)))


def top_once(mesh: Mesh, *metrics: str) -> tuple[Rows, Rows, str]:
    """(application rows, model rows, the frame) of one `top --once` frame."""
    urls = [arg for port in metrics for arg in ("--metrics", f"http://127.0.0.1:{port}/metrics")]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "--frontend", mesh.address, "top", "--once",
         *urls], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env={**ENV},
        check=False)
    assert done.returncode == 0, done.stderr
    tables: list[Rows] = []
    for block in done.stdout.split("\n\n")[1:3]:
        header, *rows = [line.split() for line in block.splitlines()]
        tables.append({row[0]: dict(zip(header, row, strict=True)) for row in rows})
    return tables[0], tables[1], done.stdout


def test_top_counts_the_queries_sent(mesh: Mesh) -> None:
    with grpc.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        for i in range(7):
            reply = stub.Predict(query("adds", i), timeout=15)
            assert tensors.decode(reply.output) == 4 * i
        assert stub.Predict(query("late", 1), timeout=15).default_used
    apps, models, frame = top_once(mesh, PORTS["frontend"], PORTS["sum"])
    assert apps["adds"] == {"APPLICATION": "adds", "SLO_MS": "10000", "QUERIES": "7",
                            "Q/S": "0.0", "P50_MS": "-", "P99_MS": "-", "DEFAULTS": "0",
                            "MISSED": "0"}, frame
    assert (apps["late"]["QUERIES"], apps["late"]["DEFAULTS"], apps["late"]["MISSED"]) == (
        "1", "1", "1")
    assert models["sum"]["REPLICAS"] == models["slow"]["REPLICAS"] == "1/1"
    assert models["sum"]["BATCH"] == "-", "no batch in the frame's interval"
    assert models["slow"]["BATCH"] == "-", "its container's metrics were not given"


def test_top_shows_the_rate_latency_and_batches_of_the_last_interval(mesh: Mesh) -> None:
    stop = threading.Event()
    sent = 0

    def load() -> None:  # bounded: 2000 queries or 60 s
        nonlocal sent
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(mesh.address) as channel:
            stub = pb_grpc.FrontendStub(channel)
            while not stop.is_set() and sent < 2000 and time.monotonic() < deadline:
                stub.Predict(query("adds", 100 + sent), timeout=15)
                sent += 1

    before, _, _ = top_once(mesh, PORTS["frontend"])
    loader = threading.Thread(target=load)
    loader.start()
    try:
        while sent < 5 and loader.is_alive():  # the load is under way before the frame
            time.sleep(0.01)
        apps, models, frame = top_once(mesh, PORTS["frontend"], PORTS["sum"])
    finally:
        stop.set()
        loader.join()
    adds = apps["adds"]
    assert int(before["adds"]["QUERIES"]) < int(adds["QUERIES"]) <= int(
        before["adds"]["QUERIES"]) + sent, frame
    assert float(adds["Q/S"]) > 0, frame
    assert 0 < float(adds["P50_MS"]) <= float(adds["P99_MS"]), frame
    assert float(models["sum"]["BATCH"]) >= 1, frame
    assert adds["MISSED"] == "0"


def test_top_without_metrics_says_where_to_find_them(mesh: Mesh) -> None:
    apps, models, frame = top_once(mesh)
    assert apps["adds"]["QUERIES"] == "-" and apps["adds"]["SLO_MS"] == "10000"
    assert models["sum"]["REPLICAS"] == "1/1"
    assert "--metrics" in frame


def test_top_names_a_metrics_url_it_cannot_read(mesh: Mesh) -> None:
    port = free_port()
    apps, _, frame = top_once(mesh, PORTS["frontend"], port)
    assert f"http://127.0.0.1:{port}/metrics: unreadable" in frame
    assert apps["adds"]["QUERIES"] != "-", "the other URLs still count"


def test_quantile_interpolates_as_prometheus_does() -> None:
    buckets = {1.0: 0.0, 2.0: 50.0, 4.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == 2.0
    assert quantile(0.75, buckets) == 3.0
    assert quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {1.0: 0.0, float("inf"): 10.0}) == 1.0  # past the last bound
