"""The fleet connection in Sentinel mode against real redis-server processes (tests/fakes/redis_ha.py):
after SENTINEL FAILOVER its writes reach the new primary (the old one answers as a primary for seconds
before the sentinels demote it), and sentinels that stop answering do not take Redis down with them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sidecar.config.schema import FleetConfig, FleetSentinelConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.fleet.breaker import FleetScripts
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.redis_ha import MASTER_NAME, RedisSentinelSet

KEYS = Keys("t:")


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelSet]:
    with RedisSentinelSet(Path(tmp_path_factory.mktemp("sentinel"))) as servers:
        yield servers


async def connected(servers: RedisSentinelSet) -> FleetConnection:
    conn = FleetConnection(FleetConfig(sentinel=FleetSentinelConfig(master_name=MASTER_NAME,
                                                                    addresses=servers.addresses)),
                           Events(Metrics()), SYSTEM_CLOCK)
    conn.start()
    deadline = time.monotonic() + 10
    while not conn.connected:
        assert time.monotonic() < deadline, "no connection through the sentinels"
        await asyncio.sleep(0.02)
    return conn


async def beat(conn: FleetConnection, instance: str) -> object:
    scripts = FleetScripts(conn)
    return await conn.call(lambda: scripts.heartbeat(keys=[KEYS.member(instance), KEYS.members],
                                                     args=[instance, "{}", 60000]))


def members_on(port: int) -> list[str]:
    with redis.Redis(port=port, decode_responses=True) as store:
        return [str(m) for m in store.zrange(KEYS.members, 0, -1)]


@pytest.mark.parametrize("silent_first_sentinel", [False, True])
async def test_after_sentinel_failover_writes_reach_the_new_primary(sentinel_set: RedisSentinelSet,
                                                                   silent_first_sentinel: bool) -> None:
    conn = await connected(sentinel_set)
    if silent_first_sentinel:  # the first sentinel asked hangs: the others must still be asked in time
        sentinel_set.sentinels[0].pause()
    try:
        assert await beat(conn, "before") is not None
        await asyncio.to_thread(sentinel_set.failover, 20.0, 1)
        new_primary = sentinel_set.master_port(1)
        # Within about one sentinel check (1 s) and a reconnect: not after the old primary's demotion.
        deadline = time.monotonic() + 2.5
        n = 0
        while "after" + str(n) not in members_on(new_primary):
            assert time.monotonic() < deadline, f"writes never reached the new primary {new_primary}"
            n += 1
            await beat(conn, "after" + str(n))
            await asyncio.sleep(0.1)
        assert "before" in members_on(new_primary)  # replicated before the failover
    finally:
        sentinel_set.sentinels[0].resume()
        await conn.stop()


async def test_sentinels_that_stop_answering_do_not_take_redis_down(sentinel_set: RedisSentinelSet) -> None:
    conn = await connected(sentinel_set)
    try:
        for sentinel in sentinel_set.sentinels:
            sentinel.pause()
        await asyncio.sleep(2.5)  # two sentinel checks, each unanswered
        assert conn.connected
        assert await beat(conn, "still") is not None
    finally:
        for sentinel in sentinel_set.sentinels:
            sentinel.resume()
        await conn.stop()
