"""The client library and the example clients (Python, Go, Node.js) against a real mesh.

Every client sends the same digits queries and a feedback for each; all must get
the answers the Python client library gets. Go and Node.js are built by
`make -C examples deps` (run again here, a no-op when built). A client whose
tools are missing is skipped, or fails when CLIPPER_REQUIRE_TOOLS=1 (CI).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.mesh import digits
from testkit.mesh import Mesh
from tests.helpers.tools import tool_missing

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
MODELS = list(digits.MODEL_NAMES)
APP = "digits"
SAMPLES = 4


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory,
         digits_models: dict[str, Path]) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("examples-mesh"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_digits_models(digits_models, MODELS)
        # As `make run` registers it, with an SLO that a loaded test machine meets.
        mesh.create_app(APP, MODELS, shape=(64,), slo_ms=5000, policy="all")
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="module")
def queries() -> tuple[np.ndarray, np.ndarray]:
    """A few test digits (float32[64]) and their true labels."""
    _, x_test, _, y_test = digits.split()
    return x_test[:SAMPLES], y_test[:SAMPLES]


@pytest.fixture(scope="module")
def expected(mesh: Mesh, queries: tuple[np.ndarray, np.ndarray]) -> list[int]:
    """The Python client library's answers: what every other client must get."""
    x, _ = queries
    with Client(mesh.address) as client:
        answers = [client.predict(APP, row) for row in x]
    for p in answers:
        assert not p.default_used, p.default_reason
        assert p.output.dtype == np.int64 and p.output.shape == ()
    return [int(p.output) for p in answers]


def test_sync_client_predicts_and_takes_feedback(
    mesh: Mesh, queries: tuple[np.ndarray, np.ndarray], expected: list[int]
) -> None:
    x, y = queries
    with Client(mesh.address, timeout_s=10) as client:
        for row, label, want in zip(x, y, expected, strict=True):
            p = client.predict(APP, row, context_key="user-1")
            assert int(p.output) == want
            assert sorted(p.models) == sorted(f"{m}:1" for m in MODELS)
            assert p.missing_models == () and 0 < p.confidence <= 1
            scored = client.feedback(APP, np.int64(label), query_id=p.query_id,
                                     context_key="user-1")
            assert sorted(scored) == sorted(MODELS)
        # Feedback for an input rather than a query id asks the models again.
        assert sorted(client.feedback(APP, int(y[0]), x=x[0])) == sorted(MODELS)


async def test_async_client_gets_the_same_answers(
    mesh: Mesh, queries: tuple[np.ndarray, np.ndarray], expected: list[int]
) -> None:
    x, y = queries
    async with AsyncClient(mesh.address) as client:
        answers = await asyncio.gather(*(client.predict(APP, row) for row in x))
        assert [int(p.output) for p in answers] == expected
        scored = await asyncio.gather(*(
            client.feedback(APP, np.int64(label), query_id=p.query_id)
            for p, label in zip(answers, y, strict=True)
        ))
        assert all(sorted(s) == sorted(MODELS) for s in scored)


async def test_client_errors_carry_the_grpc_status(mesh: Mesh,
                                                   queries: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = queries
    async with AsyncClient(mesh.address) as client:
        with pytest.raises(NotFoundError, match="no-such-app") as not_found:
            await client.predict("no-such-app", x[0])
        assert not_found.value.code.name == "NOT_FOUND"
        with pytest.raises(InvalidArgumentError, match="float32") as wrong_dtype:
            await client.predict(APP, x[0].astype(np.float64))
        assert wrong_dtype.value.code.name == "INVALID_ARGUMENT"
        with pytest.raises(NotFoundError):
            await client.feedback(APP, 3, query_id="never-asked")
    with Client(mesh.address) as sync_client, pytest.raises(InvalidArgumentError, match="shape"):
        sync_client.predict(APP, x[0][:10])


def test_unreachable_frontend_is_unavailable() -> None:
    # A port bound but not listening refuses connections, and no one else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{closed.getsockname()[1]}"
        with Client(target, timeout_s=5) as client, pytest.raises(UnavailableError) as exc:
            client.predict(APP, np.zeros(64, np.float32))
    assert exc.value.code.name == "UNAVAILABLE"


# ---------------------------------------------------------------- example clients as processes

def _tools_or_skip(language: str, tools: tuple[str, ...]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    tool_missing(f"the {language} example client needs {', '.join(missing)} on PATH")


def _build(target: str) -> None:
    """`make -C examples TARGET`: builds what is missing or stale, else returns at once."""
    done = subprocess.run(["make", "-s", "-C", str(EXAMPLES), target], capture_output=True,
                          text=True, timeout=110)
    assert done.returncode == 0, f"make -C examples {target} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="module", params=["python", "go", "node"])
def example_client(request: pytest.FixtureRequest) -> list[str]:
    """The command line that runs one example client."""
    language: str = request.param
    if language == "python":
        return [sys.executable, str(EXAMPLES / "python" / "digits_client.py")]
    if language == "go":
        _tools_or_skip("Go", ("go",))
        _build("go")
        return [str(EXAMPLES / ".bin" / "digits-client-go")]
    _tools_or_skip("Node.js", ("node", "npm"))
    _build("node")
    return [shutil.which("node") or "node", str(EXAMPLES / "node" / "digits_client.js")]


def _run(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30,
                          cwd=REPO_ROOT)


def test_example_client_gets_the_python_answers(
    mesh: Mesh, example_client: list[str], queries: tuple[np.ndarray, np.ndarray],
    expected: list[int],
) -> None:
    x, y = queries
    for row, label, want in zip(x, y, expected, strict=True):
        values = ",".join(f"{v:g}" for v in row)
        done = _run(example_client, "--target", mesh.address, "--app", APP,
                    "--values", values, "--label", str(label), "--context", "user-2")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1, done.stdout
        answer: dict[str, Any] = json.loads(lines[0])
        assert answer["output"] == want, answer
        assert answer["default_used"] is False
        assert answer["query_id"]
        assert sorted(answer["models"]) == sorted(f"{m}:1" for m in MODELS)
        assert sorted(answer["feedback_models"]) == sorted(MODELS)


def test_example_client_reports_the_status_of_a_failed_call(
    mesh: Mesh, example_client: list[str], queries: tuple[np.ndarray, np.ndarray],
) -> None:
    values = ",".join(f"{v:g}" for v in queries[0][0])
    done = _run(example_client, "--target", mesh.address, "--app", "no-such-app",
                "--values", values)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "NOT_FOUND" in done.stderr and "no-such-app" in done.stderr, done.stderr
