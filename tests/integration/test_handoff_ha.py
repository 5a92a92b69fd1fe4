"""Handoff (issue 25) on highly available Redis (issue 28 item 5): the scenario of test_handoff.py, with
the fleet on a real Redis Cluster (three primaries, no replicas: no failover here, only the cluster's
slot routing) and on Sentinel (one primary, one replica, three sentinels).

What it proves in each mode: the departing sidecar's entries land in its endpoint's stream (its slot,
with the byte counter beside it), `status --fleet` shows the backlog, the members that stay claim and
deliver it once the upstream recovers (XREADGROUP/XAUTOCLAIM routed to that slot), and every span the
departed sidecar acknowledged arrives: 0 lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fakes.collector import FakeCollector
from tests.fakes.redis_ha import RedisClusterSet, RedisSentinelSet
from tests.integration.conftest import SidecarFactory
from tests.integration.test_fleet import FAST_BREAKER, Client, Traffic, fleet_status
from tests.integration.test_fleet_ha import KEYS, ClusterMode, HARedis, SentinelMode, ha_edit
from tests.integration.test_handoff import HANDOFF, depart, fill_during_outage, handoff_event, shutdown_drops
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess

REQUESTS = 100  # of 10 spans each, acknowledged by the departing sidecar during the outage


@pytest.fixture(params=["sentinel", "cluster"])
def ha_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HARedis]:
    if request.param == "sentinel":
        with RedisSentinelSet(tmp_path / "sentinel") as sentinel_set:
            yield SentinelMode(sentinel_set)
    else:
        with RedisClusterSet(tmp_path / "cluster", replicas=0) as cluster_set:
            yield ClusterMode(cluster_set)


def start_member(factory: SidecarFactory, upstream: FakeCollector, ha: HARedis, name: str) -> SidecarProcess:
    fleet_edit = ha_edit({**ha.fleet(), "handoff": HANDOFF}, name)

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
