import numpy as np
import pytest

from services.model_container.latency_model import LatencyModel


def test_one_size_seen_gives_a_flat_estimate_then_two_sizes_give_the_line() -> None:
    model = LatencyModel()
    for _ in range(7):
        model.observe(4, 0.010)
    assert model.estimate(4) is None  # too few samples
    model.observe(4, 0.010)
    assert not model.known  # batch sizes are still explored (AIMD)
    assert model.typical(1) == pytest.approx(0.010)  # but a too-slow model is seen
    for _ in range(8):
        model.observe(8, 0.012)
    assert model.known
    fixed, per_item = model.line() or (0.0, 0.0)
    assert fixed == pytest.approx(0.008) and per_item == pytest.approx(0.0005)


def test_converges_to_a_known_cost_with_noise() -> None:
    """Truth: 5 ms per batch + 0.1 ms per item, with up to 0.5 ms of positive jitter."""
    rng = np.random.default_rng(0)
    model = LatencyModel(quantile=0.99)
    for _ in range(2000):
        size = int(rng.integers(1, 65))
        model.observe(size, 0.005 + 0.0001 * size + rng.uniform(0, 0.0005))
    line = model.line()
    assert line is not None
    fixed, per_item = line
    assert fixed == pytest.approx(0.00525, abs=0.0005)  # within 0.5 ms
    assert per_item == pytest.approx(0.0001, rel=0.1)  # within 10%
    for size in (1, 16, 64):
        truth_worst = 0.005 + 0.0001 * size + 0.0005
        estimate = model.estimate(size)
        assert estimate is not None
        assert truth_worst - 0.0003 <= estimate <= truth_worst + 0.0005  # a high quantile


def test_follows_a_model_that_slows_down() -> None:
    model = LatencyModel(window=128)
    for size in [1, 8] * 64:
        model.observe(size, 0.001 * size)
    for size in [1, 8] * 64:
        model.observe(size, 0.002 * size)
    assert model.estimate(8) == pytest.approx(0.016, rel=0.05)


def test_batches_that_waited_out_a_stall_do_not_move_the_line() -> None:
    """Warm-up on a busy machine: a third of the batches, at every size, waited 100 ms
    for a CPU. The line stays the model's: least squares put it at 33 ms a batch."""
    model = LatencyModel()
    for round_ in range(3):
        for size in (1, 2, 4, 8, 16, 32, 64):
            stalled = (round_ + size) % 3 == 0
            model.observe(size, 0.1 if stalled else 0.0001 + 0.000001 * size)
    model.fit()
    typical = model.typical(1)
    assert typical is not None and typical < 0.0005
    fixed, per_item = model.line() or (1.0, 1.0)
    assert fixed == pytest.approx(0.0001, abs=0.0002) and per_item < 0.00001


def test_a_fast_probe_drops_what_was_learnt_and_a_slow_one_keeps_it() -> None:
    model = LatencyModel()
    for _ in range(8):
        model.observe(1, 0.040)  # learnt while the process stalled
    assert model.typical(1) == pytest.approx(0.040)
    model.observe(1, 0.030, probe=True)  # slower than half the estimate: it holds
    assert model.typical(1) == pytest.approx(0.040)
    model.observe(1, 0.0002, probe=True)  # far faster: the estimate was stale
    assert model.typical(1) is None and model.estimate(1) is None
    for _ in range(7):
        model.observe(1, 0.0002)
    assert model.typical(1) == pytest.approx(0.0002)
