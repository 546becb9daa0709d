"""The client library's numpy <-> Tensor conversion and its errors, without a server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.client import (
    ClientError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    Prediction,
    ResourceExhaustedError,
    UnavailableError,
    from_tensor,
    to_tensor,
)
from services.client.client import feedback_request, predict_request
from services.client.errors import error_for_status
from services.generated.clipper.v1 import clipper_pb2 as pb


@pytest.mark.parametrize(
    "dtype",
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"],
)
def test_numeric_arrays_round_trip_with_dtype_and_shape(dtype: str) -> None:
    array = (np.arange(6) % 2 if dtype == "bool" else np.arange(6)).astype(dtype).reshape(2, 3)
    msg = to_tensor(array)
    assert msg.dtype == dtype and list(msg.shape) == [2, 3] and len(msg.raw) == array.nbytes
    back = from_tensor(msg)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3)
    np.testing.assert_array_equal(back, array)


def test_raw_bytes_are_little_endian_in_c_order() -> None:
    big_endian_fortran = np.asfortranarray(np.array([[1, 2], [3, 4]], dtype=">i2"))
    assert to_tensor(big_endian_fortran).raw == b"\x01\x00\x02\x00\x03\x00\x04\x00"


def test_decoded_arrays_are_writable_copies() -> None:
    msg = to_tensor(np.array([1.5, 2.5], np.float32))
    out = from_tensor(msg)
    out[0] = 9
    np.testing.assert_array_equal(from_tensor(msg), [1.5, 2.5])


def test_scalars_strings_and_bytes() -> None:
    assert from_tensor(to_tensor(np.int64(7))).shape == ()
    assert to_tensor(3).dtype == "int64" and to_tensor(0.5).dtype == "float64"
    words = np.array(["a", "héllo"])
    assert to_tensor(words).dtype == "string"
    assert from_tensor(to_tensor(words)).tolist() == ["a", "héllo"]
    # Object arrays keep bytes exactly (numpy's fixed-width "S" drops trailing NULs).
    blobs = np.array([b"\x00", b"z"], dtype=object)
    assert to_tensor(blobs).dtype == "bytes"
    assert from_tensor(to_tensor(blobs)).tolist() == [b"\x00", b"z"]


def test_what_cannot_be_sent_or_read_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="complex128"):
        to_tensor(np.zeros(2, np.complex128))
    with pytest.raises(ValueError, match="needs 16 bytes, got 15"):
        from_tensor(pb.Tensor(dtype="float32", shape=[4], raw=b"\x00" * 15))


def test_requests() -> None:
    query = predict_request("digits", np.zeros(64, np.float32), "user-1", "q1")
    assert (query.application, query.context_key, query.query_id) == ("digits", "user-1", "q1")
    assert list(query.input.shape) == [64] and query.input.dtype == "float32"
    by_id = feedback_request("digits", 3, "q1", None, "")
    assert by_id.query_id == "q1" and not by_id.HasField("input")
    assert from_tensor(by_id.label).item() == 3
    by_input = feedback_request("digits", 3, "", np.ones(64, np.float32), "")
    assert by_input.HasField("input")
    with pytest.raises(ValueError, match="query_id"):
        feedback_request("digits", 3, "", None, "")


def test_prediction_from_proto() -> None:
    reply = pb.PredictResponse(query_id="q", output=to_tensor(np.int64(4)), default_used=True,
                               default_reason="deadline", models=["m:1"],
                               missing_models=["n"], confidence=0.5)
    p = Prediction.from_proto(reply)
    assert (p.query_id, int(p.output), p.default_used, p.default_reason) == ("q", 4, True,
                                                                             "deadline")
    assert (p.models, p.missing_models, p.confidence) == (("m:1",), ("n",), 0.5)
    assert p.ensemble_output is None
    reply.ensemble_output.CopyFrom(to_tensor(np.int64(7)))
    assert Prediction.from_proto(reply).ensemble_output == 7


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.INTERNAL, ClientError),
    ],
)
def test_errors_by_status(code: grpc.StatusCode, cls: type[ClientError]) -> None:
    error = error_for_status(code, "what went wrong")
    assert type(error) is cls and error.code is code and error.details == "what went wrong"
    assert str(error) == f"{code.name}: what went wrong"
