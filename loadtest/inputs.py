"""Distinct request messages for ghz, so that no call is a prediction-cache hit.

A ghz config carries one request (`data`); every call sends the same input, and
after the first call every answer comes from the frontend's prediction cache. Here
the config's request is the template: its float32 input tensor is replaced, call
after call, by rows of the digits data set (for digits-shaped inputs; otherwise the
template's own values), each with its own noise below `NOISE` per value and a fresh
random draw per run, so that no two calls of a run, nor of two runs against the same
mesh, send the same bytes. The messages go to a file of count-delimited binary
messages (ghz `-B`), which ghz parses once and serves round robin. `--cache hot`
writes the config's one request instead, to measure the cache on purpose.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.inference import grpc_service_pb2 as oip

# Added to every value (digits' pixels are 0..16): far below what changes a digit.
NOISE = 0.01


@dataclass(frozen=True)
class CallInput:
    """Where a call's request keeps its float32 input tensor."""

    request: type[Message]
    is_float32: Callable[[Any], bool]
    raw: Callable[[Any], bytes]
    set_raw: Callable[[Any, bytes], None]


def _set_predict_raw(msg: pb.PredictRequest, raw: bytes) -> None:
    msg.input.raw = raw


def _set_infer_raw(msg: oip.ModelInferRequest, raw: bytes) -> None:
    msg.raw_input_contents[0] = raw


REQUESTS: dict[str, CallInput] = {
    "clipper.v1.Frontend/Predict": CallInput(
        pb.PredictRequest,
        is_float32=lambda m: m.input.dtype == "float32" and not m.input.bytes_list,
        raw=lambda m: m.input.raw,
        set_raw=_set_predict_raw,
    ),
    "inference.GRPCInferenceService/ModelInfer": CallInput(
        oip.ModelInferRequest,
        is_float32=lambda m: len(m.inputs) == 1 and m.inputs[0].datatype == "FP32"
        and len(m.raw_input_contents) == 1,
        raw=lambda m: m.raw_input_contents[0],
        set_raw=_set_infer_raw,
    ),
}


def template(config: dict[str, Any]) -> tuple[CallInput, Message]:
    """The config's call and its request, parsed; ValueError when distinct inputs
    cannot be made for it."""
    call = str(config.get("call", ""))
    spec = REQUESTS.get(call)
    if spec is None:
        raise ValueError(f"distinct inputs are made for {', '.join(REQUESTS)}; this config "
                         f"calls {call!r}: run it with --cache hot (its one input)")
    msg = json_format.ParseDict(config.get("data") or {}, spec.request())
    if not spec.is_float32(msg):
        raise ValueError(f"{call}: distinct inputs are made for one float32 input tensor; "
                         "run this config with --cache hot (its one input)")
    return spec, msg


def app_name(config: dict[str, Any]) -> str:
    """The application (OIP: model) the config's request names; "" for other calls."""
    data = config.get("data")
    if not isinstance(data, dict):
        return ""
    return str(data.get("application") or data.get("model_name") or "")


def base_rows(values: np.ndarray) -> np.ndarray:
    """Rows to vary: the digits data set when the input has its size, else `values`."""
    rows = _digits_rows()
    return rows if values.size == rows.shape[1] else values.reshape(1, -1)


@functools.cache
def _digits_rows() -> np.ndarray:
    from services.mesh import digits  # scikit-learn's bundled data set, no download

    x_train, x_test, _, _ = digits.split()
    return np.concatenate([x_test, x_train]).astype(np.float32)


def write_requests(config: dict[str, Any], path: Path, count: int, app: str = "",
                   distinct: bool = True, seed: int | None = None) -> None:
    """Write the config's request to `path` as count-delimited binary messages (ghz `-B`):
    `count` of them with no two inputs alike, or (not `distinct`) the one as it is.
    `app` replaces the application (OIP: model) name."""
    spec, msg = template(config)
    if app:
        _rename(msg, app)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        if not distinct:
            _write_delimited(out, msg)
            return
        values = np.frombuffer(spec.raw(msg), dtype="<f4")
        rows = base_rows(values)
        rng = np.random.default_rng(seed)
        for i in range(count):
            row = rows[i % len(rows)] + rng.uniform(0.0, NOISE, values.size)
            spec.set_raw(msg, row.astype("<f4").tobytes())
            _write_delimited(out, msg)


def _write_delimited(out: BinaryIO, msg: Message) -> None:
    """One message, preceded by its length as a varint (what ghz's -B file holds)."""
    body = msg.SerializeToString()
    size = len(body)
    head = bytearray()
    while size > 0x7F:
        head.append((size & 0x7F) | 0x80)
        size >>= 7
    head.append(size)
    out.write(bytes(head) + body)


def _rename(msg: Message, app: str) -> None:
    if isinstance(msg, pb.PredictRequest):
        msg.application = app
    elif isinstance(msg, oip.ModelInferRequest):
        msg.model_name = app
