"""Open Inference Protocol tensors to and from `clipper.v1.Tensor`.

An OIP tensor has a datatype (BOOL, INT8.., UINT8.., FP16/FP32/FP64, BYTES),
a shape and either typed `contents` or one `raw_input_contents` entry: the
little-endian elements in row-major order, or for BYTES each element as a
4-byte little-endian length and its bytes (the layout Triton's clients use).
FP16 travels only raw. A leading batch dimension splits into one query per row.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from services.common import tensors
from services.common.errors import ClipperError, InvalidInput
from services.common.limits import DEFAULT_LIMITS, Limits, short_repr
from services.common.tensors import NUMERIC_DTYPES, OBJECT_DTYPES, TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.inference import grpc_service_pb2 as oip

TO_DTYPE = {
    "BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "bytes",
}
TO_DATATYPE = {**{v: k for k, v in TO_DTYPE.items()}, "string": "BYTES"}
# The typed `contents` field of each dtype (float16 has none: raw only).
CONTENTS_FIELD = {
    "bool": "bool_contents",
    "int8": "int_contents", "int16": "int_contents", "int32": "int_contents",
    "int64": "int64_contents",
    "uint8": "uint_contents", "uint16": "uint_contents", "uint32": "uint_contents",
    "uint64": "uint64_contents",
    "float32": "fp32_contents", "float64": "fp64_contents",
    "bytes": "bytes_contents", "string": "bytes_contents",
}
# The numpy type each typed field holds, before narrowing to the tensor's dtype.
_FIELD_DTYPE = {
    "bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
    "uint_contents": np.uint32, "uint64_contents": np.uint64,
    "fp32_contents": np.float32, "fp64_contents": np.float64,
}
_LENGTH = struct.Struct("<I")


def datatype(dtype: str) -> str:
    """The OIP datatype of one of our dtypes."""
    return TO_DATATYPE[dtype]


def to_tensor(
    inp: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, spec: TensorSpec,
    limits: Limits = DEFAULT_LIMITS,
) -> pb.Tensor:
    """Our Tensor for one OIP input (`raw`: its raw_input_contents entry, if any)."""
    name = short_repr(inp.name)
    dtype = TO_DTYPE.get(inp.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input {name}: unknown datatype {short_repr(inp.datatype)}; "
            f"expected one of {', '.join(TO_DTYPE)}"
        )
    if dtype == "bytes" and spec.dtype == "string":
        dtype = "string"
    count = limits.check_shape(inp.shape, f"input {name}")
    shape = list(inp.shape)
    if raw is not None:
        if inp.HasField("contents"):
            raise InvalidInput(f"input {name} has both contents and raw_input_contents")
        if dtype in OBJECT_DTYPES:
            return pb.Tensor(dtype=dtype, shape=shape, bytes_list=_split_bytes(raw, count))
        return pb.Tensor(dtype=dtype, shape=shape, raw=raw)
    field = CONTENTS_FIELD.get(dtype)
    if field is None:
        raise InvalidInput(f"input {name}: {inp.datatype} travels only in raw_input_contents")
    values = getattr(inp.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {name}: shape {shape} needs {count} {field} values, got {len(values)}"
        )
    if dtype in OBJECT_DTYPES:
        return pb.Tensor(dtype=dtype, shape=shape, bytes_list=list(values))
    return pb.Tensor(dtype=dtype, shape=shape, raw=_narrow(values, field, dtype).tobytes())


def _narrow(values: Any, field: str, dtype: str) -> np.ndarray:
    wide: np.ndarray = np.asarray(values, dtype=_FIELD_DTYPE[field])
    target = NUMERIC_DTYPES[dtype]
    array = wide.astype(target)
    if wide.dtype.kind in "iu" and not np.array_equal(array, wide):
        raise InvalidInput(f"{field} holds values out of range for {datatype(dtype)}")
    return array


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw) and len(items) < count:
        if offset + _LENGTH.size > len(raw):
            break
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            break
        items.append(raw[offset:offset + size])
        offset += size
    if len(items) != count or offset != len(raw):
        raise InvalidInput(
            f"raw BYTES input must be {count} elements, each a 4-byte little-endian length "
            f"and its bytes ({len(raw)} bytes do not parse as that)"
        )
    return items


def split_rows(
    value: pb.Tensor, spec: TensorSpec, max_rows: int, limits: Limits = DEFAULT_LIMITS
) -> list[pb.Tensor] | None:
    """Rows of a batch `[N, *spec]` as separate tensors; None when `value` is one query."""
    shape = tuple(value.shape)
    if _matches(shape, spec.shape):
        return None
    if len(shape) != len(spec.shape) + 1 or not _matches(shape[1:], spec.shape) or not shape[0]:
        raise InvalidInput(
            f"expected shape {list(spec.shape)}, or [N, {', '.join(map(str, spec.shape))}] "
            f"for a batch of N, got {list(shape)}"
        )
    rows, row_shape = shape[0], list(shape[1:])
    if rows > max_rows:
        raise InvalidInput(f"a batch of {rows} rows exceeds the limit of {max_rows}")
    tensors.decode(value, limits)  # validates dtype and size before slicing
    if value.dtype in OBJECT_DTYPES:
        per = len(value.bytes_list) // rows
        return [
            pb.Tensor(dtype=value.dtype, shape=row_shape,
                      bytes_list=value.bytes_list[i * per:(i + 1) * per])
            for i in range(rows)
        ]
    per = len(value.raw) // rows
    return [
        pb.Tensor(dtype=value.dtype, shape=row_shape, raw=value.raw[i * per:(i + 1) * per])
        for i in range(rows)
    ]


def _matches(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(shape) == len(want) and all(w in (-1, s) for w, s in zip(want, shape, strict=True))


def stack_rows(rows: list[pb.Tensor]) -> pb.Tensor:
    """One tensor `[N, *row shape]` from N answers of equal dtype and shape."""
    first = rows[0]
    for row in rows[1:]:
        if row.dtype != first.dtype or row.shape != first.shape:
            raise ClipperError(
                f"rows of the batch were answered as {first.dtype}{list(first.shape)} and "
                f"{row.dtype}{list(row.shape)}; send them as separate requests"
            )
    shape = [len(rows), *first.shape]
    if first.dtype in OBJECT_DTYPES:
        return pb.Tensor(dtype=first.dtype, shape=shape,
                         bytes_list=[b for row in rows for b in row.bytes_list])
    return pb.Tensor(dtype=first.dtype, shape=shape, raw=b"".join(row.raw for row in rows))


def to_output(
    value: pb.Tensor, name: str, raw: bool
) -> tuple[oip.ModelInferResponse.InferOutputTensor, bytes | None]:
    """The OIP output for `value`, with its raw contents when `raw` (always for FP16)."""
    tensors.decode(value)
    out = oip.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype(value.dtype), shape=list(value.shape)
    )
    if value.dtype in OBJECT_DTYPES:
        if raw:
            return out, b"".join(_LENGTH.pack(len(b)) + b for b in value.bytes_list)
        out.contents.bytes_contents.extend(value.bytes_list)
        return out, None
    if raw or value.dtype not in CONTENTS_FIELD:
        return out, value.raw
    values = tensors.decode(value).reshape(-1).tolist()
    getattr(out.contents, CONTENTS_FIELD[value.dtype]).extend(values)
    return out, None
