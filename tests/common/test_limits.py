"""Bounds checked before any work: shapes, names, addresses, counts."""

from __future__ import annotations

import pytest

from services.common import tensors
from services.common.errors import InvalidInput, Overloaded
from services.common.limits import DEFAULT_LIMITS, Limits
from services.generated.clipper.v1 import clipper_pb2 as pb


def test_a_hostile_rank_is_refused_before_its_sizes_are_multiplied() -> None:
    # 16,000 dimensions of 2**62: multiplying them out would take the CPU for seconds.
    with pytest.raises(InvalidInput, match=r"rank 16000 exceeds the limit of 32.*--max-rank"):
        DEFAULT_LIMITS.check_shape([1 << 62] * 16_000)


def test_the_element_count_stops_at_the_limit() -> None:
    with pytest.raises(InvalidInput, match=r"exceeds the limit of 16777216 elements"):
        DEFAULT_LIMITS.check_shape([1 << 62] * 32)
    assert DEFAULT_LIMITS.check_shape([2] * 24) == 1 << 24
    assert DEFAULT_LIMITS.check_shape([1] * 32) == 1
    assert DEFAULT_LIMITS.check_shape([0, 1 << 62]) == 0
    with pytest.raises(InvalidInput, match="sizes must be >= 0"):
        DEFAULT_LIMITS.check_shape([3, -1])


def test_decode_applies_the_limits_it_is_given() -> None:
    small = Limits(rank=2, elements=8, tensor_bytes=10)
    with pytest.raises(InvalidInput, match="rank 3"):
        tensors.decode(pb.Tensor(dtype="float32", shape=[1, 1, 1], raw=b"\0" * 4), small)
    with pytest.raises(InvalidInput, match="8 elements"):
        tensors.decode(pb.Tensor(dtype="uint8", shape=[9], raw=b"\0" * 9), small)
    with pytest.raises(InvalidInput, match="11 bytes exceeds the limit of 10"):
        tensors.decode(pb.Tensor(dtype="bytes", shape=[2], bytes_list=[b"x" * 5, b"y" * 6]),
                       small)
    assert tensors.decode(pb.Tensor(dtype="uint8", shape=[8], raw=b"\0" * 8), small).size == 8


def test_a_huge_dtype_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidInput) as caught:
        tensors.decode(pb.Tensor(dtype="x" * 100_000, shape=[1], raw=b"\0"))
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize("name", ["digits", "digits-logreg", "m_1.2", "A9", "x" * 128])
def test_plain_names_pass(name: str) -> None:
    DEFAULT_LIMITS.check_name("model", name)


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ("x" * 129, "129 characters exceeds the limit of 128"),
    ("a/b", "not allowed"),
    ("a:b", "not allowed"),
    ("a b", "not allowed"),
    ("-lead", "not allowed"),
    ("caf\u00e9", "not allowed"),
    ("a\nb", "not allowed"),
])
def test_names_that_could_collide_or_mislead_are_refused(name: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        DEFAULT_LIMITS.check_name("application", name)


@pytest.mark.parametrize("address", ["127.0.0.1:5000", "pod.ns.svc:1", "[::1]:65535"])
def test_addresses_are_host_and_port(address: str) -> None:
    DEFAULT_LIMITS.check_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", ":80", "host:0", "host:99999", "host:x",
                                     "ho st:80", "h" * 300 + ":80"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidInput):
        DEFAULT_LIMITS.check_address(address)


def test_counts_say_resource_exhausted_with_the_flag() -> None:
    Limits.check_count("applications", 9, 10, "--max-applications")
    with pytest.raises(Overloaded, match=r"limit of 10 is reached \(--max-applications\)"):
        Limits.check_count("applications", 10, 10, "--max-applications")


def test_policy_params_are_bounded_in_number_and_length() -> None:
    limits = Limits(policy_params=2, param_length=4)
    limits.check_params({"a": "1", "b": "1234"})
    with pytest.raises(InvalidInput, match="3 policy_params exceed the limit of 2"):
        limits.check_params({"a": "1", "b": "2", "c": "3"})
    with pytest.raises(InvalidInput, match="--max-param-length"):
        limits.check_params({"a": "12345"})
