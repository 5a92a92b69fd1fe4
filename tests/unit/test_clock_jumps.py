"""The wall clock jumps (issue 16): timers run on the monotonic clock, so nothing they drive moves.

The clock below jumps its wall time by a day forwards and backwards between readings; every
timer-driven policy must behave exactly as with a steady wall clock. pybreaker reads
`datetime.now` itself, so its module clock is made to jump too.
"""

from __future__ import annotations

import datetime as real_datetime
from collections.abc import Iterator

import pybreaker
import pytest

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.config.units import Duration
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.exporters.breaker import BreakerState, EndpointBreaker
from sidecar.exporters.budget import RetryBudget, WindowedCounts
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock

DAY = 86_400.0
RETRYABLE = Classification(Category.TRANSPORT, Severity.MEDIUM, Recoverability.RETRYABLE,
                           Recovery.RETRY_WITH_BACKOFF, "UNAVAILABLE")


class JumpingClock(FakeClock):
    """Monotonic time as FakeClock; wall time jumps by `jumps[i]` at the i-th reading."""

    def __init__(self, jumps: list[float]) -> None:
        super().__init__(1000.0, wall_offset=1.7e9)
        self.jumps = iter(jumps)
        self.wall_reads = 0

    def wall(self) -> float:
        self.wall_reads += 1
        self.wall_offset += next(self.jumps, 0.0)
        return super().wall()


@pytest.fixture(params=[DAY, -DAY], ids=["forwards", "backwards"])
def jump(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """pybreaker's own `datetime.now` jumps by the parameter from the second reading on."""
    offset = {"reads": 0}
    delta: float = request.param

    class JumpingDatetime(real_datetime.datetime):
        @classmethod
        def now(cls, tz: real_datetime.tzinfo | None = None) -> JumpingDatetime:  # type: ignore[override]
            offset["reads"] += 1
            base = real_datetime.datetime.now(tz)
            shift = real_datetime.timedelta(seconds=delta if offset["reads"] > 1 else 0.0)
            moved = base + shift
            return cls.fromtimestamp(moved.timestamp(), tz)

    monkeypatch.setattr(pybreaker, "datetime", JumpingDatetime)
    yield delta


async def fail(breaker: EndpointBreaker) -> None:
    async with breaker.calling() as attempt:
        attempt.record(RETRYABLE)


async def test_breaker_recovery_timeout_ignores_wall_clock_jumps(jump: float) -> None:
    clock = JumpingClock([jump, -jump, jump])
    config = CircuitBreakerConfig(failure_threshold=2, recovery_timeout=Duration(10.0),
                                  max_recovery_timeout=Duration(40.0), half_open_success_threshold=1)
    breaker = EndpointBreaker("collector:4317", config, clock)
    await fail(breaker)
    await fail(breaker)
    assert breaker.state is BreakerState.OPEN
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()  # no early probe (forwards)
    assert breaker._cb.current_state == pybreaker.STATE_OPEN
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()  # no late probe (backwards)
    async with breaker.calling():
        pass  # the probe succeeds
    assert breaker.state is BreakerState.CLOSED
    assert clock.wall_reads == 0  # the breaker never looked at the wall clock


def test_windows_budget_and_log_throttle_run_on_the_monotonic_clock() -> None:
    clock = JumpingClock([DAY, -2 * DAY, DAY] * 100)
    window = WindowedCounts(clock, 60.0, width=2)
    window.add(1.0, 1.0)
    budget = RetryBudget(clock, ratio=0.5, min_per_second=0.0, ttl=10.0)
    for _ in range(4):
        budget.deposit()
    assert budget.try_spend()
    events = Events(Metrics(), clock)
    events.dropped("traces", "queue_full", 1)
    clock.advance(59.0)
    assert window.totals() == (1.0, 1.0)  # still in the window
    clock.advance(2.0)
    assert window.totals() == (0.0, 0.0)  # out of it after 60 s of monotonic time
    assert clock.wall_reads == 0
