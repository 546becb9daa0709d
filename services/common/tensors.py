"""Conversion between `clipper.v1.Tensor` and numpy, with validation.

Numeric tensors are raw little-endian bytes in C order; "bytes" and "string"
tensors carry one `bytes_list` entry per element and become numpy object
arrays (of `bytes` or `str`). The core never sees protobuf messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidInput
from services.common.limits import DEFAULT_LIMITS, Limits, short_repr
from services.generated.clipper.v1 import clipper_pb2 as pb

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
}
OBJECT_DTYPES = ("bytes", "string")
DTYPES = (*NUMERIC_DTYPES, *OBJECT_DTYPES)


@dataclass(frozen=True)
class TensorSpec:
    """What an input (or output) must look like; -1 in `shape` matches any size. `name`
    is set when it is one of several named tensors (services/common/named_tensors.py)."""

    dtype: str
    shape: tuple[int, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidInput(f"unknown dtype {short_repr(self.dtype)}; "
                               f"expected one of {', '.join(DTYPES)}")
        if len(self.shape) > DEFAULT_LIMITS.rank:
            raise InvalidInput(f"input spec of rank {len(self.shape)} exceeds the limit of "
                               f"{DEFAULT_LIMITS.rank} dimensions")
        if any(d < -1 for d in self.shape):
            raise InvalidInput(f"bad shape {list(self.shape)}: sizes are >= 0, or -1 for any")

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"

    def check(self, array: np.ndarray) -> None:
        """Raise InvalidInput unless `array` (decoded) matches this spec."""
        got = dtype_name(array)
        if got != self.dtype:
            raise InvalidInput(f"expected dtype {self.dtype}, got {got}")
        if len(array.shape) != len(self.shape) or any(
            want not in (-1, have) for want, have in zip(self.shape, array.shape, strict=True)
        ):
            raise InvalidInput(f"expected shape {list(self.shape)}, got {list(array.shape)}")


def spec_from_proto(msg: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(dtype=msg.dtype, shape=tuple(msg.shape), name=msg.name)


def spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(dtype=spec.dtype, shape=list(spec.shape), name=spec.name)


def dtype_name(array: np.ndarray) -> str:
    """Our dtype name for a numpy array."""
    if array.dtype == object:
        flat = array.reshape(-1)
        return "string" if flat.size and isinstance(flat[0], str) else "bytes"
    if array.dtype.kind == "U":
        return "string"
    if array.dtype.kind == "S":
        return "bytes"
    name = array.dtype.name
    if name not in NUMERIC_DTYPES:
        raise InvalidInput(f"unsupported dtype {name}; expected one of {', '.join(DTYPES)}")
    return name


def decode(msg: pb.Tensor, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Validate and decode a Tensor message into a numpy array (zero-copy for numbers).

    The shape is checked against `limits` (rank first) before anything else.
    """
    shape = tuple(msg.shape)
    count = limits.check_shape(shape)
    if count == 0:
        raise InvalidInput(f"empty tensor (shape {list(shape)}): expected at least one element")
    if msg.dtype in OBJECT_DTYPES:
        if msg.raw:
            raise InvalidInput(f"dtype {msg.dtype} travels in bytes_list, not raw")
        if len(msg.bytes_list) != count:
            raise InvalidInput(
                f"shape {list(shape)} needs {count} bytes_list entries, got {len(msg.bytes_list)}"
            )
        items: list[Any] = list(msg.bytes_list)
        limits.check_bytes(sum(map(len, items)))
        if msg.dtype == "string":
            try:
                items = [b.decode("utf-8") for b in items]
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"string tensor holds invalid UTF-8: {exc}") from exc
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = NUMERIC_DTYPES.get(msg.dtype)
    if dtype is None:
        raise InvalidInput(f"unknown dtype {short_repr(msg.dtype)}; "
                           f"expected one of {', '.join(DTYPES)}")
    if msg.bytes_list:
        raise InvalidInput(f"dtype {msg.dtype} travels in raw, not bytes_list")
    expected = count * dtype.itemsize
    if len(msg.raw) != expected:
        raise InvalidInput(
            f"shape {list(shape)} of {msg.dtype} needs {expected} bytes, got {len(msg.raw)}"
        )
    return np.frombuffer(msg.raw, dtype=dtype).reshape(shape)


def encode(value: Any) -> pb.Tensor:
    """Encode a numpy array, scalar, str, bytes or nested list as a Tensor message."""
    if isinstance(value, (str, bytes)):
        value = np.array([value], dtype=object).reshape(())
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "US":
        flat = array.reshape(-1)
        name = dtype_name(array)
        items = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in flat]
        return pb.Tensor(dtype=name, shape=list(array.shape), bytes_list=items)
    name = dtype_name(array)
    data = np.ascontiguousarray(array, dtype=NUMERIC_DTYPES[name]).tobytes()
    return pb.Tensor(dtype=name, shape=list(array.shape), raw=data)


def tensor_key(msg: pb.Tensor) -> bytes:
    """A canonical byte key: equal keys mean equal tensors (used for votes and caching)."""
    key: bytes = msg.SerializeToString(deterministic=True)
    return key

