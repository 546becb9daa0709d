"""Selection experiments 3 to 5: a model that degrades, a straggler, users who differ.

3. The best model (`svm-all-pixels`, linked with the five others) starts answering
   wrong mid-stream (its container sees a flag file): every policy runs over the
   same rounds at once; reported are the feedback rounds until it stops following
   the degraded model and until its accuracy is back at the level of a uniform
   choice among the healthy models.
4. Four models in an ensemble (an equal-weight vote, and Exp4), one of them
   (`knn-slow`) sleeping 10x the SLO per batch: with the frontend's deadline
   combination, against the same four models with an SLO long enough to wait for
   all of them, on the same samples.
5. Three users label digits by different conventions (user u writes (d + u) mod 10),
   and three models each answer in one user's convention: per-context selection
   (context key = user) against application-wide selection (no context key).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from benchmarks import selection_plots as plots
from benchmarks.selection_driver import (
    AnswerTable,
    Record,
    Stream,
    done,
    drive,
    drive_all,
    drive_open,
    first_window,
    got,
    indicator,
    make_stream,
    new_records,
    trailing_mean,
)
from benchmarks.selection_lab import (
    DEGRADING,
    MAIN,
    SLOW,
    SLOW_DELAY_S,
    STRAGGLER_SLO_MS,
    USER_MODELS,
    Lab,
)

E3_BEFORE, E3_AFTER = 500, 300
E3_POLICIES = ("exp3", "exp4", "epsilon_greedy", "ucb1", "thompson")
SHIFT_WINDOW, SHIFT_SHARE = 25, 0.2
RECOVER_WINDOW = 50
E4_ROUNDS = 200
E4_RATE_QPS = 25.0
E4_WARMUP = 75
E4_MODELS = ("svm", "forest", "logreg", SLOW)
E4_WAIT_SLO_MS = 5000
E5_ROUNDS, E5_USERS = 600, 3


def pct(value: float) -> str:
    return f"{value:.1%}"


def points(diff: float) -> str:
    return f"{diff * 100:+.1f} pts"


def _rounds(value: int | None) -> str:
    return "not within the run" if value is None else str(value)


def _correct(recs: list[Record | None], stream: Stream) -> np.ndarray:
    return indicator(recs, lambda i, r: r.output == stream.labels[i])


def _mean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


async def degradation(lab: Lab, out: Path) -> list[str]:
    """Experiment 3: the best model starts answering wrong after E3_BEFORE rounds."""
    n = E3_BEFORE + E3_AFTER
    stream = make_stream(lab.x_pool, lab.y_pool, n, seed=3)
    linked = (DEGRADING, *MAIN)
    apps = {f"e3-{policy}": new_records(stream) for policy in E3_POLICIES}
    for policy in E3_POLICIES:
        lab.create_app(f"e3-{policy}", linked, policy)
    await drive_all(lab.client, apps, stream, range(E3_BEFORE), time_limit_s=45)
    lab.flag.touch()  # checked by the container once per batch
    try:
        await drive_all(lab.client, apps, stream, range(E3_BEFORE, n), time_limit_s=45)
    finally:
        lab.flag.unlink(missing_ok=True)
    table = AnswerTable({m: lab.paths[m] for m in linked}, stream,
                        degraded_from={DEGRADING: E3_BEFORE})
    before, after = range(E3_BEFORE), range(E3_BEFORE, n)
    healthy = {m: table.accuracy(m, after) for m in MAIN}
    uniform = float(np.mean(list(healthy.values())))
    target = uniform - float(np.sqrt(uniform * (1 - uniform) / RECOVER_WINDOW))
    best_healthy = max(healthy, key=lambda m: healthy[m])
    lines = [
        f"### 3. The best model (`{DEGRADING}`) degrades after {E3_BEFORE} rounds "
        f"({E3_AFTER} more rounds)", "",
        f"Six models linked: `{DEGRADING}` ({pct(table.accuracy(DEGRADING, before))} before "
        f"the switch) and the five above. From round {E3_BEFORE} on, `{DEGRADING}` answers "
        "a wrong digit for every query. Baselines on the rounds after the switch: the best "
        f"healthy model alone (`{best_healthy}`) {pct(healthy[best_healthy])}; a uniform "
        f"choice among the {len(healthy)} healthy ones {pct(uniform)}. *Moved away*: the "
        f"degraded model serves at most {SHIFT_SHARE:.0%} of {SHIFT_WINDOW} consecutive "
        "rounds (for Exp4: the ensemble's answer is the degraded model's); *recovered*: "
        f"accuracy over {RECOVER_WINDOW} consecutive rounds at least {pct(target)} (the "
        "uniform healthy choice less one standard error of the window). Both count "
        "feedback rounds after the switch.", "",
        "| policy | degraded model's share, last 100 rounds before | accuracy, last 100 "
        "rounds before | first 50 rounds after | last 100 rounds | rounds until moved away | "
        "rounds until recovered |", "|---|---|---|---|---|---|---|",
    ]
    trailing: dict[str, np.ndarray] = {}
    for policy in E3_POLICIES:
        recs = apps[f"e3-{policy}"]
        correct = _correct(recs, stream)
        if policy == "exp4":
            follows = indicator(recs, lambda i, r: r.output == table.answers[DEGRADING][i])
        else:
            follows = indicator(recs, lambda _i, r: DEGRADING in r.models)
        moved = first_window(follows[E3_BEFORE:], SHIFT_WINDOW, lambda v: v <= SHIFT_SHARE)
        recovered = first_window(correct[E3_BEFORE:], RECOVER_WINDOW, lambda v: v >= target)
        trailing[policy] = trailing_mean(correct, SHIFT_WINDOW)
        lines.append(
            f"| {policy} | {pct(_mean(follows[E3_BEFORE - 100:E3_BEFORE]))} | "
            f"{pct(_mean(correct[E3_BEFORE - 100:E3_BEFORE]))} | "
            f"{pct(_mean(correct[E3_BEFORE:E3_BEFORE + 50]))} | {pct(_mean(correct[n - 100:]))}"
            f" | {_rounds(moved)} | {_rounds(recovered)} |")
    plots.degradation(out / "selection-degradation.png", trailing, E3_BEFORE, SHIFT_WINDOW)
    lines += ["", "Exp3 and Exp4 floor every log-weight at -ln(1000) below the leader's, so a "
              "leader that starts losing every round is overtaken within ln(1000)/eta = 35 "
              "full losses (eta 0.2); epsilon-greedy, UCB1 and Thompson sampling discount "
              "past rounds by 0.99 per round.", "",
              *fallback_lines(lab, [f"e3-{policy}" for policy in E3_POLICIES]), "",
              "![](selection-degradation.png)", ""]
    return lines


def _latency_ms(recs: list[Record | None], rounds: list[int]) -> np.ndarray:
    return np.array([got(recs, i).latency_s * 1000 for i in rounds])


async def stragglers(lab: Lab, out: Path) -> list[str]:
    """Experiment 4: one of four ensemble models 10x over the SLO."""
    lab.create_app("e4-deadline", E4_MODELS, "all", slo_ms=STRAGGLER_SLO_MS)
    lab.create_app("e4-wait-all", E4_MODELS, "all", slo_ms=E4_WAIT_SLO_MS)
    lab.create_app("e4-deadline-exp4", E4_MODELS, "exp4", slo_ms=STRAGGLER_SLO_MS)
    lab.create_app("e4-no-straggler", E4_MODELS[:-1], "all", slo_ms=STRAGGLER_SLO_MS)
    # In this order: the straggler's container has not yet learnt its latency in the
    # first run (batches of one that always miss keep it unknown); the baseline's batches
    # of several sizes teach it, after an unmeasured warm-up.
    deadline = f"deadline combination (SLO {STRAGGLER_SLO_MS} ms)"
    runs = (("cold", "e4-deadline", f"{deadline}, straggler's latency not yet learnt"),
            ("wait", "e4-wait-all", f"wait for every model (SLO {E4_WAIT_SLO_MS} ms, baseline)"),
            ("warm", "e4-deadline", f"{deadline}, straggler's latency learnt"),
            ("exp4", "e4-deadline-exp4", f"{deadline}, latency learnt, Exp4 with feedback"),
            ("fast", "e4-no-straggler", f"reference: the three other models alone, SLO "
             f"{STRAGGLER_SLO_MS} ms (no straggler)"))
    results: dict[str, tuple[Stream, list[Record | None]]] = {}
    for noise, (key, app, _) in enumerate(runs, start=1):
        if key == "wait":  # unmeasured: the straggler's batches grow past size 1 first
            warm = make_stream(lab.x_pool, lab.y_pool, E4_WARMUP, seed=40)
            await drive_open(lab.client, app, warm, range(len(warm)), new_records(warm),
                             E4_RATE_QPS, time_limit_s=E4_WARMUP / E4_RATE_QPS + 5)
        # The same samples in every run, as different inputs: no answer from the cache.
        stream = make_stream(lab.x_pool, lab.y_pool, E4_ROUNDS, seed=4, noise_seed=noise)
        recs = new_records(stream)
        await drive_open(lab.client, app, stream, range(len(stream)), recs, E4_RATE_QPS,
                         seed=noise, time_limit_s=E4_ROUNDS / E4_RATE_QPS + 5)
        results[key] = (stream, recs)
    sent = sorted(set.intersection(*(set(done(recs)) for _, recs in results.values())))
    stats = {}
    for key, (stream, recs) in results.items():
        lat = _latency_ms(recs, sent)
        stats[key] = {
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "within": float(np.mean([lat_ms <= STRAGGLER_SLO_MS and not got(recs, i).default_used
                                     for lat_ms, i in zip(lat, sent, strict=True)])),
            "acc": _mean(_correct(recs, stream)[sent]),
            "slow": float(np.mean([SLOW in got(recs, i).models for i in sent])),
            "defaults": float(sum(1 for i in sent if got(recs, i).default_used)),
        }
    plots.latency_cdf(out / "selection-stragglers.png",
                      {label: list(_latency_ms(results[key][1], sent)) for key, _, label in runs},
                      STRAGGLER_SLO_MS)
    base = stats["wait"]
    lines = [
        f"### 4. Stragglers: `{SLOW}` sleeps {SLOW_DELAY_S * 1000:.0f} ms per batch, 10x the "
        f"{STRAGGLER_SLO_MS} ms SLO", "",
        f"An ensemble of {', '.join(f'`{m}`' for m in E4_MODELS)}: an equal-weight vote "
        "(`all`, decided in the frontend) and, in the last row, Exp4 with feedback (decided "
        f"by the selection service). Each run sends the same {len(sent)} samples (as "
        f"distinct inputs) at {E4_RATE_QPS:g} queries/s, Poisson "
        "arrivals (open loop), latency measured at the client. The baseline follows "
        f"{E4_WARMUP} unmeasured queries, so that the straggler already runs full batches. "
        "The reference row is the same load without the straggler: the tail this mesh has "
        "on this machine anyway.", "",
        f"| run | p50 ms | p99 ms | within {STRAGGLER_SLO_MS} ms | accuracy | "
        f"`{SLOW}` answered | defaults | p99 vs baseline | accuracy vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, _, label in runs:
        s = stats[key]
        lines.append(
            f"| {label} | {s['p50']:.1f} | {s['p99']:.1f} | {pct(s['within'])} | "
            f"{pct(s['acc'])} | {pct(s['slow'])} | {s['defaults']:.0f} | "
            f"{s['p99'] / base['p99']:.3f}x | {points(s['acc'] - base['acc'])} |")
    reasons: dict[str, int] = {}
    for _, recs in results.values():
        for i in sent:
            if got(recs, i).default_used:
                reason = got(recs, i).default_reason.split(" (")[0]
                reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        lines += ["", "Defaults by reason: " + "; ".join(f"{reason}: {count}"
                                                        for reason, count in reasons.items())
                  + "."]
    lines += ["", *fallback_lines(lab, ("e4-deadline-exp4",)), "",
              "![](selection-stragglers.png)", ""]
    return lines


def fallback_lines(lab: Lab, apps: tuple[str, ...] | list[str]) -> list[str]:
    counts = lab.selection_fallbacks()
    listed = ", ".join(f"`{app}` {counts.get(app, 0)}" for app in apps)
    return [f"Queries answered with a fallback decision (the selection service was later "
            f"than the frontend's select timeout): {listed}."]


async def personalization(lab: Lab, out: Path) -> list[str]:
    """Experiment 5: per-user selection against application-wide selection."""
    del out  # a table, no plot
    stream = make_stream(lab.x_pool, lab.y_pool, E5_ROUNDS, seed=5, users=E5_USERS)
    linked = tuple(USER_MODELS)
    policies = ("exp3", "exp4")
    apps: dict[str, tuple[list[Record | None], bool]] = {}
    for policy in policies:
        for per_user in (True, False):
            app = f"e5-{policy}-{'user' if per_user else 'app'}"
            lab.create_app(app, linked, policy)
            apps[app] = (new_records(stream), per_user)
    await asyncio.gather(*(drive(lab.client, app, stream, range(len(stream)), recs,
                                 per_user=per_user, time_limit_s=45)
                           for app, (recs, per_user) in apps.items()))
    table = AnswerTable({m: lab.paths["svm"] for m in linked}, stream, shifts=USER_MODELS)
    sent = sorted(set.intersection(*(set(done(recs)) for recs, _ in apps.values())))
    later = sent[len(sent) // 2:]
    best = table.best(sent)
    own = np.zeros(len(stream))
    for user in range(E5_USERS):
        mine = [i for i in sent if stream.users[i] == user]
        own[mine] = table.correct(table.best(mine))[mine]
    lines = [
        f"### 5. Personalization: {E5_USERS} users, each right with a different model "
        f"({len(sent)} rounds)", "",
        f"User u labels digit d as (d + u) mod 10; `{'`, `'.join(linked)}` are the SVM "
        "answering with shifts 0, 1, 2. Baselines: the best single model for everyone (in "
        "hindsight) and each user's own best model (in hindsight, the ceiling).", "",
        "| policy | per-context (context key = user) | application-wide (no key) | "
        "per-context / application-wide | second half: per-context | second half: "
        "application-wide |", "|---|---|---|---|---|---|",
    ]
    for policy in policies:
        user_recs, app_recs = apps[f"e5-{policy}-user"][0], apps[f"e5-{policy}-app"][0]
        u_all, a_all = _mean(_correct(user_recs, stream)[sent]), _mean(_correct(app_recs,
                                                                                stream)[sent])
        u_half = _mean(_correct(user_recs, stream)[later])
        a_half = _mean(_correct(app_recs, stream)[later])
        lines.append(f"| {policy} | {pct(u_all)} | {pct(a_all)} | {u_all / a_all:.2f}x | "
                     f"{pct(u_half)} | {pct(a_half)} |")
    lines += [
        f"| best single model for everyone, `{best}` (baseline) | | "
        f"{pct(table.accuracy(best, sent))} | | | {pct(table.accuracy(best, later))} |",
        f"| each user's own best model (ceiling) | {pct(float(own[sent].mean()))} | | | "
        f"{pct(float(own[later].mean()))} | |", "",
        *fallback_lines(lab, list(apps)), "",
    ]
    return lines
