"""Fleet mode on highly available Redis (issue 28 item 5): real sidecar processes share state through
Redis Sentinel (one primary, one replica, three sentinels) and Redis Cluster (three primaries with a
replica each), and the primary is failed over in the middle of an upstream outage.

What must hold: every span a sidecar acknowledged reaches the Collector (span-id accounting), and after
the failover the fleet shares state again: the breaker record is found on the new primary, and an open
seen by the sidecars with traffic is followed by the idle one. The failover and follow times are printed (`-s`) for
docs/operations.md ("Which Redis"); no assertion bounds them from above beyond generous waits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from sidecar.fleet.keys import Keys
from tests.fakes.collector import FakeCollector
from tests.fakes.redis_ha import MASTER_NAME, RedisClusterSet, RedisSentinelSet
from tests.integration.conftest import SidecarFactory
from tests.integration.test_fleet import (
    FAST_BREAKER,
    SIDECARS,
    Traffic,
    acknowledged,
    clients_of,
    fleet_status,
    transitions,
)
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess

KEYS = Keys("otlp-sidecar:")


class HARedis(Protocol):
    def fleet(self) -> dict[str, Any]: ...

    def fail_over(self, endpoint: str) -> float: ...

    def store(self) -> redis.Redis | RedisCluster: ...


class SentinelMode:
    """SENTINEL FAILOVER: the replica becomes primary, the old primary its replica."""

    def __init__(self, servers: RedisSentinelSet) -> None:
        self.servers = servers

    def fleet(self) -> dict[str, Any]:
        return {"sentinel": {"master_name": MASTER_NAME, "addresses": self.servers.addresses}}

    def fail_over(self, endpoint: str) -> float:
        return self.servers.failover()

    def store(self) -> redis.Redis:
        sentinels = [("127.0.0.1", int(a.rsplit(":", 1)[1])) for a in self.servers.addresses]
        return Sentinel(sentinels, socket_timeout=2).master_for(MASTER_NAME, decode_responses=True)


class ClusterMode:
    """SIGKILL of the primary that serves the endpoint's slot: its replica takes over after the node timeout."""

    def __init__(self, servers: RedisClusterSet) -> None:
        self.servers = servers

    def fleet(self) -> dict[str, Any]:
        return {"cluster": {"nodes": self.servers.addresses[:3]}}

    def fail_over(self, endpoint: str) -> float:
        return self.servers.kill_primary(KEYS.breaker(endpoint))

    def store(self) -> RedisCluster:
        live = [n for n in self.servers.nodes if n.proc is not None and n.proc.poll() is None]
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in live],
                            decode_responses=True, socket_timeout=2)


@contextlib.contextmanager
def started_ha_redis(kind: str, workdir: Path, cluster_replicas: int = 1) -> Iterator[HARedis]:
    """A real Sentinel set or Redis Cluster (`kind`), stopped on leaving."""
    if kind == "sentinel":
        with RedisSentinelSet(workdir / "sentinel") as sentinel_set:
            yield SentinelMode(sentinel_set)
    else:
        with RedisClusterSet(workdir / "cluster", replicas=cluster_replicas) as cluster_set:
            yield ClusterMode(cluster_set)


@pytest.fixture(params=["sentinel", "cluster"])
def ha_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HARedis]:
    with started_ha_redis(request.param, tmp_path) as redis_set:
        yield redis_set


def ha_edit(fleet: dict[str, Any], name: str) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["extensions"]["fleet"] = {**fleet, "instance_id": name, "heartbeat_interval": "500ms",
                                         "command_timeout": "200ms"}
        config["service"]["extensions"].append("fleet")
    return edit


def start_ha_fleet(factory: SidecarFactory, upstream: FakeCollector, ha: HARedis) -> list[SidecarProcess]:
    # Scheduled probes every 5 s: an idle sidecar's own probes do not open its breaker before the fleet
    # tells it to (the follow check below counts opens with source "fleet").
    sidecars = [factory(upstream.grpc_endpoint, config_edit=ha_edit(ha.fleet(), f"s{i}"),
                        headers={"x-sidecar": f"s{i}"}, circuit_breaker=FAST_BREAKER,
                        health_probe={"interval": "5s", "timeout": "1s"})
                for i in range(SIDECARS)]
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_connected") == 1 for s in sidecars), 20)
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_members") == SIDECARS for s in sidecars), 15)
    return sidecars


def opened(sidecar: SidecarProcess) -> float:
    return transitions(sidecar, "open", "local") + transitions(sidecar, "open", "fleet")


def test_primary_failover_mid_outage_loses_nothing_and_the_fleet_shares_again(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, ha_redis: HARedis) -> None:
    sidecars = start_ha_fleet(sidecar_factory, upstream, ha_redis)
    endpoint = upstream.grpc_endpoint
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    with clients_of(sidecars) as clients:
        with Traffic(clients):
            assert eventually(lambda: all(opened(s) >= 1 for s in sidecars), 20)
            took = ha_redis.fail_over(endpoint)
            failed_over_at = time.monotonic()
            # Redis answers again through the new primary: every sidecar is connected once more.
            assert eventually(lambda: all(s.metric_value("sidecar_fleet_connected") == 1 for s in sidecars), 30)
            reconnected = time.monotonic() - failed_over_at
            # The shared record is on the new primary (replicated, or pushed again by the resync).
            store = ha_redis.store()
            try:
                assert eventually(lambda: store.hget(KEYS.breaker(endpoint), "state") == "open", 15)
            finally:
                store.close()
            time.sleep(1.0)  # the outage goes on after the failover; clients keep sending
        # `status --fleet` reads the same Redis through the sidecar's own config (Sentinel or Cluster).
        # A member whose last heartbeat the new primary never received (asynchronous replication) is listed
        # again at its next heartbeat (heartbeat_interval 2 s), so the listing is asked until then.
        listings: list[dict[str, Any]] = []

        def all_listed() -> bool:
            listings.append(fleet_status(sidecars[0]))
            return [m["instance"] for m in listings[-1]["members"]] == ["s0", "s1", "s2"]

        assert eventually(all_listed, 10, interval=0.5), listings[-1]["members"]
        listing = listings[-1]
        assert listing["endpoints"][endpoint]["state"] == "open"
        print(f"\n[fleet-ha] {type(ha_redis).__name__}: failover {took:.2f}s, all sidecars connected "
              f"{reconnected:.2f}s after it")
        assert all(c.acknowledged for c in clients), "a sidecar stopped accepting data"
        upstream.clear_faults()
        assert eventually(lambda: acknowledged(clients) <= upstream.span_ids(), 40), (
            f"{len(acknowledged(clients) - upstream.span_ids())} acknowledged spans lost")

        # Shared again: closed after the recovery, then a new outage seen by s0 and s1 (the only ones
        # sending: the fleet's evidence needs two sidecars) is followed by s2, which sends nothing.
        assert eventually(lambda: all(s.metric_value("sidecar_breaker_state", endpoint=endpoint) == 0
                                      for s in sidecars), 30)
        idle_before = transitions(sidecars[2], "open", "fleet")
        senders_before = [opened(s) for s in sidecars[:2]]
        upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
        for n in range(8):
            for i in (0, 1):
                clients[i].send(5_000_000 * (i + 1) + 2 * n)
        assert eventually(lambda: any(opened(s) > senders_before[i] for i, s in enumerate(sidecars[:2])), 20,
                          interval=0.02), sidecars[0].logs()[-3000:]
        senders_open = time.monotonic()
        assert eventually(lambda: transitions(sidecars[2], "open", "fleet") > idle_before, 20, interval=0.02)
        print(f"[fleet-ha] {type(ha_redis).__name__}: after the failover the idle sidecar followed the senders' "
              f"open within {time.monotonic() - senders_open:.2f}s")
        upstream.clear_faults()
        assert eventually(lambda: acknowledged(clients) <= upstream.span_ids(), 40), (
            f"{len(acknowledged(clients) - upstream.span_ids())} acknowledged spans lost")
