"""`make bench` section `selection`: the model-selection experiments of issue 5.

Five digits classifiers of different kinds (see `selection_models`), each in its
own container, behind one frontend and selection service; applications are
created through the Management API and driven over gRPC with Predict and then
Feedback by query id (a few concurrent workers per application). Every figure has
a baseline from the same run, mostly the same models' answers to the very same
inputs computed in this process (`AnswerTable`):

1. Exp4's ensemble against the best single model in hindsight and an equal-weight
   vote; the confidence-accuracy curve.
2. Exp3's cumulative regret against the best model in hindsight (and against a
   uniform random choice), and the rounds until the best model serves most queries.
3. The best model degrades mid-stream: rounds until each policy moves away from it
   and until its accuracy recovers (`selection_robustness`).
4. Stragglers: one of four models 10x over the SLO; deadline combination against
   waiting for every model.
5. Personalization: per-user selection against application-wide selection.
6. Convergence and adaptation of every learning policy with its defaults, on three
   scikit-learn data sets, in-process (`selection_adapt`): steady state against the
   best single model, recovery after a version switch to a bad build and after a
   silent degradation.

Every loop is bounded in rounds and in time; the section takes about two to three minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import selection_adapt as adapt
from benchmarks import selection_plots as plots
from benchmarks import selection_robustness as robustness
from benchmarks.selection_driver import (
    AnswerTable,
    Record,
    Stream,
    done,
    drive,
    first_round,
    got,
    make_stream,
    new_records,
    trailing_mean,
)
from benchmarks.selection_lab import MAIN, Lab
from benchmarks.selection_models import MODELS, STRONG

E1_ROUNDS = 500
E2_ROUNDS = 1200
E2_RUNS = 3
E2_TAIL = 400
SHARE_WINDOW = 50
CONFIDENCE_EDGES = (0.0, 0.4, 0.6, 0.8, 0.95, 1.0)


def pct(value: float) -> str:
    return f"{value:.1%}"


def points(diff: float) -> str:
    return f"{diff * 100:+.1f} pts"


def _hits(recs: list[Record | None], stream: Stream, rounds: list[int]) -> np.ndarray:
    return np.array([got(recs, i).output == stream.labels[i] for i in rounds], np.float64)


async def ensemble(lab: Lab, out: Path) -> list[str]:
    """Experiment 1: Exp4 against the best single model; confidence against accuracy."""
    stream = make_stream(lab.x_pool, lab.y_pool, E1_ROUNDS, seed=1)
    lab.create_app("e1-exp4", MAIN, "exp4")
    lab.create_app("e1-exp4-eta0.02", MAIN, "exp4", params={"eta": "0.02"})
    lab.create_app("e1-all", MAIN, "all")
    exp4, slow, vote = new_records(stream), new_records(stream), new_records(stream)
    everything = range(len(stream))
    await asyncio.gather(  # the same inputs at once: each model computes each answer once
        drive(lab.client, "e1-exp4", stream, everything, exp4, time_limit_s=40),
        drive(lab.client, "e1-exp4-eta0.02", stream, everything, slow, time_limit_s=40),
        drive(lab.client, "e1-all", stream, everything, vote, feedback=False, time_limit_s=40),
    )
    sent = [i for i in done(exp4) if vote[i] is not None and slow[i] is not None]
    later = sent[len(sent) // 2:]
    table = AnswerTable({m: lab.paths[m] for m in MAIN}, stream)
    best = table.best(sent)
    best_all, best_later = table.accuracy(best, sent), table.accuracy(best, later)
    rows = [("Exp4 ensemble of the 5 (default eta 0.2)", exp4),
            ("Exp4 ensemble of the 5, eta 0.02 (learns slower)", slow),
            ("equal-weight vote of the 5 (`all`)", vote)]
    lines = [
        f"### 1. Exp4 ensemble against the best single model ({len(sent)} rounds)", "",
        "| answer | accuracy, all rounds | vs best single | accuracy, second half | "
        "vs best single |", "|---|---|---|---|---|",
    ]
    for label, recs in rows:
        acc, acc_later = _hits(recs, stream, sent).mean(), _hits(recs, stream, later).mean()
        lines.append(f"| {label} | {pct(acc)} | {points(acc - best_all)} | {pct(acc_later)} | "
                     f"{points(acc_later - best_later)} |")
    lines.append(f"| best single model in hindsight, `{best}` (baseline) | {pct(best_all)} | "
                 f"= | {pct(best_later)} | = |")
    for name in table.names:
        if name != best:
            lines.append(f"| `{name}` alone | {pct(table.accuracy(name, sent))} | "
                         f"{points(table.accuracy(name, sent) - best_all)} | "
                         f"{pct(table.accuracy(name, later))} | "
                         f"{points(table.accuracy(name, later) - best_later)} |")
    curves = {"eta 0.2": _confidence_buckets(exp4, stream, sent),
              "eta 0.02": _confidence_buckets(slow, stream, sent)}
    plots.confidence_curve(out / "selection-confidence.png", curves, best_all)
    lines += ["", "Confidence (`PredictResponse.confidence`, the share of Exp4's weight that "
              "agrees with the answer) against accuracy, with the best single model's "
              f"accuracy over all rounds ({pct(best_all)}) as the baseline:", "",
              "| confidence | eta 0.2: queries | accuracy | vs best single | "
              "eta 0.02: queries | accuracy | vs best single |", "|---|---|---|---|---|---|---|"]
    for fast_bucket, slow_bucket in zip(curves["eta 0.2"], curves["eta 0.02"], strict=True):
        cells = [f"{count} | {pct(acc)} | {points(acc - best_all)}" if count
                 else f"{count} | n/a | n/a" for _, count, acc in (fast_bucket, slow_bucket)]
        lines.append(f"| {fast_bucket[0]} | {cells[0]} | {cells[1]} |")
    lines += ["", "Exp4's multiplicative weights move towards the best model as evidence "
              "accumulates (with eta 0.2, a 5-point accuracy gap becomes a weight ratio of "
              "e^(0.2 x 0.05 x rounds)); a smaller eta keeps the ensemble longer.", "",
              *robustness.fallback_lines(lab, ["e1-exp4", "e1-exp4-eta0.02"]), "",
              "![](selection-confidence.png)", ""]
    return lines


def _confidence_buckets(recs: list[Record | None], stream: Stream, rounds: list[int]
                        ) -> list[tuple[str, int, float]]:
    buckets = []
    for low, high in itertools.pairwise(CONFIDENCE_EDGES):
        last = high >= CONFIDENCE_EDGES[-1]
        inside = [i for i in rounds if low <= got(recs, i).confidence
                  and (got(recs, i).confidence <= high if last
                       else got(recs, i).confidence < high)]
        acc = float(_hits(recs, stream, inside).mean()) if inside else 0.0
        buckets.append((f"{low:g}-{high:g}", len(inside), acc))
    return buckets


@dataclass(frozen=True)
class _Exp3Run:
    best: str
    accuracy: dict[str, float]
    hits: np.ndarray  # Exp3's answer right, by round sent
    realized: np.ndarray  # cumulative regret against the best model's answer to each input
    expected: np.ndarray  # cumulative regret by the chosen models' accuracies
    uniform: np.ndarray  # the same for a uniform random choice
    share: np.ndarray  # the best model's share of the last SHARE_WINDOW queries
    reached: int | None  # first round that share passed 50%
    tail_share: float
    agree: int  # rounds whose answer is the chosen model's in-process answer


def _exp3_run(recs: list[Record | None], stream: Stream, table: AnswerTable) -> _Exp3Run:
    sent = done(recs)
    best = table.best(sent)
    hits = _hits(recs, stream, sent)
    accuracy = {m: float(table.correct(m)[sent].mean()) for m in table.names}
    chosen = [got(recs, i).models[0] if got(recs, i).models else "" for i in sent]
    is_best = np.array([c == best for c in chosen], np.float64)
    share = trailing_mean(is_best, SHARE_WINDOW)
    gap = accuracy[best] - float(np.mean(list(accuracy.values())))
    return _Exp3Run(
        best=best, accuracy=accuracy, hits=hits,
        realized=np.cumsum(table.correct(best)[sent] - hits),
        expected=np.cumsum([accuracy[best] - accuracy.get(c, 0.0) for c in chosen]),
        uniform=gap * np.arange(1, len(sent) + 1),
        share=share, reached=first_round(share, lambda v: v > 0.5, start=SHARE_WINDOW - 1),
        tail_share=float(is_best[-E2_TAIL:].mean()),
        agree=sum(1 for i, c in zip(sent, chosen, strict=True)
                  if c and got(recs, i).output == table.answers[c][i]),
    )


async def exp3_regret(lab: Lab, out: Path) -> list[str]:
    """Experiment 2: Exp3's regret against the best model in hindsight; rounds to find it."""
    streams = [make_stream(lab.x_pool, lab.y_pool, E2_ROUNDS, seed=2 + 10 * k)
               for k in range(E2_RUNS)]
    apps = [f"e2-exp3-{k + 1}" for k in range(E2_RUNS)]
    records = [new_records(stream) for stream in streams]
    for app in apps:
        lab.create_app(app, MAIN, "exp3")
    await asyncio.gather(*(drive(lab.client, app, stream, range(len(stream)), recs,
                                 time_limit_s=60)
                           for app, stream, recs in zip(apps, streams, records, strict=True)))
    runs = [_exp3_run(recs, stream, AnswerTable({m: lab.paths[m] for m in MAIN}, stream))
            for recs, stream in zip(records, streams, strict=True)]
    n = min(len(r.hits) for r in runs)
    mean = {key: np.mean([getattr(r, key)[:n] for r in runs], axis=0)
            for key in ("realized", "expected", "uniform")}
    lines = [
        f"### 2. Exp3 finds the best model ({E2_RUNS} independent runs of {n} feedback rounds, "
        "one at a time, eta 0.2, gamma 0.1)", "",
        "Each run is its own application and stream. Regret is counted against the best model "
        "in hindsight: *realized* by its answer to each input, *expected* by the accuracy over "
        "the stream of the model chosen in each round (what the choices cost, without "
        "per-sample luck); the baseline is a uniform random choice among the 5.", "",
        "| run | best model in hindsight | its accuracy | Exp3 accuracy | uniform choice | "
        "rounds until the best model serves > 50% | its share, last "
        f"{E2_TAIL} rounds |", "|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(runs, start=1):
        lines.append(
            f"| {k} | `{r.best}` | {pct(r.accuracy[r.best])} | {pct(float(r.hits.mean()))} | "
            f"{pct(float(np.mean(list(r.accuracy.values()))))} | "
            f"{r.reached if r.reached is not None else 'not within the run'} | "
            f"{pct(r.tail_share)} |")
    lines += ["", "| rounds t | realized regret (mean) | expected regret: "
              + " / ".join(f"run {k}" for k in range(1, E2_RUNS + 1))
              + " | mean expected / t | uniform, expected (baseline) | Exp3 / uniform |",
              "|---|---|---|---|---|---|"]
    for t in [t for t in (50, 100, 200, 400, 800, 1200, 1500) if t <= n]:
        lines.append(
            f"| {t} | {mean['realized'][t - 1]:.1f} | "
            + " / ".join(f"{r.expected[t - 1]:.1f}" for r in runs)
            + f" | {mean['expected'][t - 1] / t:.4f} | {mean['uniform'][t - 1]:.1f} | "
            f"{mean['expected'][t - 1] / mean['uniform'][t - 1]:.2f}x |")
    head = min(200, n)
    tail = min(E2_TAIL, max(n - head, 1))
    early = mean["expected"][head - 1] / head
    late = (mean["expected"][n - 1] - mean["expected"][n - 1 - tail]) / tail
    gap = mean["uniform"][0]
    plots.regret(out / "selection-regret.png", [r.expected[:n] for r in runs],
                 mean["realized"], mean["uniform"], [r.share[:n] for r in runs], SHARE_WINDOW)
    lines += [
        "",
        f"- Expected regret added per round (mean of the runs): {early:.4f} over the first "
        f"{head} rounds, {late:.4f} over the last {tail} ({late / early:.2f}x); a uniform "
        f"choice adds {gap:.4f} every round. With gamma = 0.1 Exp3 keeps exploring, so its "
        f"regret per round cannot fall below about gamma x {gap:.4f} = {0.1 * gap:.4f}.",
        f"- Cross-check: the answer equals the chosen model's in-process answer in "
        f"{sum(r.agree for r in runs)} of {sum(len(r.hits) for r in runs)} rounds.",
        f"- {robustness.fallback_lines(lab, apps)[0]}", "",
        "![](selection-regret.png)", "",
    ]
    return lines


async def run(out: Path, work: Path) -> str:
    """Start the mesh, run the five experiments, return the report section."""
    started = time.monotonic()
    lab = Lab(work / "selection")
    lines = ["## Model selection: ensembles, bandits, degradation, stragglers, "
             "personalization", ""]
    try:
        lab.start()
        accuracy = lab.pool_accuracy()
        ready_s = time.monotonic() - started
        lines += [
            f"Digits (scikit-learn, bundled): {len(lab.y_pool)} held-out samples feed the "
            "query streams (a little noise makes every round's input distinct, so no round "
            "is answered from an earlier round's cache entry). Five models, each in its own "
            f"container (mesh ready in {ready_s:.0f} s), each seeing some of the 64 pixels, "
            "and a sixth, strong one for experiment 3:", "",
            "| model | kind | pixels seen | accuracy on the held-out samples |",
            "|---|---|---|---|",
            *[f"| `{s.name}` | {s.kind} | {s.pixels} | {pct(accuracy[s.name])} |"
              for s in (*MODELS, STRONG)],
            "", "Applications use SLO 1 s (no deadline pressure) unless stated. Each round "
            "is a Predict and then a Feedback by query id; an application's rounds run one "
            "at a time, several applications at once.", "",
        ]
        async with lab.open_client():
            for experiment in (ensemble, exp3_regret, robustness.degradation,
                               robustness.stragglers, robustness.personalization):
                began = time.monotonic()
                print(f"selection: {experiment.__name__} ...", file=sys.stderr, flush=True)
                lines += await experiment(lab, out)
                lines.append(f"_{experiment.__name__}: {time.monotonic() - began:.0f} s._")
                lines.append("")
    finally:
        lab.close()
    print("selection: convergence and adaptation (simulation) ...", file=sys.stderr, flush=True)
    lines += [*adapt.section(out), ""]
    lines.append(f"_Selection experiments took {time.monotonic() - started:.0f} s in all._")
    return "\n".join(lines)
