"""Backoff policy: exponential growth, jitter modes, hint floor, max_elapsed_time, adaptive base."""

from __future__ import annotations

import random

import pytest

from sidecar.config.schema import RetryConfig
from sidecar.config.units import Duration
from sidecar.exporters.backoff import AdaptiveBase, Backoff
from tests.fakes.clock import SteppingClock


def policy(**kw: object) -> Backoff:
    args: dict[str, object] = dict(initial_interval=1.0, max_interval=10.0, multiplier=2.0, jitter="full",
                                   max_elapsed_time=0.0, rng=random.Random(3))
    args.update(kw)
    return Backoff(**args)  # type: ignore[arg-type]


def test_exponential_ceiling_is_capped() -> None:
    b = policy()
    assert [b.ceiling(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.ceiling(100_000) == 10.0  # no overflow
    assert b.ceiling(2, base=3.0) == 10.0


def test_full_jitter_bounds() -> None:
    b = policy(jitter="full")
    for n in range(8):
        for _ in range(200):
            assert 0.0 <= b.delay(n) <= b.ceiling(n)


def test_equal_jitter_band_follows_randomization_factor() -> None:
    b = policy(jitter="equal", randomization_factor=0.5)
    delays = [b.delay(2) for _ in range(500)]
    assert min(delays) >= 2.0 and max(delays) <= 4.0
    assert max(delays) - min(delays) > 1.5  # the band is really used
    exact = policy(jitter="equal", randomization_factor=0.0)
    assert [exact.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


def test_decorrelated_jitter() -> None:
    b = policy(jitter="decorrelated")
    prev = None
    for _ in range(200):
        d = b.delay(0, prev=prev)
        low = 1.0
        high = min(10.0, 3.0 * (prev if prev is not None else 1.0))
        assert low <= d <= max(low, high)
        prev = d


def test_hint_is_a_floor_even_above_the_cap() -> None:
    b = policy()
    assert b.next_delay(0, 0.0, hint=7.0) is not None and b.next_delay(0, 0.0, hint=7.0) >= 7.0  # type: ignore[operator]
    assert b.next_delay(0, 0.0, hint=60.0) == 60.0


def test_max_elapsed_time() -> None:
    b = policy(jitter="equal", randomization_factor=0.0, max_elapsed_time=10.0)
    assert b.next_delay(0, 0.0) == 1.0
    assert b.next_delay(2, 6.0) == 4.0  # ends at exactly 10
    assert b.next_delay(2, 6.5) is None  # would end past max_elapsed_time
    assert b.next_delay(0, 0.0, hint=11.0) is None
    unlimited = policy(max_elapsed_time=0.0)
    assert unlimited.next_delay(50, 1e9) is not None


def test_from_config_and_validation() -> None:
    b = Backoff.from_config(RetryConfig(initial_interval=Duration(0.5), jitter="decorrelated"))
    assert b.initial_interval == 0.5 and b.max_interval == 30.0 and b.multiplier == 1.5
    assert b.jitter == "decorrelated" and b.max_elapsed_time == 300.0
    with pytest.raises(ValueError):
        policy(multiplier=0.5)
    with pytest.raises(ValueError):
        policy(jitter="none")
    with pytest.raises(ValueError):
        policy(randomization_factor=2.0)


def test_adaptive_base_shrinks_on_success_and_grows_on_failure() -> None:
    clock = SteppingClock()
    a = AdaptiveBase(1.0, 8.0, clock, window=60.0, min_samples=5, adjust_every=10.0)
    assert a.base == 1.0
    for _ in range(5):
        a.record(False)
    assert a.base == 1.5 and a.success_rate == 0.0
    a.record(False)
    assert a.base == 1.5  # at most one adjustment per adjust_every
    for expected in (2.25, 3.375, 5.0625, 7.59375, 8.0, 8.0):
        clock.now += 10.0
        a.record(False)
        assert a.base == pytest.approx(expected)
    clock.now += 61.0  # the failures leave the window
    for _ in range(5):
        a.record(True)
    assert a.base == pytest.approx(6.4)
    for _ in range(20):
        clock.now += 10.0
        a.record(True)
    assert a.base == 1.0  # never below initial_interval


def test_adaptive_base_keeps_still_between_thresholds() -> None:
    clock = SteppingClock()
    a = AdaptiveBase(1.0, 8.0, clock, min_samples=4, adjust_every=0.0)
    for ok in (True, False, True, False, True, False):
        a.record(ok)
    assert a.base == 1.0 and a.success_rate == 0.5


def test_adaptive_base_feeds_backoff() -> None:
    b = policy(jitter="equal", randomization_factor=0.0)
    assert b.delay(1, base=3.0) == 6.0
