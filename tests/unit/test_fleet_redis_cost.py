"""What a healthy fleet member costs Redis: a few commands per second, whatever the fleet's size
(issue 28: <= 5 commands/s per member; bench/fleet_scale.py measures it at 1,000 members).

Counted by redis-server itself (`INFO commandstats`), against a real one."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.fleet_scale import SENT_BY_MEMBERS
from bench.fleet_sim import Member, SimUpstream, UpstreamPlan, export_classifier, request
from sidecar.config.schema import FleetConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.fleet.client import ScriptCall
from sidecar.fleet.connection import PING_IDLE, FleetConnection
from sidecar.fleet.fleet import HEARTBEAT_LATE
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as s:
        yield s


def calls(server: RedisServer, client: redis.Redis | None = None) -> dict[str, int]:
    """Redis's own counts; pass one open `client` to keep this test's own connecting (HELLO) out of them."""
    if client is None:
        with redis.Redis(port=server.port) as fresh:
            return calls(server, fresh)
    stats = client.info("commandstats")
    return {str(k).removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def sent_between(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after.get(name, 0) - before.get(name, 0) for name in SENT_BY_MEMBERS)


async def test_the_supervisor_pings_only_a_connection_nothing_else_uses(server: RedisServer) -> None:
    conn = FleetConnection(FleetConfig(endpoint=server.url), Events(Metrics()), SYSTEM_CLOCK)
    conn.start()
    try:
        await conn.wait_changed(5.0)
        assert conn.connected
        busy = calls(server)
        for _ in range(6):  # a command every 0.4 s, as a breaker refresh keeps one busy
            assert await conn.call(lambda: conn.client.get("k")) is None
            await asyncio.sleep(0.4)
        idle = calls(server)
        assert idle.get("ping", 0) == busy.get("ping", 0)  # the GETs proved Redis alive: no ping
        await asyncio.sleep(4 * PING_IDLE)
        assert calls(server).get("ping", 0) - idle.get("ping", 0) >= 2  # idle: pinged, to notice a dead Redis
    finally:
        await conn.stop()


async def test_a_healthy_member_sends_at_most_5_commands_per_second(server: RedisServer) -> None:
    member = Member(0, server.url, SimUpstream(UpstreamPlan(), seed=1), Events(Metrics()), export_classifier(),
                    "cost:")
    await member.start()
    counter = redis.Redis(port=server.port)
    try:
        await asyncio.sleep(1.5)  # connected, first heartbeat, first probe
        before, started = calls(server, counter), time.monotonic()
        sent = 0
        while time.monotonic() - started < 4.0:  # 20 requests/s of traffic, all delivered
            message, payload = request(time.time_ns(), sent.to_bytes(16, "big"))
            assert await member.accept(message, payload, time.time())
            sent += 1
            await asyncio.sleep(0.05)
        rate = sent_between(before, calls(server, counter)) / (time.monotonic() - started)
    finally:
        counter.close()
        await member.stop()
    assert 0 < rate <= 5.0


async def test_a_healthy_member_makes_about_one_round_trip_a_second(server: RedisServer) -> None:
    """The heartbeat and the budget's deposits ride on the closed endpoint's refresh, once a second: each round
    trip costs the member's process more CPU than Redis (bench/notes.md, "Fleet scale"). Alone, the refreshes
    every 0.5 s and the heartbeat every 2 s made 2.5 a second."""
    member = Member(0, server.url, SimUpstream(UpstreamPlan(), seed=1), Events(Metrics()), export_classifier(),
                    "trips:")
    fleet = member.fleet
    assert fleet is not None
    trips: list[float] = []
    beats: list[float] = []
    call, calls_of_beat = fleet.conn.call, fleet.heartbeat.calls

    async def counted(command: Callable[[], Awaitable[Any]]) -> Any:
        trips.append(time.monotonic())
        return await call(command)

    def beat_calls(now: float) -> list[ScriptCall]:
        beats.append(now)
        return calls_of_beat(now)

    fleet.conn.call = counted  # type: ignore[method-assign]
    fleet.heartbeat.calls = beat_calls  # type: ignore[method-assign]
    await member.start()
    try:
        await asyncio.sleep(1.5)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 6.0:  # 20 requests/s: the budget has deposits every second
            message, payload = request(time.time_ns(), sent.to_bytes(16, "big"))
            assert await member.accept(message, payload, time.time())
            sent += 1
            await asyncio.sleep(0.05)
        ended = time.monotonic()
        members = redis.Redis(port=server.port, decode_responses=True)
        try:
            listed = members.zrange(fleet.keys.members, 0, -1)
        finally:
            members.close()
    finally:
        await member.stop()
    in_window = [t for t in trips if started <= t < ended]
    assert len(in_window) / (ended - started) <= 1.4  # one refresh a second (a late loop may add a lone beat)
    gaps = [b - a for a, b in itertools.pairwise(beats) if a >= started - 2.0]
    assert gaps and max(gaps) <= 2.0 * HEARTBEAT_LATE  # still about every heartbeat_interval (2 s)
    assert listed == ["m0"]  # its heartbeat kept it a member
