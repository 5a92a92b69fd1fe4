"""Each link of the sender chain takes new settings in place (SIGHUP) and keeps its state."""

from __future__ import annotations

import asyncio

from sidecar.config.schema import CircuitBreakerConfig, ConcurrencyConfig, HealthProbeConfig, RetryBudgetConfig
from sidecar.config.units import Duration
from sidecar.core.taxonomy import Category, Recoverability, Recovery
from sidecar.exporters.backoff import AdaptiveBase
from sidecar.exporters.breaker import BreakerState, EndpointBreaker
from sidecar.exporters.budget import RetryBudget
from sidecar.exporters.concurrency import AdaptiveConcurrency
from sidecar.exporters.health import EndpointHealth, HealthProber
from sidecar.exporters.transport import SendOutcome
from tests.fakes.clock import FakeClock
from tests.fakes.health_check import FakeHealthCheck
from tests.fakes.sender import FakeTransport, cls


def breaker_config(**kw: object) -> CircuitBreakerConfig:
    base: dict[str, object] = {"failure_threshold": 5, "recovery_timeout": Duration(10.0),
                               "max_recovery_timeout": Duration(40.0), "half_open_success_threshold": 1}
    base.update(kw)
    return CircuitBreakerConfig(**base)  # type: ignore[arg-type]


RETRYABLE = cls(Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF, "UNAVAILABLE")


async def fail(breaker: EndpointBreaker) -> None:
    async with breaker.calling() as call:
        call.record(RETRYABLE)


async def test_breaker_thresholds_change_and_the_state_stays() -> None:
    clock = FakeClock(100.0)
    b = EndpointBreaker("a", breaker_config(), clock)
    for _ in range(2):
        await fail(b)
    b.reconfigure(breaker_config(failure_threshold=3))
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 2  # counts kept
    await fail(b)
    assert b.state is BreakerState.OPEN  # the third failure trips the new threshold
    b.reconfigure(breaker_config(failure_threshold=3, recovery_timeout=Duration(2.0),
                                 max_recovery_timeout=Duration(4.0)))
    assert b.recovery_timeout == 4.0  # the current trip's 10 s, clamped to the new maximum
    clock.advance(4.0)
    assert b.state is BreakerState.HALF_OPEN
    b.reconfigure(breaker_config(half_open_success_threshold=2))
    async with b.calling():
        pass
    assert b.state is BreakerState.HALF_OPEN  # now two successes are needed
    async with b.calling():
        pass
    assert b.state is BreakerState.CLOSED and b.recovery_timeout == 10.0


async def test_breaker_waiters_see_more_half_open_slots() -> None:
    clock = FakeClock(100.0)
    b = EndpointBreaker("a", breaker_config(failure_threshold=1, half_open_max_calls=1), clock)
    await fail(b)
    clock.advance(10.0)
    async with b.calling():
        assert not b.allow()
        waiter = asyncio.ensure_future(b.wait_until_probe_allowed())
        await asyncio.sleep(0)
        assert not waiter.done()
        b.reconfigure(breaker_config(failure_threshold=1, half_open_max_calls=2))
        await asyncio.sleep(0)
        assert waiter.done()  # not stuck behind the old limit
    b.reconfigure(breaker_config(enabled=False))
    assert b.allow()


def test_concurrency_bounds_clamp_the_limit_and_release_waiters() -> None:
    limiter = AdaptiveConcurrency(ConcurrencyConfig(adaptive=True, min=1, max=8), FakeClock())
    assert limiter.limit == 1
    limiter.reconfigure(ConcurrencyConfig(adaptive=True, min=4, max=8))
    assert limiter.limit == 4
    limiter.reconfigure(ConcurrencyConfig(adaptive=False, min=1, max=16))
    assert limiter.limit == 16
    limiter.reconfigure(ConcurrencyConfig(adaptive=True, min=1, max=2))
    assert limiter.limit == 2


async def test_concurrency_waiters_are_admitted_under_a_raised_limit() -> None:
    limiter = AdaptiveConcurrency(ConcurrencyConfig(adaptive=False, min=1, max=1), FakeClock())
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    limiter.reconfigure(ConcurrencyConfig(adaptive=False, min=1, max=2))
    await asyncio.sleep(0)
    assert waiter.done() and limiter.in_flight == 2


def test_budget_and_base_take_new_bounds() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_second=3.0)
    budget.reconfigure(RetryBudgetConfig(ratio=1.0, min_per_second=0.0))
    assert budget.ratio == 1.0 and budget.floor_tokens == 0.0 and not budget.try_spend()
    budget.deposit()
    assert budget.try_spend()  # a whole token per first attempt now
    base = AdaptiveBase(1.0, 30.0, clock)
    base.reconfigure(5.0, 10.0)
    assert (base.base, base.initial_interval, base.max_interval) == (5.0, 5.0, 10.0)


async def test_prober_restarts_on_its_new_settings() -> None:
    clock = FakeClock()
    transport = FakeTransport("127.0.0.1:4317", clock, default=SendOutcome())
    prober = HealthProber(transport, HealthProbeConfig(interval=Duration(30.0)), clock)
    prober.start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.probes == 1 and prober.state is EndpointHealth.HEALTHY
    with FakeHealthCheck(status=503) as health:
        await prober.reconfigure(HealthProbeConfig(interval=Duration(5.0), unhealthy_threshold=1,
                                                   health_check_url=health.url))
        assert prober.running
        for _ in range(200):
            if prober.state is EndpointHealth.UNHEALTHY:
                break
            await asyncio.sleep(0.01)
        assert prober.state is EndpointHealth.UNHEALTHY and health.requests  # the URL, at once
        assert transport.probes == 1
        await prober.reconfigure(HealthProbeConfig(enabled=False))
        assert not prober.running
    await prober.stop()
