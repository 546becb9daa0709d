"""Query streams for the selection experiments, driven through the frontend with feedback.

A stream is a sequence of rounds: one digits sample (with a little noise, so that
every round's input is distinct and no round is answered from the prediction
cache of an earlier one), its true digit, the label its user gives as feedback,
and the user. `drive` sends the rounds to one application with a few concurrent
workers, each sending Predict and then Feedback by query id, bounded in count and
time. `AnswerTable` is the baseline: every model's answer to every round, from the
same model files in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.selection_models import WrappedModel
from services.client import AsyncClient, ClientError

NOISE = 0.01  # pixel values are integers 0..16; this changes no model's answer in practice
# Rounds in flight per application. The selection service answers a frontend's requests
# one after another, feedback included, so more in flight delays decisions past the
# frontend's select timeout (it then reuses the application's last decision).
CONCURRENCY = 1


@dataclass(frozen=True)
class Stream:
    x: np.ndarray  # (n, 64) float32, every row distinct
    truth: np.ndarray  # (n,) the true digit
    labels: np.ndarray  # (n,) the label fed back: the truth in the user's convention
    users: np.ndarray  # (n,) the user of each round

    def __len__(self) -> int:
        return len(self.truth)


def make_stream(x_pool: np.ndarray, y_pool: np.ndarray, rounds: int, seed: int,
                users: int = 1, noise_seed: int = 0) -> Stream:
    """`rounds` samples drawn from the pool; user u labels digit d as (d + u) mod 10.

    Two streams with one `seed` and different `noise_seed`s hold the same samples
    and users in the same order, as different inputs (no cache hit between them).
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(y_pool), rounds)
    who = rng.integers(0, users, rounds)
    noise = np.random.default_rng([seed, noise_seed or 0])
    x = x_pool[picks] + noise.uniform(0.0, NOISE, (rounds, x_pool.shape[1])).astype(np.float32)
    truth = y_pool[picks].astype(np.int64)
    return Stream(x.astype(np.float32), truth, (truth + who) % 10, who.astype(np.int64))


@dataclass(frozen=True)
class Record:
    """What the frontend answered for one round."""

    output: int  # -1 for a default or a failed call
    models: tuple[str, ...]  # model names (without version) whose answers were combined
    missing: tuple[str, ...]
    confidence: float
    latency_s: float
    default_used: bool
    failed: bool = False
    feedback_failed: bool = False
    default_reason: str = ""


Records = list[Record | None]  # by round; None: not sent (count or time bound)


async def _round(client: AsyncClient, app: str, stream: Stream, i: int, records: Records,
                 feedback: bool, per_user: bool, timeout_s: float) -> None:
    """One round: Predict, then Feedback by query id when models answered."""
    key = f"user-{stream.users[i]}" if per_user else ""
    started = time.perf_counter()
    try:
        p = await client.predict(app, stream.x[i], context_key=key, timeout_s=timeout_s)
    except ClientError:
        records[i] = Record(-1, (), (), 0.0, time.perf_counter() - started, True, True)
        return
    records[i] = Record(
        output=-1 if p.default_used else int(p.output),
        models=tuple(m.rpartition(":")[0] or m for m in p.models),
        missing=tuple(p.missing_models), confidence=p.confidence,
        latency_s=time.perf_counter() - started, default_used=p.default_used,
        default_reason=p.default_reason,
    )
    if feedback and p.models:
        try:
            await client.feedback(app, np.int64(stream.labels[i]), query_id=p.query_id,
                                  context_key=key, timeout_s=timeout_s)
        except ClientError:
            records[i] = dataclasses.replace(got(records, i), feedback_failed=True)


async def drive(client: AsyncClient, app: str, stream: Stream, rounds: range,
                records: Records, concurrency: int | None = None, feedback: bool = True,
                per_user: bool = False, time_limit_s: float = 60.0,
                timeout_s: float = 10.0) -> None:
    """Send `rounds` of the stream to `app` into `records`, `concurrency` rounds at a time.

    With `per_user`, each round's context key is its user ("user-<u>").
    """
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + time_limit_s
    todo = iter(rounds)

    async def worker() -> None:
        for i in todo:
            if loop.time() >= stop_at:
                return
            await _round(client, app, stream, i, records, feedback, per_user, timeout_s)

    await asyncio.gather(*(worker() for _ in range(concurrency or CONCURRENCY)))


async def drive_open(client: AsyncClient, app: str, stream: Stream, rounds: range,
                     records: Records, rate_qps: float, seed: int = 0,
                     time_limit_s: float = 60.0, timeout_s: float = 10.0) -> None:
    """Send `rounds` at Poisson arrivals of `rate_qps` (open loop: a slow answer does not
    delay the next query), each round Predict then Feedback; waits for the last (bounded)."""
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    start = loop.time()
    tasks: set[asyncio.Task[None]] = set()
    due = start
    for i in rounds:
        due += rng.exponential(1.0 / rate_qps)
        if due - start >= time_limit_s:
            break
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.add(asyncio.create_task(
            _round(client, app, stream, i, records, True, False, timeout_s)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + 2)
        for task in pending:
            task.cancel()


async def drive_all(client: AsyncClient, apps: dict[str, Records], stream: Stream,
                    rounds: range, concurrency: int | None = None,
                    time_limit_s: float = 60.0) -> None:
    """Drive several applications over the same rounds at once (they share the cache)."""
    await asyncio.gather(*(drive(client, app, stream, rounds, recs, concurrency=concurrency,
                                 time_limit_s=time_limit_s) for app, recs in apps.items()))


def new_records(stream: Stream) -> Records:
    return [None] * len(stream)


class AnswerTable:
    """Each model's answer to each round, computed here from the containers' model files."""

    def __init__(self, paths: dict[str, Path], stream: Stream, shifts: dict[str, int] | None = None,
                 degraded_from: dict[str, int] | None = None) -> None:
        self.names = list(paths)
        self.answers: dict[str, np.ndarray] = {}
        for name, path in paths.items():
            model = WrappedModel(path, shift=(shifts or {}).get(name, 0), delay_s=0.0,
                                 degrade_flag="")
            answers = model.predict_labels(stream.x)
            start = (degraded_from or {}).get(name)
            if start is not None:
                answers[start:] = model.predict_labels(stream.x[start:], degraded=True)
            self.answers[name] = answers
        self.labels = stream.labels

    def correct(self, name: str) -> np.ndarray:
        return np.asarray(self.answers[name] == self.labels, dtype=np.float64)

    def accuracy(self, name: str, rounds: Sequence[int] | range) -> float:
        return float(self.correct(name)[list(rounds)].mean())

    def best(self, rounds: Sequence[int] | range) -> str:
        """The best model in hindsight over these rounds."""
        return max(self.names, key=lambda n: self.accuracy(n, rounds))


def got(records: Records, i: int) -> Record:
    """The record of a round that was sent."""
    record = records[i]
    if record is None:
        raise ValueError(f"round {i} was not sent")
    return record


def done(records: Records, rounds: Sequence[int] | range | None = None) -> list[int]:
    """The rounds (of `rounds`, default all) that were sent."""
    pool = range(len(records)) if rounds is None else rounds
    return [i for i in pool if records[i] is not None]


def accuracy(records: Records, labels: np.ndarray, rounds: Sequence[int] | range | None = None
             ) -> float:
    """Share of the sent rounds answered with the label (defaults and failures count wrong)."""
    sent = done(records, rounds)
    hits = [got(records, i).output == labels[i] for i in sent]
    return float(np.mean(hits)) if hits else float("nan")


def indicator(records: Records, test: Callable[[int, Record], bool]) -> np.ndarray:
    """1.0 where the sent round passes `test`, 0.0 where it does not, NaN where not sent."""
    out = np.full(len(records), np.nan)
    for i, rec in enumerate(records):
        if rec is not None:
            out[i] = float(test(i, rec))
    return out


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` sent values at each round (NaN-aware)."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        chunk = chunk[~np.isnan(chunk)]
        if len(chunk):
            out[i] = chunk.mean()
    return out


def first_window(values: np.ndarray, window: int, test: Callable[[float], bool]) -> int | None:
    """The first k whose forward window values[k : k + window] has a mean passing `test`."""
    for k in range(0, len(values) - window + 1):
        chunk = values[k: k + window]
        chunk = chunk[~np.isnan(chunk)]
        if len(chunk) and test(float(chunk.mean())):
            return k
    return None


def first_round(series: np.ndarray, test: Callable[[float], bool], start: int = 0) -> int | None:
    """The first round at or after `start` whose value passes `test`."""
    for i in range(start, len(series)):
        if not np.isnan(series[i]) and test(float(series[i])):
            return i
    return None
