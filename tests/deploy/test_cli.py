"""`python -m services.cli deploy-model`: valid manifests, the same as deploy/base's example."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml

from services.cli import k8s
from services.cli.__main__ import main
from tests.deploy.manifests import REPO, validate

BASE_MODEL = REPO / "deploy" / "base" / "model-digits-logreg.yaml"


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_base_example_model_is_what_the_cli_prints(capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE_MODEL.read_text()
    (command,) = [line.removeprefix("#   ") for line in text.splitlines()
                  if line.startswith("#   python -m services.cli deploy-model")]
    argv = shlex.split(command)[3:]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    assert out in text, f"{BASE_MODEL} is stale: regenerate it with the command in its header"
    assert list(yaml.safe_load_all(out)) == list(yaml.safe_load_all(text))


def test_rendered_model_validates_with_an_autoscaler(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, [
        "deploy-model", "--image", "registry.example.com/acme/fraud:3", "--model",
        "acme.models:Fraud", "--name", "fraud", "--version", "2024.1", "--replicas", "2",
        "--max-batch-size", "16", "--worker", "process", "--max-delay-ms", "2.5",
        "--env", "CLIPPER_CONTAINER_MAX_QUEUE=64", "--max-replicas", "8",
        "--cpu", "2", "--memory", "2Gi"])
    assert code == 0
    deployment, hpa = yaml.safe_load_all(out)
    for doc in (deployment, hpa):
        validate(doc)
        assert doc["metadata"]["namespace"] == k8s.NAMESPACE
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CLIPPER_CONTAINER_MODEL"] == "acme.models:Fraud"
    assert env["CLIPPER_CONTAINER_VERSION"] == "2024.1"
    assert env["CLIPPER_CONTAINER_MAX_BATCH_SIZE"] == "16"
    assert env["CLIPPER_CONTAINER_WORKER"] == "process"
    assert env["CLIPPER_CONTAINER_MAX_DELAY_MS"] == "2.5"
    assert env["CLIPPER_CONTAINER_MAX_QUEUE"] == "64"
    assert "CLIPPER_CONTAINER_BATCHING" not in env, "unset flags keep the container's defaults"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)


def test_json_output_is_the_same_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["deploy-model", "--image", "i:1", "--model", "m.joblib", "--name", "m"]
    _, as_yaml, _ = _run(capsys, args)
    _, as_json, _ = _run(capsys, [*args, "--output", "json"])
    assert json.loads(as_json) == yaml.safe_load(as_yaml)


@pytest.mark.parametrize("args, message", [
    (["--name", "Bad_Name"], "--name"),
    (["--version", "1 beta"], "--version"),
    (["--env", "CLIPPER_FRONTEND_PORT=1"], "--env"),
    (["--env", "CLIPPER_CONTAINER_NAME=other"], "CLIPPER_CONTAINER_NAME"),
    (["--memory", "lots"], "--memory"),
    (["--replicas", "3", "--max-replicas", "2"], "--max-replicas"),
])
def test_bad_input_is_refused_with_the_flag_named(
        capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    base = ["deploy-model", "--image", "i:1", "--model", "m.joblib", "--name", "ok"]
    code, out, err = _run(capsys, [*base, *args])
    assert code == 2 and not out
    assert message in err


def test_the_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "deploy-model", "--image", "i:1",
         "--model", "m.joblib", "--name", "m", "--output", "json"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "Deployment"


TRICKY = ["yes", "No", "on", "OFF", "true", "null", "~", "", "1", "0.0.0.0", "1e3", "0x1F",
          "1:20", "1_000", "-m", "- x", "a: b", "#x", "x #y", "@a", "*a", "&a", "!a", "%a",
          "'", '"', "a\nb", "{}", "[]", "?", "|", ">", "é", " x ", "redis://h:1/0", "y", "N"]


def test_yaml_writer_reads_back_exactly() -> None:
    doc: dict[str, Any] = {
        "strings": TRICKY,
        "keys": {s: s for s in TRICKY if s},
        "numbers": [0, -1, 2.5, True, False, None],
        "empty": {"d": {}, "l": []},
        "nested": [[1, [2, {"a": [3]}]], {"b": {"c": [{"d": "e"}]}}],
    }
    assert yaml.safe_load(k8s.to_yaml([doc])) == doc


@pytest.mark.parametrize("source", [
    ["--model-pvc", "models", "--model-pvc-path", "fraud/3"],
    ["--model-image", "registry.example.com/acme/fraud-model:3", "--model-image-path", "/m"],
])
def test_a_model_directory_is_mounted_from_a_volume(capsys: pytest.CaptureFixture[str],
                                                    source: list[str]) -> None:
    """The serving image stays the same; the model directory comes from a claim, or from
    an image an init container copies it out of, and the container reads it at /models."""
    code, out, err = _run(capsys, ["deploy-model", "--image", "clipper-mesh:0.1.0",
                                   "--name", "fraud", "--version", "3", *source])
    assert code == 0, err
    (deployment,) = yaml.safe_load_all(out)
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CLIPPER_CONTAINER_MODEL_DIR"] == k8s.MODEL_MOUNT
    assert "CLIPPER_CONTAINER_MODEL" not in env
    assert container["image"] == "clipper-mesh:0.1.0"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model"]
    assert mount["mountPath"] == k8s.MODEL_MOUNT and mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    if "--model-pvc" in source:
        assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        assert mount["subPath"] == "fraud/3"
        assert "initContainers" not in pod
    else:
        assert "emptyDir" in volume
        (init,) = pod["initContainers"]
        assert init["image"] == "registry.example.com/acme/fraud-model:3"
        assert init["command"] == ["cp", "-R", "/m/.", k8s.MODEL_MOUNT]
        assert init["volumeMounts"] == [{"name": "model", "mountPath": k8s.MODEL_MOUNT}]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("args, message", [
    (["--model", "m.joblib", "--model-pvc", "c"], "model directory"),
    (["--model-pvc", "c", "--model-image", "i:1"], "one source"),
    (["--model-pvc", "Bad_Claim"], "--model-pvc"),
    (["--model-pvc", "c", "--model-pvc-path", "../x"], "--model-pvc-path"),
    (["--model-image", "i:1", "--model-image-path", "m"], "--model-image-path"),
    ([], "--model is required"),
])
def test_model_sources_are_checked(capsys: pytest.CaptureFixture[str], args: list[str],
                                   message: str) -> None:
    code, out, err = _run(capsys, ["deploy-model", "--image", "i:1", "--name", "ok", *args])
    assert code == 2 and not out
    assert message in err
