"""Worker processes: the wire format, answers, errors, and a worker that dies."""

from __future__ import annotations

import numpy as np
import pytest

from services.model_container.process_worker import (
    ProcessPool,
    WorkerDied,
    WorkerLoadFailed,
    decode_batch,
    encode_batch,
)


@pytest.mark.parametrize("values", [
    [np.arange(4, dtype=np.float32), np.ones(4, np.float32)],
    [np.arange(6, dtype=np.int64).reshape(2, 3)] * 3,
    [np.float64(1.5), np.float64(-2)],
    [np.array(3.0), np.array(4.0)],
])
def test_arrays_of_one_dtype_and_shape_travel_raw(values: list[np.ndarray]) -> None:
    header, payload = encode_batch(values)
    assert header[0] == "raw"
    decoded = decode_batch(header, bytearray(payload))
    assert len(decoded) == len(values)
    for got, sent in zip(decoded, values, strict=True):
        assert type(got) is type(sent) and got.dtype == sent.dtype
        assert np.array_equal(got, sent)


@pytest.mark.parametrize("values", [
    [np.array(["a", "bc"], dtype=object)],
    [np.ones(2), np.ones(3)],
    [np.ones(2, np.float32), np.ones(2, np.float64)],
    ["text", 1.5],
])
def test_anything_else_is_pickled(values: list[object]) -> None:
    header, payload = encode_batch(values)
    assert header[0] == "pickle"
    decoded = decode_batch(header, bytearray(payload))
    assert [repr(v) for v in decoded] == [repr(v) for v in values]


async def test_a_pool_answers_as_the_model_does_and_passes_on_its_errors() -> None:
    pool = ProcessPool("tests.helpers.models:FailsOnNegative", 2, 1)
    await pool.start()
    try:
        inputs = [np.full(4, i, np.float32) for i in range(5)]
        assert await pool.run(inputs, 10) == [4.0 * i for i in range(5)]
        with pytest.raises(ValueError, match="negative input"):
            await pool.run([np.full(4, -1, np.float32)], 10)
    finally:
        pool.close()


async def test_strings_go_both_ways() -> None:
    pool = ProcessPool("tests.helpers.models:Echo", 1, 1)
    await pool.start()
    try:
        (out,) = await pool.run([np.array(["a", "bc"], dtype=object)], 10)
    finally:
        pool.close()
    assert list(out) == ["a", "bc"]


async def test_a_worker_that_dies_fails_its_batch_and_is_replaced() -> None:
    pool = ProcessPool("tests.helpers.models:CrashesOnNegative", 1, 1)
    await pool.start()
    try:
        with pytest.raises(WorkerDied):
            await pool.run([np.full(4, -1, np.float32)], 10)
        assert await pool.run([np.ones(4, np.float32)], 30) == [4.0]
    finally:
        pool.close()


async def test_a_model_that_cannot_load_in_a_worker_says_why() -> None:
    pool = ProcessPool("tests.helpers.gil_models:OneProcessOnly", 1, 1)
    with pytest.raises(WorkerLoadFailed, match="bound to its first process"):
        await pool.start()


def test_named_values_travel_name_by_name_each_raw() -> None:
    values = [{"features": np.full(4, i, np.float32), "mask": np.arange(4) < i,
               "tag": np.array([f"q{i}"], dtype=object)} for i in range(3)]
    header, payload = encode_batch(values)
    assert header[0] == "named"
    assert [sub[0] for sub in header[2]] == ["raw", "raw", "pickle"]
    decoded = decode_batch(header, bytearray(payload))
    assert len(decoded) == len(values)
    for got, sent in zip(decoded, values, strict=True):
        assert list(got) == list(sent)
        for name in sent:
            assert got[name].dtype == sent[name].dtype
            assert np.array_equal(got[name], sent[name])


def test_dicts_of_different_names_are_pickled() -> None:
    values = [{"a": np.ones(2)}, {"b": np.ones(2)}]
    header, payload = encode_batch(values)
    assert header[0] == "pickle"
    assert [list(v) for v in decode_batch(header, bytearray(payload))] == [["a"], ["b"]]
