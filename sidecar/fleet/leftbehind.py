"""What a departed sidecar left on its volume, and the one moment it is counted lost.

A handoff may leave entries in the local queue: the fleet's byte budget was full, Redis failed, or the
shutdown budget ran out. They are not lost yet: a StatefulSet volume, or a container restarted in the
same pod, keeps them and the sidecar replays them. They are lost when the volume is deleted, and no
process watches a pod's emptyDir go. So:

- every storage directory has a volume id (a file written on first start);
- a departing sidecar records in Redis, under its volume id, the items it leaves (per signal) and why;
- a sidecar that starts on a volume with a record removes the record: nothing was lost, it replays;
- a sidecar that starts with the same `instance_id` on another volume (a StatefulSet pod whose claim
  was deleted) counts its old record at once;
- any member counts a record nobody came back for within `handoff.left_behind_timeout`.

Counting removes the record (HDEL answers 1 to one caller only), so it happens once, on one member:
`sidecar_dropped_items_total{reason="shutdown"}` and a `handoff_left_behind_lost` log event with the
count and why. When Redis cannot take the record at exit, the departure's log event carries the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from sidecar.core.clock import Clock
from sidecar.fleet.client import FleetClient
from sidecar.fleet.connection import FAILURES
from sidecar.fleet.keys import Keys
from sidecar.telemetry.events import Events

log = logging.getLogger(__name__)

VOLUME_FILE = "handoff-volume-id"
RECORD_TIMEOUT = 2.0  # the record is written at exit, within the shutdown budget


def volume_id(directory: Path) -> str:
    """The storage directory's id, made on first use; a deleted volume comes back with a new one."""
    path = directory / VOLUME_FILE
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text:
            return text
    directory.mkdir(parents=True, exist_ok=True)
    ident = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(ident + "\n")
    os.replace(tmp, path)
    return ident


@dataclass(frozen=True, slots=True)
class LeftBehind:
    instance: str
    items: dict[str, int]  # signal -> items left on the volume
    requests: int
    at: float  # wall-clock seconds of the departure
    why: str  # budget_full | redis_unavailable | out_of_time

    def encode(self) -> bytes:
        return orjson.dumps({"i": self.instance, "n": self.items, "r": self.requests, "t": self.at, "w": self.why})

    @staticmethod
    def decode(raw: bytes | str) -> LeftBehind:
        data = orjson.loads(raw)
        return LeftBehind(str(data["i"]), {str(k): int(v) for k, v in data["n"].items()}, int(data["r"]),
                          float(data["t"]), str(data["w"]))


def verdict(record: LeftBehind, volume: str, my_volume: str | None, my_instance: str, now: float,
            timeout: float) -> str | None:
    """What a member does with one record: "replayed" (its volume is mine: not lost), "lost" (counted
    now, with why), or None (wait)."""
    if my_volume is not None and volume == my_volume:
        return "replayed"
    if record.instance == my_instance and my_volume is not None:
        return "lost: the same instance came back on another volume"
    if now - record.at >= timeout:
        return "lost: no sidecar came back with that volume within handoff.left_behind_timeout"
    return None


class LeftBehindLedger:
    def __init__(self, client: FleetClient, keys: Keys, instance: str, timeout: float, events: Events,
                 clock: Clock) -> None:
        self.client = client
        self.key = keys.left_behind
        self.instance = instance
        self.timeout = timeout
        self.events = events
        self.clock = clock
        self.volume: str | None = None  # this sidecar's volume id, when it has a storage directory

    async def record(self, record: LeftBehind, reachable: bool = True) -> bool:
        """At exit: what stays on this volume. False when Redis did not take it (the log says so); with
        `reachable` False (the fleet connection is down) it is not tried: the exit does not wait on it."""
        if self.volume is None:
            return False
        try:
            if not reachable:
                raise ConnectionError("the fleet's Redis is unreachable")
            async with asyncio.timeout(RECORD_TIMEOUT):
                await self.client.hset(self.key, self.volume, record.encode())
        except FAILURES as exc:
            log.warning("handoff: what stays on this volume is not recorded in the fleet (Redis failed); "
                        "lost without a further count if the volume is deleted", extra={
                            "event": "handoff_left_behind_unrecorded", "volume": self.volume,
                            "left_requests": record.requests, "left_items": sum(record.items.values()),
                            "why": record.why, "error": f"{type(exc).__name__}: {exc}"[:300]})
            return False
        log.warning("handoff: entries stay on this volume; replayed if it comes back, counted as dropped "
                    "(reason shutdown) if it does not", extra={
                        "event": "handoff_left_behind", "volume": self.volume, "left_requests": record.requests,
                        "left_items": sum(record.items.values()), "why": record.why})
        return True

    async def reconcile(self) -> None:
        """Look at every record once: forget my volume's, count the lost ones."""
        records = await self.client.hgetall(self.key)
        now = self.clock.wall()
        for raw_volume, raw in records.items():
            volume = raw_volume.decode() if isinstance(raw_volume, bytes) else str(raw_volume)
            try:
                record = LeftBehind.decode(raw)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # another version's record: its own members count it
            decision = verdict(record, volume, self.volume, self.instance, now, self.timeout)
            if decision is None:
                continue
            if int(await self.client.hdel(self.key, volume)) != 1:
                continue  # another member (or the volume's own sidecar) took it first
            if decision == "replayed":
                log.info("handoff: entries left on this volume at the last departure are replayed here", extra={
                    "event": "handoff_left_behind_replayed", "volume": volume, "left_requests": record.requests})
            else:
                self.events.handoff_left_behind_lost(volume, record.instance, record.items, record.requests,
                                                     record.why, decision.removeprefix("lost: "))
