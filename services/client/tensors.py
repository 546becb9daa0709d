"""numpy arrays to and from `clipper.v1.Tensor`, for clients.

The wire format is the mesh's own (`services.common.tensors`): numbers as raw
little-endian bytes in C order, strings and bytes as one `bytes_list` entry per
element. Arrays a client cannot send raise ValueError before any call is made.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.common import tensors as wire
from services.common.errors import InvalidInput
from services.generated.clipper.v1 import clipper_pb2 as pb

DTYPES = wire.DTYPES


def to_tensor(value: npt.ArrayLike) -> pb.Tensor:
    """Encode an array (or a scalar, str, bytes or nested list) as a Tensor message.

    Numeric dtypes keep their numpy dtype (so send `float32` to a `float32`
    application); str and bytes arrays become "string" and "bytes" tensors. Keep
    binary data in an object array: numpy's fixed-width bytes drop trailing NULs.
    """
    try:
        return wire.encode(value)
    except InvalidInput as exc:
        raise ValueError(str(exc)) from exc


def from_tensor(msg: pb.Tensor) -> np.ndarray:
    """Decode a Tensor message into a new, writable numpy array."""
    try:
        array = wire.decode(msg)
    except InvalidInput as exc:
        raise ValueError(f"cannot decode tensor: {exc}") from exc
    return array.copy()
