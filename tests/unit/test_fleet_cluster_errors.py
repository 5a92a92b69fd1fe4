"""A Redis Cluster that cannot be reached raises redis-py's RedisClusterException family, which is no
RedisError: the fleet connection must still read it as "Redis down" (sidecar/fleet/connection.py FAILURES),
not let it escape to the supervisor's catch-all or a departing sidecar's handoff."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import RedisClusterUnreachableError, SlotNotCoveredError

from sidecar.config.schema import FleetClusterConfig, FleetConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.fleet.connection import FleetConnection
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.sidecar_process import free_port


def unreachable_cluster() -> FleetConnection:
    nodes = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    return FleetConnection(FleetConfig(cluster=FleetClusterConfig(nodes=nodes)), Events(Metrics()), SYSTEM_CLOCK)


async def test_a_cluster_that_no_node_answers_is_not_reachable_yet_not_a_supervisor_error(
        caplog: pytest.LogCaptureFixture) -> None:
    conn = unreachable_cluster()
    caplog.set_level(logging.WARNING)
    conn.start()
    try:
        await asyncio.sleep(0.5)
        assert not conn.connected
        assert conn.reconnects >= 1
        messages = [r.getMessage() for r in caplog.records]
        assert "fleet store not reachable yet; going on with local state" in messages
        assert not any("supervisor failed" in m for m in messages), messages
    finally:
        await conn.stop()


@pytest.mark.parametrize("error", [RedisClusterUnreachableError("no node"), SlotNotCoveredError("slot 7")])
async def test_a_cluster_error_on_a_command_marks_the_fleet_down(error: Exception) -> None:
    conn = unreachable_cluster()
    conn.connected = True

    async def failing() -> None:
        raise error

    assert await conn.call_fast(failing) is None
    assert not conn.connected
