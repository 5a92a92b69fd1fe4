"""Balancer strategies, skipping endpoints whose breaker refuses, waiting when all refuse."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.config.units import Duration
from sidecar.exporters.balancer import Balancer
from sidecar.exporters.breaker import EndpointBreaker
from tests.fakes.clock import FakeClock


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def breakers(clock: FakeClock, names: list[str], timeout: float = 10.0) -> dict[str, EndpointBreaker]:
    cfg = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=Duration(timeout))
    return {n: EndpointBreaker(n, cfg, clock) for n in names}


def trip(breaker: EndpointBreaker) -> None:
    breaker.record_failure()
    assert breaker.state == "open"


def test_round_robin_cycles() -> None:
    b = Balancer(["a", "b", "c"], strategy="round_robin")
    assert [b.pick() for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_least_outstanding_prefers_idle_and_rotates_ties() -> None:
    b = Balancer(["a", "b", "c"])
    b.begin("a")
    b.begin("a")
    b.begin("b")
    assert b.pick() == "c"
    b.begin("c")
    assert b.pick() == "b"  # b and c have 1, a has 2; rotation from after c
    b.end("a")
    b.end("a")
    assert b.pick() == "a"
    assert b.stats("a").outstanding == 0 and b.stats("a").picks == 1


def test_ewma_latency_prefers_fast_endpoint_weighted_by_load() -> None:
    b = Balancer(["slow", "fast"], strategy="ewma_latency")
    for _ in range(3):
        b.begin("slow")
        b.end("slow", 0.5)
        b.begin("fast")
        b.end("fast", 0.1)
    assert b.stats("fast").ewma_latency == pytest.approx(0.1)
    assert b.pick() == "fast"
    for _ in range(5):  # fast is loaded: 0.1 x 6 > 0.5 x 1
        b.begin("fast")
    assert b.pick() == "slow"


def test_ewma_alpha() -> None:
    b = Balancer(["a"], strategy="ewma_latency", alpha=0.3)
    b.begin("a")
    b.end("a", 1.0)
    b.begin("a")
    b.end("a", 2.0)
    assert b.stats("a").ewma_latency == pytest.approx(0.3 * 2.0 + 0.7 * 1.0)


def test_unmeasured_endpoint_is_explored_first() -> None:
    b = Balancer(["a", "b"], strategy="ewma_latency")
    b.begin("a")
    b.end("a", 0.2)
    assert b.pick() == "b"


@pytest.mark.parametrize("strategy", ["least_outstanding", "ewma_latency", "round_robin"])
def test_open_endpoints_are_skipped(strategy: str) -> None:
    clock = FakeClock()
    bs = breakers(clock, ["a", "b", "c"])
    b = Balancer(["a", "b", "c"], bs, strategy)  # type: ignore[arg-type]
    trip(bs["a"])
    trip(bs["c"])
    assert {b.pick() for _ in range(5)} == {"b"}


def test_avoid_is_a_preference() -> None:
    clock = FakeClock()
    bs = breakers(clock, ["a", "b"])
    b = Balancer(["a", "b"], bs)
    assert b.pick(avoid={"a"}) == "b"
    trip(bs["b"])
    assert b.pick(avoid={"a"}) == "a"  # the only one left


async def test_all_open_pick_none_then_acquire_waits() -> None:
    clock = FakeClock()
    bs = breakers(clock, ["a", "b"])
    bs["b"] = EndpointBreaker("b", CircuitBreakerConfig(failure_threshold=1, recovery_timeout=Duration(5.0)),
                              clock)
    b = Balancer(["a", "b"], bs)
    trip(bs["a"])
    trip(bs["b"])
    assert b.pick() is None
    assert b.time_until_available() == pytest.approx(5.0)
    task = asyncio.ensure_future(b.acquire())
    await settle()
    clock.advance(4.0)
    await settle()
    assert not task.done()  # waits, does not drop
    clock.advance(1.0)
    assert await asyncio.wait_for(task, 1.0) == "b"
    assert bs["a"].state == "open"


async def test_wait_available_returns_on_reset() -> None:
    clock = FakeClock()
    bs = breakers(clock, ["a"], timeout=1000.0)
    b = Balancer(["a"], bs)
    trip(bs["a"])
    task = asyncio.ensure_future(b.wait_available())
    await settle()
    bs["a"].reset()
    await asyncio.wait_for(task, 1.0)
    assert b.pick() == "a"


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        Balancer([])
    with pytest.raises(ValueError):
        Balancer(["a", "a"])
    with pytest.raises(ValueError):
        Balancer(["a"], strategy="random")  # type: ignore[arg-type]
