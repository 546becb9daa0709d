"""Model runtimes at the container: overhead against the runtime called in process, and
the first query's latency with and without warm-up.

For each runtime a small digits model is made here (scikit-learn logistic regression as
joblib, the same exported to ONNX, an XGBoost and a LightGBM booster). In one run:
- in process: p50 of `predict_batch` on a batch of 1 and of 32, as the adapter runs it;
- at the container, straight to its stream as a frontend sends: p50 of one query (a
  container with batches of 1) and of 32 queries sent together (a container that runs
  them as one batch of 32: fixed batching, 32 at a time);
- the first query's latency once the container says it is ready, with the default
  warm-up and with `--warmup-rounds 0`.

`python -m benchmarks.runtimes` prints the table; `make bench ARGS="--only runtimes"`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import dial_credential, start_container, workdir
from benchmarks.loadgen import ContainerStream
from services.model_container.sdk import load_model
from tests.helpers import model_files

ROUNDS = 300
SLO_S = 1.0


def make_models(work: Path) -> dict[str, Path]:
    """One model file per runtime whose package is installed."""
    import importlib.util

    import joblib

    work.mkdir(parents=True, exist_ok=True)
    models = {"sklearn": work / "logreg.joblib"}
    joblib.dump(model_files.logreg(), models["sklearn"])
    makers: dict[str, tuple[str, str, Callable[[Path], Any]]] = {
        "onnx": ("onnxruntime", "logreg.onnx", model_files.onnx_classifier),
        "xgboost": ("xgboost", "digits.ubj", model_files.xgboost_classifier),
        "lightgbm": ("lightgbm", "digits.txt", model_files.lightgbm_classifier),
    }
    for runtime, (module, file, make) in makers.items():
        if importlib.util.find_spec(module) is not None:
            make(work / file)
            models[runtime] = work / file
    return models


def _p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def in_process(path: Path, x: np.ndarray) -> tuple[float, float]:
    """p50 ms of a batch of 1 and of 32, the adapter called directly."""
    model = load_model(str(path), native_threads=1)
    rows = [x[i] for i in range(32)]
    out = []
    for batch in (rows[:1], rows):
        model.predict_batch(batch)  # set-up
        samples = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            model.predict_batch(batch)
            samples.append(time.perf_counter() - started)
        out.append(_p50_ms(samples))
    return out[0], out[1]


async def _stream_p50(address: str, name: str, x: np.ndarray, size: int) -> float:
    """p50 ms until `size` queries sent together are all answered."""
    async with ContainerStream(address, dial_credential(name), x[0], SLO_S) as stream:
        samples = []
        for _ in range(ROUNDS // 3):
            started = time.perf_counter()
            results = await asyncio.gather(*(stream.send() for _ in range(size)))
            samples.append(time.perf_counter() - started)
            assert all(ok for ok, _ in results), "a query failed"
    return _p50_ms(samples)


async def _first_query_ms(address: str, name: str, x: np.ndarray) -> float:
    async with ContainerStream(address, dial_credential(name), x[0], SLO_S) as stream:
        started = time.perf_counter()
        ok, _ = await stream.send()
        assert ok, "the first query failed"
        return (time.perf_counter() - started) * 1000


async def at_container(work: Path, runtime: str, path: Path,
                       x: np.ndarray) -> dict[str, float]:
    """Container p50s (batch of 1, of 32) and first-query latency with and without warm-up."""
    spec = ["--native-threads", "1"]
    out: dict[str, float] = {}
    for label, flags in (("cold", ["--warmup-rounds", "0", "--max-batch-size", "1"]),
                         ("one", ["--max-batch-size", "1"]),
                         ("32", ["--batching", "fixed", "--max-batch-size", "32",
                                 "--max-delay-ms", "1000"])):
        name = f"{runtime}-{label}"
        proc = start_container(work, str(path), [*spec, "--input-dtype", "float32",
                                                 "--input-shape", "64", *flags], name=name)
        try:
            if label == "cold":
                out["first cold"] = await _first_query_ms(proc.address, name, x)
            elif label == "one":
                out["first warm"] = await _first_query_ms(proc.address, name, x)
                out["p50 1"] = await _stream_p50(proc.address, name, x, 1)
            else:
                out["p50 32"] = await _stream_p50(proc.address, name, x, 32)
        finally:
            proc.stop()
    return out


async def measure(work: Path) -> str:
    x, _ = model_files.digits()
    rows = ["| runtime | in process, batch of 1 | container, 1 query | in process, batch of "
            "32 | container, 32 queries | first query, no warm-up | first query, warmed up |",
            "|---|---|---|---|---|---|---|"]
    for runtime, path in make_models(work).items():
        one, many = in_process(path, x)
        c = await at_container(work, runtime, path, x)
        rows.append(f"| {runtime} | {one:.3f} ms | {c['p50 1']:.3f} ms (+{c['p50 1'] - one:.3f})"
                    f" | {many:.3f} ms | {c['p50 32']:.3f} ms (+{c['p50 32'] - many:.3f}) | "
                    f"{c['first cold']:.2f} ms | {c['first warm']:.2f} ms |")
    return "\n".join(["## Model runtimes at the container (p50; digits, --native-threads 1)",
                      "", *rows, ""])


def main() -> None:
    with workdir() as work:
        print(asyncio.run(measure(work)))


if __name__ == "__main__":
    main()
