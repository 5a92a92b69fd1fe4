"""A consumer whose endpoint the fleet holds open waits for a change, not on a timer (issue 28).

While the fleet has an endpoint open, every sidecar but the prober is held: its consumers wait in
`Sender.wait_ready` until the gate's answer changes. They used to ask again every 0.25 s (10 consumers x
1,000 members = 40,000 wake-ups a second in bench/fleet_scale.py); now the gate answers "until further
notice" and wakes them itself when the fleet closes, the connection drops or the hold's end arrives.

Virtual time (FakeClock): a waiter that slept on a timer shows in `clock.sleeps`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.config.schema import CircuitBreakerConfig, FleetConfig
from sidecar.config.units import Duration
from sidecar.core.entry import QueueEntry
from sidecar.exporters.breaker import HELD_RETRY_HINT, BreakerOpenError, BreakerState
from sidecar.fleet.breaker import FleetScripts, SharedBreaker
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.fleet.view import Record
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.sender import FakeTransport, build, make_config, make_entry

ENDPOINT = "c:4317"
OPEN = Record(open=True, remaining=60.0, timeout=60.0, gen=1)
CLOSED = Record(open=False, remaining=0.0, timeout=60.0, gen=2)


class Member:
    """One sidecar's sender with its shared breaker, connected to a Redis it never has to reach: the fleet's
    changes are fed in as the pub/sub listener would."""

    def __init__(self, clock: FakeClock, *, prober: bool) -> None:
        metrics = Metrics()
        config = make_config([ENDPOINT], circuit_breaker=CircuitBreakerConfig(recovery_timeout=Duration(1.0)))
        self.sender: Any = build(config, [FakeTransport(ENDPOINT, clock)], clock, metrics)
        chain = self.sender.endpoints[ENDPOINT]
        self.breaker = chain.breaker
        # Never started: no socket is opened, `connected` is what the supervisor would have set.
        self.conn = FleetConnection(FleetConfig(endpoint="redis://127.0.0.1:1/0"), Events(metrics), clock)
        self.conn.connected = True
        self.shared = SharedBreaker(ENDPOINT, self.conn, FleetScripts(self.conn), Keys("t:"), "me",
                                    Events(metrics), clock)
        self.conn.on_disconnected.append(self.shared.disconnected)
        self.shared.attach(self.breaker, chain.prober if prober else None)
        self.asked = 0
        gate = self.shared.probe_delay

        def counted() -> float | None:
            self.asked += 1
            return gate()

        self.shared.probe_delay = counted  # type: ignore[method-assign]


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock(100.0)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def held_consumers(member: Member, count: int) -> list[asyncio.Task[None]]:
    member.shared.on_message(OPEN)
    assert member.breaker.state is BreakerState.OPEN
    consumers = [asyncio.ensure_future(member.sender.wait_ready()) for _ in range(count)]
    await settle()
    assert not any(c.done() for c in consumers)
    return consumers


async def test_held_consumers_do_not_wake_while_the_fleet_holds_the_endpoint(clock: FakeClock) -> None:
    member = Member(clock, prober=True)
    consumers = await held_consumers(member, 10)
    asked = member.asked
    for _ in range(40):  # 10 s of an outage
        clock.advance(0.25)
        await settle()
    assert not any(c.done() for c in consumers)
    assert clock.sleeps == []  # no consumer set a timer
    assert member.asked == asked  # and none asked the gate again
    for consumer in consumers:
        consumer.cancel()


async def test_a_reopen_wakes_nobody(clock: FakeClock) -> None:
    """The prober's failed probe starts the next open period (a new generation, still open) every probe
    interval of an outage: nothing changes for a held member, so neither its consumers nor its refresh loop
    are woken for it (nor by the open: a fleet of 1,000 would send 1,000 READs and SET NX at once)."""
    member = Member(clock, prober=True)
    consumers = await held_consumers(member, 10)
    asked = member.asked
    assert not member.shared._wake.is_set()
    member.shared.on_message(Record(open=True, remaining=120.0, timeout=120.0, gen=OPEN.gen + 1))
    await settle()
    assert member.asked - asked <= 1  # follow_open looks at the state once; every woken consumer would ask again
    assert not member.shared._wake.is_set()
    assert member.shared.view.gen == OPEN.gen + 1 and member.breaker.state is BreakerState.OPEN
    for consumer in consumers:
        consumer.cancel()


async def test_held_consumers_wake_when_the_fleet_closes(clock: FakeClock) -> None:
    member = Member(clock, prober=True)
    consumers = await held_consumers(member, 10)
    clock.advance(30.0)
    await settle()
    member.shared.on_message(CLOSED)  # the prober's success, by pub/sub
    await settle()
    assert all(c.done() for c in consumers)
    assert member.breaker.state is BreakerState.CLOSED


async def test_held_consumers_decide_locally_when_redis_goes_away(clock: FakeClock) -> None:
    member = Member(clock, prober=True)
    consumers = await held_consumers(member, 3)
    clock.advance(5.0)  # past the local recovery_timeout (1 s): only the fleet held it
    await settle()
    assert not any(c.done() for c in consumers)
    member.conn.mark_down("test")
    await settle()
    assert all(c.done() for c in consumers)
    assert member.breaker.state is BreakerState.HALF_OPEN


async def test_the_lease_holder_without_a_prober_wakes_when_its_hold_ends(clock: FakeClock) -> None:
    """Probing off, the holder's real calls are the probes: its hold ends at the next probe time, on a timer
    of exactly that length (one wake-up, not a poll)."""
    member = Member(clock, prober=False)
    member.shared.on_message(OPEN)
    member.shared.lease.granted(clock.now)
    member.shared._gate_changed()  # what winning the lease does
    consumer = asyncio.ensure_future(member.sender.wait_ready())
    await settle()
    assert clock.sleeps == [pytest.approx(member.shared.probe_interval)]
    clock.advance(member.shared.probe_interval - 0.01)
    await settle()
    assert not consumer.done()
    clock.advance(0.01)
    await settle()
    assert consumer.done()
    assert member.breaker.state is BreakerState.HALF_OPEN


async def test_a_refused_call_is_told_a_finite_wait(clock: FakeClock) -> None:
    """"Until further notice" is for the waiters only: a hint given to a caller (Retry-After) stays finite."""
    member = Member(clock, prober=True)
    member.shared.on_message(OPEN)
    assert member.breaker.time_until_probe_allowed() == HELD_RETRY_HINT
    with pytest.raises(BreakerOpenError) as refused:
        async with member.breaker.calling():
            pass
    assert refused.value.retry_after == HELD_RETRY_HINT
    entry: QueueEntry = make_entry(1)
    report = await member.sender.send(entry)
    assert report.retry_after == HELD_RETRY_HINT
