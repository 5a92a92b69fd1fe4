"""Properties of the time-to-full predictor (sidecar/telemetry/lag.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.telemetry.lag import FillPredictor, History

rates = st.floats(min_value=0.01, max_value=1000, allow_nan=False)
capacities = st.integers(min_value=10, max_value=1_000_000)


@given(rate=rates, capacity=capacities, start=st.floats(min_value=0, max_value=1e6),
       period=st.sampled_from([0.5, 1, 2]))
def test_a_steady_fill_is_predicted_exactly(rate: float, capacity: int, start: float, period: float) -> None:
    predictor = FillPredictor(window=60)
    size = 0.0
    for i in range(40):
        size = min(rate * i * period, capacity * 0.9)
        if size >= capacity * 0.9:
            break
        predictor.observe(start + i * period, size)
    if predictor.samples < 3 or predictor.net_rate() is None:
        return
    predicted = predictor.time_to_full(size, capacity)
    assert predicted == pytest.approx((capacity - size) / rate, rel=1e-6)


@given(sizes=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=80), capacity=capacities)
def test_not_growing_is_infinite_and_the_prediction_is_never_negative(sizes: list[int], capacity: int) -> None:
    predictor = FillPredictor(window=60)
    for i, size in enumerate(sizes):
        predictor.observe(float(i), size)
    flat = FillPredictor(window=60)
    for i in range(len(sizes)):
        flat.observe(float(i), sizes[-1])
    assert flat.time_to_full(min(sizes[-1], capacity - 1), capacity) == math.inf
    ttf = predictor.time_to_full(sizes[-1], capacity)
    assert ttf >= 0
    rate = predictor.net_rate()
    if sizes[-1] < capacity and (rate is None or rate <= 0):
        assert ttf == math.inf


@given(rate=rates, capacity=capacities)
def test_draining_queue_is_infinite(rate: float, capacity: int) -> None:
    predictor = FillPredictor(window=60)
    for i in range(20):
        predictor.observe(float(i), max(0.0, capacity * 0.8 - rate * i))
    assert predictor.time_to_full(capacity * 0.5, capacity) == math.inf


def test_full_queue_is_zero_and_no_history_is_infinite() -> None:
    predictor = FillPredictor()
    assert predictor.time_to_full(5, 100) == math.inf
    predictor.observe(0, 5)
    predictor.observe(1, 6)
    assert predictor.net_rate() is None, "two samples are not enough"
    assert predictor.time_to_full(100, 100) == 0.0


@given(old_rate=rates, new_rate=rates)
def test_only_the_last_window_counts(old_rate: float, new_rate: float) -> None:
    """A burst more than a window ago does not colour today's rate."""
    predictor = FillPredictor(window=60)
    size = 0.0
    for t in range(0, 120):
        size += old_rate if t < 50 else new_rate
        predictor.observe(float(t), size)
    assert predictor.net_rate() == pytest.approx(new_rate, rel=1e-6)


def test_steps_of_batches_give_their_mean_rate() -> None:
    """SDK batches: a staircase of 10 every 2 s is 5/s, whichever phase the window starts in."""
    for phase in range(4):
        predictor = FillPredictor(window=60)
        for half_second in range(phase, phase + 200):
            t = half_second * 0.5
            predictor.observe(t, 10 * math.floor(t / 2))
        rate = predictor.net_rate()
        assert rate is not None and rate == pytest.approx(5, rel=0.05)


def test_samples_out_of_order_are_refused() -> None:
    predictor = FillPredictor()
    predictor.observe(5, 1)
    with pytest.raises(ValueError):
        predictor.observe(4, 1)


@given(values=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=300))
def test_history_keeps_the_latest_value_of_each_step(values: list[float]) -> None:
    history = History(step=10, length=6)
    for i, value in enumerate(values):
        history.observe(i * 2.5, value)  # four samples per step
    kept = history.values()
    assert 1 <= len(kept) <= 6
    assert kept[-1] == values[-1]
