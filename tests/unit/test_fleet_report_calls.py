"""A failure report carries the calls its sidecar made since its previous report (at most CALLS_LOOKBACK
back, and at most LONG_CALLS_LOOKBACK back), so the fleet compares failures with calls it saw, not only with
its two-second average rate (a burst after a hold undercounts it). Real `SharedBreaker` and `EndpointBreaker`
over the in-memory store of tests/fakes/fleet_store.py, on a fake clock."""

from __future__ import annotations

import asyncio

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.exporters.breaker import CallOutcome, EndpointBreaker
from sidecar.fleet.breaker import SharedBreaker
from sidecar.fleet.keys import Keys
from sidecar.fleet.view import (
    CALLS_LOOKBACK,
    EVIDENCE_BATCH,
    LONG_CALLS_LOOKBACK,
    MIN_WINDOW,
    RecentCalls,
    Record,
    Report,
)
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.fleet_store import FakeClient, FakeConnection, FakeScripts, Store

ENDPOINT = "collector:4317"


def test_recent_calls_count_since_the_last_report_within_the_lookback() -> None:
    calls = RecentCalls()
    for t in (1.0, 1.04, 1.1, 1.12, 1.2):
        calls.add(t)
    assert calls.since(float("-inf"), 1.2) == 3  # 1.1, 1.12, 1.2: within 150 ms of now
    assert calls.since(1.1, 1.2) == 2  # after the last report
    assert CALLS_LOOKBACK == MIN_WINDOW + EVIDENCE_BATCH
    # Over the long lookback (the longest window's span: an unknown rate's) every one of them counts ...
    assert calls.since(float("-inf"), 1.2, LONG_CALLS_LOOKBACK) == 5
    assert calls.since(1.04, 1.2, LONG_CALLS_LOOKBACK) == 3
    calls.add(1.0 + LONG_CALLS_LOOKBACK + 0.05)
    # ... and calls older than it are forgotten.
    assert list(calls.times) == [1.1, 1.12, 1.2, 1.0 + LONG_CALLS_LOOKBACK + 0.05]


def one_sidecar(clock: FakeClock) -> tuple[Store, SharedBreaker, EndpointBreaker]:
    """A real SharedBreaker and EndpointBreaker over the in-memory store, its breaker never tripping on its own."""
    store = Store(clock, lambda record: None, 1.0, 2.0, 3)
    conn = FakeConnection(FakeClient(FakeScripts(lambda: store)))
    shared = SharedBreaker(ENDPOINT, conn, conn.client.scripts, Keys("t:"), "s0",  # type: ignore[arg-type]
                           Events(Metrics()), clock)
    breaker = EndpointBreaker(ENDPOINT, CircuitBreakerConfig(failure_threshold=100), clock)
    shared.attach(breaker, None)
    return store, shared, breaker


async def test_each_report_carries_the_calls_made_since_the_previous_one() -> None:
    clock = FakeClock(100.0)
    store, shared, breaker = one_sidecar(clock)

    async def call(fails: bool) -> None:
        async with breaker.calling() as attempt:
            if fails:
                attempt.outcome = CallOutcome.FAILURE

    async def settle() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    for _ in range(30):  # a burst: 30 calls within 30 ms, the last of them failing
        clock.advance(0.001)
        await call(False)
    await call(True)
    await settle()
    assert [r for _, r in store.reports] == [Report("s0", 1, 31, 31, wait=0.0)]  # sent at once: it waited 0
    for i in range(9):  # 9 more calls, 3 failing, within the batch: one report after EVIDENCE_BATCH
        clock.advance(0.005)
        await call(i % 4 == 0)
    clock.advance(EVIDENCE_BATCH)
    await settle()
    # The batch's first failure came 5 ms after the report before, and the clock jumped past the batch's end:
    # its wait counts as a whole batch at most.
    assert [r for _, r in store.reports] == [Report("s0", 1, 31, 31, 0.0), Report("s0", 3, 9, 9, EVIDENCE_BATCH)]
    assert not store.open  # 4 failures of 40 calls: well below 25 %
    for _ in range(40):  # 40 calls over 2.4 s, then a failure: 150 ms of them, or those since the last report
        clock.advance(0.06)  # (up to minimum_calls / 2, EvidenceRule.long_calls)
        await call(False)
    await call(True)
    await settle()
    assert store.reports[-1][1] == Report("s0", 1, 4, 10, 0.0)
    clock.advance(EVIDENCE_BATCH + 0.3)  # 5 more calls within 0.3 s, the last failing: all 5 over the long lookback
    for i in range(5):
        clock.advance(0.06)
        await call(i == 4)
    await settle()
    assert store.reports[-1][1] == Report("s0", 1, 3, 5, 0.0)
    shared.on_message(Record(open=False, remaining=0.0, timeout=0.0, gen=0))
    await shared.stop()


async def test_a_report_carries_how_long_its_first_failure_waited_in_the_batch() -> None:
    """The span a report's failures come from (EvidenceRule.tally): 0 for one sent at once, the time since
    the batch's first failure for one that waited for the batch's end."""
    clock = FakeClock(100.0)
    store, shared, breaker = one_sidecar(clock)

    async def fail() -> None:
        async with breaker.calling() as attempt:
            attempt.outcome = CallOutcome.FAILURE
        for _ in range(3):
            await asyncio.sleep(0)

    await fail()
    assert store.reports[-1][1].wait == 0.0
    clock.advance(0.03)
    await fail()  # 30 ms after the report: it waits for the batch's end, 70 ms
    clock.advance(0.02)
    await fail()
    assert len(store.reports) == 1
    clock.advance(0.05)
    for _ in range(3):
        await asyncio.sleep(0)
    assert [(r.failures, r.wait) for _, r in store.reports] == [(1, 0.0), (2, 0.07)]
    shared.on_message(Record(open=False, remaining=0.0, timeout=0.0, gen=0))
    await shared.stop()
