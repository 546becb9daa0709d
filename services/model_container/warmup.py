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

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common import clock, named_tensors
from services.common.errors import InvalidInput
from services.common.tensors import OBJECT_DTYPES, TensorSpec
from services.model_container import metrics
from services.model_container.answer_check import AnswerCheck
from services.model_container.batcher import Batcher
from services.model_container.sdk import ModelSpecs

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


def warmup_inputs(config: WarmupConfig, specs: ModelSpecs) -> list[Any] | None:
    """The inputs warm-up batches are made of (for named inputs, dicts); None when there
    is nothing to make them from (no inputs given and no input spec)."""
    if specs.inputs:
        if config.inputs:
            return _given_named(config.inputs, specs.inputs)
        columns = {spec.name: _made(spec) for spec in specs.inputs}
        return [{name: column[i % len(column)] for name, column in columns.items()}
                for i in range(max(map(len, columns.values())))]
    if config.inputs:
        return _given_inputs(config.inputs, specs.input_spec)
    if specs.input_spec is None:
        return None
    return _made(specs.input_spec)


def _made(spec: TensorSpec) -> list[np.ndarray]:
    """Inputs made from a spec: uniform in [0, 1) (bools: random; strings: empty)."""
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    if spec.dtype in OBJECT_DTYPES:
        blank: Any = "" if spec.dtype == "string" else b""
        return [np.full(shape, blank, dtype=object)]
    rng = np.random.default_rng(0)
    if spec.dtype == "bool":
        return [rng.uniform(0, 1, shape) < 0.5 for _ in range(8)]
    return [rng.uniform(0, 1, shape).astype(spec.dtype) for _ in range(8)]


def _given_named(source: str, specs: tuple[TensorSpec, ...]) -> list[dict[str, np.ndarray]]:
    """Named warm-up inputs: a .npz file, or a JSON object, of name -> [N, *shape]."""
    try:
        if source.lstrip().startswith("{"):
            given = {name: np.asarray(values) for name, values in json.loads(source).items()}
        else:
            with np.load(Path(source), allow_pickle=False) as npz:
                given = {name: npz[name] for name in npz.files}
        named_tensors.check_names(specs, given)
        columns = {spec.name: np.asarray(given[spec.name], dtype=None
                                         if spec.dtype in OBJECT_DTYPES else spec.dtype)
                   for spec in specs}
        for spec in specs:
            spec.check(columns[spec.name][0])
    except (OSError, ValueError, TypeError, IndexError, InvalidInput) as exc:
        raise WarmupFailed(f"warm-up inputs {source[:80]}: {exc} (named inputs: a .npz file "
                           "or a JSON object of name -> [N, *shape])") from exc
    count = min(len(column) for column in columns.values())
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]


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


async def warm_up(batcher: Batcher, config: WarmupConfig, specs: ModelSpecs,
                  answers: AnswerCheck | None = None) -> WarmupReport | None:
    """Run the warm-up batches and teach the batcher's latency model; None if skipped.
    The answers are checked by `answers` (the declared outputs)."""
    if config.rounds == 0:
        return None
    inputs = warmup_inputs(config, specs)
    check = functools.partial(_check_answer, answers or AnswerCheck())
    if inputs is None:
        logger.info("no warm-up: no input spec (--input-dtype) and no --warmup-inputs")
        return None
    sizes = batch_sizes(config, batcher.config.max_batch_size)
    started = clock.now()
    first_s = await _run(batcher, inputs[:1], check, observe=False)  # lazy set-up
    batches = 1
    for round_ in range(config.rounds):
        for size in sizes:
            batch = [inputs[(round_ + i) % len(inputs)] for i in range(size)]
            await _run(batcher, batch, check, observe=True)
            batches += 1
    batcher.latency.fit()
    report = WarmupReport(batches, clock.now() - started, first_s)
    metrics.warmup_duration.set(report.duration_s * 1000, batcher.attributes)
    line = batcher.latency.line()
    logger.info("warm-up: %d batches of sizes %s in %.1f ms (the first %.2f ms)%s",
                report.batches, ",".join(map(str, sizes)), report.duration_s * 1000,
                report.first_batch_s * 1000,
                "" if line is None else f"; a batch takes {line[0] * 1000:.3f} ms + "
                f"{line[1] * 1000:.4f} ms per query")
    return report


async def _run(batcher: Batcher, batch: list[Any], check: Callable[[Any], None],
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
    check(outputs[0])
    if observe:
        batcher.latency.observe(len(batch), elapsed)
    return elapsed


def _check_answer(check: AnswerCheck, answer: Any) -> None:
    """Raise WarmupFailed unless `answer` matches the declared output(s)."""
    try:
        check.check(answer)
    except InvalidInput as exc:
        raise WarmupFailed(f"the model's answer does not match the manifest's outputs "
                           f"({check.declared}): {exc}") from exc
