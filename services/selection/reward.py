"""How good one model's answer was, given the true label: a reward in [0, 1].

Classes (integers, booleans, strings, bytes) score 1 for an exact match and 0
otherwise. Numbers (floating point) score by relative error: 1 - min(1, mean
|output - label| / (mean |label| + eps)), so a regression model close to the
truth is rewarded almost fully and one off by 100% or more gets nothing.
"""

from __future__ import annotations

import math

import numpy as np

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb

_EPS = 1e-9


def reward(output: pb.Tensor, label: pb.Tensor) -> float:
    if output.dtype in ("bytes", "string") or label.dtype in ("bytes", "string"):
        return float(tensors.tensor_key(output) == tensors.tensor_key(label))
    got, want = tensors.decode(output), tensors.decode(label)
    if got.size != want.size:
        return 0.0
    if np.issubdtype(want.dtype, np.floating) or np.issubdtype(got.dtype, np.floating):
        got64 = got.astype(np.float64).ravel()
        want64 = want.astype(np.float64).ravel()
        error = float(np.mean(np.abs(got64 - want64)))
        scale = float(np.mean(np.abs(want64))) + _EPS
        if not (math.isfinite(error) and math.isfinite(scale)):
            return 0.0  # a NaN or infinite answer earns nothing (and must not poison the state)
        return 1.0 - min(1.0, error / scale)
    return float(np.array_equal(got.ravel(), want.ravel()))
