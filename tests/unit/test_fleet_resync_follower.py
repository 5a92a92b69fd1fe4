"""A sidecar that reconnects to Redis pushes only the opens its own breaker made (sidecar/fleet/breaker.py
`SharedBreaker.resync`). A breaker that merely followed the fleet's open is open too; pushing it re-opened a
fleet that had closed while the sidecar was cut off (bench/fleet_scale.py: 9 of 30 opens at 1,000 members,
cause `breaker`). Real `SharedBreaker` and `EndpointBreaker` against a real redis-server; "cut off" is the
connection marked down (commands refused), "back" is what the supervisor does: connected, then resync."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sidecar.config.schema import CircuitBreakerConfig, FleetConfig
from sidecar.config.units import Duration
from sidecar.exporters.breaker import SOURCE_FLEET, SOURCE_LOCAL, BreakerState, EndpointBreaker
from sidecar.fleet.breaker import FleetScripts, SharedBreaker, parse_record
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.redis_server import RedisServer

ENDPOINT = "c"
BASE_MS, MAX_MS = 2000, 8000
CONFIG = CircuitBreakerConfig(failure_threshold=2, recovery_timeout=Duration(2.0), max_recovery_timeout=Duration(8.0))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as s:
        yield s


class Member:
    """One sidecar's fleet breaker of ENDPOINT, with one local breaker, on a fake clock (Redis keeps its own)."""

    def __init__(self, server: RedisServer, instance: str) -> None:
        self.clock = FakeClock(100.0)
        self.conn = FleetConnection(FleetConfig(endpoint=server.url), Events(Metrics()), self.clock)
        self.conn.connected = True  # the supervisor is not started: the test says when Redis is reachable
        self.scripts, self.keys = FleetScripts(self.conn), Keys("t:")
        self.shared = SharedBreaker(ENDPOINT, self.conn, self.scripts, self.keys, instance, Events(Metrics()),
                                    self.clock)
        self.breaker = EndpointBreaker(ENDPOINT, CONFIG, self.clock)
        self.shared.attach(self.breaker, None)

    async def back(self) -> None:
        self.conn.connected = True
        await self.shared.resync()

    async def record(self) -> tuple[str, str, str]:
        fields = await self.conn.client.hmget(self.keys.breaker(ENDPOINT), ["state", "cause", "by"])
        return str(fields[0]), str(fields[1]), str(fields[2])


@pytest.fixture
async def member(server: RedisServer) -> AsyncIterator[Member]:
    m = Member(server, "b")
    yield m
    await m.shared.stop()
    await m.conn.client.aclose()


async def fleet_opens(m: Member) -> None:
    """Another member ("a") opens the record on the fleet's evidence; `m` hears of it and follows."""
    reply = await m.scripts.open(keys=m.shared._record_keys, args=[
        BASE_MS, MAX_MS, 0, "a", m.keys.channel, ENDPOINT, ""])
    m.shared.on_message(parse_record(reply))
    assert m.breaker.state is BreakerState.OPEN and m.breaker.opened_by == SOURCE_FLEET


async def fleet_closes(m: Member) -> None:
    """The lease holder's probe succeeded: the record closes (m, cut off, does not hear it)."""
    reply = await m.scripts.close(keys=m.shared._record_keys, args=["a", m.keys.channel, ENDPOINT])
    assert not parse_record(reply).open


async def test_a_follower_that_comes_back_after_the_fleet_closed_adopts_the_close(member: Member) -> None:
    await fleet_opens(member)
    member.conn.mark_down("cut off")
    await fleet_closes(member)
    await member.back()
    assert await member.record() == ("closed", "breaker", "a")  # not opened again by b
    assert member.breaker.state is BreakerState.CLOSED  # b follows the fleet's close


async def test_an_open_of_its_own_made_while_cut_off_is_pushed(member: Member) -> None:
    member.conn.mark_down("cut off")
    for _ in range(CONFIG.failure_threshold):
        member.breaker.record_failure()  # b's own calls fail: its breaker trips on its own evidence
    assert member.breaker.state is BreakerState.OPEN and member.breaker.opened_by == SOURCE_LOCAL
    await member.back()
    assert await member.record() == ("open", "breaker", "b")
    assert member.breaker.state is BreakerState.OPEN


async def test_a_follower_whose_own_half_open_call_failed_while_cut_off_pushes_that_open(member: Member) -> None:
    """Cut off, a follower decides locally: its recovery timeout ends, its half-open call fails, and that
    open is its own evidence even though the first open was the fleet's."""
    await fleet_opens(member)
    member.conn.mark_down("cut off")
    await fleet_closes(member)
    member.clock.advance(CONFIG.recovery_timeout + 0.1)
    assert member.breaker.state is BreakerState.HALF_OPEN
    member.breaker.record_failure()
    assert member.breaker.state is BreakerState.OPEN and member.breaker.opened_by == SOURCE_LOCAL
    await member.back()
    assert await member.record() == ("open", "breaker", "b")
