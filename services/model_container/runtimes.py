"""Adapters for model files of other frameworks: ONNX, XGBoost and LightGBM.

Each framework is an optional extra (`pip install 'clipper-mesh[onnx]'`, `[xgboost]`,
`[lightgbm]`); importing this module imports none of them, and a model that needs
a missing one raises `MissingRuntime`, naming the extra.

- `OnnxModel` (onnxruntime, CPU): input and output names and types come from the
  model. A batch is stacked into one tensor when the model's first dimension is
  dynamic (`None`, a name, or -1), and run query by query when it is fixed at 1.
  The answer is one output, `--output NAME` (default: the model's first), or
  several, `--output label,probabilities`: then each answer is a dict of them by
  name. A model with several inputs takes each query as a dict name -> array
  (each input stacked on its own). A classifier converted with skl2onnx needs
  `options={"zipmap": False}` for its probabilities to be a tensor.
  `--native-threads` sets onnxruntime's intra-op threads, which do not spin
  between batches.
- `XGBoostModel`, `LightGBMModel`: the frameworks' own booster files. `--output`
  answers as scikit-learn does: `predict` (the label of a classifier, the value of
  a regressor), `predict_proba` (a classifier's probabilities per class) or
  `decision_function` (raw margins). Boosters take float32 vectors of their
  number of features.

Each adapter has `input_spec`: what one query looks like, read from the model.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from services.common.tensors import TensorSpec

RUNTIMES = ("auto", "python", "sklearn", "onnx", "xgboost", "lightgbm")
# What scikit-learn estimators and boosters answer (`--output`).
OUTPUTS = ("predict", "predict_proba", "decision_function")
# runtime -> (module it imports, the extra that installs it)
EXTRAS = {"onnx": ("onnxruntime", "onnx"), "xgboost": ("xgboost", "xgboost"),
          "lightgbm": ("lightgbm", "lightgbm")}
_SUFFIXES = {".onnx": "onnx", ".ubj": "xgboost", ".joblib": "sklearn", ".pkl": "sklearn",
             ".pickle": "sklearn"}
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
                "tensor(float16)": "float16", "tensor(int8)": "int8", "tensor(int16)": "int16",
                "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8",
                "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
                "tensor(uint64)": "uint64", "tensor(bool)": "bool", "tensor(string)": "string"}


class ModelLoadFailed(Exception):
    """The model could not be loaded: the message says what was expected."""


class MissingRuntime(ModelLoadFailed):
    """The model needs a runtime whose extra is not installed."""


def require(runtime: str) -> None:
    """Raise MissingRuntime unless the runtime's package is installed (without importing it)."""
    if runtime not in EXTRAS:
        return
    module, extra = EXTRAS[runtime]
    if importlib.util.find_spec(module) is None:
        raise MissingRuntime(f"this model needs the {runtime} runtime, and {module} is not "
                             f"installed: pip install 'clipper-mesh[{extra}]'")


def runtime_for(ref: str) -> str:
    """The runtime that serves `ref`: by its suffix, by its first bytes for `.json` and
    text files (XGBoost's JSON has a `learner`, LightGBM's text starts with `tree`), any
    other file as joblib, else `python` for `package.module:attr`."""
    path = Path(ref)
    by_suffix = _SUFFIXES.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix
    if path.is_file():
        with path.open("rb") as f:
            head = f.read(4096)
        if head.startswith(b"tree\n") or head.startswith(b"tree\r\n"):
            return "lightgbm"
        if head.lstrip().startswith(b"{") and b'"learner"' in head:
            return "xgboost"
        return "sklearn"
    return "python"


def load(runtime: str, path: str, output: str, native_threads: int) -> Any:
    """The adapter of `runtime` for the model file at `path`."""
    require(runtime)
    adapter = {"onnx": OnnxModel, "xgboost": XGBoostModel, "lightgbm": LightGBMModel}[runtime]
    return adapter(path, output, native_threads)


class OnnxModel:
    """An ONNX model run by onnxruntime on the CPU."""

    def __init__(self, path: str, output: str = "", native_threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = native_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A serving replica runs one small batch at a time beside other processes:
        # threads spinning for work between batches would take their cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        specs = [_onnx_spec(path, i) for i in self.session.get_inputs()]
        # First dimension dynamic: one run per batch; fixed at 1: one run per query.
        modes = {(bool(shape) and shape[0] in (-1, 1), bool(shape) and shape[0] == -1)
                 for _, shape in specs}
        if len(modes) > 1:
            raise ValueError(f"{path}: the model's inputs disagree on a batch dimension "
                             "(some dynamic, some not); they must share one")
        ((self.batched, self.stacked),) = modes
        self.names = [spec.name for spec, _ in specs]
        self._dtypes = {spec.name: np.dtype(object) if spec.dtype == "string"
                        else np.dtype(spec.dtype) for spec, _ in specs}
        per_query = [TensorSpec(spec.dtype, tuple(shape[1:] if self.batched else shape),
                                spec.name) for spec, shape in specs]
        # One input: a query is its array; several: a dict of them by name.
        self.input_spec: TensorSpec | None = None
        self.inputs: tuple[TensorSpec, ...] = ()
        if len(per_query) == 1:
            self.input_name: str = per_query[0].name
            self.input_spec = replace(per_query[0], name="")
        else:
            self.inputs = tuple(per_query)
        self.output_names = self._outputs(path, output)
        self.output_name: str = self.output_names[0]
        # One output asked: each answer is its row; several: a dict of them by name.
        self.outputs: tuple[TensorSpec, ...] = ()
        if len(self.output_names) > 1:
            by_name = {o.name: o for o in self.session.get_outputs()}
            self.outputs = tuple(self._output_spec(path, by_name[n]) for n in self.output_names)

    def _outputs(self, path: str, output: str) -> list[str]:
        """The outputs answered: `output`, comma-separated (default: the model's first)."""
        tensors = {o.name for o in self.session.get_outputs() if o.type.startswith("tensor")}
        names = [o.name for o in self.session.get_outputs()]
        wanted = [n.strip() for n in output.split(",") if n.strip()] or names[:1]
        for name in wanted:
            if name not in tensors:
                raise ValueError(
                    f"{path}: output {name!r} is not a tensor output of the model; "
                    f"its tensor outputs are {', '.join(sorted(tensors)) or 'none'} (a "
                    "scikit-learn classifier converted by skl2onnx needs "
                    "options={'zipmap': False})"
                    if name in names else
                    f"{path}: no output {name!r}; the model's outputs are {', '.join(names)}")
        return wanted

    def _output_spec(self, path: str, node: Any) -> TensorSpec:
        spec, shape = _onnx_spec(path, node)
        per_query = shape[1:] if self.batched and shape else shape
        return TensorSpec(spec.dtype, tuple(per_query), spec.name)

    def predict_batch(self, inputs: list[Any]) -> Sequence[Any]:
        if self.inputs:
            return self._predict_named(inputs)
        run, name, out = self.session.run, self.input_name, self.output_names
        dtype = self._dtypes[name]
        if len(out) == 1:
            if self.stacked:
                (result,) = run(out, {name: np.stack(inputs).astype(dtype, copy=False)})
                return list(result)
            if self.batched:
                return [run(out, {name: x[None].astype(dtype, copy=False)})[0][0]
                        for x in inputs]
            return [run(out, {name: x.astype(dtype, copy=False)})[0] for x in inputs]
        return self._predict_named([{name: x} for x in inputs])

    def _predict_named(self, inputs: list[dict[str, np.ndarray]]) -> Sequence[Any]:
        """Each input stacked on its own; the answers (one, or a dict of several) per row."""
        run, out = self.session.run, self.output_names
        if self.stacked:
            feed = {n: np.stack([x[n] for x in inputs]).astype(self._dtypes[n], copy=False)
                    for n in self.names}
            return _rows(out, run(out, feed), len(inputs))
        answers: list[Any] = []
        for x in inputs:
            feed = {n: (x[n][None] if self.batched else x[n]).astype(self._dtypes[n],
                                                                     copy=False)
                    for n in self.names}
            results = run(out, feed)
            answers.extend(_rows(out, results, 1) if self.batched
                           else [_answer(out, results)])
        return answers


def _onnx_spec(path: str, node: Any) -> tuple[TensorSpec, list[int]]:
    """A node's spec (its whole shape; -1 for dynamic sizes) and that shape."""
    if node.type not in _ONNX_DTYPES:
        raise ValueError(f"{path}: {node.name} of type {node.type} is not served; tensors "
                         "of numbers, bools or strings are")
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]
    return TensorSpec(_ONNX_DTYPES[node.type], tuple(shape), node.name), shape


def _rows(names: list[str], results: list[Any], count: int) -> list[Any]:
    """Per row of a batch: the one output's row, or a dict of each output's row."""
    if len(names) == 1:
        return list(results[0])
    return [{n: r[i] for n, r in zip(names, results, strict=True)} for i in range(count)]


def _answer(names: list[str], results: list[Any]) -> Any:
    return results[0] if len(names) == 1 else dict(zip(names, results, strict=True))


class _Booster:
    """What XGBoost and LightGBM boosters share: labels from probabilities, by objective."""

    # "binary", "multi" (probabilities), "margin" (a binary classifier's raw score: the
    # class is its sign), "multi_label" (the value is the class) or "" (values)
    kind = ""

    def _check_output(self, output: str, objective: str) -> str:
        output = output or "predict"
        if output not in OUTPUTS:
            raise ValueError(f"--output {output!r}: a booster answers one of "
                             f"{', '.join(OUTPUTS)}")
        if output == "predict_proba" and self.kind not in ("binary", "multi"):
            raise ValueError(f"--output predict_proba needs a classifier giving probabilities; "
                             f"this booster's objective is {objective}")
        return output

    def _answer(self, values: np.ndarray) -> Sequence[Any]:
        """Rows of what `--output` asks, from the booster's values (not margins)."""
        if self.output == "predict_proba":
            if self.kind == "binary":
                return list(np.stack([1.0 - values, values], axis=1))
            return list(values)
        if self.kind == "binary":
            return list((values > 0.5).astype(np.int64))
        if self.kind == "margin":
            return list((values > 0).astype(np.int64))
        if self.kind == "multi":
            return list(values.argmax(axis=1).astype(np.int64))
        if self.kind == "multi_label":
            return list(values.astype(np.int64))
        return list(values)

    output = "predict"


class XGBoostModel(_Booster):
    """An XGBoost booster file (`.ubj` or `.json`)."""

    def __init__(self, path: str, output: str = "", native_threads: int = 0) -> None:
        import xgboost as xgb

        self.booster = xgb.Booster(model_file=path)
        if native_threads > 0:
            self.booster.set_param({"nthread": native_threads})
        objective = json.loads(self.booster.save_config())["learner"]["objective"]["name"]
        self.kind = {"binary:logistic": "binary", "binary:logitraw": "margin",
                     "binary:hinge": "multi_label", "multi:softprob": "multi",
                     "multi:softmax": "multi_label"}.get(objective, "")
        self.output = self._check_output(output, objective)
        self.input_spec = TensorSpec("float32", (self.booster.num_features(),))

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        x = np.stack(inputs)
        if self.output == "decision_function":
            return list(self.booster.inplace_predict(x, predict_type="margin"))
        return self._answer(self.booster.inplace_predict(x))


class LightGBMModel(_Booster):
    """A LightGBM booster's text model file."""

    def __init__(self, path: str, output: str = "", native_threads: int = 0) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=path)
        self.native_threads = native_threads
        objective = str(self.booster.params.get("objective")
                        or self.booster.dump_model(num_iteration=0)["objective"])
        name = objective.split()[0]
        self.kind = ("binary" if name in ("binary", "cross_entropy")
                     else "multi" if name in ("multiclass", "multiclassova", "softmax") else "")
        self.output = self._check_output(output, objective)
        self.input_spec = TensorSpec("float32", (self.booster.num_feature(),))

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        x = np.stack(inputs)
        raw = self.output == "decision_function"
        if self.native_threads > 0:
            values = self.booster.predict(x, raw_score=raw, num_threads=self.native_threads)
        else:
            values = self.booster.predict(x, raw_score=raw)
        return list(values) if raw else self._answer(np.asarray(values))
