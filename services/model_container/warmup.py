"""Warm-up: the model runs before the container announces itself.

The first batches of a model pay for what its framework does lazily (allocations,
kernel selection, caches), and the batcher's latency model knows nothing until
batches of two sizes have run. So, before the container announces itself (and
before its health says SERVING), it runs `rounds` batches at each warm-up size
(1, 2, 4... up to `--max-batch-size` by default) with the given inputs, or inputs
made from the input spec, and feeds their latencies to the latency model: the
first queries find a warm model and a batcher that sizes batches from the start.

The answers are checked (one per input, of the manifest's output spec if it has
one): a model that fails here fails at start, with the reason, rather than on
its first queries. The time it took is logged and exported
(`clipper.warmup.duration`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common import clock
from services.common.errors import InvalidInput
from services.common.tensors import OBJECT_DTYPES, TensorSpec
from services.model_container import metrics
from services.model_container.batcher import Batcher

logger = logging.getLogger(__name__)


class WarmupFailed(Exception):
    """The model could not be warmed up: the message says why and how to change it."""


@dataclass(frozen=True)
class WarmupConfig:
    rounds: int = 3
    batch_sizes: tuple[int, ...] = ()  # () : 1, 2, 4... up to the largest batch
    inputs: str = ""  # a .npy file of [N, *shape], or a JSON list of inputs

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"--warmup-rounds={self.rounds}: must be >= 0")
        if any(size < 1 for size in self.batch_sizes):
            raise ValueError(f"--warmup-batch-sizes={list(self.batch_sizes)}: sizes are >= 1")


@dataclass(frozen=True)
class WarmupReport:
    batches: int
    duration_s: float
    first_batch_s: float


def batch_sizes(config: WarmupConfig, max_batch_size: int) -> list[int]:
    """The warm-up sizes: those given (at most the largest batch), else powers of two."""
    if config.batch_sizes:
        return sorted({min(size, max_batch_size) for size in config.batch_sizes})
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


def warmup_inputs(config: WarmupConfig, spec: TensorSpec | None) -> list[np.ndarray] | None:
    """The inputs warm-up batches are made of; None when there is nothing to make them
    from (no inputs given and no input spec)."""
    if config.inputs:
        return _given_inputs(config.inputs, spec)
    if spec is None:
        return None
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    if spec.dtype in OBJECT_DTYPES:
        blank: Any = "" if spec.dtype == "string" else b""
        return [np.full(shape, blank, dtype=object)]
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 1, shape).astype(spec.dtype) for _ in range(8)]


def _given_inputs(source: str, spec: TensorSpec | None) -> list[np.ndarray]:
    dtype = None if spec is None or spec.dtype in OBJECT_DTYPES else spec.dtype
    try:
        if source.lstrip().startswith("["):
            array = np.asarray(json.loads(source), dtype=dtype)
        else:
            array = np.load(Path(source), allow_pickle=False)
    except (OSError, ValueError, TypeError) as exc:
        raise WarmupFailed(f"warm-up inputs {source[:80]}: {exc}") from exc
    if array.ndim == 0 or len(array) == 0:
        raise WarmupFailed(f"warm-up inputs {source[:80]}: expected an array of shape "
                           "[N, *input shape] with N >= 1")
    inputs = list(array)
    if spec is not None:
        try:
            spec.check(inputs[0])
        except InvalidInput as exc:
            raise WarmupFailed(f"warm-up inputs {source[:80]}: {exc}") from exc
    return inputs


async def warm_up(batcher: Batcher, config: WarmupConfig, spec: TensorSpec | None,
                  output_spec: TensorSpec | None = None) -> WarmupReport | None:
    """Run the warm-up batches and teach the batcher's latency model; None if skipped."""
    if config.rounds == 0:
        return None
    inputs = warmup_inputs(config, spec)
    if inputs is None:
        logger.info("no warm-up: no input spec (--input-dtype) and no --warmup-inputs")
        return None
    sizes = batch_sizes(config, batcher.config.max_batch_size)
    started = clock.now()
    first_s = await _run(batcher, inputs[:1], output_spec, observe=False)  # lazy set-up
    batches = 1
    for round_ in range(config.rounds):
        for size in sizes:
            batch = [inputs[(round_ + i) % len(inputs)] for i in range(size)]
            await _run(batcher, batch, output_spec, observe=True)
            batches += 1
    batcher.latency.fit()
    report = WarmupReport(batches, clock.now() - started, first_s)
    metrics.warmup_duration.set(report.duration_s * 1000)
    line = batcher.latency.line()
    logger.info("warm-up: %d batches of sizes %s in %.1f ms (the first %.2f ms)%s",
                report.batches, ",".join(map(str, sizes)), report.duration_s * 1000,
                report.first_batch_s * 1000,
                "" if line is None else f"; a batch takes {line[0] * 1000:.3f} ms + "
                f"{line[1] * 1000:.4f} ms per query")
    return report


async def _run(batcher: Batcher, batch: list[np.ndarray], output_spec: TensorSpec | None,
               observe: bool) -> float:
    """Run one batch, check its answers, and return how long it took."""
    started = clock.now()
    try:
        outputs = await batcher.runner.run(batch, None, batcher.batch_timeout_s(len(batch)))
    except Exception as exc:
        raise WarmupFailed(
            f"the model raised on a warm-up batch of {len(batch)}: {type(exc).__name__}: "
            f"{exc} (give inputs it takes with --warmup-inputs, or --warmup-rounds 0)"
        ) from exc
    elapsed = clock.now() - started
    if len(outputs) != len(batch):
        raise WarmupFailed(f"the model returned {len(outputs)} outputs for a warm-up batch "
                           f"of {len(batch)}")
    if output_spec is not None:
        try:
            output_spec.check(np.asarray(outputs[0]))
        except InvalidInput as exc:
            raise WarmupFailed(f"the model's answer does not match the manifest's outputs "
                               f"({output_spec.describe()}): {exc}") from exc
    if observe:
        batcher.latency.observe(len(batch), elapsed)
    return elapsed
