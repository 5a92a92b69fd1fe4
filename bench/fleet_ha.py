"""What each Redis deployment costs the fleet (issue 28 item 5): `python -m bench.fleet_ha [--calls N]`.

For one redis-server, Sentinel (a primary, a replica, three sentinels) and Cluster (three primaries with
a replica each), all real processes on this machine, through the fleet's own client and connection
(sidecar/fleet/client.py, connection.py) and its Lua scripts:

* command latency: the breaker refresh (READ script) and the data-path retry-budget call (BUDGET),
  p50 / p99 over `--calls` sequential calls;
* the pub/sub hop: from an OPEN script on one connection to the message on another's subscription;
* failover (SENTINEL FAILOVER, CLUSTER FAILOVER on the replica, or SIGKILL of the primary): the longest
  time the fleet connection went without an answered write (the budget script) and READ around it, and
  whether the breaker record written before survived it.

Prints a Markdown table; with `--results bench/RESULTS.md` also writes it there under
"## Fleet on highly available Redis" (bench/run.py keeps that section). Run it under
`flock /work/.bench.lock` like every benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.soak import write_results
from sidecar.config.schema import FleetClusterConfig, FleetConfig, FleetSentinelConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.fleet.breaker import FleetScripts
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.redis_ha import MASTER_NAME, RedisClusterSet, RedisSentinelSet
from tests.fakes.redis_server import RedisServer

ENDPOINT = "collector:4317"
TITLE = "Fleet on highly available Redis"
EXPLANATION = (
    "One redis-server, Sentinel (1 primary, 1 replica, 3 sentinels) and Cluster (3 primaries, 3 replicas), all "
    "local processes, driven through the fleet's own client, connection and Lua scripts (bench/fleet_ha.py). "
    "Latency: sequential calls of the breaker refresh (READ) and the data-path retry budget (BUDGET). Pub/sub "
    "hop: from an OPEN/CLOSE script on one connection to the message on another's subscription. Failover: the "
    "longest gap between two answered fleet commands (a write, then a read) while the deployment failed over "
    "(`down-after-milliseconds` / `cluster-node-timeout` 1000), and whether the breaker record written before "
    "was found after. During such a gap each sidecar decides locally; no data waits on Redis "
    "(tests/integration/test_fleet_ha.py: 0 spans lost). See docs/operations.md (\"Which Redis\").")
KEYS = Keys("bench:")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def connected(config: FleetConfig) -> FleetConnection:
    conn = FleetConnection(config, Events(Metrics()), SYSTEM_CLOCK)
    conn.start()
    deadline = time.monotonic() + 20
    while not conn.connected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no connection to {conn.endpoint}")
        await asyncio.sleep(0.02)
    return conn


async def latencies(conn: FleetConnection, calls: int) -> dict[str, float]:
    scripts = FleetScripts(conn)
    read_keys = [KEYS.breaker(ENDPOINT), KEYS.lease(ENDPOINT)]
    budget_keys = [KEYS.budget(ENDPOINT)]
    reads, budgets = [], []
    for _ in range(calls):
        started = time.perf_counter()
        await scripts.read(keys=read_keys, args=[])
        reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        await scripts.budget(keys=budget_keys, args=[1, 1, 0.2, 3.0, 10])
        budgets.append(time.perf_counter() - started)
    return {"read_p50": statistics.median(reads), "read_p99": percentile(reads, 0.99),
            "budget_p50": statistics.median(budgets), "budget_p99": percentile(budgets, 0.99)}


async def pubsub_hop(config: FleetConfig, rounds: int = 30) -> float:
    """Median seconds from an OPEN (then CLOSE) script on one connection to its message on another's."""
    writer, reader = await connected(config), await connected(config)
    scripts = FleetScripts(writer)
    pubsub = reader.client.pubsub()
    await pubsub.subscribe(KEYS.channel)
    hops = []
    try:
        for i in range(rounds):
            started = time.perf_counter()
            keys = [KEYS.breaker(ENDPOINT), KEYS.lease(ENDPOINT), KEYS.evidence(ENDPOINT)]
            if i % 2 == 0:
                await scripts.open(keys=keys, args=[1000, 2000, 0, "bench", KEYS.channel, ENDPOINT, ""])
            else:
                await scripts.close(keys=keys, args=["bench", KEYS.channel, ENDPOINT])
            deadline = time.monotonic() + 2.0
            while True:  # None also when the reply read was the subscription's confirmation
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None and message.get("type") == "message":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a breaker change was not delivered by pub/sub within 2 s ({writer.endpoint})")
            hops.append(time.perf_counter() - started)
    finally:
        await pubsub.aclose()
        await writer.stop()
        await reader.stop()
    return statistics.median(hops)


async def failover_downtime(config: FleetConfig, fail: Callable[[], float]) -> tuple[float, float, bool]:
    """(the deployment's own failover time as its helper waits for it, the longest gap between two
    answered write + READ pairs of the fleet connection around the failover, the breaker record written
    before found after)."""
    conn = await connected(config)
    scripts = FleetScripts(conn)
    keys = [KEYS.breaker(ENDPOINT), KEYS.lease(ENDPOINT), KEYS.evidence(ENDPOINT)]
    await scripts.open(keys=keys, args=[600000, 600000, 0, "bench", KEYS.channel, ENDPOINT, ""])
    await asyncio.sleep(0.5)  # replicated
    failing = asyncio.get_running_loop().run_in_executor(None, fail)
    last_answer, longest, record = time.monotonic(), 0.0, None
    settle_until: float | None = None
    while settle_until is None or time.monotonic() < settle_until:
        # A write (the budget's deposit), since a demoted primary still answers reads.
        wrote = await conn.call(lambda: scripts.budget(keys=[KEYS.budget(ENDPOINT)], args=[1, 0, 0.2, 3.0, 10]))
        reply = await conn.call(lambda: scripts.read(keys=keys[:2], args=[])) if wrote is not None else None
        now = time.monotonic()
        if reply is not None:
            longest, last_answer, record = max(longest, now - last_answer), now, reply
        if settle_until is None and failing.done() and reply is not None:
            settle_until = now + 1.0
        await asyncio.sleep(0.02)
    took = await failing
    await conn.stop()
    return took, longest, record is not None and str(record[0]) == "open"


@contextlib.contextmanager
def deployments(workdir: Path) -> Iterator[dict[str, tuple[FleetConfig, object]]]:
    with RedisServer(workdir / "single") as single, RedisSentinelSet(workdir / "sentinel") as sentinel, \
            RedisClusterSet(workdir / "cluster") as cluster:
        yield {
            "one server": (FleetConfig(endpoint=single.url), single),
            "Sentinel (1 primary, 1 replica, 3 sentinels)": (FleetConfig(sentinel=FleetSentinelConfig(
                master_name=MASTER_NAME, addresses=sentinel.addresses)), sentinel),
            "Cluster (3 primaries, 3 replicas)": (FleetConfig(cluster=FleetClusterConfig(
                nodes=cluster.addresses[:3])), cluster),
        }


def failovers(servers: object) -> list[tuple[str, Callable[[], float]]]:
    key = KEYS.breaker(ENDPOINT)
    if isinstance(servers, RedisSentinelSet):
        return [("SENTINEL FAILOVER", servers.failover), ("primary SIGKILLed", servers.kill_primary)]
    if isinstance(servers, RedisClusterSet):
        return [("CLUSTER FAILOVER on the replica", lambda: servers.failover(key)),
                ("primary SIGKILLed", lambda: servers.kill_primary(key))]
    return []


async def measure(calls: int) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, deployments(Path(tmp)) as modes:
        for name, (config, servers) in modes.items():
            conn = await connected(config)
            lat = await latencies(conn, calls)
            await conn.stop()
            hop = await pubsub_hop(config)
            row = [name, f"{lat['read_p50'] * 1000:.2f} / {lat['read_p99'] * 1000:.2f}",
                   f"{lat['budget_p50'] * 1000:.2f} / {lat['budget_p99'] * 1000:.2f}", f"{hop * 1000:.1f}"]
            outcomes = []
            for how, fail in failovers(servers):
                took, answered, kept = await failover_downtime(config, fail)
                outcomes.append(f"{how}: {answered:.2f} s without Redis (the failover itself {took:.1f} s), "
                                f"{'record kept' if kept else 'record LOST'}")
            rows.append([*row, "; ".join(outcomes) or "- (no failover: Redis down = local state until back)"])
    header = ["Redis", "READ script ms p50 / p99", "BUDGET script ms p50 / p99", "pub/sub hop ms (median)",
              "failover: longest gap between answered fleet commands"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fleet_row() -> str:
    """bench/fleet.py's row with real sidecars on Sentinel, the primary failed over mid-failure (the full
    `python -m bench.run fleet` runs it beside the others)."""
    from bench.fleet import MODES, run_mode
    from bench.run import Settings

    mode = next(m for m in MODES if m.failover_redis)
    args = argparse.Namespace(quick=False, memory_limit=256.0, results=None, duration=None, repeats=None,
                              outage=None, cpu_window=None, cpu_repeats=None)
    r = run_mode(mode, Settings.make(args))
    first = r["recovery_to_first_export"]
    return (f"Real sidecars ({mode.name}; 10 requests/s each, upstream UNAVAILABLE for 20 s, SENTINEL "
            f"FAILOVER 7 s into it): {r['calls_during_failure']} calls hit the failing upstream "
            f"({r['data_calls']} data / {r['probe_calls']} probes), first delivered export "
            f"{'-' if first is None else f'{first:.2f} s'} after recovery, "
            f"**{r['lost']} of {r['acknowledged']} acknowledged spans lost**.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-fleet-row", action="store_true",
                        help="skip the real-sidecar run of bench/fleet.py's Sentinel-failover row")
    parser.add_argument("--results", type=Path, help=f"write the table into this RESULTS.md under '## {TITLE}'")
    args = parser.parse_args()
    table = asyncio.run(measure(args.calls))
    if not args.no_fleet_row:
        table += "\n\n" + fleet_row()
    print(table)
    if args.results is not None:
        command = "python -m bench.fleet_ha " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        write_results(args.results, f"{EXPLANATION}\n\n{table}\n\n_(from `{command}`)_\n", TITLE)


if __name__ == "__main__":
    main()
