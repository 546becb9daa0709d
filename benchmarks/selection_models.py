"""Models for the selection experiments: diverse digits classifiers and a controllable wrapper.

Five classifiers of different kinds, each trained on scikit-learn's bundled digits
(no download) but seeing only some of the 64 pixels, so that they differ in
accuracy (the SVM sees the most and is clearly the best) and make different
mistakes (so that a vote can beat each of them). Samples used for training never
appear in the experiments' query streams.

`WrappedModel` is what every container serves: a trained model (joblib) whose
behaviour the experiments set through environment variables, read once at start:

- `BENCH_SELECTION_MODEL`: the joblib file.
- `BENCH_SELECTION_SHIFT`: labels are shifted by this much (mod 10), for users
  whose labels follow another convention (personalization).
- `BENCH_SELECTION_DELAY_S`: every batch sleeps this long first (a straggler).
- `BENCH_SELECTION_DEGRADE_FLAG`: a file path; while the file exists, every answer
  is wrong (checked once per batch), for a model that degrades mid-stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENV_MODEL = "BENCH_SELECTION_MODEL"
ENV_SHIFT = "BENCH_SELECTION_SHIFT"
ENV_DELAY_S = "BENCH_SELECTION_DELAY_S"
ENV_DEGRADE_FLAG = "BENCH_SELECTION_DEGRADE_FLAG"
MODEL_REF = "benchmarks.selection_models:WrappedModel"
CLASSES = 10
STREAM_SIZE = 1000  # digits samples held out of training, drawn from by every stream
SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    pixels: int  # how many of the 64 pixels it sees (a fixed random subset per model)


# Best first; accuracies on the held-out samples are measured in every run.
MODELS = (
    ModelSpec("svm", "svm", 32),
    ModelSpec("mlp", "mlp", 20),
    ModelSpec("knn", "knn", 20),
    ModelSpec("forest", "forest", 20),
    ModelSpec("logreg", "logreg", 20),
)
# Sees every pixel: far better than the others; the model that degrades in experiment 3.
STRONG = ModelSpec("svm-all-pixels", "svm", 64)


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_stream, y_stream): digits as float32 pixels and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_stream, y_train, y_stream = train_test_split(
        x, y, test_size=STREAM_SIZE, random_state=SEED, stratify=y
    )
    return x_train, y_train, x_stream, y_stream


def pixels(spec: ModelSpec, index: int) -> list[int]:
    rng = np.random.default_rng(SEED + index)
    return sorted(int(p) for p in rng.choice(64, spec.pixels, replace=False))


def estimator(spec: ModelSpec, columns: list[int]) -> Any:
    """The untrained scikit-learn pipeline: select the model's pixels, then classify."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    classifiers: dict[str, Any] = {
        "svm": SVC(gamma=0.001, random_state=SEED),
        "mlp": make_pipeline(StandardScaler(),
                             MLPClassifier((32,), max_iter=800, random_state=SEED)),
        "knn": KNeighborsClassifier(n_neighbors=3, algorithm="kd_tree"),
        "forest": RandomForestClassifier(n_estimators=20, max_depth=8, random_state=SEED),
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
    }
    select = ColumnTransformer([("pixels", "passthrough", columns)])
    return make_pipeline(select, classifiers[spec.kind])


def train(out_dir: Path) -> dict[str, Path]:
    """Train MODELS and STRONG into out_dir (reusing files already there): name -> path."""
    import warnings

    import joblib
    from sklearn.exceptions import ConvergenceWarning

    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, _, _ = split()
    paths: dict[str, Path] = {}
    for index, spec in enumerate((*MODELS, STRONG)):
        path = out_dir / f"{spec.name}.joblib"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = estimator(spec, pixels(spec, index)).fit(x_train, y_train)
            joblib.dump(fitted, path)
        paths[spec.name] = path
    return paths


def model_env(path: Path, shift: int = 0, delay_s: float = 0.0,
              degrade_flag: Path | None = None) -> dict[str, str]:
    """The environment that makes a container's WrappedModel behave so."""
    return {ENV_MODEL: str(path), ENV_SHIFT: str(shift), ENV_DELAY_S: str(delay_s),
            ENV_DEGRADE_FLAG: str(degrade_flag or ""),
            # One thread per model: several containers share two cores.
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def wrong(labels: np.ndarray) -> np.ndarray:
    """What a degraded model answers instead of `labels` (always a wrong class)."""
    return (labels + 1) % CLASSES


class WrappedModel:
    """A joblib model with an optional label shift, per-batch delay and degradation flag."""

    def __init__(self, path: str | Path | None = None, shift: int | None = None,
                 delay_s: float | None = None, degrade_flag: str | None = None) -> None:
        import joblib

        env = os.environ
        self.estimator = joblib.load(path or env[ENV_MODEL])
        self.shift = int(env.get(ENV_SHIFT, "0") or 0) if shift is None else shift
        self.delay_s = float(env.get(ENV_DELAY_S, "0") or 0) if delay_s is None else delay_s
        flag = env.get(ENV_DEGRADE_FLAG, "") if degrade_flag is None else degrade_flag
        self.degrade_flag = Path(flag) if flag else None

    def predict_labels(self, x: np.ndarray, degraded: bool = False) -> np.ndarray:
        labels = (np.asarray(self.estimator.predict(x), dtype=np.int64) + self.shift) % CLASSES
        return wrong(labels) if degraded else labels

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        degraded = self.degrade_flag is not None and self.degrade_flag.exists()
        return list(self.predict_labels(np.stack(inputs), degraded))
