"""The fleet's Redis side against a real redis-server: the Lua scripts, the connection's up/down
tracking and resync, the budget bucket, heartbeats, and the options that shape them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from sidecar.config.schema import FleetConfig, RetryBudgetConfig
from sidecar.config.units import Duration
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.fleet.breaker import FleetScripts, SharedBreaker, parse_record
from sidecar.fleet.budget import FleetRetryBudget
from sidecar.fleet.client import run_scripts
from sidecar.fleet.connection import BACKGROUND_TIMEOUT, PING_INTERVAL, FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.fleet.membership import Heartbeat, read_members
from sidecar.fleet.view import (
    EVIDENCE_BATCH,
    MAX_WINDOW,
    MIN_SPAN_WAIT,
    MIN_WINDOW,
    REPEATED_FAILURES,
    EvidenceRule,
    Report,
    encode_report,
    fleet_rate,
    parse_report,
)
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as s:
        yield s


def fleet_config(server: RedisServer, **kw: object) -> FleetConfig:
    return FleetConfig(endpoint=server.url, **kw)  # type: ignore[arg-type]


async def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
async def conn(server: RedisServer) -> AsyncIterator[FleetConnection]:
    connection = FleetConnection(fleet_config(server), Events(Metrics()), SYSTEM_CLOCK)
    connection.start()
    assert await wait_for(lambda: connection.connected)
    yield connection
    await connection.stop()


BASE_MS, MAX_MS = 1000, 4000


async def open_(scripts: FleetScripts, keys: Keys, instance: str, reopen: bool = False) -> tuple[bool, float, int]:
    reply = await scripts.open(keys=[keys.breaker("c"), keys.lease("c")],
                               args=[BASE_MS, MAX_MS, 1 if reopen else 0, instance, keys.channel, "c", ""])
    record = parse_record(reply)
    return record.open, record.timeout, record.gen


async def test_open_close_and_the_fleet_wide_growing_timeout(conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.channel)
    assert await open_(scripts, keys, "a") == (True, 1.0, 1)
    assert await open_(scripts, keys, "b") == (True, 1.0, 1)  # already open: a late opener changes nothing
    assert await open_(scripts, keys, "b", reopen=True) == (True, 1.0, 1)  # not the lease holder
    assert await client.set(keys.lease("c"), "a", nx=True, px=3000)
    assert not await client.set(keys.lease("c"), "b", nx=True, px=3000)  # one holder
    assert await client.hget(keys.breaker("c"), "cause") == "breaker"  # a's own breaker tripped
    assert await open_(scripts, keys, "a", reopen=True) == (True, 2.0, 2)  # the holder's probe failed
    assert await client.hget(keys.breaker("c"), "cause") == "probe"
    assert await open_(scripts, keys, "a", reopen=True) == (True, 4.0, 3)
    assert await open_(scripts, keys, "a", reopen=True) == (True, 4.0, 4)  # capped
    reply = await scripts.close(keys=[keys.breaker("c"), keys.lease("c")], args=["a", keys.channel, "c"])
    assert parse_record(reply).open is False and parse_record(reply).gen == 5
    assert await client.get(keys.lease("c")) is None  # the close frees the lease
    read = await scripts.read(keys=[keys.breaker("c"), keys.lease("c")], args=[])
    assert parse_record(read).open is False and read[4] == ""
    assert await open_(scripts, keys, "b") == (True, 1.0, 6)  # a new outage starts from the base again
    messages = []
    for _ in range(20):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            messages.append(message["data"].split("\n")[1:3])
    assert messages == [["open", "1"], ["open", "2"], ["open", "3"], ["open", "4"], ["closed", "5"], ["open", "6"]]
    await pubsub.aclose()


async def test_lease_renewal_and_release_only_by_the_holder(conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await client.set(keys.lease("c"), "a", px=200)
    assert await scripts.renew(keys=[keys.lease("c")], args=["b", 5000]) == 0
    assert await scripts.renew(keys=[keys.lease("c")], args=["a", 5000]) == 1
    assert await client.pttl(keys.lease("c")) > 1000
    assert await scripts.release(keys=[keys.lease("c")], args=["b"]) == 0
    assert await scripts.release(keys=[keys.lease("c")], args=["a"]) == 1


async def test_the_budget_bucket_pays_ratio_of_deposits_plus_the_floor(conn: FleetConnection) -> None:
    scripts, keys = FleetScripts(conn), Keys("t:")
    budgets = [FleetRetryBudget("c", RetryBudgetConfig(ratio=0.2, min_per_second=1.0), conn, scripts, keys)
               for _ in range(3)]  # three sidecars, one bucket
    for budget in budgets:
        for _ in range(20):
            budget.deposit()
        deposits = budget.take_deposits()  # as a breaker refresh sends them
        assert deposits is not None and budget.take_deposits() is None
        await run_scripts(conn.client, [deposits])
    granted = 0
    for _ in range(10):
        for budget in budgets:
            granted += bool(await budget.try_spend())
    # 60 first attempts x 0.2 = 12 tokens, plus the floor's capacity of 1 (and what it refilled meanwhile)
    assert 12 <= granted <= 14
    assert sum(b.refused for b in budgets) == 30 - granted


async def test_without_redis_nothing_waits_and_everything_says_unknown(server: RedisServer) -> None:
    metrics = Metrics()
    conn = FleetConnection(fleet_config(server), Events(metrics), SYSTEM_CLOCK)
    conn.start()
    assert await wait_for(lambda: conn.connected)
    assert metrics.registry.get_sample_value("sidecar_fleet_connected") == 1
    resyncs: list[float] = []

    async def resync() -> None:
        resyncs.append(time.monotonic())
    conn.on_connected.append(resync)
    server.kill()
    # Noticed while idle, by the ping; within PING_INTERVAL + BACKGROUND_TIMEOUT < 1 s on an idle machine
    # (a loaded one only makes this wait longer, hence the generous bound).
    assert PING_INTERVAL + BACKGROUND_TIMEOUT < 1.0
    assert await wait_for(lambda: not conn.connected, timeout=5)
    assert metrics.registry.get_sample_value("sidecar_fleet_connected") == 0
    budget = FleetRetryBudget("c", RetryBudgetConfig(), conn, FleetScripts(conn), Keys("t:"))
    assert await budget.try_spend() is None
    sent: list[str] = []

    async def command() -> str:
        sent.append("sent")
        return "reply"
    assert await conn.call_fast(command) is None and await conn.call(command) is None
    assert sent == []  # while down, nothing is even tried: no request waits on a dead Redis
    server.start()
    assert await wait_for(lambda: conn.connected, timeout=10)
    assert resyncs and metrics.registry.get_sample_value("sidecar_fleet_connected") == 1
    await conn.stop()


async def test_command_timeout_bounds_the_data_path_without_declaring_redis_down(conn: FleetConnection) -> None:
    assert conn.timeout == 0.05
    async with asyncio.timeout(30):  # only a guard against a hang: the command itself would take 60 s
        assert await conn.call_fast(lambda: asyncio.sleep(60.0)) is None
    assert conn.connected


async def test_a_password_from_the_config(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "secure", password="s3cret") as server:
        good = FleetConnection(fleet_config(server, password="s3cret"), Events(Metrics()), SYSTEM_CLOCK)
        bad = FleetConnection(fleet_config(server), Events(Metrics()), SYSTEM_CLOCK)
        good.start()
        bad.start()
        assert await wait_for(lambda: good.connected)
        await asyncio.sleep(0.3)
        assert not bad.connected
        await good.stop()
        await bad.stop()


async def test_an_empty_password_means_none(server: RedisServer) -> None:
    conn = FleetConnection(fleet_config(server, password=""), Events(Metrics()), SYSTEM_CLOCK)
    conn.start()
    assert await wait_for(lambda: conn.connected)
    await conn.stop()


async def test_heartbeats_carry_the_snapshot_expire_and_respect_the_prefix(server: RedisServer) -> None:
    config = fleet_config(server, key_prefix="shop:", heartbeat_interval=Duration(0.2))
    metrics = Metrics()
    conn = FleetConnection(config, Events(metrics), SYSTEM_CLOCK)
    conn.start()
    assert await wait_for(lambda: conn.connected)
    keys = Keys(config.key_prefix)
    beats = [Heartbeat(f"pod-{i}", float(config.heartbeat_interval), conn, FleetScripts(conn), keys,
                       Events(metrics), lambda: {"version": "9", "exporters": {"otlp": {"queue_size": 3}}})
             for i in range(2)]
    for beat in beats:
        await beat.beat(time.monotonic())
    assert metrics.registry.get_sample_value("sidecar_fleet_members") == 2
    client = aioredis.Redis(port=server.port, decode_responses=True)
    members = await read_members(client, keys)
    assert [m.instance for m in members] == ["pod-0", "pod-1"]
    assert members[0].info["exporters"]["otlp"]["queue_size"] == 3 and members[0].age < 1
    assert 0 < await client.pttl(keys.member("pod-0")) <= 600  # 3 heartbeats of 200 ms
    assert await read_members(client, Keys("otlp-sidecar:")) == []  # another fleet's prefix
    await beats[1].leave()
    assert [m.instance for m in await read_members(client, keys)] == ["pod-0"]
    await asyncio.sleep(0.7)  # pod-0 stops beating: gone after its TTL
    assert await read_members(client, keys) == []
    await client.aclose()
    await conn.stop()


async def test_a_stalled_redis_counts_as_down_within_a_second(conn: FleetConnection, server: RedisServer) -> None:
    server.pause()  # connections stay open, nothing answers
    try:
        assert await wait_for(lambda: not conn.connected, timeout=5)
        assert await conn.call_fast(conn.client.ping) is None
    finally:
        server.resume()
    assert await wait_for(lambda: conn.connected, timeout=10)


async def join(scripts: FleetScripts, keys: Keys, endpoint: str, instances: list[str]) -> None:
    for instance in instances:
        await scripts.heartbeat(keys=[keys.member(instance), keys.members], args=[instance, "{}", 5000])
        await scripts.endpoint_heartbeat(keys=[keys.endpoint_members(endpoint)], args=[instance, 5000])


_seq = iter(range(1, 1_000_000))


async def report(scripts: FleetScripts, keys: Keys, endpoint: str, instance: str, failures: int = 1,
                 rule: EvidenceRule | None = None, max_window_ms: int = int(MAX_WINDOW * 1000),
                 cls: str = "", calls: int | None = None,
                 calls_long: int | None = None, wait: float = EVIDENCE_BATCH) -> tuple[bool, bool, int, int]:
    """One member's batch of failures (and its calls meanwhile: as many, unless given; over the long lookback
    as many as over the short one, unless given; its first failure waited a whole batch, unless given) ->
    (open, tripped by this report, failures in the window, needed)."""
    rule = rule or EvidenceRule()
    calls = failures if calls is None else calls
    reply = await scripts.evidence(
        keys=[keys.breaker(endpoint), keys.evidence(endpoint), keys.endpoint_members(endpoint),
              keys.budget(endpoint)],
        args=[instance, next(_seq), failures, calls, rule.failure_ratio,
              rule.minimum_calls, int(MIN_WINDOW * 1000), max_window_ms, int(EVIDENCE_BATCH * 1000), BASE_MS,
              keys.channel, endpoint, cls, calls if calls_long is None else calls_long, REPEATED_FAILURES,
              round(wait * 1000), int(MIN_SPAN_WAIT * 1000)])
    return parse_record(reply).open, int(reply[4]) == 1, int(reply[5]), int(reply[6])


async def set_rate(conn: FleetConnection, keys: Keys, endpoint: str, per_second: float) -> None:
    """The fleet's request rate as the retry budget's flushes leave it: first attempts per whole second."""
    seconds, _ = await conn.client.time()
    second = int(seconds)
    await conn.client.hset(keys.budget(endpoint), mapping={  # the third second before: a rate known
        f"n:{second - k}": int(per_second) for k in (-1, 0, 1, 2, 3)})  # in case the second turns


async def test_pooled_failures_open_the_endpoint_after_a_bounded_count_from_two_members(
        conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b", "c", "d"])
    await join(scripts, keys, "other", ["e"])
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.channel)
    needed = EvidenceRule().needed(0.0)
    assert needed == 5  # 0.25 x 20 calls
    # One member alone never opens it, however many failures it reports (its own trouble).
    assert await report(scripts, keys, "c", "a", failures=3) == (False, False, 3, needed)
    assert await report(scripts, keys, "c", "a", failures=10) == (False, False, 13, needed)
    unavailable = "transport|low|retryable|retry_with_backoff|UNAVAILABLE|default"
    # A second member's failures (two: with no rate known yet, a member's failures count once they repeat):
    # the count is reached, from two members: open for all.
    assert await report(scripts, keys, "c", "b", failures=2, cls=unavailable) == (True, True, 15, needed)
    assert await client.hmget(keys.breaker("c"), ["cause", "by", "class"]) == ["evidence", "b", unavailable]
    assert not await client.exists(keys.evidence("c"))  # opening forgets the evidence
    read = await scripts.read(keys=[keys.breaker("c"), keys.lease("c")], args=[])
    record = parse_record(read)
    assert record.open and record.timeout == BASE_MS / 1000 and record.gen == 1 and read[6] == unavailable
    messages = []
    for _ in range(10):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            messages.append(message["data"].split("\n")[:3])
    assert messages == [["c", "open", "1"]]
    # While open, reports change nothing and are not kept for the next closed period.
    assert await report(scripts, keys, "c", "c", failures=50) == (True, False, 0, 0)
    assert not await client.exists(keys.evidence("c"))
    await scripts.close(keys=[keys.breaker("c"), keys.lease("c"), keys.evidence("c")], args=["a", keys.channel, "c"])
    # A new closed period starts empty.
    assert await report(scripts, keys, "c", "d", failures=2) == (False, False, 2, needed)
    await pubsub.aclose()


async def test_a_lone_member_of_an_endpoint_opens_it_on_its_own_count(conn: FleetConnection) -> None:
    scripts, keys = FleetScripts(conn), Keys("t:")
    await join(scripts, keys, "c", ["a"])
    assert await report(scripts, keys, "c", "a", failures=4) == (False, False, 4, 5)
    assert await report(scripts, keys, "c", "a", failures=1) == (True, True, 5, 5)


async def test_at_a_high_rate_the_window_is_short_and_scattered_failures_fall_out_of_it(
        conn: FleetConnection) -> None:
    scripts, keys = FleetScripts(conn), Keys("t:")
    await join(scripts, keys, "c", ["a", "b"])
    await set_rate(conn, keys, "c", 2000.0)
    rule = EvidenceRule()
    # 25 % of the 150 ms that reports arriving within 50 ms can carry failures of (50 ms + one batch).
    assert rule.window(2000.0) == MIN_WINDOW and rule.needed(2000.0) == 75
    assert await report(scripts, keys, "c", "a", failures=60) == (False, False, 60, 75)
    await asyncio.sleep(MIN_WINDOW * 2)  # those 60 are older than the window now
    assert await report(scripts, keys, "c", "b", failures=60) == (False, False, 60, 75)
    assert await report(scripts, keys, "c", "a", failures=15) == (True, True, 75, 75)


async def test_a_burst_of_calls_counts_even_when_the_average_rate_says_less(conn: FleetConnection) -> None:
    """After a hold every member sends what it held at once: the two-second average rate undercounts that
    burst (here it says nothing: 5 failures), the calls the reports carry do not. 5 % of a burst stays
    closed; a burst that fails opens."""
    scripts, keys = FleetScripts(conn), Keys("t:")
    await join(scripts, keys, "c", ["a", "b", "c", "d"])
    assert EvidenceRule().needed(0.0) == 5
    assert await report(scripts, keys, "c", "a", failures=2, calls=40) == (False, False, 2, 10)
    assert await report(scripts, keys, "c", "b", failures=2, calls=40) == (False, False, 4, 20)
    assert await report(scripts, keys, "c", "c", failures=2, calls=40) == (False, False, 6, 30)  # 6 of 120
    assert await report(scripts, keys, "c", "d", failures=40, calls=40) == (True, True, 46, 40)  # 46 of 160


async def test_for_3_s_after_a_close_the_rate_is_at_least_the_one_at_the_open(conn: FleetConnection) -> None:
    """A hold makes no first attempts: just after it, the last two seconds' counts undercount the traffic
    coming back (in a burst). The rate the record kept when the evidence opened it still counts."""
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b"])
    await set_rate(conn, keys, "c", 500.0)
    assert await report(scripts, keys, "c", "a", failures=9) == (False, False, 9, 18)
    assert await report(scripts, keys, "c", "b", failures=9) == (True, True, 18, 18)
    assert float(await client.hget(keys.breaker("c"), "rate")) == 500.0
    await scripts.close(keys=[keys.breaker("c"), keys.lease("c"), keys.evidence("c")], args=["a", keys.channel, "c"])
    await set_rate(conn, keys, "c", 100.0)  # the hold's silence in the counts
    assert EvidenceRule().needed(100.0) == 5
    assert await report(scripts, keys, "c", "a", failures=5) == (False, False, 5, 18)
    # 3 s after the close the counts are the fleet's again.
    await client.hset(keys.breaker("c"), "at", int(await client.hget(keys.breaker("c"), "at")) - 3000)
    await client.delete(keys.evidence("c"))
    assert await report(scripts, keys, "c", "b", failures=5) == (False, False, 5, 5)
    assert await report(scripts, keys, "c", "a", failures=1) == (True, True, 6, 5)


async def test_with_no_rate_known_only_a_members_repeated_failures_count(conn: FleetConnection) -> None:
    """A fleet whose traffic just started: single failures scattered over many members are what 1 % failing
    looks like; an outage fails each member again within its next report or two."""
    scripts, keys = FleetScripts(conn), Keys("t:")
    members = ["a", "b", "c", "d", "e", "f"]
    await join(scripts, keys, "c", members)
    for member in members:
        assert await report(scripts, keys, "c", member) == (False, False, 0, 5)
    assert await report(scripts, keys, "c", "a") == (False, False, 2, 5)
    assert await report(scripts, keys, "c", "b") == (False, False, 4, 5)
    assert await report(scripts, keys, "c", "c") == (True, True, 6, 5)


async def test_the_rate_is_unknown_until_the_second_before_last_counted_first_attempts(
        conn: FleetConnection) -> None:
    """The first second of the budget's counts is partial (members flush once a second): the last two seconds
    give the rate only when the one before last counted first attempts too (`fleet_rate`)."""
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b"])
    seconds, micros = await client.time()
    if micros > 700_000:  # the second must not turn between the counts and the reports
        await asyncio.sleep(1.0 - micros / 1e6 + 0.01)
        seconds, _ = await client.time()
    second = int(seconds)
    await client.hset(keys.budget("c"), mapping={f"n:{second - 1}": 2000, f"n:{second}": 2000})
    assert fleet_rate(2000, 0) == 0.0 and fleet_rate(2000, 1000) == 1500.0
    # Unknown: the 5 s window, a member's single failure does not count.
    assert await report(scripts, keys, "c", "a", failures=3) == (False, False, 3, 5)
    assert await report(scripts, keys, "c", "b", failures=1) == (False, False, 3, 5)
    await client.hset(keys.budget("c"), f"n:{second - 2}", 1)
    known = EvidenceRule().needed(fleet_rate(2000, 1))
    assert known == 37  # about 1,000 requests/s: 37 failures within 50 ms
    assert await report(scripts, keys, "c", "b", failures=1) == (False, False, 5, known)


async def test_the_script_keeps_a_report_as_encode_report_writes_it(conn: FleetConnection) -> None:
    """The entry format is shared by Lua (EVIDENCE) and Python (`encode_report`, `parse_report` in status)."""
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b"])
    await scripts.evidence(
        keys=[keys.breaker("c"), keys.evidence("c"), keys.endpoint_members("c"), keys.budget("c")],
        args=["a", 7, 3, 9, 0.25, 20, int(MIN_WINDOW * 1000), int(MAX_WINDOW * 1000), int(EVIDENCE_BATCH * 1000),
              BASE_MS, keys.channel, "c", "", 12, REPEATED_FAILURES, 40, int(MIN_SPAN_WAIT * 1000)])
    [entry] = await client.zrange(keys.evidence("c"), 0, -1)
    assert entry == encode_report("a", 7, failures=3, calls=9, calls_long=12, wait_ms=40)
    assert parse_report(entry) == Report("a", 3, 9, 12, 0.04)


async def test_an_older_sidecars_report_without_its_calls_counts_its_failures_as_calls(conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b"])
    now = (await client.time())[0]
    await client.zadd(keys.evidence("c"), {"a\n1\n3": int(now) * 1000 + 999})  # (instance, seq, failures)
    assert await report(scripts, keys, "c", "b", failures=2) == (True, True, 5, 5)


async def test_reports_older_than_the_longest_window_are_dropped(conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b", "c"])
    assert await report(scripts, keys, "c", "a", failures=4, max_window_ms=150) == (False, False, 4, 5)
    await asyncio.sleep(0.3)
    assert await report(scripts, keys, "c", "b", failures=2, max_window_ms=150) == (False, False, 2, 5)
    assert [e.split("\n")[0] for e in await client.zrange(keys.evidence("c"), 0, -1)] == ["b"]


@pytest.mark.parametrize(("ratio", "rate"), [
    (0.3, 0.0), (0.3, 4.0), (0.3, 80.0), (0.3, 99.0), (0.3, 100.0), (0.3, 101.0), (0.3, 399.0), (0.3, 400.0),
    (0.3, 2000.0), (0.3, 10000.0),
    (1.0, 2.0), (1.0, 80.0), (1.0, 2000.0),  # every call must fail: capped at the window's own calls
])
async def test_the_script_applies_the_evidence_rule_of_view(conn: FleetConnection, ratio: float, rate: float) -> None:
    """Lua and Python agree: one failure short of `needed` stays closed, `needed` opens."""
    rule = EvidenceRule(failure_ratio=ratio, minimum_calls=15)
    scripts, keys = FleetScripts(conn), Keys(f"r{ratio}-{int(rate)}:")
    await join(scripts, keys, "c", ["a", "b"])
    await set_rate(conn, keys, "c", rate)
    needed = rule.needed(rate)
    # With no rate known a member's failures count once it reported REPEATED_FAILURES (EvidenceRule.tally).
    first = max(needed - 1, REPEATED_FAILURES) if rate <= 0 else needed - 1
    last = max(1, needed - first)
    if rate <= 0:
        assert await report(scripts, keys, "c", "a", failures=first, rule=rule) == (False, False, first, needed)
        assert await report(scripts, keys, "c", "b", failures=last, rule=rule) == (False, False, first, needed)
        assert await report(scripts, keys, "c", "b", failures=1, rule=rule) == (True, True, first + last + 1, needed)
        return
    assert await report(scripts, keys, "c", "a", failures=first, rule=rule) == (False, False, first, needed)
    assert await report(scripts, keys, "c", "b", failures=last, rule=rule) == (True, True, needed, needed)


@pytest.mark.parametrize(("rate", "calls"), [(0.0, 100), (0.0, 1001), (2.0, 100), (400.0, 300), (2000.0, 999)])
async def test_the_script_applies_the_calls_the_reports_carry_as_view_does(conn: FleetConnection, rate: float,
                                                                         calls: int) -> None:
    """The calls of the lookback that matches the window decide (the long one for the longest window: an
    unknown rate, or a quiet fleet's), the other ones are ignored, in Lua as in `EvidenceRule.tally`."""
    rule = EvidenceRule(failure_ratio=0.3, minimum_calls=15)
    scripts, keys = FleetScripts(conn), Keys(f"k{int(rate)}-{calls}:")
    await join(scripts, keys, "c", ["a", "b"])
    await set_rate(conn, keys, "c", rate)
    needed = rule.needed(rate, calls)
    assert needed > rule.needed(rate)  # the calls decide here
    long = rule.long_span(rate)
    assert long == (rule.window(rate) == MAX_WINDOW)
    short_calls, long_calls = (needed - 1, calls) if long else (calls, 10 * calls)
    assert await report(scripts, keys, "c", "a", failures=needed - 1, calls=short_calls, calls_long=long_calls,
                        rule=rule) == (False, False, needed - 1, needed)
    more = REPEATED_FAILURES if rate <= 0 else 1  # with no rate known, b's failures count once they repeat
    assert await report(scripts, keys, "c", "b", failures=more, calls=0, calls_long=0, rule=rule) == (
        True, True, needed - 1 + more, needed)


@pytest.mark.parametrize(("rate", "waits"), [
    (2000.0, (0.0, 0.0)), (2000.0, (0.0, 0.1)), (2000.0, (0.03, 0.08)), (2000.0, (0.5, 0.0)),
    (500.0, (0.0, 0.0)), (500.0, (0.1, 0.1)), (80.0, (0.0, 0.0)), (0.0, (0.0, 0.0)),
])
async def test_the_script_weighs_the_reports_waits_as_view_does(conn: FleetConnection, rate: float,
                                                                waits: tuple[float, float]) -> None:
    """The span the window's failures come from is the window plus their reports' mean wait (weighted by
    their failures, each at most a batch, at least MIN_SPAN_WAIT in all), in Lua as in `EvidenceRule.tally`:
    reports sent at once need fewer failures at a high rate."""
    rule = EvidenceRule()
    scripts, keys = FleetScripts(conn), Keys(f"w{int(rate)}-{waits[0]}-{waits[1]}:")
    await join(scripts, keys, "c", ["a", "b"])
    await set_rate(conn, keys, "c", rate)
    sent: list[Report] = []
    for instance, failures, wait in (("a", 2, waits[0]), ("b", 20, waits[1]), ("b", 30, waits[1])):
        sent.append(Report(instance, failures, failures, failures, wait))
        tally = rule.tally(sent, rate)
        needed = rule.needed(rate, tally.calls, tally.wait)
        opened = rule.opens(tally.failures, tally.reporters, 2, rate, tally.calls, tally.wait)
        assert await report(scripts, keys, "c", instance, failures=failures, wait=wait) == (
            opened, opened, tally.failures, needed), (instance, failures, wait)
        if opened:
            break
    if rate >= 2000 and max(waits) <= MIN_SPAN_WAIT:
        assert opened and needed < rule.needed(rate)  # the waits decided here: 52 failures, 75 with a batch


async def test_just_after_a_close_the_wait_is_a_whole_batch(conn: FleetConnection) -> None:
    """The held data's burst bunches reports sent at once, whatever they waited
    (tests/property/test_fleet_evidence_props.py): for 3 s after a close the script takes a whole batch."""
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    await join(scripts, keys, "c", ["a", "b"])
    await set_rate(conn, keys, "c", 2000.0)
    rule = EvidenceRule()
    assert await report(scripts, keys, "c", "a", failures=30, wait=0.0) == (False, False, 30, rule.needed(2000, 0, 0))
    assert await report(scripts, keys, "c", "b", failures=20, wait=0.0) == (True, True, 50, 50)
    await scripts.close(keys=[keys.breaker("c"), keys.lease("c"), keys.evidence("c")], args=["a", keys.channel, "c"])
    assert await report(scripts, keys, "c", "a", failures=30, wait=0.0) == (False, False, 30, 75)
    assert await report(scripts, keys, "c", "b", failures=20, wait=0.0) == (False, False, 50, 75)
    await client.hset(keys.breaker("c"), "at", int(await client.hget(keys.breaker("c"), "at")) - 3000)
    assert await report(scripts, keys, "c", "b", failures=1, wait=0.0) == (True, True, 51, 50)


async def test_budget_flushes_count_the_fleets_first_attempts_per_second(conn: FleetConnection) -> None:
    scripts, keys, client = FleetScripts(conn), Keys("t:"), conn.client
    budget = FleetRetryBudget("c", RetryBudgetConfig(), conn, scripts, keys)
    shared = SharedBreaker("c", conn, scripts, keys, "me", Events(Metrics()), SYSTEM_CLOCK)
    shared.budget = budget
    for _ in range(7):
        budget.deposit()
    assert await shared._read() is not None  # a breaker refresh carries the deposits, in the same round trip
    assert budget.pending == 0
    budget.deposit()
    await shared._read()
    assert budget.pending == 1  # the next ones wait for the next second
    seconds, _ = await client.time()
    counts = await client.hgetall(keys.budget("c"))
    assert sum(int(v) for k, v in counts.items() if k.startswith("n:")) == 7
    assert any(k in counts for k in (f"n:{int(seconds)}", f"n:{int(seconds) - 1}"))


async def test_leaving_removes_the_member_from_its_endpoints(server: RedisServer) -> None:
    conn = FleetConnection(fleet_config(server), Events(Metrics()), SYSTEM_CLOCK)
    conn.start()
    assert await wait_for(lambda: conn.connected)
    keys = Keys("t:")
    beat = Heartbeat("pod", 1.0, conn, FleetScripts(conn), keys, Events(Metrics()), dict,
                     endpoints=lambda: ["c:4317"])
    await beat.beat(time.monotonic())
    assert await conn.client.zrange(keys.endpoint_members("c:4317"), 0, -1) == ["pod"]
    await beat.leave()
    assert await conn.client.zcard(keys.endpoint_members("c:4317")) == 0
    await conn.stop()


# A member's background commands share round trips (issue 28: each round trip costs the client far more CPU
# than Redis, which adds up when one machine hosts many members).


async def test_scripts_redis_forgot_are_loaded_and_run(conn: FleetConnection) -> None:
    """A Redis that restarted empty knows no script: each runs again on its own, which loads it."""
    scripts, keys = FleetScripts(conn), Keys("t:")
    read = (scripts.read, [keys.breaker("c"), keys.lease("c")], [])
    deposit = (scripts.budget, [keys.budget("c")], [5, 0, 0.2, 1.0, 10])
    await conn.client.script_flush()
    replies = await run_scripts(conn.client, [read, deposit])
    assert replies[0][0] == "closed" and replies[1] == 0
    replies = await run_scripts(conn.client, [read, deposit])  # loaded now: one round trip
    assert replies[0][0] == "closed"
    counts = await conn.client.hgetall(keys.budget("c"))
    assert sum(int(v) for k, v in counts.items() if k.startswith("n:")) == 10  # each deposit once


async def test_other_errors_are_raised(conn: FleetConnection) -> None:
    scripts, keys = FleetScripts(conn), Keys("t:")
    await conn.client.set(keys.budget("c"), "not a hash")
    with pytest.raises(redis.ResponseError):
        await run_scripts(conn.client, [(scripts.budget, [keys.budget("c")], [5, 0, 0.2, 1.0, 10])])


async def test_a_heartbeat_is_one_round_trip_for_every_endpoint(conn: FleetConnection,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keys = Keys("t:")
    beat = Heartbeat("pod", 1.0, conn, FleetScripts(conn), keys, Events(Metrics()), dict,
                     endpoints=lambda: ["a:4317", "b:4317"])
    commands: list[object] = []
    call = conn.call

    async def counted(command: Callable[[], Awaitable[Any]]) -> Any:
        commands.append(command)
        return await call(command)

    monkeypatch.setattr(conn, "call", counted)
    await beat.beat(time.monotonic())
    assert len(commands) == 1  # the fleet's heartbeat and both endpoints' in one round trip
    assert await conn.client.zrange(keys.endpoint_members("a:4317"), 0, -1) == ["pod"]
    assert await conn.client.zrange(keys.endpoint_members("b:4317"), 0, -1) == ["pod"]
    assert await conn.client.zrange(keys.members, 0, -1) == ["pod"]
