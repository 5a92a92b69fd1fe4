"""EndpointBreaker: pybreaker underneath, driven by a fake clock."""

from __future__ import annotations

import asyncio

import pybreaker
import pytest

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.config.units import Duration
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.exporters.breaker import (
    BreakerOpenError,
    BreakerState,
    CallOutcome,
    EndpointBreaker,
    outcome_for,
)
from tests.fakes.clock import FakeClock


def c(recoverability: Recoverability, category: Category = Category.TRANSPORT,
      recovery: Recovery = Recovery.RETRY_WITH_BACKOFF) -> Classification:
    return Classification(category, Severity.MEDIUM, recoverability, recovery, "x")


RETRYABLE = c(Recoverability.RETRYABLE)
PERMANENT = c(Recoverability.PERMANENT, Category.SERIALIZATION, Recovery.DROP)
FATAL = c(Recoverability.FATAL, Category.CONFIGURATION, Recovery.MANUAL_INTERVENTION)
INTERNAL = c(Recoverability.FATAL, Category.INTERNAL, Recovery.MANUAL_INTERVENTION)
TOO_LARGE = c(Recoverability.TEMPORARY, Category.RESOURCE_EXHAUSTED, Recovery.SPLIT_AND_RETRY)


def config(**kw: object) -> CircuitBreakerConfig:
    base: dict[str, object] = dict(failure_threshold=3, failure_rate=0.5, minimum_calls=10, window=Duration(60.0),
                                   recovery_timeout=Duration(10.0), max_recovery_timeout=Duration(35.0),
                                   half_open_max_calls=2, half_open_success_threshold=1)
    base.update(kw)
    return CircuitBreakerConfig(**base)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def call(breaker: EndpointBreaker, classification: Classification | None = None) -> None:
    async with breaker.calling() as attempt:
        if classification is not None:
            attempt.record(classification)


async def fail(breaker: EndpointBreaker, times: int = 1) -> None:
    for _ in range(times):
        await call(breaker, RETRYABLE)


def test_outcome_mapping() -> None:
    assert outcome_for(RETRYABLE) is CallOutcome.FAILURE
    assert outcome_for(c(Recoverability.TEMPORARY, Category.RESOURCE_EXHAUSTED)) is CallOutcome.FAILURE
    assert outcome_for(PERMANENT) is CallOutcome.SUCCESS
    assert outcome_for(FATAL) is CallOutcome.SUCCESS
    assert outcome_for(TOO_LARGE) is CallOutcome.SUCCESS
    assert outcome_for(INTERNAL) is CallOutcome.NEUTRAL


async def test_closed_open_half_open_closed() -> None:
    clock = FakeClock(500.0)
    seen: list[tuple[str, str]] = []
    b = EndpointBreaker("a", config(), clock, on_transition=lambda o, n: seen.append((o, n)))
    assert isinstance(b._cb, pybreaker.CircuitBreaker)
    await fail(b, 2)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 2
    await fail(b)
    assert b.state is BreakerState.OPEN and not b.allow()
    assert b._cb.current_state == pybreaker.STATE_OPEN
    with pytest.raises(BreakerOpenError) as refused:
        await call(b)
    assert refused.value.retry_after == pytest.approx(10.0)
    clock.advance(4.0)
    assert b.time_in_state == pytest.approx(4.0)
    assert b.time_until_probe_allowed() == pytest.approx(6.0)
    clock.advance(6.0)
    assert b.state is BreakerState.HALF_OPEN and b.allow()
    assert b._cb.current_state == pybreaker.STATE_HALF_OPEN
    await call(b)
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 0
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_half_open_failure_reopens_with_growing_timeout() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(), clock)
    await fail(b, 3)
    assert b.recovery_timeout == 10.0
    clock.advance(10.0)
    await fail(b)  # failed probe
    assert b.state is BreakerState.OPEN and b.recovery_timeout == 20.0
    clock.advance(19.9)
    assert b.state is BreakerState.OPEN
    clock.advance(0.1)
    await fail(b)
    assert b.recovery_timeout == 35.0  # capped at max_recovery_timeout
    clock.advance(35.0)
    await fail(b)
    assert b.recovery_timeout == 35.0
    clock.advance(35.0)
    await call(b)  # successful probe closes, timeout back to base
    assert b.state is BreakerState.CLOSED and b.recovery_timeout == 10.0
    await fail(b, 3)
    assert b.state is BreakerState.OPEN and b.recovery_timeout == 10.0
    assert b.trips == 5


async def test_failure_rate_trigger_needs_minimum_calls() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(failure_threshold=100, minimum_calls=10, failure_rate=0.5), clock)
    for _ in range(4):
        await call(b)
        await fail(b)
    assert b.state is BreakerState.CLOSED  # 4/8 failed but fewer than minimum_calls
    await call(b)
    assert b.state is BreakerState.CLOSED  # 4/9
    await fail(b)
    assert b.state is BreakerState.OPEN  # 5/10 >= 0.5


async def test_failure_rate_window_forgets_old_calls() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(failure_threshold=100, minimum_calls=4, failure_rate=0.5,
                                    window=Duration(10.0)), clock)
    await fail(b, 3)
    assert b.state is BreakerState.CLOSED  # 3 calls < minimum
    clock.advance(11.0)
    for _ in range(3):
        await call(b)
    await fail(b)
    assert b.state is BreakerState.CLOSED  # 1/4 within the window; old failures forgotten
    await fail(b)
    assert b.state is BreakerState.CLOSED  # 2/5
    await fail(b)
    assert b.state is BreakerState.OPEN  # 3/6


async def test_permanent_and_fatal_do_not_trip() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(minimum_calls=2), clock)
    for _ in range(20):
        await call(b, PERMANENT)
        await call(b, FATAL)
        await call(b, TOO_LARGE)
    assert b.state is BreakerState.CLOSED
    await fail(b, 2)
    await call(b, PERMANENT)  # the endpoint answered: counts as alive, consecutive count reset
    await fail(b, 2)
    assert b.state is BreakerState.CLOSED


async def test_cancellation_is_neither_failure_nor_success() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(minimum_calls=100), clock)
    await fail(b, 2)
    started = asyncio.Event()

    async def hanging() -> None:
        async with b.calling():
            started.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(hanging())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.consecutive_failures == 2  # not a failure, and not a success (which would reset it)
    await fail(b)
    assert b.state is BreakerState.OPEN


async def test_internal_errors_are_neutral() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(), clock)
    await fail(b, 2)
    for _ in range(5):
        await call(b, INTERNAL)
    assert b.consecutive_failures == 2 and b.state is BreakerState.CLOSED


async def test_half_open_admits_at_most_max_concurrent_probes() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(half_open_max_calls=2), clock)
    await fail(b, 3)
    clock.advance(10.0)
    release = asyncio.Event()
    entered: list[int] = []

    async def probe(i: int) -> None:
        async with b.calling():
            entered.append(i)
            await release.wait()

    tasks = [asyncio.ensure_future(probe(i)) for i in range(2)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == [0, 1] and b.probes_in_flight == 2 and not b.allow()
    with pytest.raises(BreakerOpenError):
        await call(b)
    waiter = asyncio.ensure_future(b.wait_until_probe_allowed())
    await asyncio.sleep(0)
    assert not waiter.done()
    release.set()
    await asyncio.gather(*tasks)
    await asyncio.wait_for(waiter, 1.0)
    assert b.state is BreakerState.CLOSED and b.probes_in_flight == 0


async def test_cancelled_probe_frees_its_slot_and_stays_half_open() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(half_open_max_calls=1), clock)
    await fail(b, 3)
    clock.advance(10.0)

    async def probe() -> None:
        async with b.calling():
            await asyncio.sleep(10)

    task = asyncio.ensure_future(probe())
    await asyncio.sleep(0)
    assert not b.allow()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is BreakerState.HALF_OPEN and b.allow()


async def test_late_results_apply_to_the_current_state() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(half_open_max_calls=2), clock)
    await fail(b, 3)
    clock.advance(10.0)
    go_a, go_b = asyncio.Event(), asyncio.Event()

    async def probe(go: asyncio.Event, result: Classification | None) -> None:
        async with b.calling() as attempt:
            await go.wait()
            if result is not None:
                attempt.record(result)

    ta = asyncio.ensure_future(probe(go_a, None))
    tb = asyncio.ensure_future(probe(go_b, RETRYABLE))
    await asyncio.sleep(0)
    go_a.set()
    await ta
    assert b.state is BreakerState.CLOSED
    go_b.set()
    await tb
    # the late failure counts once in the closed state; it does not reopen the breaker
    assert b.state is BreakerState.CLOSED and b.consecutive_failures == 1


async def test_late_success_does_not_close_an_open_breaker() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(half_open_max_calls=2), clock)
    await fail(b, 3)
    clock.advance(10.0)
    go_a, go_b = asyncio.Event(), asyncio.Event()

    async def probe(go: asyncio.Event, result: Classification | None) -> None:
        async with b.calling() as attempt:
            await go.wait()
            if result is not None:
                attempt.record(result)

    ta = asyncio.ensure_future(probe(go_a, RETRYABLE))
    tb = asyncio.ensure_future(probe(go_b, None))
    await asyncio.sleep(0)
    go_a.set()
    await ta
    assert b.state is BreakerState.OPEN
    go_b.set()
    await tb
    assert b.state is BreakerState.OPEN


async def test_wait_until_probe_allowed_follows_the_clock() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(), clock)
    await fail(b, 3)
    waiter = asyncio.ensure_future(b.wait_until_probe_allowed())
    await settle()
    clock.advance(9.0)
    await settle()
    assert not waiter.done()
    clock.advance(1.0)
    await asyncio.wait_for(waiter, 1.0)
    assert b.state is BreakerState.HALF_OPEN


async def test_reset_and_probe_succeeded_wake_waiters() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(), clock)
    await fail(b, 3)
    waiter = asyncio.ensure_future(b.wait_until_probe_allowed())
    await asyncio.sleep(0)
    b.probe_succeeded()  # an active health probe saw the endpoint answer
    await asyncio.wait_for(waiter, 1.0)
    assert b.state is BreakerState.HALF_OPEN
    b.record_failure()  # a failed probe in half-open reopens it
    assert b.state is BreakerState.OPEN and b.recovery_timeout == 20.0
    b.reset()
    assert b.state is BreakerState.CLOSED and b.recovery_timeout == 10.0 and b.allow()


async def test_disabled_breaker_always_allows() -> None:
    clock = FakeClock(500.0)
    b = EndpointBreaker("a", config(enabled=False), clock)
    await fail(b, 10)
    assert b.allow() and b.time_until_probe_allowed() == 0.0
    await b.wait_until_probe_allowed()


async def test_listener_errors_do_not_break_the_breaker() -> None:
    clock = FakeClock(500.0)

    def broken(old: str, new: str) -> None:
        raise RuntimeError("boom")

    b = EndpointBreaker("a", config(), clock, on_transition=broken)
    await fail(b, 3)
    assert b.state is BreakerState.OPEN


async def test_half_open_closes_only_after_success_threshold_successes_in_a_row() -> None:
    clock = FakeClock(500.0)
    seen: list[tuple[str, str]] = []
    b = EndpointBreaker("a", config(half_open_success_threshold=3), clock,
                        on_transition=lambda o, n: seen.append((o, n)))
    await fail(b, 3)
    clock.advance(10.0)
    await call(b)
    await call(b)
    assert b.state is BreakerState.HALF_OPEN  # two successes from a flapping upstream are not enough
    await fail(b)  # the third probe fails: open again, and the successes so far count for nothing
    assert b.state is BreakerState.OPEN
    clock.advance(20.0)
    for _ in range(2):
        await call(b)
    assert b.state is BreakerState.HALF_OPEN
    await call(b)
    assert b.state is BreakerState.CLOSED
    assert seen[-1] == ("half_open", "closed")


def test_half_open_success_threshold_default_is_one_wave_of_probes() -> None:
    default = CircuitBreakerConfig()
    assert default.half_open_success_threshold == default.half_open_max_calls == 3
