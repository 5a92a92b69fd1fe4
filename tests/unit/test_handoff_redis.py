"""The handoff on a real redis-server with AUTH: a password, and an ACL user allowed exactly the commands
docs/operations.md lists (so the documented ACL is known to work, and to be enough)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from redis.exceptions import AuthenticationError, ResponseError

from sidecar.config.schema import FleetConfig
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.exporters.breaker import BreakerState
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.handoff import Claimer, HandoffStore
from sidecar.fleet.handoff_codec import HandedOff
from sidecar.fleet.handoff_status import read_backlogs
from sidecar.fleet.keys import Keys
from sidecar.fleet.leftbehind import LeftBehind, LeftBehindLedger
from sidecar.queue.deadletter import DeadLetter
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.redis_server import RedisServer

ENDPOINT = "collector:4317"
PASSWORD = "s3cret"
# The ACL of docs/operations.md ("Redis for the fleet", Access), handoff commands only, on the fleet's key prefix.
HANDOFF_ACL = ("on >pw ~otlp-sidecar:* +ping +xadd +xreadgroup +xautoclaim +xclaim +xack +xdel +xgroup +xlen "
               "+xrange +xpending +sadd +smembers +hset +hgetall +hdel +get +set +decrby +evalsha +eval "
               "+script|load")


def test_the_documented_acl_is_the_tested_one() -> None:
    """docs/operations.md tells operators which commands the handoff needs: exactly the ones tested here."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    bullet = text[text.index("An ACL user for the"):]
    bullet = bullet[:bullet.index("tests/unit/test_handoff_redis.py")]
    documented = set(re.findall(r"\+[a-z|]+", bullet))
    tested = {word for word in HANDOFF_ACL.split() if word.startswith("+")}
    assert documented == tested, sorted(documented ^ tested)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", password=PASSWORD) as s:
        admin = redis.Redis(port=s.port, password=PASSWORD)
        admin.execute_command("ACL", "SETUSER", "sidecar", *HANDOFF_ACL.split())
        admin.close()
        yield s


def entry(n: int) -> QueueEntry:
    return QueueEntry(Signal.TRACES, b"payload %d" % n, 1, (("tenant", "a"),), 1.0)


async def round_trip(config: FleetConfig) -> list[QueueEntry]:
    """Hand off 3 entries, claim and deliver them, read the backlog, record and count a left-behind volume."""
    keys = Keys(config.key_prefix)
    store = HandoffStore(config, keys)
    events = Events(Metrics())
    clock = FakeClock(wall_offset=10_000.0)
    delivered: list[QueueEntry] = []

    async def take(item: QueueEntry, dead: DeadLetter | None) -> bool:
        delivered.append(item)
        return True

    exporter = SimpleNamespace(
        name="otlp", sender=SimpleNamespace(endpoints={ENDPOINT: SimpleNamespace(
            breaker=SimpleNamespace(state=BreakerState.CLOSED))}, max_request_bytes=None),
        config=SimpleNamespace(sending_queue=SimpleNamespace(num_consumers=2, batch=None)), take_handed_off=take)
    conn = cast(FleetConnection, SimpleNamespace(connected=True))
    claimer = Claimer(store, conn, cast(Any, exporter), ENDPOINT, Signal.TRACES, "m1", config, events, clock)
    try:
        limit = await store.limit_for(ENDPOINT)
        assert await store.add(ENDPOINT, Signal.TRACES, [HandedOff(entry(n), "s0") for n in range(3)], limit) == 3
        (backlog,) = await read_backlogs(store.client, keys, [], clock.wall())
        assert (backlog.entries, backlog.bytes) == (3, sum(len(entry(n).payload) for n in range(3)))
        await claimer.round()
        await claimer.refresh()
        (backlog,) = await read_backlogs(store.client, keys, [], clock.wall())
        assert (backlog.entries, backlog.bytes, backlog.pending) == (0, 0, 0)
        ledger = LeftBehindLedger(store.client, keys, "s0", 60.0, events, clock)
        ledger.volume = "v1"
        assert await ledger.record(LeftBehind("s0", {"traces": 4}, 1, clock.wall(), "budget_full"))
        ledger.volume = "v2"
        await ledger.reconcile()  # the same instance on another volume: counted now
        assert events.metrics.registry.get_sample_value(
            "sidecar_dropped_items_total", {"signal": "traces", "reason": "shutdown"}) == 4
    finally:
        await store.close()
    return delivered


async def test_a_password_protected_redis_takes_the_handoff(server: RedisServer) -> None:
    config = FleetConfig(endpoint=server.url, password=PASSWORD)
    assert [e.payload for e in await round_trip(config)] == [entry(n).payload for n in range(3)]


async def test_an_acl_user_with_the_documented_commands_is_enough(server: RedisServer) -> None:
    config = FleetConfig(endpoint=f"redis://sidecar:pw@127.0.0.1:{server.port}/0")
    assert len(await round_trip(config)) == 3


async def test_a_wrong_password_is_refused_not_ignored(server: RedisServer) -> None:
    store = HandoffStore(FleetConfig(endpoint=server.url, password="wrong"), Keys("otlp-sidecar:"))
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await store.limit_for(ENDPOINT)
    finally:
        await store.close()
