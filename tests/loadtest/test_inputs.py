"""The load test's inputs: distinct per call and per run, or the config's one (hot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import Message

from loadtest import inputs
from loadtest.ghz import CONFIGS


def read_delimited(path: Path, request: type[Message]) -> list[Any]:
    """The count-delimited messages of a ghz -B file."""
    data, messages, at = path.read_bytes(), [], 0
    while at < len(data):
        size = shift = 0
        while True:
            byte = data[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        msg = request()
        msg.ParseFromString(data[at:at + size])
        messages.append(msg)
        at += size
    return messages


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda c: c.stem)
def test_distinct_inputs_differ_across_calls_and_runs(config_path: Path, tmp_path: Path) -> None:
    config = json.loads(config_path.read_text())
    spec, _ = inputs.template(config)
    count = 2500  # more than the digits data set's 1797 rows: rows are reused, made unique
    inputs.write_requests(config, tmp_path / "a.bin", count)
    inputs.write_requests(config, tmp_path / "b.bin", count)
    first = [spec.raw(m) for m in read_delimited(tmp_path / "a.bin", spec.request)]
    second = [spec.raw(m) for m in read_delimited(tmp_path / "b.bin", spec.request)]
    assert len(first) == count and len(set(first)) == count
    assert not set(first) & set(second)
    values = np.frombuffer(first[0], dtype="<f4")
    assert values.shape == (64,) and values.min() >= 0 and values.max() < 16 + inputs.NOISE


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda c: c.stem)
def test_hot_writes_the_configs_one_request_renamed(config_path: Path, tmp_path: Path) -> None:
    config = json.loads(config_path.read_text())
    spec, template = inputs.template(config)
    inputs.write_requests(config, tmp_path / "hot.bin", 1000, app="digits-one", distinct=False)
    (only,) = read_delimited(tmp_path / "hot.bin", spec.request)
    assert spec.raw(only) == spec.raw(template)
    assert inputs.app_name(config) == "digits"
    assert "digits-one" in (getattr(only, "application", ""), getattr(only, "model_name", ""))


def test_a_call_without_a_float32_input_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="--cache hot"):
        inputs.template({"call": "clipper.v1.Frontend/Feedback", "data": {}})
    bytes_input = {"call": "clipper.v1.Frontend/Predict",
                   "data": {"application": "a", "input": {"dtype": "bytes",
                                                         "bytes_list": ["YQ=="]}}}
    with pytest.raises(ValueError, match="float32"):
        inputs.template(bytes_input)
