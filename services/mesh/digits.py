"""Example models trained on scikit-learn's bundled digits data set (no download).

Inputs are float32 vectors of 64 pixel values (0..16); outputs are the digit (int64).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAMES = ("digits-logreg", "digits-svm", "digits-knn")
INPUT_DTYPE = "float32"
INPUT_SHAPE = (64,)
SEED = 0


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test), the same on every call.

    `python -m services.mesh.digits DIR` trains into DIR (in its own process, so
    that a launcher need not hold scikit-learn in memory).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def estimators() -> dict[str, Any]:
    """The example models by name, untrained."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "digits-logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "digits-svm": SVC(gamma=0.001, random_state=SEED),
        "digits-knn": KNeighborsClassifier(n_neighbors=3),
    }


def model_paths(out_dir: Path) -> dict[str, Path]:
    """Where `train` puts each example model: name -> joblib path."""
    return {name: out_dir / f"{name}.joblib" for name in MODEL_NAMES}


def sample_path(out_dir: Path) -> Path:
    """One test digit, `{"values": [...64 floats], "label": int}`, for a ready-to-paste query."""
    return out_dir / "sample.json"


def train(out_dir: Path) -> dict[str, Path]:
    """Train the example models (or reuse files already there); return name -> joblib path."""
    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = model_paths(out_dir)
    missing = [n for n, p in paths.items() if not p.exists()]
    x_train, x_test, y_train, y_test = split()
    for name, estimator in estimators().items():
        if name in missing:
            tmp = paths[name].with_suffix(".tmp")
            joblib.dump(estimator.fit(x_train, y_train), tmp)
            tmp.replace(paths[name])
    sample = {"values": x_test[0].tolist(), "label": int(y_test[0])}
    sample_path(out_dir).write_text(json.dumps(sample))
    return paths


if __name__ == "__main__":
    train(Path(sys.argv[1]))
