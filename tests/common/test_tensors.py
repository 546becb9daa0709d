import numpy as np
import pytest

from services.common import tensors
from services.common.errors import InvalidInput
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb


@pytest.mark.parametrize("dtype", list(tensors.NUMERIC_DTYPES))
def test_numeric_round_trip(dtype: str) -> None:
    array = (np.arange(12) % 2 if dtype == "bool" else np.arange(12)).astype(dtype).reshape(3, 4)
    msg = tensors.encode(array)
    assert msg.dtype == dtype and list(msg.shape) == [3, 4]
    assert len(msg.raw) == array.nbytes
    np.testing.assert_array_equal(tensors.decode(msg), array)


def test_raw_bytes_are_little_endian() -> None:
    msg = tensors.encode(np.array([1], dtype=">i4"))
    assert msg.raw == b"\x01\x00\x00\x00"


def test_strings_and_bytes_round_trip() -> None:
    for value, dtype in ((["a", "héllo"], "string"), ([b"\x00\x01", b"z"], "bytes")):
        msg = tensors.encode(np.array(value, dtype=object))
        assert msg.dtype == dtype and len(msg.bytes_list) == 2
        assert tensors.decode(msg).tolist() == value


def test_scalars() -> None:
    assert tensors.decode(tensors.encode(np.int64(3))).item() == 3
    assert tensors.decode(tensors.encode("x")).item() == "x"


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (pb.Tensor(dtype="float32", shape=[4], raw=b"\x00" * 15), "needs 16 bytes, got 15"),
        (pb.Tensor(dtype="complex64", shape=[1], raw=b"\x00" * 8), "unknown dtype"),
        (pb.Tensor(dtype="float32", shape=[0], raw=b""), "empty tensor"),
        (pb.Tensor(dtype="float32", shape=[-2], raw=b""), "sizes must be >= 0"),
        (pb.Tensor(dtype="string", shape=[2], bytes_list=[b"a"]), "needs 2 bytes_list"),
        (pb.Tensor(dtype="string", shape=[1], bytes_list=[b"\xff"]), "invalid UTF-8"),
    ],
)
def test_decode_rejects_with_a_message(msg: pb.Tensor, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        tensors.decode(msg)


def test_spec_check() -> None:
    spec = TensorSpec("float32", (-1, 8))
    spec.check(np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 8\], got \[3, 7\]"):
        spec.check(np.zeros((3, 7), dtype=np.float32))
    with pytest.raises(InvalidInput, match="expected dtype float32, got float64"):
        spec.check(np.zeros((3, 8)))


def test_equal_tensors_have_equal_keys() -> None:
    a = tensors.encode(np.array([1.0, 2.0], dtype=np.float32))
    b = tensors.encode(np.array([1.0, 2.0], dtype=np.float32))
    c = tensors.encode(np.array([1.0, 2.5], dtype=np.float32))
    assert tensors.tensor_key(a) == tensors.tensor_key(b) != tensors.tensor_key(c)
