"""extensions.fleet on Sentinel or Cluster: exactly one mode, precise errors naming the dotted path, the
clients redis-py builds from it, and the hash-tagged key layout that keeps an endpoint on one slot."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot

from sidecar.config import ConfigError, load_config_text
from sidecar.config.schema import FleetConfig, FleetTLSConfig
from sidecar.fleet.client import describe, make_client, tls_options
from sidecar.fleet.keys import Keys
from tests.unit.test_fleet_config import BASE


def load(fleet: str) -> FleetConfig:
    config = load_config_text(BASE % fleet, environ={"SENTINEL_PASSWORD": "sp", "REDIS_PASSWORD": "rp"})
    assert config.extensions.fleet is not None
    return config.extensions.fleet


def errors(fleet: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(fleet)
    return info.value.errors


def test_sentinel_mode_loads_with_its_options() -> None:
    fleet = load('{sentinel: {master_name: fleet, addresses: ["redis-sentinel-0:26379", "10.0.0.2:26379"], '
                 'password: "${env:SENTINEL_PASSWORD}", tls: true, db: 2}, password: "${env:REDIS_PASSWORD}", '
                 'tls: {insecure_skip_verify: true}}')
    assert fleet.endpoint is None and fleet.cluster is None and fleet.sentinel is not None
    assert (fleet.sentinel.master_name, fleet.sentinel.addresses, fleet.sentinel.password, fleet.sentinel.tls,
            fleet.sentinel.db) == ("fleet", ["redis-sentinel-0:26379", "10.0.0.2:26379"], "sp", True, 2)
    assert fleet.password == "rp" and fleet.tls == FleetTLSConfig(insecure_skip_verify=True)
    assert describe(fleet) == "sentinel://redis-sentinel-0:26379,10.0.0.2:26379/fleet"


def test_cluster_mode_loads() -> None:
    fleet = load('{cluster: {nodes: ["redis-0.redis:6379", "[::1]:7001"]}}')
    assert fleet.cluster is not None and fleet.cluster.nodes == ["redis-0.redis:6379", "[::1]:7001"]
    assert describe(fleet) == "cluster://redis-0.redis:6379,[::1]:7001"


@pytest.mark.parametrize(("fleet", "expected"), [
    ("{key_prefix: x}", "extensions.fleet: set exactly one of endpoint (one Redis server), sentinel (Redis "
                        "Sentinel) or cluster (Redis Cluster) (got none)"),
    ('{endpoint: "redis://h:6379/0", cluster: {nodes: ["h:7000"]}}',
     "extensions.fleet: set exactly one of endpoint (one Redis server), sentinel (Redis Sentinel) or cluster "
     "(Redis Cluster) (got extensions.fleet.endpoint, extensions.fleet.cluster)"),
    ('{sentinel: {master_name: " ", addresses: ["h:26379"]}}',
     "extensions.fleet.sentinel.master_name: must name the primary the sentinels monitor"),
    ("{sentinel: {master_name: m, addresses: []}}",
     "extensions.fleet.sentinel.addresses: list at least one host:port"),
    ('{sentinel: {master_name: m, addresses: ["h:26379", "h"]}}',
     "extensions.fleet.sentinel.addresses[1]: must be host:port, e.g. redis-0.redis:26379 (got 'h')"),
    ('{cluster: {nodes: [":7000"]}}',
     "extensions.fleet.cluster.nodes[0]: must be host:port, e.g. redis-0.redis:7000 (got ':7000')"),
    ("{cluster: {nodes: []}}", "extensions.fleet.cluster.nodes: list at least one host:port"),
    ('{endpoint: "redis://h:6379/0", tls: {}}',
     "extensions.fleet.tls: applies to sentinel and cluster modes; for one server use a rediss:// endpoint"),
    ('{cluster: {nodes: ["h:7000"]}, tls: {ca_file: /nonexistent/ca.pem}}',
     "extensions.fleet.tls.ca_file: file not found: /nonexistent/ca.pem"),
    ('{endpoint: "redis://h:6379/0", key_prefix: "a{b}:"}',
     "extensions.fleet.key_prefix: must be non-empty, without whitespace or braces (got 'a{b}:')"),
])
def test_bad_modes_name_the_key_and_the_reason(fleet: str, expected: str) -> None:
    assert expected in errors(fleet)


def test_the_sentinel_client_asks_the_sentinels_with_their_own_password_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("unused here")
    fleet = load(f'{{sentinel: {{master_name: fleet, addresses: ["s0:26379", "s1:26380"], password: sp, tls: true, '
                 f'db: 3}}, password: rp, tls: {{ca_file: "{ca}"}}}}')
    client = make_client(fleet, 0.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "fleet"
    assert pool.connection_kwargs["password"] == "rp" and pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("s0", 26379), ("s1", 26380)]
    first = sentinels[0].connection_pool.connection_kwargs
    assert first["password"] == "sp" and first["ssl_ca_certs"] == str(ca)


def test_the_cluster_client_starts_from_the_nodes_with_tls() -> None:
    fleet = load('{cluster: {nodes: ["n0:7000", "[::1]:7001"]}, password: rp, tls: {insecure_skip_verify: true}}')
    client = make_client(fleet, 0.5)
    assert isinstance(client, RedisCluster)
    nodes = client.nodes_manager.startup_nodes
    assert sorted(nodes) == sorted(["n0:7000", "::1:7001"])
    kwargs = client.connection_kwargs
    assert kwargs["password"] == "rp" and kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False


def test_tls_options() -> None:
    assert tls_options(None) == {}
    assert tls_options(FleetTLSConfig(ca_file="/ca.pem")) == {"ssl": True, "ssl_ca_certs": "/ca.pem"}


@given(endpoint=st.text(st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), min_size=1,
                        max_size=60), prefix=st.sampled_from(["otlp-sidecar:", "shop:", "a"]))
def test_every_key_of_one_endpoint_hashes_to_one_slot(endpoint: str, prefix: str) -> None:
    keys = Keys(prefix)
    names = [keys.breaker(endpoint), keys.lease(endpoint), keys.evidence(endpoint), keys.endpoint_members(endpoint),
             keys.budget(endpoint)]
    assert len(set(names)) == len(names)
    assert len({key_slot(name.encode()) for name in names}) == 1


def test_the_membership_keys_share_one_slot_and_no_endpoint_key() -> None:
    keys = Keys("otlp-sidecar:")
    assert key_slot(keys.members.encode()) == key_slot(keys.member("pod-7").encode())
    # An endpoint named like the membership tag still gets keys of its own.
    fleet_named = {keys.breaker("fleet"), keys.lease("fleet"), keys.evidence("fleet"), keys.endpoint_members("fleet"),
                   keys.budget("fleet")}
    assert not fleet_named & {keys.members, keys.member("pod-7")}
