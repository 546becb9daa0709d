"""`make bench` section `selection`: do the learning policies converge and adapt?

In-process simulation with the selection service's own code (policies and
`services/selection/arms.py`, as the decider runs them; the network adds
nothing to what a policy learns), on three scikit-learn data sets: breast
cancer and wine (bundled) and a generated 3-class problem. Four classifiers of
different kinds per data set, one trained on labels of which 30% are shuffled.
Each round draws a held-out sample; the policy decides, the chosen models'
answers are combined by weighted vote (ties: the policy's order, as in the
frontend), and every answer's reward goes back as feedback.

Two scenarios, each `RUNS` independent runs of `BEFORE + AFTER` rounds:

- version switch: after `BEFORE` rounds the best model's active version becomes
  a bad build that answers another class (the next one; in a binary task the
  opposite), as `set-version` does;
- silent degradation: the same, but the version stays (nothing tells the policy).

A round's accuracy is that of its decision (the chosen models and weights) on
every held-out sample, so that the figures carry no sampling noise beyond the
policy's own. Figures: steady-state accuracy (the last `STEADY` rounds before
the change) against the best single model; rounds until the policy's accuracy
is back within `TOLERANCE` of the best remaining model (the first round after
the change from which every `WINDOW`-round mean, over the runs, stays there);
accuracy over the last `TAIL` rounds after the change.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import selection_plots as plots
from services.policies import Observation, Policy, SelectContext, State
from services.policies.epsilon_greedy import EpsilonGreedy
from services.policies.exp3 import Exp3
from services.policies.exp4 import Exp4
from services.policies.thompson import ThompsonSampling
from services.policies.ucb import UCB1
from services.selection import arms

RUNS = 24
BEFORE, AFTER = 500, 200
STEADY = 200
TAIL = 100  # "after": the last rounds, once every policy has settled
WINDOW = 10
TOLERANCE = 0.05
POLICIES: dict[str, Callable[[random.Random], Policy]] = {
    "exp4": lambda rng: Exp4(),
    "exp3": Exp3,
    "epsilon_greedy": EpsilonGreedy,
    "ucb1": lambda rng: UCB1(),
    "thompson": ThompsonSampling,
}
SCENARIOS = ("version switch", "silent degradation")
# Policy parameters (none: each policy's defaults, which is what the figures are for).
PARAMS: dict[str, dict[str, str]] = {}


@dataclass(frozen=True)
class DataSet:
    name: str
    truth: np.ndarray  # (n,) held-out labels
    answers: dict[str, np.ndarray]  # model -> (n,) its answers
    classes: int

    def accuracy(self, model: str, rows: np.ndarray) -> float:
        return float(np.mean(self.answers[model][rows] == self.truth[rows]))


def load_data_sets() -> list[DataSet]:
    """Train the four models per data set; their answers on the held-out rows."""
    from sklearn.datasets import load_breast_cancer, load_wine, make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    sources = {
        "breast cancer": load_breast_cancer(return_X_y=True),
        "wine": load_wine(return_X_y=True),
        "generated (3 classes)": make_classification(
            n_samples=3000, n_features=20, n_informative=10, n_classes=3, class_sep=1.5,
            n_clusters_per_class=2, flip_y=0.02, random_state=0),
    }
    out = []
    for name, (x, y) in sources.items():
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=0.4, random_state=0, stratify=y)
        rng = np.random.default_rng(0)
        noisy = y_train.copy()
        flip = rng.random(len(noisy)) < 0.3
        noisy[flip] = rng.permutation(noisy[flip])
        models = {
            "logistic": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                         y_train),
            "tree": (DecisionTreeClassifier(max_depth=3, random_state=0), y_train),
            "bayes": (GaussianNB(), y_train),
            "knn-noisy": (make_pipeline(StandardScaler(), KNeighborsClassifier(5)), noisy),
        }
        answers = {m: est.fit(x_train, labels).predict(x_test).astype(np.int64)
                    for m, (est, labels) in models.items()}
        out.append(DataSet(name, y_test.astype(np.int64), answers, int(y.max()) + 1))
    return out


@dataclass
class Runs:
    """The accuracy of each round's decision, per run: (RUNS, BEFORE + AFTER)."""
    hits: np.ndarray
    best_before: float  # the best single model
    best_after: float  # the best remaining model, after the change


def simulate(data: DataSet, policy_name: str, scenario: str) -> Runs:
    """Run the policy; score each round's decision on every held-out sample (its expected
    accuracy: no sampling noise in the figures) while it learns from one drawn sample."""
    models = tuple(data.answers)
    everyone = np.arange(len(data.truth))
    best = max(models, key=lambda m: data.accuracy(m, everyone))
    bad_answers = (data.answers[best] + 1) % data.classes
    rounds = BEFORE + AFTER
    hits = np.zeros((RUNS, rounds))
    rows_all = np.random.default_rng(1).integers(len(data.truth), size=(RUNS, rounds))
    for run in range(RUNS):
        rng = random.Random(run)
        policy = POLICIES[policy_name](rng)
        state: State = {}
        versions = {m: "1" for m in models}
        answers = dict(data.answers)
        for t, row in enumerate(rows_all[run]):
            if t == BEFORE:
                answers[best] = bad_answers
                if scenario == "version switch":
                    versions[best] = "2"
            ctx = SelectContext("bench", "", models, PARAMS.get(policy_name, {}),
                                dict(versions))
            decision = arms.decide(policy, ctx, state)
            hits[run, t] = np.mean(_vote(decision, answers, data.classes) == data.truth)
            truth = int(data.truth[row])
            obs = Observation({m: float(answers[m][row] == truth) for m, _ in decision},
                              dict(decision))
            state = arms.learn(policy, ctx, state, obs)
    remaining = [m for m in models if m != best]
    return Runs(hits, data.accuracy(best, everyone),
                max(data.accuracy(m, everyone) for m in remaining))


def _vote(decision: list[tuple[str, float]], answers: dict[str, np.ndarray],
          classes: int) -> np.ndarray:
    """The weighted vote on every sample (ties: the policy's first model, as the frontend)."""
    if len(decision) == 1:
        return answers[decision[0][0]]
    totals = np.zeros((classes, len(next(iter(answers.values())))))
    for m, w in decision:
        totals[answers[m], np.arange(totals.shape[1])] += max(w, 0.0)
    winner = totals.argmax(axis=0)
    first = answers[decision[0][0]]
    cols = np.arange(totals.shape[1])
    return np.where(totals[first, cols] >= totals[winner, cols], first, winner)


def recovery_rounds(runs: Runs) -> int | None:
    """Rounds after the change until every WINDOW-round mean stays within TOLERANCE of
    the best remaining model (None: not within AFTER rounds)."""
    curve = runs.hits[:, BEFORE:].mean(axis=0)
    windows = np.convolve(curve, np.ones(WINDOW) / WINDOW, mode="valid")
    ok = windows >= runs.best_after - TOLERANCE
    for r in range(len(ok)):
        if ok[r:].all():
            return r
    return None


def section(out: Path) -> list[str]:
    started = time.monotonic()
    lines = [
        "### Convergence and adaptation of the learning policies (simulation)", "",
        f"{RUNS} runs of {BEFORE} + {AFTER} rounds per policy and scenario on three "
        "scikit-learn data sets, with the selection service's policy code in-process "
        "(`benchmarks/selection_adapt.py`). Steady state: the last "
        f"{STEADY} rounds before the change, against the best single model "
        f"(targets: within 0.02 for single-model policies, at or above for exp4). "
        f"Recovery: rounds after the change until the accuracy ({WINDOW}-round mean over "
        f"the runs) is back within {TOLERANCE} of the best remaining model and stays "
        f"there (target: 20). After: the last {TAIL} rounds.", "",
    ]
    for data in load_data_sets():
        results = {(p, s): simulate(data, p, s) for p in POLICIES for s in SCENARIOS}
        first = results[(next(iter(POLICIES)), SCENARIOS[0])]
        accs = {m: data.accuracy(m, np.arange(len(data.truth))) for m in data.answers}
        lines += [
            f"**{data.name}** ({len(data.truth)} held-out samples, {data.classes} classes; "
            "models: " + ", ".join(f"{m} {a:.3f}" for m, a in accs.items()) + "). "
            f"Best single model on the steady-state rounds {first.best_before:.3f}; "
            f"best remaining after the change {first.best_after:.3f}.", "",
            "| policy | steady state | vs best single | recovery, version switch (rounds) "
            "| after, version switch | recovery, silent degradation (rounds) "
            "| after, silent degradation |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in POLICIES:
            switch, degrade = results[(p, SCENARIOS[0])], results[(p, SCENARIOS[1])]
            steady = float(np.mean([r.hits[:, BEFORE - STEADY:BEFORE].mean()
                                    for r in (switch, degrade)]))
            lines.append(
                f"| `{p}` | {steady:.3f} | {steady - switch.best_before:+.3f} | "
                f"{_rounds(recovery_rounds(switch))} | "
                f"{switch.hits[:, -TAIL:].mean():.3f} | "
                f"{_rounds(recovery_rounds(degrade))} | {degrade.hits[:, -TAIL:].mean():.3f} |")
        png = f"selection-adapt-{data.name.split()[0]}.png"
        plots.adaptation(out / png, data.name, {
            s: {p: results[(p, s)].hits.mean(axis=0) for p in POLICIES} for s in SCENARIOS},
            BEFORE, first.best_before, first.best_after, WINDOW)
        lines += ["", f"![]({png})", ""]
    lines.append(f"_Simulation took {time.monotonic() - started:.0f} s._")
    return lines


def _rounds(r: int | None) -> str:
    return f"> {AFTER - WINDOW}" if r is None else str(r)
