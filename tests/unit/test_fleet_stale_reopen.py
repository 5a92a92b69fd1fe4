"""A lease holder whose failed probe lands after the fleet closed must not open the endpoint again for
everyone (bench/fleet_scale.py, 1,000 members and 1 % scattered failures: 6 fleet-wide opens in 60 s,
each from one sidecar's failed call). Against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sidecar.config.schema import FleetConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.fleet.breaker import FleetScripts, parse_record
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.redis_server import RedisServer

BASE_MS, MAX_MS = 1000, 4000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as s:
        yield s


@pytest.fixture
async def conn(server: RedisServer) -> AsyncIterator[FleetConnection]:
    connection = FleetConnection(FleetConfig(endpoint=server.url), Events(Metrics()), SYSTEM_CLOCK)
    connection.start()
    await connection.wait_changed(5.0)
    assert connection.connected
    yield connection
    await connection.stop()


async def test_a_stale_holders_failed_probe_leaves_a_closed_fleet_closed(conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    record_keys = [keys.breaker("c"), keys.lease("c"), keys.evidence("c")]

    async def open_(instance: str, reopen: bool) -> tuple[bool, int]:
        record = parse_record(await scripts.open(keys=record_keys, args=[
            BASE_MS, MAX_MS, 1 if reopen else 0, instance, keys.channel, "c", ""]))
        return record.open, record.gen

    assert await open_("a", reopen=False) == (True, 1)  # (a resync's open of a closed record still opens)
    assert await client.set(keys.lease("c"), "a", nx=True, px=3000)
    assert await open_("a", reopen=True) == (True, 2)  # the holder's failed probe: the next, longer period
    closed = parse_record(await scripts.close(keys=record_keys, args=["b", keys.channel, "c"]))
    assert (closed.open, closed.gen) == (False, 3)  # b's success closed it for all and freed a's lease
    # a has not heard of the close yet; its failed probe arrives now
    assert await open_("a", reopen=True) == (False, 3)
    assert await client.hget(keys.breaker("c"), "state") == "closed"
