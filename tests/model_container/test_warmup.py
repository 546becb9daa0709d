"""Warm-up inputs: made from the specs, or given; for named inputs, dicts of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.tensors import TensorSpec
from services.model_container.sdk import ModelSpecs
from services.model_container.warmup import WarmupConfig, WarmupFailed, warmup_inputs

NAMED = ModelSpecs(inputs=(TensorSpec("float32", (4,), "features"),
                           TensorSpec("bool", (-1,), "mask")))


def test_named_inputs_are_made_from_their_specs() -> None:
    inputs = warmup_inputs(WarmupConfig(), NAMED)
    assert inputs
    for query in inputs:
        assert sorted(query) == ["features", "mask"]
        assert (query["features"].dtype, query["features"].shape) == (np.float32, (4,))
        assert (query["mask"].dtype, query["mask"].shape) == (np.bool_, (1,))


def test_named_inputs_may_be_given_as_json() -> None:
    given = json.dumps({"features": [[1, 2, 3, 4], [5, 6, 7, 8]], "mask": [[1, 0], [0, 1]]})
    inputs = warmup_inputs(WarmupConfig(inputs=given), NAMED)
    assert inputs is not None and len(inputs) == 2
    assert inputs[1]["features"].tolist() == [5, 6, 7, 8]
    assert inputs[0]["mask"].dtype == np.bool_
    with pytest.raises(WarmupFailed, match="missing input 'mask'"):
        warmup_inputs(WarmupConfig(inputs=json.dumps({"features": [[1, 2, 3, 4]]})), NAMED)
    with pytest.raises(WarmupFailed, match=r"expected shape \[4\]"):
        warmup_inputs(WarmupConfig(inputs=json.dumps(
            {"features": [[1, 2]], "mask": [[1]]})), NAMED)
