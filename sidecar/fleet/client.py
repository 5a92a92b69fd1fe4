"""The redis-py asyncio client for the configured Redis: one server, Sentinel or Cluster.

Failover is redis-py's, never ours: with Sentinel, `SentinelConnectionPool` asks the sentinels for the
primary on every new connection and drops a connection whose server was demoted (READONLY -> a
ConnectionError); with Cluster, `RedisCluster` follows MOVED/ASK and refreshes its slot map after a
node error. The fleet's connection (sidecar/fleet/connection.py) only has to treat the error as "down
for now" and try again, which it does for every mode alike.

One gap is left to us: after SENTINEL FAILOVER the old primary keeps answering as a primary for seconds
before the sentinels demote it, and redis-py asks the sentinels only when it opens a connection, so an
open connection would go on writing to the old primary (writes the demotion then discards). The fleet's
connection therefore asks the sentinels every `SENTINEL_CHECK_INTERVAL` (`moved_primary`) and, when the
primary moved, drops every connection and resyncs as after any reconnect.

The clients never retry by themselves beyond what following a topology change needs: every fleet
command is bounded by a short timeout, and a failed one means "decide locally", not "try harder".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from sidecar.config.schema import FleetConfig, FleetTLSConfig

FleetClient = aioredis.Redis | RedisCluster
ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[str | int | float]]  # a registered script, keys, args

# A command that meets a MOVED reply, or a node that just failed over, is sent once more to the node
# the refreshed slot map names; the command's own timeout still bounds the whole.
CLUSTER_ATTEMPTS = 2
SENTINEL_CHECK_INTERVAL = 1.0  # one SENTINEL MASTERS per sidecar per second, to a sentinel, not to Redis


def redacted(url: str) -> str:
    """The endpoint for logs and status, without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe(config: FleetConfig) -> str:
    """Where the fleet's Redis is, for logs and `status --fleet` (no password)."""
    if config.sentinel is not None:
        return f"sentinel://{','.join(config.sentinel.addresses)}/{config.sentinel.master_name}"
    if config.cluster is not None:
        return f"cluster://{','.join(config.cluster.nodes)}"
    return redacted(config.endpoint or "")


def host_port(address: str) -> tuple[str, int]:
    """`host:port` (validated by sidecar/config/validate.py) as redis-py wants it; [v6] loses its brackets."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def tls_options(tls: FleetTLSConfig | None) -> dict[str, Any]:
    """redis-py's ssl_* keywords for `extensions.fleet.tls` (empty: no TLS)."""
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl": True, "ssl_ca_certs": tls.ca_file}
    if tls.insecure_skip_verify:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    return options


def _common(config: FleetConfig, timeout: float, decode_responses: bool) -> dict[str, Any]:
    return {"password": config.password or None,  # "" (an unset ${env:X:-}) means no AUTH, not AUTH ""
            "socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": 0,
            "decode_responses": decode_responses}


def make_client(config: FleetConfig, timeout: float, decode_responses: bool = True) -> FleetClient:
    """A redis-py asyncio client for the configured mode, with `timeout` on every socket operation.

    `decode_responses=False` for binary payloads (the handoff streams): same Redis, TLS and AUTH."""
    if config.sentinel is not None:
        return _sentinel_client(config, timeout, decode_responses)
    if config.cluster is not None:
        return RedisCluster(startup_nodes=[ClusterNode(*host_port(a)) for a in config.cluster.nodes],
                            retry=Retry(NoBackoff(), CLUSTER_ATTEMPTS - 1),
                            **_common(config, timeout, decode_responses), **tls_options(config.tls))
    return aioredis.Redis.from_url(config.endpoint or "", retry=Retry(NoBackoff(), 0),
                                   **_common(config, timeout, decode_responses))


def _sentinel_client(config: FleetConfig, timeout: float, decode_responses: bool) -> aioredis.Redis:
    sentinel = config.sentinel
    assert sentinel is not None
    # The sentinels are asked one after the other until one answers: each gets its share of the bound, so
    # a silent first one does not use all of it (redis-py puts the one that answered first next time).
    each = max(0.05, 0.9 * timeout / len(sentinel.addresses))
    sentinel_options: dict[str, Any] = {"password": sentinel.password or None, "socket_timeout": each,
                                        "socket_connect_timeout": each, "retry": Retry(NoBackoff(), 0),
                                        "decode_responses": True}
    if sentinel.tls:
        sentinel_options |= tls_options(config.tls or FleetTLSConfig())
    manager = Sentinel([host_port(a) for a in sentinel.addresses], sentinel_kwargs=sentinel_options,
                       retry=Retry(NoBackoff(), 0), db=sentinel.db, **_common(config, timeout, decode_responses),
                       **tls_options(config.tls))
    client: aioredis.Redis = manager.master_for(sentinel.master_name)
    return client


async def ping(client: FleetClient) -> None:
    """The supervisor's liveness check. In a cluster every primary must answer: one that does not holds
    some endpoints' slots, and its failover is noticed here (redis-py refreshes its slot map after it)."""
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.ping()


async def run_scripts(client: FleetClient, calls: Sequence[ScriptCall]) -> list[Any]:
    """Several registered scripts in one round trip (a pipeline without MULTI: each script is atomic on its
    own), their replies in order. A member's background work shares its round trips this way: each costs the
    client far more CPU than Redis, which adds up when one machine hosts many members (bench/fleet_scale.py).
    A script Redis does not know (it restarted empty) runs again on its own, which loads it; any other
    error is raised, as a single command's would be."""
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
    out: list[Any] = []
    for (script, keys, args), reply in zip(calls, replies, strict=True):
        if isinstance(reply, NoScriptError):
            reply = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
        out.append(reply)
    return out


async def moved_primary(client: FleetClient) -> str | None:
    """Sentinel mode: "host:port" of the primary when the sentinels name another than the one this client's
    connections were opened to (they are all closed then: the next command reconnects to the new one);
    None when it has not moved, or in the other modes."""
    pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
    if not isinstance(pool, SentinelConnectionPool) or pool.master_address is None:
        return None
    current = await pool.sentinel_manager.discover_master(pool.service_name)
    if tuple(current) == tuple(pool.master_address):
        return None
    await pool.disconnect()
    pool.master_address = current
    return f"{current[0]}:{current[1]}"


async def close(client: FleetClient) -> None:
    """Close the client, and in Sentinel mode its connections to the sentinels too."""
    pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
    await client.aclose()
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()
