"""Shared benchmark plumbing: start services, search for capacity, plot."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from benchmarks.loadgen import RunResult, Send, open_loop
from services.common.processes import ServiceProcess, start_service
from tests.helpers.mesh import ENV

TOKENS = ENV  # the same tokens the test mesh uses

# Batchers compared everywhere: (label, container flags).
BATCHERS: dict[str, list[str]] = {
    "batch size 1": ["--batching", "fixed", "--max-batch-size", "1", "--max-delay-ms", "0"],
    "fixed (max 32, 5 ms wait)": ["--batching", "fixed", "--max-batch-size", "32",
                                  "--max-delay-ms", "5"],
    "adaptive": ["--batching", "adaptive", "--max-batch-size", "64"],
}


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        yield Path(tmp)


def start_container(work: Path, model: str, flags: list[str], frontend: str = "127.0.0.1:9",
                    name: str = "bench") -> ServiceProcess:
    """A model container; with no frontend it still serves its stream (announces fail)."""
    return start_service(
        "services.model_container",
        ["--model", model, "--name", name, "--frontend", frontend, "--heartbeat-s", "1",
         *flags],
        env=TOKENS, log_path=work / f"{name}.log",
    )


async def find_capacity(
    make_send: Callable[[], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]],
    slo_s: float, start_qps: float, probe_s: float = 1.5, max_qps: float = 20_000,
    ok: Callable[[RunResult], bool] | None = None,
) -> tuple[float, list[RunResult]]:
    """The highest offered rate whose p99 stays within the SLO (failures count as late).

    Steps up by 1.5x until a probe fails, then bisects three times. A failing rate
    is probed a second time before it counts, so that one stall of a shared machine
    does not end the search early (the same rule for every batcher compared).
    """
    passes = ok or (lambda r: r.percentile_ms(99) <= slo_s * 1000)
    probes: list[RunResult] = []

    async def probe(rate: float) -> bool:
        for _ in range(2):
            send, close = await make_send()
            try:
                await open_loop(send, min(rate, 200), 0.1, slo_s)  # connect, warm the stream
                result = await open_loop(send, rate, probe_s, slo_s, seed=len(probes))
            finally:
                await close()
            probes.append(result)
            if passes(result):
                return True
        return False

    good, bad = 0.0, None
    rate = start_qps
    while rate <= max_qps:
        if await probe(rate):
            good, rate = rate, rate * 1.5
        else:
            bad = rate
            break
    if bad is not None:
        for _ in range(3):
            mid = (good + bad) / 2
            if await probe(mid):
                good = mid
            else:
                bad = mid
    return good, probes
