"""Fleet membership: each sidecar's heartbeat (a hash with a TTL, plus a sorted set to list them), and
the reader behind `python -m sidecar status --fleet`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.fleet.breaker import FleetScripts
from sidecar.fleet.client import FleetClient, ScriptCall, run_scripts
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.telemetry.events import Events

TTL_HEARTBEATS = 3  # a member is gone after missing this many heartbeats

Snapshot = Callable[[], dict[str, Any]]
Endpoints = Callable[[], list[str]]


class Heartbeat:
    """A member's heartbeat. It rides on a shared breaker's refresh (`due`, `calls`, `answered`: one round
    trip for both; on its own it was a third of a healthy member's round trips and CPU, bench/notes.md,
    "Fleet scale"); `Fleet` sends it by itself (`beat`) only when no refresh carried it for a while."""

    def __init__(self, instance: str, interval: float, conn: FleetConnection, fleet_scripts: FleetScripts,
                 keys: Keys, events: Events, snapshot: Snapshot, endpoints: Endpoints = list) -> None:
        self.instance = instance
        self.interval = interval
        self._conn = conn
        self._scripts = fleet_scripts
        self._keys = keys
        self._events = events
        self._snapshot = snapshot
        self._endpoints = endpoints  # the upstream endpoints it sends to: each keeps its own member set
        self.sent_at = float("-inf")  # local monotonic time the last heartbeat was sent (by a refresh or alone)

    def due(self, now: float, early: float) -> bool:
        """Whether a refresh at `now` carries the heartbeat: at most `early` seconds before an interval is up
        (half the carrier's refresh interval, so the beats keep their interval give or take that)."""
        return now >= self.sent_at + self.interval - early

    def calls(self, now: float) -> list[ScriptCall]:
        """The fleet-wide heartbeat (one script) and one per endpoint (in a cluster each endpoint's member set
        lives in its own slot, beside the breaker record whose evidence rule reads it), sent at `now`."""
        self.sent_at = now
        payload = json.dumps({"instance": self.instance, **self._snapshot()}, default=str)
        ttl_ms = int(self.interval * TTL_HEARTBEATS * 1000)
        calls: list[ScriptCall] = [(self._scripts.heartbeat, [self._keys.member(self.instance), self._keys.members],
                                    [self.instance, payload, ttl_ms])]
        calls += [(self._scripts.endpoint_heartbeat, [self._keys.endpoint_members(endpoint)], [self.instance, ttl_ms])
                  for endpoint in self._endpoints()]
        return calls

    def answered(self, replies: list[Any]) -> None:
        """The replies to `calls`, in order."""
        self._events.fleet_members(int(replies[0]))

    async def beat(self, now: float) -> None:
        """The heartbeat in a round trip of its own."""
        replies = await self._conn.call(functools.partial(run_scripts, self._conn.client, self.calls(now)))
        if replies is not None:
            self.answered(replies)

    async def leave(self) -> None:
        keys = [self._keys.member(self.instance), self._keys.members]
        await self._conn.call(lambda: self._scripts.leave(keys=keys, args=[self.instance]))
        for endpoint in self._endpoints():
            key = self._keys.endpoint_members(endpoint)
            await self._conn.call(functools.partial(self._conn.client.zrem, key, self.instance))


@dataclass(frozen=True, slots=True)
class Member:
    instance: str
    age: float  # seconds since its last heartbeat
    info: dict[str, Any]


async def read_members(client: FleetClient, keys: Keys) -> list[Member]:
    """The live members, by instance id (an expired heartbeat is not listed)."""
    seconds, micros = await client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    instances = await client.zrangebyscore(keys.members, now_ms, "+inf")
    members: list[Member] = []
    for instance in sorted(str(i) for i in instances):
        fields = await client.hgetall(keys.member(instance))
        if not fields:
            continue
        try:
            info = json.loads(fields.get("payload", "{}"))
        except ValueError:
            info = {}
        members.append(Member(instance, max(0.0, (now_ms - int(fields.get("at", now_ms))) / 1000.0), info))
    return members

