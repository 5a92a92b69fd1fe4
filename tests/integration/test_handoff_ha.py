"""Handoff (issue 25) on highly available Redis (issue 28 item 5): the scenario of test_handoff.py, with
the fleet on a real Redis Cluster (three primaries, no replicas: no failover here, only the cluster's
slot routing) and on Sentinel (one primary, one replica, three sentinels).

What it proves in each mode: the departing sidecar's entries land in its endpoint's stream (its slot,
with the byte counter beside it), `status --fleet` shows the backlog, the members that stay claim and
deliver it once the upstream recovers (XREADGROUP/XAUTOCLAIM routed to that slot), and every span the
departed sidecar acknowledged arrives: 0 lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fakes.collector import FakeCollector
from tests.fakes.redis_ha import RedisClusterSet, RedisSentinelSet
from tests.integration.conftest import SidecarFactory
from tests.integration.test_fleet import FAST_BREAKER, Client, Traffic, fleet_status
from tests.integration.test_fleet_ha import KEYS, ClusterMode, HARedis, SentinelMode, ha_edit, started_ha_redis
from tests.integration.test_handoff import (
    HANDOFF,
    a_killed_claimers_claims_are_taken_over,
    depart,
    fill_during_outage,
    handoff_event,
    shutdown_drops,
    what_does_not_fit_the_budget_is_left_behind_and_counted_once,
)
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess, free_port

REQUESTS = 100  # of 10 spans each, acknowledged by the departing sidecar during the outage


@pytest.fixture(params=["sentinel", "cluster"])
def ha_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HARedis]:
    with started_ha_redis(request.param, tmp_path, cluster_replicas=0) as redis_set:  # no replicas: faster
        yield redis_set


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[HARedis]:
    with RedisClusterSet(tmp_path / "cluster", replicas=0) as cluster_set:
        yield ClusterMode(cluster_set)


def start_member(factory: SidecarFactory, upstream: FakeCollector, ha: HARedis, name: str,
                 handoff: dict[str, Any] | None = None) -> SidecarProcess:
    fleet_edit = ha_edit({**ha.fleet(), "handoff": {**HANDOFF, **(handoff or {})}}, name)

    def config_edit(config: dict[str, Any]) -> None:
        fleet_edit(config)
        config["service"]["shutdown_timeout"] = "3s"

    sidecar = factory(upstream.grpc_endpoint, storage=True, config_edit=config_edit, headers={"x-sidecar": name},
                      circuit_breaker=FAST_BREAKER, health_probe={"interval": "1s", "timeout": "1s"})
    assert eventually(lambda: sidecar.metric_value("sidecar_fleet_connected") == 1, 20)
    return sidecar


def backlog(ha: HARedis, endpoint: str) -> int:
    store = ha.store()
    try:
        return int(store.xlen(KEYS.handoff(endpoint, "traces")))
    finally:
        store.close()


def test_a_departed_members_spans_are_delivered_through_sentinel_or_cluster(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, ha_redis: HARedis) -> None:
    endpoint = upstream.grpc_endpoint
    sidecars = [start_member(sidecar_factory, upstream, ha_redis, f"s{i}") for i in range(3)]
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    clients = [Client(s) for s in sidecars]
    try:
        with Traffic(clients[1:]):
            fill_during_outage(sidecars[0], clients[0], 1_000_000, requests=REQUESTS)
            depart(sidecars[0])
            event = handoff_event(sidecars[0])
            assert event["handed_off_items"] == REQUESTS * 10 and event["left_requests"] == 0, event
        assert backlog(ha_redis, endpoint) == REQUESTS
        # `status --fleet --config` reads the backlog through the same Sentinel or Cluster configuration.
        shown = fleet_status(sidecars[-1])["handoff"][endpoint]
        assert shown["entries"] == REQUESTS and shown["bytes"] > 0, shown
        upstream.clear_faults()
        wanted = clients[0].acknowledged
        assert eventually(lambda: wanted <= upstream.span_ids(), 45), \
            f"{len(wanted - upstream.span_ids())} of {len(wanted)} acknowledged spans never arrived"
        live = sidecars[1:]
        assert eventually(lambda: backlog(ha_redis, endpoint) == 0, 20)
        assert sum(s.metric_value("sidecar_handoff_delivered_items_total") for s in live) >= len(wanted)
        assert shutdown_drops(live) == 0
    finally:
        for client in clients:
            client.close()


# The two below run on the cluster only: what they add over the test above is routing (XAUTOCLAIM and
# XPENDING to the endpoint's slot; the left-behind hash and the budget's counters in other slots), which a
# Sentinel's single primary does not exercise.

def test_on_a_cluster_a_killed_claimers_claims_are_taken_over(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, cluster: HARedis) -> None:
    a_killed_claimers_claims_are_taken_over(
        lambda name, handoff=None: start_member(sidecar_factory, upstream, cluster, name, handoff),
        upstream, cluster.store, requests=REQUESTS)


def test_on_a_cluster_what_does_not_fit_the_budget_is_left_behind_and_counted_once(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, cluster: HARedis) -> None:
    what_does_not_fit_the_budget_is_left_behind_and_counted_once(
        lambda name, handoff=None: start_member(sidecar_factory, upstream, cluster, name, handoff),
        upstream, cluster.store, requests=REQUESTS)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelMode]:
    with RedisSentinelSet(tmp_path / "sentinel") as sentinel_set:
        yield SentinelMode(sentinel_set)


def test_after_a_sentinel_failover_the_departure_writes_to_the_new_primary(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, sentinel: SentinelMode) -> None:
    # The handoff has its own (binary) client: its connections, opened to the old primary by the backlog
    # watch, must follow the failover too, or the departure meets a read-only replica (or, before the
    # demotion, writes what the demotion discards).
    endpoint = upstream.grpc_endpoint
    sidecars = [start_member(sidecar_factory, upstream, sentinel, f"s{i}") for i in range(2)]
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    client = Client(sidecars[0])
    try:
        fill_during_outage(sidecars[0], client, 1_000_000, requests=REQUESTS)
        sentinel.fail_over(endpoint)
        assert eventually(lambda: all(s.metric_value("sidecar_fleet_connected") == 1 for s in sidecars), 30)
        time.sleep(2.0)  # the old primary is demoted (a replica: reads work, writes do not)
        depart(sidecars[0])
        event = handoff_event(sidecars[0])
        assert event["handed_off_items"] == REQUESTS * 10 and event["left_requests"] == 0, event
        upstream.clear_faults()
        assert eventually(lambda: client.acknowledged <= upstream.span_ids(), 45), \
            f"{len(client.acknowledged - upstream.span_ids())} acknowledged spans never arrived"
        assert eventually(lambda: backlog(sentinel, endpoint) == 0, 20)
    finally:
        client.close()


def test_a_cluster_never_reached_is_redis_unavailable_for_the_departure(
        sidecar_factory: SidecarFactory, upstream: FakeCollector) -> None:
    # Nothing listens at the configured nodes: redis-py's cluster client raises RedisClusterUnreachableError
    # (no RedisError) from its first topology refresh. The fleet treats it as "Redis down", as with one
    # server: the departure says what it left and why, and the queue stays on the volume.
    fleet = {"cluster": {"nodes": [f"127.0.0.1:{free_port()}" for _ in range(3)]}, "handoff": HANDOFF}
    edit = ha_edit(fleet, "s0")

    def config_edit(config: dict[str, Any]) -> None:
        edit(config)
        config["service"]["shutdown_timeout"] = "3s"

    s0 = sidecar_factory(upstream.grpc_endpoint, storage=True, config_edit=config_edit,
                         circuit_breaker=FAST_BREAKER, health_probe={"interval": "1s", "timeout": "1s"})
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    client = Client(s0)
    try:
        fill_during_outage(s0, client, 1_000_000, requests=20)
        assert s0.stop() == 0, s0.logs()[-3000:]
        event = handoff_event(s0)
        assert event["why_left"] == "redis_unavailable" and event["left_items"] == 200, event
        messages = [str(e.get("msg")) for e in s0.log_events()]
        assert "fleet store not reachable yet; going on with local state" in messages
        assert not any("supervisor failed" in m for m in messages), s0.logs()[-3000:]
        # The volume stays: the next start replays what the departure could not hand off.
        upstream.clear_faults()
        s0.start()
        assert eventually(lambda: client.acknowledged <= upstream.span_ids(), 30)
    finally:
        client.close()
