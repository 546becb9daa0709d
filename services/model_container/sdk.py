"""The model SDK: what a user writes, or wraps, to serve a model.

A model is any object with `predict_batch(inputs) -> outputs`: `inputs` is a list
of numpy arrays (one per query, each of the declared input shape; object arrays
for strings and bytes), and `outputs` a sequence of the same length whose items
are arrays, numbers, strings or bytes. The runtime batches queries, runs
`predict_batch` off the event loop, and sends each output back to its caller.

Ready adapters:
- `CallableModel(fn)`: a plain function of one input (or of a whole batch with
  `batched=True`).
- `SklearnModel(estimator)`: anything with scikit-learn's `predict(X)`;
  `SklearnModel.from_joblib(path)` loads a joblib or pickle file.

`load_model("package.module:attr")` or `load_model("path/model.joblib")` picks
the adapter by what it finds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Model(Protocol):
    """A batch predictor. It may be called from a worker thread, one batch at a time."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]: ...


class CallableModel:
    """Wrap a function: `fn(input) -> output`, or `fn(inputs) -> outputs` when batched."""

    def __init__(self, fn: Callable[..., Any], batched: bool = False) -> None:
        self.fn = fn
        self.batched = batched

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        if self.batched:
            return list(self.fn(inputs))
        return [self.fn(x) for x in inputs]


class SklearnModel:
    """Wrap an estimator with `predict(X)`: inputs are stacked into one matrix."""

    def __init__(self, estimator: Any) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise TypeError(f"{type(estimator).__name__} has no predict(X) method")
        self.estimator = estimator

    @classmethod
    def from_joblib(cls, path: str | Path) -> SklearnModel:
        import joblib

        return cls(joblib.load(path))

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return list(self.estimator.predict(np.stack(inputs)))


def as_model(obj: Any) -> Model:
    """Adapt an object: a Model as is, an estimator, a class or factory, or a function."""
    if isinstance(obj, type):
        return as_model(obj())
    if isinstance(obj, Model):
        return obj
    if callable(getattr(obj, "predict", None)):
        return SklearnModel(obj)
    if callable(obj):
        return CallableModel(obj)
    raise TypeError(
        f"cannot serve {type(obj).__name__}: expected predict_batch(inputs), predict(X) "
        "or a callable"
    )


def load_model(ref: str) -> Model:
    """Load `package.module:attr` (importable object) or a `.joblib`/`.pkl` file path."""
    if ref.endswith((".joblib", ".pkl", ".pickle")) or Path(ref).is_file():
        return SklearnModel.from_joblib(ref)
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"model reference {ref!r}: expected 'package.module:attr' or a .joblib file"
        )
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return as_model(obj)
