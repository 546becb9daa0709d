"""A container warms its model up before it announces itself: the first queries find it
set up, and the batcher's latency model already knows it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from services.common.metrics import read_metrics, sample
from services.common.processes import start_service
from tests.helpers.mesh import container_env

MODEL = "tests.helpers.models:RecordsBatches"


def _start(tmp_path: Path, *flags: str) -> tuple[list[str], float, str]:
    """Start a container (no frontend: ready once started) and stop it; what the model
    had run when it was ready, the warm-up time it exported (ms), and its log."""
    record, log = tmp_path / "batches.txt", tmp_path / "container.log"
    record.touch()
    proc = start_service(
        "services.model_container",
        ["--model", MODEL, "--name", "warm", "--frontend", "", "--metrics-port", "0",
         "--max-batch-size", "8", *flags],
        name="warm", log_path=log,
        env={**container_env("warm"), "CLIPPER_TEST_BATCH_LOG": str(record)})
    try:
        ran_when_ready = record.read_text().split()
        url = re.search(r"metrics at (http://\S+/metrics)", log.read_text())
        assert url is not None
        warmup_ms = sample(read_metrics(url.group(1)), "clipper_warmup_duration_milliseconds")
    finally:
        proc.stop()
    return ran_when_ready, warmup_ms, log.read_text()


def test_the_model_is_warm_before_the_container_is_ready(tmp_path: Path) -> None:
    sizes, metric_ms, log = _start(tmp_path, "--input-dtype", "float32", "--input-shape",
                                   "4", "--warmup-rounds", "2")
    # the lazy set-up, then the untimed first batch, then 2 rounds of 1, 2, 4, 8
    assert sizes == ["setup", "1", *(["1", "2", "4", "8"] * 2)]
    line = re.search(r"warm-up: 9 batches of sizes 1,2,4,8 in ([\d.]+) ms \(the first "
                     r"([\d.]+) ms\); a batch takes", log)
    assert line is not None, log
    total_ms, first_ms = float(line.group(1)), float(line.group(2))
    assert first_ms >= 300 and total_ms >= first_ms  # the set-up was paid here
    assert metric_ms == pytest.approx(total_ms, rel=0.01)


def test_given_inputs_and_sizes(tmp_path: Path) -> None:
    inputs = tmp_path / "warm.npy"
    np.save(inputs, np.arange(12, dtype=np.float32).reshape(3, 4))
    ran, _, _ = _start(tmp_path, "--warmup-inputs", str(inputs), "--warmup-batch-sizes",
                       "3,50", "--warmup-rounds", "1")
    assert ran == ["setup", "1", "3", "8"]  # 50 capped at --max-batch-size


def test_no_warm_up_without_inputs_or_when_off(tmp_path: Path) -> None:
    ran, metric_ms, log = _start(tmp_path)
    assert ran == [] and metric_ms == 0 and "no warm-up: no input spec" in log
    off = tmp_path / "off"
    off.mkdir()
    ran, _, _ = _start(off, "--input-dtype", "float32", "--input-shape", "4",
                       "--warmup-rounds", "0")
    assert ran == []


def test_a_model_that_fails_its_warm_up_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exit code 2"):
        start_service(
            "services.model_container",
            ["--model", "tests.helpers.models:FailsOnNegative", "--name", "warm",
             "--frontend", "", "--warmup-inputs", "[[-1.0, 2.0]]"],
            name="warm", log_path=tmp_path / "c.log", env=container_env("warm"))
    assert "the model raised on a warm-up batch of 1: ValueError: negative input" in (
        tmp_path / "c.log").read_text()
