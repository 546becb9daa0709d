"""The model SDK: what a user writes, or wraps, to serve a model.

A model is any object with `predict_batch(inputs) -> outputs`: `inputs` is a list
of numpy arrays (one per query, each of the declared input shape; object arrays
for strings and bytes), and `outputs` a sequence of the same length whose items
are arrays, numbers, strings or bytes. The runtime batches queries, runs
`predict_batch` off the event loop, and sends each output back to its caller. A
model may also say what its queries look like (`input_spec`, a TensorSpec); the
container then checks queries against it when no spec is given.

Several named inputs and outputs (features plus a mask; a label plus
probabilities): a model that declares `inputs` (a sequence of TensorSpec, each
with its `name`) gets each query as a dict name -> array, and one that declares
`outputs` answers each query with a dict name -> array (the container checks the
queries' names and shapes against `inputs`; the frontend combines an ensemble's
answers output by output). `ModelSpecs` gathers what a model declares.

Ready adapters, one per runtime (`--runtime`, else chosen by the model file):
- `python`: an importable object, `package.module:attr`: a Model as is, a
  function (`CallableModel`), an estimator (`SklearnModel`), or a class or
  factory returning one of them.
- `sklearn`: a joblib or pickle file of anything with scikit-learn's `predict(X)`
  (`SklearnModel`), answering `--output predict|predict_proba|decision_function`.
- `onnx` (`.onnx`), `xgboost` (`.ubj`, or XGBoost's `.json`), `lightgbm` (its
  text model file): see `runtimes.py`. Each needs its optional extra
  (`pip install 'clipper-mesh[onnx]'`); the base install has none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.common.tensors import TensorSpec
from services.model_container import runtimes
from services.model_container.runtimes import (
    OUTPUTS,
    RUNTIMES,
    MissingRuntime,
    ModelLoadFailed,
    runtime_for,
)

__all__ = ["OUTPUTS", "RUNTIMES", "CallableModel", "MissingRuntime", "Model", "ModelLoadFailed",
           "ModelSource", "ModelSpecs", "SklearnModel", "as_model", "load_model", "specs_of"]


@runtime_checkable
class Model(Protocol):
    """A batch predictor. It may be called from a worker thread, one batch at a time.

    `inputs` holds one array per query, or one dict name -> array per query for a model
    with named `inputs`."""

    def predict_batch(self, inputs: list[Any]) -> Sequence[Any]: ...


@dataclass(frozen=True)
class ModelSpecs:
    """What a model says its queries and answers look like (each optional): one input
    (`input_spec`), or named `inputs`; named `outputs`."""

    input_spec: TensorSpec | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


def specs_of(model: Any) -> ModelSpecs:
    """The specs `model` declares (its `input_spec`, `inputs` and `outputs` attributes)."""
    spec = getattr(model, "input_spec", None)
    return ModelSpecs(spec if isinstance(spec, TensorSpec) else None,
                      _named(getattr(model, "inputs", ())),
                      _named(getattr(model, "outputs", ())))


def _named(specs: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(specs, list | tuple):
        return ()
    return tuple(s for s in specs if isinstance(s, TensorSpec) and s.name)


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
    """Wrap an estimator: inputs are stacked into one matrix, and each query gets its row
    of `predict(X)` (a label or value), `predict_proba(X)` or `decision_function(X)`."""

    def __init__(self, estimator: Any, output: str = "") -> None:
        output = output or "predict"
        if output not in OUTPUTS:
            raise ValueError(f"--output {output!r}: a scikit-learn model answers one of "
                             f"{', '.join(OUTPUTS)}")
        method = getattr(estimator, output, None)
        if not callable(method):
            raise TypeError(f"{type(estimator).__name__} has no {output}(X) method"
                            + (" (a classifier that gives probabilities has)"
                               if output == "predict_proba" else ""))
        self.estimator = estimator
        self.output = output
        self._method: Callable[[np.ndarray], Any] = method

    @classmethod
    def from_joblib(cls, path: str | Path, output: str = "") -> SklearnModel:
        import joblib

        return cls(joblib.load(path), output)

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return list(self._method(np.stack(inputs)))


def as_model(obj: Any, output: str = "") -> Model:
    """Adapt an object: a Model as is, an estimator, a class or factory, or a function.

    `output` picks the estimator's method (predict, predict_proba, decision_function).
    """
    if isinstance(obj, type):
        return as_model(obj(), output)
    if isinstance(obj, Model):
        if output:
            raise ValueError(f"--output {output!r} applies to estimators and model files; "
                             f"{type(obj).__name__} answers with its own predict_batch")
        return obj
    if callable(getattr(obj, "predict", None)):
        return SklearnModel(obj, output)
    if callable(obj):
        if output:
            raise ValueError(f"--output {output!r} does not apply to a function")
        return CallableModel(obj)
    raise TypeError(
        f"cannot serve {type(obj).__name__}: expected predict_batch(inputs), predict(X) "
        "or a callable"
    )


def _import(ref: str) -> Any:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"model reference {ref!r}: expected 'package.module:attr' or a model file "
            "(.joblib, .onnx, .ubj, XGBoost .json, LightGBM .txt)"
        )
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_model(ref: str, runtime: str = "auto", output: str = "",
               native_threads: int = 0) -> Model:
    """Load `package.module:attr` or a model file with its runtime (`auto`: by the file).

    `output` picks what the model answers (see the runtimes); `native_threads` caps the
    runtime's own thread pool where it has one (0: its default). Raises
    MissingRuntime, naming the extra to install, when the runtime is missing, and
    ModelLoadFailed when the model cannot be loaded.
    """
    try:
        return _load(ref, runtime, output, native_threads)
    except ModelLoadFailed:
        raise
    except Exception as exc:
        raise ModelLoadFailed(f"cannot load the model {ref}: {type(exc).__name__}: {exc}") \
            from exc


def _load(ref: str, runtime: str, output: str, native_threads: int) -> Model:
    if runtime == "auto":
        runtime = runtime_for(ref)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "python":
        return as_model(_import(ref), output)
    if not Path(ref).is_file():
        raise FileNotFoundError(f"model file {ref} does not exist")
    if runtime == "sklearn":
        return SklearnModel.from_joblib(ref, output)
    model: Model = runtimes.load(runtime, ref, output, native_threads)
    return model


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and how to load it: what a worker process needs to load
    the same model again (picklable)."""

    ref: str
    runtime: str = "auto"
    output: str = ""

    def load(self, native_threads: int = 0) -> Model:
        return load_model(self.ref, self.runtime, self.output, native_threads)


def as_source(source: ModelSource | str) -> ModelSource:
    """A ModelSource for `source`; a string is a reference loaded with runtime `auto`."""
    return source if isinstance(source, ModelSource) else ModelSource(source)
