"""RetryBudget arithmetic: ratio of recent first attempts, a per-second floor, expiry of deposits."""

from __future__ import annotations

import pytest

from sidecar.config.schema import RetryBudgetConfig
from sidecar.exporters.budget import RetryBudget, WindowedCounts
from tests.fakes.clock import SteppingClock


def spend_all(budget: RetryBudget) -> int:
    n = 0
    while budget.try_spend():
        n += 1
        assert n < 10_000
    return n


def test_ratio_of_first_attempts() -> None:
    clock = SteppingClock(100.0)
    budget = RetryBudget(clock, ratio=0.2, min_per_second=0.0)
    assert not budget.try_spend()  # nothing deposited, no floor
    for _ in range(100):
        budget.deposit()
    assert budget.balance == pytest.approx(20.0)
    assert spend_all(budget) == 20
    assert budget.spent == 20 and budget.refused == 1 + 1


def test_five_attempts_fund_one_retry() -> None:
    budget = RetryBudget(SteppingClock(100.0), ratio=0.2, min_per_second=0.0)
    for _ in range(4):
        budget.deposit()
    assert not budget.try_spend()
    budget.deposit()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_floor_allows_min_per_second() -> None:
    clock = SteppingClock(100.0)
    budget = RetryBudget(clock, ratio=0.2, min_per_second=3.0)
    assert spend_all(budget) == 3  # the floor bucket starts full
    clock.now += 0.5
    assert spend_all(budget) == 1  # 1.5 tokens refilled
    clock.now += 10.0
    assert spend_all(budget) == 3  # never more than one second's worth


def test_fractional_floor() -> None:
    clock = SteppingClock(100.0)
    budget = RetryBudget(clock, ratio=0.0, min_per_second=0.5)
    assert spend_all(budget) == 1
    clock.now += 1.0
    assert spend_all(budget) == 0
    clock.now += 1.0
    assert spend_all(budget) == 1


def test_deposits_expire_after_ttl() -> None:
    clock = SteppingClock(100.0)
    budget = RetryBudget(clock, ratio=0.5, min_per_second=0.0, ttl=10.0)
    for _ in range(10):
        budget.deposit()
    clock.now += 5.0
    assert budget.balance == pytest.approx(5.0)
    clock.now += 5.2
    assert budget.balance == pytest.approx(0.0)
    assert not budget.try_spend()  # a burst long ago does not fund retries now


def test_withdrawals_expire_too() -> None:
    clock = SteppingClock(100.0)
    budget = RetryBudget(clock, ratio=1.0, min_per_second=0.0, ttl=10.0)
    budget.deposit()
    budget.deposit()
    assert budget.try_spend() and budget.try_spend()
    assert budget.balance == pytest.approx(0.0)
    clock.now += 10.2
    budget.deposit()
    assert budget.try_spend()


def test_from_config() -> None:
    budget = RetryBudget.from_config(RetryBudgetConfig(ratio=0.1, min_per_second=2.0), SteppingClock(100.0))
    assert budget.ratio == 0.1 and budget.min_per_second == 2.0 and budget.ttl == 10.0


def test_windowed_counts() -> None:
    clock = SteppingClock(100.0)
    w = WindowedCounts(clock, 10.0, width=2, bucket=1.0)
    w.add(1, 2)
    clock.now += 5
    w.add(3, 4)
    assert w.totals() == (4, 6)
    clock.now += 6.5
    assert w.totals() == (3, 4)
    clock.now += 6
    assert w.totals() == (0, 0)
    with pytest.raises(ValueError):
        w.add(1)
