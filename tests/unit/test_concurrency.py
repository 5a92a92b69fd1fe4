"""AdaptiveConcurrency: AIMD increase/decrease, bounds, waiting for a slot."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.config.schema import ConcurrencyConfig
from sidecar.exporters.concurrency import AdaptiveConcurrency, LoadSignal
from tests.fakes.clock import SteppingClock


async def one_call(limiter: AdaptiveConcurrency, clock: SteppingClock, rtt: float,
                   signal: LoadSignal = LoadSignal.OK) -> None:
    async with limiter.slot() as permit:
        clock.now += rtt
        permit.signal = signal


async def test_starts_at_min_and_grows_by_one_while_at_limit() -> None:
    clock = SteppingClock()
    changes: list[int] = []
    limiter = AdaptiveConcurrency(ConcurrencyConfig(min=2, max=5), clock, on_limit_change=changes.append)
    assert limiter.limit == 2
    # a lone call does not use a limit of 2: no growth
    await one_call(limiter, clock, 0.1)
    assert limiter.limit == 2
    # saturating calls grow it by 1 each, up to max
    for expected in (3, 4, 5, 5):
        gate = asyncio.Event()

        async def held(gate: asyncio.Event = gate) -> None:
            async with limiter.slot():
                await gate.wait()

        tasks = [asyncio.ensure_future(held()) for _ in range(limiter.limit)]
        await asyncio.sleep(0)
        assert limiter.in_flight == limiter.limit
        gate.set()
        await asyncio.gather(*tasks)
        assert limiter.limit == expected
    assert changes == [3, 4, 5]
    assert limiter.in_flight == 0


async def test_throttling_and_timeouts_decrease_multiplicatively_within_bounds() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(min=2, max=64), clock)
    limiter._limit = 40
    await one_call(limiter, clock, 0.1, LoadSignal.THROTTLED)
    assert limiter.limit == 36  # floor(40 x 0.9)
    await one_call(limiter, clock, 0.1, LoadSignal.TIMEOUT)
    assert limiter.limit == 32
    limiter._limit = 5
    await one_call(limiter, clock, 0.1, LoadSignal.THROTTLED)
    assert limiter.limit == 4  # floor(4.5) = 4
    limiter._limit = 3
    await one_call(limiter, clock, 0.1, LoadSignal.THROTTLED)
    assert limiter.limit == 2  # floor(2.7) = 2
    await one_call(limiter, clock, 0.1, LoadSignal.THROTTLED)
    assert limiter.limit == 2  # never below min


async def test_small_limits_decrease_by_at_least_one() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(min=1, max=64), clock)
    limiter._limit = 9
    await one_call(limiter, clock, 0.1, LoadSignal.THROTTLED)
    assert limiter.limit == 8  # floor(8.1)
    limiter._limit = 5
    limiter._decrease()
    assert limiter.limit == 4


async def test_other_errors_do_not_change_the_limit() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(min=1, max=8), clock)
    for _ in range(5):
        await one_call(limiter, clock, 0.1, LoadSignal.ERROR)
    assert limiter.limit == 1


async def test_latency_breach_decreases() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(min=1, max=64), clock)
    rtts = [0.10, 0.11, 0.09, 0.10, 0.10, 0.11, 0.09]
    for rtt in rtts:
        await one_call(limiter, clock, rtt)  # sequential calls at limit grow it while fast
    grown = limiter.limit
    assert grown > 1
    assert limiter.rtt_mean == pytest.approx(0.1, abs=0.01)
    await one_call(limiter, clock, 1.0)  # far beyond mean + 2.5 sigma
    assert limiter.limit < grown


async def test_non_adaptive_is_fixed_at_max() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(adaptive=False, min=1, max=4), clock)
    assert limiter.limit == 4
    await one_call(limiter, clock, 0.1, LoadSignal.THROTTLED)
    await one_call(limiter, clock, 10.0)
    assert limiter.limit == 4


async def test_acquire_waits_for_a_slot_and_cancelled_waiters_do_not_leak() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(adaptive=False, min=1, max=1), clock)
    await limiter.acquire()
    waiting = asyncio.ensure_future(limiter.acquire())
    cancelled = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not waiting.done() and limiter.in_flight == 1
    cancelled.cancel()
    await asyncio.sleep(0)
    limiter.release(0.1, LoadSignal.OK)
    await asyncio.wait_for(waiting, 1.0)
    assert limiter.in_flight == 1
    limiter.release(0.1, LoadSignal.OK)
    assert limiter.in_flight == 0


async def test_granted_then_cancelled_gives_the_slot_back() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(adaptive=False, min=1, max=1), clock)
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release(0.1, LoadSignal.OK)  # grants the slot to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_flight == 0


async def test_cancelled_call_does_not_adjust() -> None:
    clock = SteppingClock()
    limiter = AdaptiveConcurrency(ConcurrencyConfig(min=1, max=8), clock)

    async def hang() -> None:
        async with limiter.slot():
            await asyncio.sleep(10)

    task = asyncio.ensure_future(hang())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.limit == 1 and limiter.in_flight == 0


def test_min_above_max_is_rejected() -> None:
    with pytest.raises(ValueError):
        AdaptiveConcurrency(ConcurrencyConfig(min=5, max=2), SteppingClock())
