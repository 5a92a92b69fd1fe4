"""The handoff backlog in Redis per endpoint: read by each member (gauges) and by `status --fleet`."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from sidecar.core.signals import Signal
from sidecar.fleet.client import FleetClient
from sidecar.fleet.handoff_codec import GROUP, HEADER
from sidecar.fleet.keys import Keys


@dataclass(frozen=True, slots=True)
class Backlog:
    endpoint: str
    bytes: int
    entries: int
    oldest_age: float  # seconds since the oldest entry was acknowledged to its client; 0 when empty
    pending: int  # entries claimed by a member and not yet acknowledged


async def read_backlog(client: FleetClient, keys: Keys, endpoint: str, now: float,
                       skip_when_empty: bool = False) -> Backlog:
    """One endpoint's handoff backlog, summed over its signals' streams (`client` answers bytes).
    `skip_when_empty`: one GET when the endpoint's byte counter is 0 (a member's periodic look)."""
    total = int(await client.get(keys.handoff_bytes(endpoint)) or 0)
    if skip_when_empty and total == 0:
        return Backlog(endpoint, 0, 0, 0.0, 0)
    entries = pending = 0
    oldest: float | None = None
    for signal in Signal:
        stream = keys.handoff(endpoint, signal.value)
        length = int(await client.xlen(stream))
        if not length:
            continue
        entries += length
        with contextlib.suppress(ResponseError):
            pending += int((await client.xpending(stream, GROUP))["pending"])
        first = await client.xrange(stream, count=1)
        fields = first[0][1] if first else None
        if fields:
            raw = fields.get(HEADER) or b"{}"
            with contextlib.suppress(ValueError, TypeError, KeyError):
                accepted = float(orjson.loads(raw)["a"])
                oldest = accepted if oldest is None else min(oldest, accepted)
    return Backlog(endpoint, total, entries, max(0.0, now - oldest) if oldest is not None else 0.0, pending)


async def read_backlogs(client: FleetClient, keys: Keys, endpoints: list[str], now: float) -> list[Backlog]:
    """The endpoints named plus every endpoint that ever had a handoff (its members may all be gone)."""
    known = {e.decode() if isinstance(e, bytes) else str(e) for e in await client.smembers(keys.handoff_endpoints)}
    return [await read_backlog(client, keys, endpoint, now) for endpoint in sorted(known | set(endpoints))]


def backlog_json(backlogs: list[Backlog]) -> dict[str, Any]:
    return {b.endpoint: {k: v for k, v in asdict(b).items() if k != "endpoint"} for b in backlogs}


def backlog_lines(backlogs: list[Backlog]) -> list[str]:
    lines = [f"{'HANDOFF BACKLOG':<32} {'REQUESTS':>8} {'BYTES':>12} {'CLAIMED':>7} {'OLDEST':>9}"]
    for b in backlogs:
        lines.append(f"{b.endpoint:<32} {b.entries:>8} {b.bytes:>12} {b.pending:>7} "
                     f"{f'{b.oldest_age:.1f}s' if b.entries else '-':>9}")
    return lines
