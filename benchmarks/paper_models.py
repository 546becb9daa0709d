"""The models of the Clipper paper's batching table, trained on digits (no download).

`python -m benchmarks.paper_models DIR` trains them into DIR as joblib files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from services.mesh import digits

NOOP = "benchmarks.models:NoOp"


def estimators() -> dict[str, Any]:
    """The paper's models by name, untrained (the no-op model needs none)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC, LinearSVC

    return {
        "logistic regression": LogisticRegression(max_iter=2000),
        "linear SVM": LinearSVC(max_iter=5000),
        "kernel SVM": SVC(gamma=0.001, random_state=digits.SEED),
        "random forest (50 trees, depth 16)": RandomForestClassifier(
            n_estimators=50, max_depth=16, random_state=digits.SEED),
    }


def train(out_dir: Path) -> dict[str, str]:
    """name -> model reference for `--model` (the no-op model first)."""
    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, _, y_train, _ = digits.split()
    refs = {"no-op": NOOP}
    for i, (name, estimator) in enumerate(estimators().items()):
        path = out_dir / f"paper-{i}.joblib"
        if not path.exists():
            joblib.dump(estimator.fit(x_train, y_train), path)
        refs[name] = str(path)
    return refs


if __name__ == "__main__":
    print(train(Path(sys.argv[1])))
