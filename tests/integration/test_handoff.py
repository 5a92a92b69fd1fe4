"""Handoff end to end (issue 25, DESIGN.md §9): a sidecar that stops during an outage hands its backlog to
the fleet through a real redis-server, and the others deliver it once the fake Collector recovers.

Sidecars are real processes with disk queues; "its volume is deleted" is its storage directory removed
after it exited, as Kubernetes deletes a pod's emptyDir.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests.fakes.collector import FakeCollector
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import SidecarFactory
from tests.integration.test_fleet import FAST_BREAKER, Client, caller, fleet_edit, transitions
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess

HANDOFF = {"claim_timeout": "2s", "claim_interval": "200ms", "timeout": "3s"}


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
        return int(store.xlen(f"otlp-sidecar:handoff:{upstream.grpc_endpoint}:traces"))
    finally:
        store.close()


@pytest.mark.parametrize("departing", [1, 2], ids=["one-member-leaves", "two-leave-one-after-the-other"])
def test_a_departed_members_acknowledged_spans_are_delivered_by_the_others(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer, departing: int) -> None:
    sidecars = [start_member(sidecar_factory, upstream, redis_server, f"s{i}") for i in range(3)]
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    clients = [Client(s) for s in sidecars]
    try:
        for i in range(departing):
            fill_during_outage(sidecars[i], clients[i], (i + 1) * 1_000_000, requests=150)
        for i in range(departing):
            depart(sidecars[i])
            event = handoff_event(sidecars[i])
            assert event["handed_off_items"] == 1500 and event["left_requests"] == 0, event
        assert redis_backlog(redis_server, upstream) == 150 * departing
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
        assert all(s.metric_value("sidecar_dropped_items_total") == 0 for s in live)
    finally:
        for client in clients:
            client.close()


def test_a_claimer_killed_after_claiming_leaves_its_claims_to_another_member(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    s0 = start_member(sidecar_factory, upstream, redis_server, "s0")
    s1 = start_member(sidecar_factory, upstream, redis_server, "s1")
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    client = Client(s0)
    try:
        fill_during_outage(s0, client, 1_000_000, requests=200)
        depart(s0)
        # The upstream recovers, slowly: s1 claims and is still delivering when it is killed.
        upstream.clear_faults()
        upstream.set_delay(0.5)
        assert eventually(lambda: s1.metric_value("sidecar_handoff_claimed_items_total") > 0, 30)
        s1.kill()
        store = redis.Redis(port=redis_server.port)
        stream = f"otlp-sidecar:handoff:{upstream.grpc_endpoint}:traces"
        held_by_s1 = int(store.xpending(stream, "deliver")["pending"])
        store.close()
        assert held_by_s1 > 0, "s1 held no claim when it was killed"
        upstream.set_delay(0.0)
        # A member that starts later takes its share, the dead claimer's claims included (after claim_timeout).
        s2 = start_member(sidecar_factory, upstream, redis_server, "s2")
        assert eventually(lambda: client.acknowledged <= upstream.span_ids(), 60), \
            f"{len(client.acknowledged - upstream.span_ids())} acknowledged spans never arrived"
        assert s2.metric_value("sidecar_handoff_delivered_items_total") > 0
        assert eventually(lambda: redis_backlog(redis_server, upstream) == 0, 20)
    finally:
        client.close()
        time.sleep(0)
