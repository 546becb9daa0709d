"""`--worker auto` in a real container process under load: a model that holds the GIL
is moved to a warm worker process without losing a query; one that cannot be loaded in
a second process stays on threads and says why."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.common import clock, tensors
from services.common.credentials import container_token, replica_credential
from services.common.errors import ClipperError, DeadlineExpired, Overloaded
from services.common.metrics import sample, scrape
from services.common.processes import ServiceProcess, free_port, start_service
from services.frontend.registry import ReplicaRecord
from services.frontend.replica_client import ReplicaClient
from testkit.mesh import MESH_SECRET, container_env

BUDGET_S = 0.040  # a 40 ms SLO: a stall of a few milliseconds costs deadlines
RATE_QPS = 100
MAX_QUERIES = 1500
METRICS_PORT = free_port()


@pytest.fixture
def container(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceProcess]:
    name = "gil"
    proc = start_service(
        "services.model_container",
        ["--model", request.param, "--name", name, "--replica-id", name, "--frontend", "",
         "--metrics-port", str(METRICS_PORT)],
        name=name, env=container_env(name), log_path=tmp_path / "container.log")
    try:
        yield proc
    finally:
        proc.stop()


async def load_until(proc: ServiceProcess, log: Path, pattern: str) -> list[object]:
    """Distinct queries at RATE_QPS straight to the container's stream (as a frontend
    sends them) until `pattern` shows in its log and 2 s more have passed (bounded);
    each query's answer, or its error."""
    client = ReplicaClient(ReplicaRecord("gil", "gil", "1", proc.address),
                           replica_credential(container_token(MESH_SECRET, "gil"), "gil"))
    await client.start()

    async def one(i: int) -> object:
        value = tensors.encode(np.array([i, 0, 0, 0], np.float32))
        try:
            return tensors.decode(await client.query(value, clock.now() + BUDGET_S)).item()
        except ClipperError as exc:
            return exc

    tasks: list[asyncio.Task[object]] = []
    seen_at: int | None = None
    try:
        async with asyncio.timeout(10):
            await client.wait_connected()
        for i in range(MAX_QUERIES):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(1 / RATE_QPS)
            if seen_at is None and i % 20 == 0 and re.search(
                    pattern, await asyncio.to_thread(log.read_text)):
                seen_at = i
            if seen_at is not None and i >= seen_at + 2 * RATE_QPS:
                break
        async with asyncio.timeout(10):
            return list(await asyncio.gather(*tasks))
    finally:
        await client.aclose()


def switches(outcome: str) -> float:
    """clipper_worker_switches_total{outcome=...} from the container's /metrics."""
    return sample(scrape(METRICS_PORT), "clipper_worker_switches_total", outcome=outcome)


def check_nothing_lost(answers: list[object]) -> None:
    """Every query answered by the model (its input's sum) or shed as late or overloaded;
    no query failed for any other reason, and most were answered."""
    failures = [a for a in answers if isinstance(a, Exception)]
    assert all(isinstance(f, DeadlineExpired | Overloaded) for f in failures), failures[:5]
    assert all(a == float(i) for i, a in enumerate(answers) if not isinstance(a, Exception))
    assert len(failures) < len(answers) / 5, f"{len(failures)} of {len(answers)} shed"


@pytest.mark.parametrize("container", ["tests.helpers.gil_models:HoldsTheGil"], indirect=True)
async def test_a_model_that_holds_the_gil_moves_to_a_process_losing_no_query(
    container: ServiceProcess, tmp_path: Path,
) -> None:
    log = tmp_path / "container.log"
    answers = await load_until(container, log, "now runs in 1 worker process")
    text = log.read_text()
    assert "stall the event loop" in text, text
    assert "now runs in 1 worker process" in text, text
    assert await asyncio.to_thread(switches, "ok") == 1
    check_nothing_lost(answers)


@pytest.mark.parametrize("container", ["tests.helpers.gil_models:OneProcessOnly"],
                         indirect=True)
async def test_a_model_that_cannot_load_twice_stays_on_threads_with_a_warning(
    container: ServiceProcess, tmp_path: Path,
) -> None:
    log = tmp_path / "container.log"
    answers = await load_until(container, log, "stays on worker threads")
    text = log.read_text()
    assert re.search(r"WARNING .*stays on worker threads.*bound to its first process", text), \
        text
    assert "now runs in" not in text
    assert await asyncio.to_thread(switches, "failed") == 1
    assert await asyncio.to_thread(switches, "ok") == 0
    check_nothing_lost(answers)
