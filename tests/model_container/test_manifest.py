"""A model directory's manifest gives the container's settings; flags and variables win."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.common.config import ConfigError
from services.common.credentials import container_token
from services.common.tensors import TensorSpec
from services.model_container.config import config_from_args
from services.model_container.sdk import ModelSource

MANIFEST: dict[str, Any] = {
    "name": "digits-onnx", "version": 3, "model": "model.onnx", "output": "label",
    "inputs": [{"name": "input", "dtype": "float32", "shape": [64]}],
    "outputs": [{"name": "label", "dtype": "int64", "shape": []}],
    "batching": {"max_batch_size": 16, "max_delay_ms": 2.5, "mode": "fixed"},
    "worker": "thread", "native_threads": 2,
    "warmup": {"inputs": "warmup.npy", "batch_sizes": [1, 4], "rounds": 2},
}


def _model_dir(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    directory = tmp_path / "digits-onnx"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"not read by the config")
    (directory / "model.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", container_token("secret-xyz", "digits-onnx"))


def test_the_manifest_gives_every_setting(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path, MANIFEST)
    cfg = config_from_args(["--model-dir", str(directory)])
    assert (cfg.name, cfg.version) == ("digits-onnx", "3")
    assert cfg.source == ModelSource(str(directory / "model.onnx"), "onnx", "label")
    assert cfg.input_spec == TensorSpec("float32", (64,))
    assert cfg.output_spec == TensorSpec("int64", ())
    assert (cfg.batching.mode, cfg.batching.max_batch_size, cfg.batching.max_delay_ms) == (
        "fixed", 16, 2.5)
    assert (cfg.worker, cfg.native_threads) == ("thread", 2)
    assert cfg.warmup.rounds == 2 and cfg.warmup.batch_sizes == (1, 4)
    assert cfg.warmup.inputs == str(directory / "warmup.npy")


def test_several_inputs_and_outputs_are_named_tensors(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path, {
        **MANIFEST, "output": "label,probabilities",
        "inputs": [{"name": "features", "dtype": "float32", "shape": [4]},
                   {"name": "mask", "dtype": "bool", "shape": [4]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": []},
                    {"name": "probabilities", "dtype": "float32", "shape": [3]}],
        "warmup": {"inputs": {"features": [[0, 1, 2, 3]], "mask": [[True] * 4]}}})
    cfg = config_from_args(["--model-dir", str(directory)])
    assert cfg.input_spec is None and cfg.output_spec is None
    assert cfg.inputs == (TensorSpec("float32", (4,), "features"),
                          TensorSpec("bool", (4,), "mask"))
    assert cfg.outputs == (TensorSpec("int64", (), "label"),
                           TensorSpec("float32", (3,), "probabilities"))
    assert json.loads(cfg.warmup.inputs)["mask"] == [[True] * 4]


def test_flags_and_variables_win_over_the_manifest(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _model_dir(tmp_path, MANIFEST)
    monkeypatch.setenv("CLIPPER_CONTAINER_MAX_BATCH_SIZE", "8")
    cfg = config_from_args(["--model-dir", str(directory), "--version", "4",
                            "--max-delay-ms", "0"])
    assert cfg.version == "4"
    assert cfg.batching.max_batch_size == 8
    assert cfg.batching.max_delay_ms == 0
    assert cfg.batching.mode == "fixed"


def test_the_model_file_is_found_when_not_named(tmp_path: Path) -> None:
    manifest = {k: v for k, v in MANIFEST.items() if k != "model"}
    directory = _model_dir(tmp_path, manifest)
    assert config_from_args(["--model-dir", str(directory)]).source.ref == str(
        directory / "model.onnx")


@pytest.mark.parametrize(("change", "needle"), [
    ({"batching": {"max_batch": 4}}, "unknown key batching.max_batch"),
    ({"inputz": []}, "unknown key inputz"),
    ({"inputs": [{"dtype": "float99", "shape": [2]}]}, "unknown dtype"),
    ({"inputs": {"dtype": "float32"}}, "inputs: expected a list of tensors"),
    ({"inputs": [{"name": "a", "dtype": "float32"}, {"dtype": "bool"}]},
     r"inputs\[1\].name: expected a non-empty string"),
    ({"outputs": [{"name": "a", "dtype": "int64"}, {"name": "a", "dtype": "float32"}]},
     "each tensor needs its own name"),
    ({"batching": {"max_batch_size": "big"}}, "batching.max_batch_size: expected an integer"),
    ({"batching": {"concurrency": 1.5}}, "batching.concurrency: expected an integer"),
    ({"batching": {"max_delay_ms": "soon"}}, "batching.max_delay_ms: expected a number"),
    ({"model": None, "name": ""}, "name: expected a non-empty string"),
    ({"warmup": {"batch_sizes": [1, 0]}}, "sizes are >= 1"),
])
def test_bad_manifests_name_the_key(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    directory = _model_dir(tmp_path, {**MANIFEST, **change})
    with pytest.raises(ConfigError, match=needle):
        config_from_args(["--model-dir", str(directory)])


def test_a_directory_without_a_manifest_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.json does not exist"):
        config_from_args(["--model-dir", str(tmp_path)])
