"""Handoff end to end (issue 25, DESIGN.md §9): a sidecar that stops during an outage hands its backlog to
the fleet through a real redis-server, and the others deliver it once the fake Collector recovers.

Sidecars are real processes with disk queues; "its volume is deleted" is its storage directory removed
after it exited, as Kubernetes deletes a pod's emptyDir.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from sidecar.fleet.keys import Keys
from tests.fakes.collector import FakeCollector
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import SidecarFactory
from tests.integration.test_fleet import (
    FAST_BREAKER,
    Client,
    Traffic,
    caller,
    fleet_edit,
    fleet_status,
    transitions,
)
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess

HANDOFF = {"claim_timeout": "2s", "claim_interval": "200ms", "timeout": "3s"}

# Starts a fleet member by name, with handoff settings over HANDOFF; one per kind of Redis.
StartMember = Callable[..., SidecarProcess]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def start_member(factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer, name: str,
                 handoff: dict[str, Any] | None = None, shutdown_timeout: str = "6s") -> SidecarProcess:
    edit = fleet_edit(redis_server.url, name, handoff={**HANDOFF, **(handoff or {})})

    def config_edit(config: dict[str, Any]) -> None:
        edit(config)
        config["service"]["shutdown_timeout"] = shutdown_timeout

    sidecar = factory(upstream.grpc_endpoint, storage=True, config_edit=config_edit, headers={"x-sidecar": name},
                      circuit_breaker=FAST_BREAKER, health_probe={"interval": "1s", "timeout": "1s"})
    assert eventually(lambda: sidecar.metric_value("sidecar_fleet_connected") == 1, 15)
    return sidecar


def fill_during_outage(sidecar: SidecarProcess, client: Client, first_id: int, requests: int,
                       spans: int = 10) -> None:
    """The upstream is down: the sidecar's breaker opens and what it acknowledges stays queued."""
    for n in range(requests):
        client.send(first_id + n * spans, spans)
    assert eventually(lambda: transitions(sidecar, "open", "local") + transitions(sidecar, "open", "fleet") >= 1, 15)
    assert len(client.acknowledged) == requests * spans, "the sidecar did not acknowledge everything"


def depart(sidecar: SidecarProcess) -> None:
    """SIGTERM, exit 0, then the pod's volume (the storage directory) is deleted."""
    assert sidecar.stop() == 0, sidecar.logs()[-3000:]
    shutil.rmtree(sidecar.workdir / "queue")


def handoff_event(sidecar: SidecarProcess) -> dict[str, Any]:
    events = [e for e in sidecar.log_events() if e.get("event") == "handoff"]
    assert events, sidecar.logs()[-3000:]
    return events[-1]


def redis_backlog(redis_server: RedisServer, upstream: FakeCollector) -> int:
    store = redis.Redis(port=redis_server.port)
    try:
        return int(store.xlen(Keys("otlp-sidecar:").handoff(upstream.grpc_endpoint, "traces")))
    finally:
        store.close()


@pytest.mark.parametrize("departing", [1, 2], ids=["one-member-leaves", "two-leave-one-after-the-other"])
def test_a_departed_members_acknowledged_spans_are_delivered_by_the_others(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer, departing: int) -> None:
    # The scenario: shutdown_timeout 3 s (the drain stops at once while every breaker is open, and
    # the handoff takes what is left of the 3 s); the members that stay have traffic of their own.
    sidecars = [start_member(sidecar_factory, upstream, redis_server, f"s{i}", shutdown_timeout="3s")
                for i in range(3)]
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    clients = [Client(s) for s in sidecars]
    try:
        with Traffic(clients[departing:]):
            for i in range(departing):
                fill_during_outage(sidecars[i], clients[i], (i + 1) * 1_000_000, requests=150)
            for i in range(departing):
                depart(sidecars[i])
                event = handoff_event(sidecars[i])
                assert event["handed_off_items"] == 1500 and event["left_requests"] == 0, event
        assert redis_backlog(redis_server, upstream) == 150 * departing
        # What an operator sees: the backlog per endpoint, in status --fleet and in every member's gauges.
        backlog = fleet_status(sidecars[-1])["handoff"][upstream.grpc_endpoint]
        assert backlog["entries"] == 150 * departing and backlog["bytes"] > 0 and backlog["oldest_age"] > 0, backlog
        assert eventually(lambda: sidecars[-1].metric_value("sidecar_handoff_backlog_entries")
                          == 150 * departing, 10)
        upstream.clear_faults()
        wanted = set().union(*(clients[i].acknowledged for i in range(departing)))
        assert eventually(lambda: wanted <= upstream.span_ids(), 60), \
            f"{len(wanted - upstream.span_ids())} of {len(wanted)} acknowledged spans never arrived"
        # Delivered by the members still running, with their own headers (their own exporter chain).
        departed = {f"s{i}" for i in range(departing)}
        deliverers = {caller(r) for r in upstream.accepted("traces")
                      if {s.span_id for rs in r.message.resource_spans for ss in rs.scope_spans  # type: ignore[attr-defined]
                          for s in ss.spans} & wanted}
        assert deliverers and not deliverers & departed, deliverers
        live = sidecars[departing:]
        assert eventually(lambda: redis_backlog(redis_server, upstream) == 0, 20)
        assert sum(s.metric_value("sidecar_handoff_delivered_items_total") for s in live) >= len(wanted)
        assert shutdown_drops(live) == 0
        # The members that stayed lose nothing either, unless their degradation ladder shed some (counted).
        everyone = set().union(*(c.acknowledged for c in clients))
        shed = sum(s.metric_value("sidecar_dropped_items_total") for s in live)
        assert eventually(lambda: len(everyone - upstream.span_ids()) <= shed, 30), \
            (len(everyone - upstream.span_ids()), shed)
    finally:
        for client in clients:
            client.close()


def test_a_claimer_killed_after_claiming_leaves_its_claims_to_another_member(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    a_killed_claimers_claims_are_taken_over(
        lambda name, handoff=None: start_member(sidecar_factory, upstream, redis_server, name, handoff),
        upstream, lambda: redis.Redis(port=redis_server.port), requests=200)


def a_killed_claimers_claims_are_taken_over(start: StartMember, upstream: FakeCollector,
                                            store: Callable[[], Any], requests: int) -> None:
    """s0 departs during an outage; s1 claims its backlog and is killed while delivering it; s2, started
    later, takes the dead claimer's claims over (after claim_timeout) and every span arrives. `store` opens
    a redis-py client of the fleet's Redis (one server, Sentinel's primary or a cluster)."""
    stream = Keys("otlp-sidecar:").handoff(upstream.grpc_endpoint, "traces")
    s0 = start("s0")
    s1 = start("s1")
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    client = Client(s0)
    try:
        fill_during_outage(s0, client, 1_000_000, requests=requests)
        depart(s0)
        # The upstream recovers, slowly: s1 claims and is still delivering when it is killed.
        upstream.clear_faults()
        upstream.set_delay(0.5)
        assert eventually(lambda: s1.metric_value("sidecar_handoff_claimed_items_total") > 0, 30)
        s1.kill()
        with closing(store()) as redis_client:
            held_by_s1 = int(redis_client.xpending(stream, "deliver")["pending"])
        assert held_by_s1 > 0, "s1 held no claim when it was killed"
        upstream.set_delay(0.0)
        s2 = start("s2")
        assert eventually(lambda: client.acknowledged <= upstream.span_ids(), 60), \
            f"{len(client.acknowledged - upstream.span_ids())} acknowledged spans never arrived"
        assert s2.metric_value("sidecar_handoff_delivered_items_total") > 0
        assert eventually(lambda: stream_length(store, stream) == 0, 20)
    finally:
        client.close()


def stream_length(store: Callable[[], Any], stream: str) -> int:
    with closing(store()) as redis_client:
        return int(redis_client.xlen(stream))


def spans_of(upstream: FakeCollector, wanted: set[bytes]) -> set[bytes]:
    return upstream.span_ids() & wanted


def shutdown_drops(sidecars: list[SidecarProcess]) -> float:
    return sum(s.metric_value("sidecar_dropped_items_total", reason="shutdown") for s in sidecars)


def test_what_does_not_fit_the_budget_stays_local_and_is_counted_once_when_its_volume_is_gone(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    what_does_not_fit_the_budget_is_left_behind_and_counted_once(
        lambda name, handoff=None: start_member(sidecar_factory, upstream, redis_server, name, handoff),
        upstream, lambda: redis.Redis(port=redis_server.port), requests=150)


def what_does_not_fit_the_budget_is_left_behind_and_counted_once(
        start: StartMember, upstream: FakeCollector, store: Callable[[], Any], requests: int) -> None:
    """s0 departs with more than the handoff budget holds: the oldest entries are handed off and delivered,
    exactly those; the rest stays on its volume, which is gone, and one live member counts it, once."""
    stream = Keys("otlp-sidecar:").handoff(upstream.grpc_endpoint, "traces")
    handoff = {"max_mib": 0.02, "left_behind_timeout": "3s"}
    sidecars = [start(f"s{i}", handoff) for i in range(3)]
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    client = Client(sidecars[0])
    try:
        fill_during_outage(sidecars[0], client, 1_000_000, requests=requests)
        depart(sidecars[0])
        event = handoff_event(sidecars[0])
        handed, left = event["handed_off_items"], event["left_items"]
        assert handed > 0 and left > 0 and handed + left == requests * 10, event
        assert event["why_left"] == "budget_full"
        assert any(e.get("event") == "handoff_left_behind" for e in sidecars[0].log_events())
        live = sidecars[1:]
        # The volume is gone and nobody came back with it: one live member counts it, exactly, once.
        assert eventually(lambda: shutdown_drops(live) == left, 20), shutdown_drops(live)
        lost = [e for s in live for e in s.log_events() if e.get("event") == "handoff_left_behind_lost"]
        assert len(lost) == 1 and lost[0]["lost_items"] == left and lost[0]["why_left"] == "budget_full", lost
        # What fitted is delivered once the upstream recovers: the oldest entries, exactly those.
        upstream.clear_faults()
        assert eventually(lambda: len(spans_of(upstream, client.acknowledged)) == handed, 30)
        assert eventually(lambda: stream_length(store, stream) == 0, 20)
        time.sleep(2.0)
        assert shutdown_drops(live) == left
        assert len(spans_of(upstream, client.acknowledged)) == handed
    finally:
        client.close()


def test_redis_killed_mid_handoff_loses_nothing_the_local_queue_still_holds(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    s0 = start_member(sidecar_factory, upstream, redis_server, "s0")
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    client = Client(s0)
    store = redis.Redis(port=redis_server.port)
    stream = Keys("otlp-sidecar:").handoff(upstream.grpc_endpoint, "traces")
    try:
        fill_during_outage(s0, client, 1_000_000, requests=800)
        s0.terminate()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not store.xlen(stream):
            time.sleep(0.001)
        redis_server.pause()  # frozen mid-handoff, then gone
        redis_server.kill()
        assert s0.stop() == 0
        event = handoff_event(s0)
        handed, left = event["handed_off_items"], event["left_items"]
        assert event["why_left"] == "redis_unavailable" and left > 0 and handed + left == 8000, event
        assert any(e.get("event") == "handoff_left_behind_unrecorded" for e in s0.log_events())
        # The volume stays (a restarted container, a StatefulSet): the local queue replays what it holds.
        # The Redis that comes back is empty (no AOF): what it had confirmed is lost with it.
        redis_server.start()
        upstream.clear_faults()
        s0.start()
        assert eventually(lambda: len(spans_of(upstream, client.acknowledged)) == 8000 - handed, 60), \
            (len(spans_of(upstream, client.acknowledged)), handed)
        assert s0.metric_value("sidecar_dropped_items_total") == 0
    finally:
        store.close()
        client.close()
