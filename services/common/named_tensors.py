"""Several tensors by name: the inputs of one query, or the outputs of one answer.

An application (or model) either takes one unnamed tensor, as it always could, or
declares named ones: a list of TensorSpec, each with its `name` (features plus a
mask; a label plus probabilities). On the wire named tensors travel as
`map<string, Tensor>`; on the frontend a query's value is a `Value`: one
`clipper.v1.Tensor`, or a mapping name -> Tensor. In a container, a named query
is a `dict[str, np.ndarray]`.

Names are checked as a set first (a missing or unknown name is INVALID_ARGUMENT
that names both), then each tensor against its spec.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

from services.common import tensors
from services.common.errors import InvalidInput
from services.common.limits import DEFAULT_LIMITS, Limits, short_repr
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb

# One tensor (an application with one input or output), or several by name.
Value: TypeAlias = pb.Tensor | Mapping[str, pb.Tensor]
# Most named inputs or outputs one application or model may declare.
MAX_NAMED = 16
# What a tensor's name may hold: it goes into error messages and logs as it is.
_NAME = re.compile(r"[A-Za-z0-9_.:/-]+")


def describe(specs: Sequence[TensorSpec]) -> str:
    """`features: float32[4], mask: bool[4]`."""
    return ", ".join(f"{s.name}: {s.describe()}" for s in specs)


def specs_from_proto(msgs: Sequence[pb.TensorSpec], what: str,
                     limits: Limits = DEFAULT_LIMITS) -> tuple[TensorSpec, ...]:
    """Named specs (`what`: "inputs" or "outputs"), each named, once, within the limits."""
    if len(msgs) > MAX_NAMED:
        raise InvalidInput(f"{len(msgs)} {what} exceed the limit of {MAX_NAMED}")
    specs: list[TensorSpec] = []
    for i, msg in enumerate(msgs):
        if not msg.name:
            raise InvalidInput(f"{what}[{i}] has no name: each of several tensors is named")
        if not _NAME.fullmatch(msg.name):
            raise InvalidInput(f"{what}[{i}] name {short_repr(msg.name)}: letters, digits "
                               "and _ . : / - only")
        limits.check_length(f"{what}[{i}] name", msg.name, limits.name_length,
                            "--max-name-length")
        if len(msg.shape) > limits.rank:
            raise InvalidInput(f"{what}[{i}] ({short_repr(msg.name)}) of rank {len(msg.shape)} "
                               f"exceeds the limit of {limits.rank} dimensions (--max-rank)")
        try:
            specs.append(tensors.spec_from_proto(msg))
        except InvalidInput as exc:
            raise InvalidInput(f"{what}[{i}] ({short_repr(msg.name)}): {exc.message}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInput(f"{what} name {short_repr(twice[0])} more than once")
    return tuple(specs)


def check_names(specs: Sequence[TensorSpec], names: Iterable[str], what: str = "input") -> None:
    """Raise InvalidInput unless `names` are exactly the specs' names."""
    wanted = [s.name for s in specs]
    given = set(names)
    missing = [n for n in wanted if n not in given]
    unknown = sorted(itertools.islice((n for n in given if n not in wanted), 4))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {what} {', '.join(map(short_repr, missing))}")
        if unknown:
            parts.append(f"unknown {what} {', '.join(map(short_repr, unknown[:4]))}")
        raise InvalidInput(f"{'; '.join(parts)}: expected {what}s {describe(specs)}")


def decode(value: Mapping[str, pb.Tensor], specs: Sequence[TensorSpec],
           limits: Limits = DEFAULT_LIMITS, what: str = "input") -> dict[str, np.ndarray]:
    """Decode named tensors and check each against its spec (names first)."""
    check_names(specs, value, what)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        try:
            array = tensors.decode(value[spec.name], limits)
            spec.check(array)
        except InvalidInput as exc:
            raise InvalidInput(f"{what} {short_repr(spec.name)}: {exc.message}") from None
        arrays[spec.name] = array
    return arrays


def decode_any(value: Mapping[str, pb.Tensor],
               limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode named tensors without specs (each within `limits`)."""
    if len(value) > MAX_NAMED:
        raise InvalidInput(f"{len(value)} named tensors exceed the limit of {MAX_NAMED}")
    arrays: dict[str, np.ndarray] = {}
    for name, msg in value.items():
        try:
            arrays[name] = tensors.decode(msg, limits)
        except InvalidInput as exc:
            raise InvalidInput(f"tensor {short_repr(name)}: {exc.message}") from None
    return arrays


def encode(values: Mapping[str, Any]) -> pb.TensorMap:
    """A TensorMap of named arrays (or anything `tensors.encode` takes), at least one."""
    if not values:
        raise InvalidInput("the model answered no named output")
    out = pb.TensorMap()
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"named outputs need non-empty string names, got {name!r}")
        out.tensors[name].CopyFrom(tensors.encode(value))
    return out


def to_bytes(value: Value) -> bytes:
    """A value as bytes (what the prediction cache keeps): one tensor as it serializes
    (never starting with b"M"), named ones marked; `from_bytes` reads either back."""
    if isinstance(value, pb.Tensor):
        data: bytes = value.SerializeToString()
        return data
    return b"M" + pb.TensorMap(tensors=dict(value)).SerializeToString(deterministic=True)


def from_bytes(data: bytes) -> Value:
    if data[:1] == b"M":
        return dict(pb.TensorMap.FromString(data[1:]).tensors)
    return pb.Tensor.FromString(data)


def digest_named(value: Mapping[str, pb.Tensor], one: Any) -> str:
    """A digest of named tensors from each one's digest (`one(tensor) -> str`)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(value):
        h.update(name.encode() + b"\0" + one(value[name]).encode() + b"\0")
    return "m" + h.hexdigest()


def first_name(names: Iterable[str], order: Sequence[TensorSpec] = ()) -> str:
    """The first of `names` by `order` (declared outputs), else by name."""
    present = set(names)
    for spec in order:
        if spec.name in present:
            return spec.name
    return min(present)


def first(value: Value, order: Sequence[TensorSpec] = ()) -> pb.Tensor:
    """The tensor feedback scores: the one tensor, or the first named one (by `order`,
    else by name)."""
    if isinstance(value, pb.Tensor):
        return value
    return value[first_name(value, order)]
