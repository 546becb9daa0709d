"""Example models trained on scikit-learn's bundled digits data set (no download).

Inputs are float32 vectors of 64 pixel values (0..16); outputs are the digit (int64).
Three scikit-learn models (joblib files), and, where onnxruntime and skl2onnx are
installed, a small neural network exported to ONNX as a model directory
(`digits-onnx/`: model.onnx and its manifest model.json).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAMES = ("digits-logreg", "digits-svm", "digits-knn")
ONNX_MODEL = "digits-onnx"
INPUT_DTYPE = "float32"
INPUT_SHAPE = (64,)
SEED = 0


def onnx_available() -> bool:
    """Whether the ONNX example can be made (skl2onnx) and served (onnxruntime)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "skl2onnx"))


def onnx_model_dir(out_dir: Path) -> Path:
    """The ONNX example's model directory (served with --model-dir)."""
    return out_dir / ONNX_MODEL


def model_flags(out_dir: Path) -> dict[str, list[str]]:
    """What `make run` serves: each example model's name and the container flags that
    load it (the ONNX one where it was made and onnxruntime is installed)."""
    spec = ["--input-dtype", INPUT_DTYPE, "--input-shape", ",".join(map(str, INPUT_SHAPE))]
    flags = {name: ["--model", str(path), *spec] for name, path in model_paths(out_dir).items()}
    onnx_dir = onnx_model_dir(out_dir)
    if (onnx_dir / "model.json").exists() and onnx_available():
        flags[ONNX_MODEL] = ["--model-dir", str(onnx_dir)]
    return flags


def trained(out_dir: Path) -> bool:
    """Whether every example model that can be made here is in `out_dir`."""
    made = [*model_paths(out_dir).values(), sample_path(out_dir)]
    if onnx_available():
        made.append(onnx_model_dir(out_dir))
    return all(p.exists() for p in made)


def _train_onnx(out_dir: Path, x_train: np.ndarray, y_train: np.ndarray) -> None:
    """A small neural network (scaler + one hidden layer of 64), exported to ONNX with its
    manifest: what a model exported from PyTorch or TensorFlow looks like to the mesh."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    network = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=1000, random_state=SEED)).fit(x_train, y_train)
    onx = to_onnx(network, initial_types=[("input", FloatTensorType([None, 64]))],
                  options={"zipmap": False}, target_opset=17)
    tmp = out_dir / f"{ONNX_MODEL}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.onnx").write_bytes(onx.SerializeToString())
    (tmp / "model.json").write_text(json.dumps({
        "name": ONNX_MODEL, "version": "1", "runtime": "onnx", "output": "label",
        "inputs": [{"name": "input", "dtype": INPUT_DTYPE, "shape": list(INPUT_SHAPE)}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": []}],
        "warmup": {"rounds": 3},
    }, indent=2) + "\n")
    tmp.replace(onnx_model_dir(out_dir))


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
    """Train the example models (or reuse files already there), and the ONNX one where it
    can be made; return name -> joblib path."""
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
    if onnx_available() and not onnx_model_dir(out_dir).exists():
        _train_onnx(out_dir, x_train, y_train)
    sample = {"values": x_test[0].tolist(), "label": int(y_test[0])}
    sample_path(out_dir).write_text(json.dumps(sample))
    return paths


if __name__ == "__main__":
    train(Path(sys.argv[1]))
