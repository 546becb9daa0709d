"""A model directory: the model file and its manifest, `model.json`, deployed as one unit.

`python -m services.model_container --model-dir DIR` serves it; flags and
CLIPPER_CONTAINER_* variables still win over what the manifest says. Paths in the
manifest are relative to DIR. Every key but `name` is optional:

    {
      "name": "digits-onnx",
      "version": "3",
      "model": "model.onnx",                 # default: the one model.* file in DIR
      "runtime": "onnx",                     # default: by the file
      "output": "label",                     # see --output
      "inputs": [{"name": "input", "dtype": "float32", "shape": [64]}],
      "outputs": [{"name": "label", "dtype": "int64", "shape": []}],
      "batching": {"mode": "adaptive", "max_batch_size": 32, "max_delay_ms": 5,
                   "max_queue": 1024, "concurrency": 1, "batch_timeout_s": 0},
      "worker": "auto", "native_threads": 1,
      "warmup": {"inputs": "warmup.npy", "batch_sizes": [1, 8, 32], "rounds": 3}
    }

`inputs` and `outputs` list what a query and its answer look like: the container
refuses other queries, and the warm-up checks the model's answers against
`outputs`. One tensor each is the one input and answer; several are named
tensors (a query is then a dict name -> array, and so is an answer when there
are several outputs; an ONNX model answers several with
`"output": "label,probabilities"`). `warmup.inputs` is a .npy file of shape
[N, *input shape], or a list of inputs (for named inputs: a .npz file, or an
object, of name -> [N, *shape]); without it warm-up inputs are made from the spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.common.errors import InvalidInput
from services.common.tensors import TensorSpec

MANIFEST = "model.json"
_TOP = {"name", "version", "model", "runtime", "output", "inputs", "outputs", "batching",
        "worker", "native_threads", "warmup"}
# manifest "batching" key -> the container's flag destination
_BATCHING = {"mode": "batching", "max_batch_size": "max_batch_size", "max_queue": "max_queue",
             "max_delay_ms": "max_delay_ms", "concurrency": "concurrency",
             "batch_timeout_s": "batch_timeout_s"}
_BATCHING_INTEGERS = {"max_batch_size", "max_queue", "concurrency"}
_WARMUP = {"inputs", "batch_sizes", "rounds"}
_MODEL_SUFFIXES = (".onnx", ".ubj", ".json", ".txt", ".joblib", ".pkl", ".pickle")


class ManifestError(ValueError):
    """The manifest cannot be used: the message names the file and the key."""


def read_manifest(directory: Path) -> dict[str, Any]:
    """The container settings (flag destinations -> values) the directory's manifest gives."""
    path = directory / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist: a model directory holds the model "
                            f"and its manifest {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    _check_keys(path, "", doc, _TOP)
    settings: dict[str, Any] = {}
    if isinstance(doc.get("version"), int) and not isinstance(doc["version"], bool):
        doc["version"] = str(doc["version"])
    for key in ("name", "version", "runtime", "output", "worker"):
        if key in doc:
            settings[key] = _string(path, key, doc[key])
    if "native_threads" in doc:
        settings["native_threads"] = _integer(path, "native_threads", doc["native_threads"])
    settings["model"] = str(_model_file(path, directory, doc.get("model")))
    if "inputs" in doc:
        inputs = tensor_specs(path, "inputs", doc["inputs"])
        if len(inputs) == 1:
            settings["input_dtype"] = inputs[0].dtype
            settings["input_shape"] = ",".join(map(str, inputs[0].shape))
        else:
            settings["named_inputs"] = inputs
    if "outputs" in doc:
        outputs = tensor_specs(path, "outputs", doc["outputs"])
        settings["output_spec" if len(outputs) == 1 else "named_outputs"] = (
            outputs[0] if len(outputs) == 1 else outputs)
    batching = _section(path, "batching", doc.get("batching", {}), set(_BATCHING))
    for key, value in batching.items():
        settings[_BATCHING[key]] = (
            _string(path, f"batching.{key}", value) if key == "mode"
            else _integer(path, f"batching.{key}", value) if key in _BATCHING_INTEGERS
            else _number(path, f"batching.{key}", value))
    warmup = _section(path, "warmup", doc.get("warmup", {}), _WARMUP)
    if "inputs" in warmup:
        given = warmup["inputs"]
        settings["warmup_inputs"] = (str(directory / given) if isinstance(given, str)
                                     else json.dumps(given))
    if "batch_sizes" in warmup:
        sizes = warmup["batch_sizes"]
        if not isinstance(sizes, list) or not all(isinstance(s, int) for s in sizes):
            raise ManifestError(f"{path}: warmup.batch_sizes: expected a list of integers")
        settings["warmup_batch_sizes"] = ",".join(map(str, sizes))
    if "rounds" in warmup:
        settings["warmup_rounds"] = _integer(path, "warmup.rounds", warmup["rounds"])
    return settings


def tensor_specs(path: Path, key: str, value: Any) -> tuple[TensorSpec, ...]:
    """The tensors `[{"name", "dtype", "shape"}, ...]` of `inputs` or `outputs`; several
    need a name each, once."""
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise ManifestError(f"{path}: {key}: expected a list of tensors "
                            '[{"name": ..., "dtype": ..., "shape": [...]}, ...]')
    specs = [_tensor_spec(path, f"{key}[{i}]", t, named=len(value) > 1)
             for i, t in enumerate(value)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: {key}: each tensor needs its own name, got "
                            f"{', '.join(names)}")
    return tuple(specs)


def _tensor_spec(path: Path, key: str, tensor: dict[str, Any], named: bool) -> TensorSpec:
    _check_keys(path, f"{key}.", tensor, {"name", "dtype", "shape"})
    shape = tensor.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise ManifestError(f"{path}: {key}.shape: expected a list of integers (-1: any)")
    name = _string(path, f"{key}.name", tensor.get("name")) if named else ""
    try:
        return TensorSpec(_string(path, f"{key}.dtype", tensor.get("dtype")), tuple(shape),
                          name if named else "")
    except InvalidInput as exc:
        raise ManifestError(f"{path}: {key}: {exc}") from None


def _model_file(path: Path, directory: Path, given: Any) -> Path | str:
    if given is not None:
        name = _string(path, "model", given)
        return name if ":" in name and not (directory / name).exists() else directory / name
    found = sorted(p for p in directory.glob("model.*")
                   if p.suffix in _MODEL_SUFFIXES and p.name != MANIFEST)
    if len(found) != 1:
        raise ManifestError(f"{path}: no \"model\" key, and {len(found)} model.* files in "
                            f"{directory} ({', '.join(p.name for p in found) or 'none'}); "
                            "name the model file")
    return found[0]


def _check_keys(path: Path, prefix: str, doc: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ManifestError(f"{path}: unknown key {prefix}{unknown[0]}; expected "
                            f"{', '.join(prefix + k for k in sorted(known))}")


def _section(path: Path, key: str, value: Any, known: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: {key}: expected an object")
    _check_keys(path, f"{key}.", value, known)
    return value


def _string(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{path}: {key}: expected a non-empty string, got {value!r}")
    return value


def _integer(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{path}: {key}: expected an integer, got {value!r}")
    return value


def _number(path: Path, key: str, value: Any) -> int | float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ManifestError(f"{path}: {key}: expected a number, got {value!r}")
    return value
