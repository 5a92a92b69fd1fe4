"""Handoff (DESIGN.md §9): a departing sidecar's backlog moves to Redis; live members deliver it.

Why Redis Streams with a consumer group: an entry is appended once (XADD) and stays until a member
acknowledges it; XREADGROUP gives each entry to one member at a time and remembers who holds it (the
pending list), XAUTOCLAIM hands the entries of a member that died or hung to another after
`claim_timeout`, and XACK + XDEL remove it only once the upstream accepted it. A list (BRPOPLPUSH)
would need our own bookkeeping of who holds what and since when; pub/sub keeps nothing.

Keys, per endpoint (sidecar/fleet/keys.py): one stream per signal and one byte counter. The add and
acknowledge scripts touch one endpoint's keys only (one hash slot on a Redis Cluster). The fleet-wide
budget (`handoff.max_mib`) is the sum of the endpoints' counters: a departing sidecar reads the other
endpoints' counters once, and the add script enforces the rest atomically against its own endpoint's.

Departure (at shutdown, after the drain ran out of its share of `shutdown_timeout`): entries are
leased from the local queue oldest first, written in batches, and acknowledged locally only for the
ones Redis confirmed; the rest are given back to the queue. Then the dead letters, the same way.

Claiming (while running): per endpoint and signal this member exports to, and only while its own
breaker for the endpoint is closed, a member takes new entries (XREADGROUP) or stale claims
(XAUTOCLAIM), sends them through its exporter's chain (breaker, retry, budget; entries of one signal and
metadata merged as the exporter's batcher merges its own queue) and acknowledges each in Redis once the
upstream accepted it (at least once). A dead letter is kept in the claimer's own
dead-letter store instead of being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from sidecar.config.schema import FleetConfig
from sidecar.config.units import MIB, mib_to_bytes
from sidecar.core.clock import Clock
from sidecar.core.signals import Signal
from sidecar.core.tasks import cancel_and_wait
from sidecar.exporters.breaker import BreakerState
from sidecar.fleet.client import make_client, moved_primary
from sidecar.fleet.connection import FAILURES, FleetConnection
from sidecar.fleet.handoff_codec import (
    GROUP,
    HEADER,
    PAYLOAD,
    Claimed,
    HandedOff,
    Unreadable,
    batches,
    decode,
    encode,
    room,
)
from sidecar.fleet.handoff_status import read_backlog
from sidecar.fleet.keys import Keys
from sidecar.fleet.leftbehind import LeftBehind, LeftBehindLedger, volume_id
from sidecar.queue.base import Lease, ManagedSendingQueue
from sidecar.telemetry.events import Events

if TYPE_CHECKING:
    from sidecar.exporters.exporter import Exporter

log = logging.getLogger(__name__)

BATCH_ENTRIES = 256  # entries per add script call
# A claimer whose endpoint shows no backlog still looks this often: entries whose byte count was lost (a
# counter reset by hand, a Redis restored from an older dump) are not stranded.
SWEEP_INTERVAL = 60.0
BATCH_BYTES = 4 * 1024 * 1024  # payload bytes per add script call (one Redis command must stay short)
CLAIM_COUNT = 64  # entries a claimer holds at most
COMMAND_TIMEOUT = 5.0  # one handoff command (a 4 MiB batch over a slow link)

# KEYS[1] the stream, KEYS[2] the endpoint's byte counter. ARGV[1] the bytes this endpoint may hold,
# ARGV[2] the group, then (size, header, payload) per entry, oldest first. Adds entries while they fit
# and stops at the first that does not (order kept); returns how many it added.
ADD = """
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[1])
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[2], '0', 'MKSTREAM')
local added = 0
for i = 3, #ARGV, 3 do
  local size = tonumber(ARGV[i])
  if used + size > limit then break end
  redis.call('XADD', KEYS[1], '*', 'h', ARGV[i + 1], 'p', ARGV[i + 2])
  used = used + size
  added = added + 1
end
if added > 0 then redis.call('SET', KEYS[2], used) end
return added
"""

# KEYS[1] the stream, KEYS[2] the byte counter. ARGV[1] the group, then (id, size) pairs. An entry another
# claimer already acknowledged (a takeover raced a slow delivery) is not subtracted twice.
ACK = """
local removed = 0
for i = 2, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    removed = removed + 1
    if redis.call('DECRBY', KEYS[2], ARGV[i + 1]) < 0 then redis.call('SET', KEYS[2], 0) end
  end
end
return removed
"""


@dataclass
class Departure:
    """What one exporter's departure did: handed off, and what it left in the local stores and why."""

    exporter: str
    endpoint: str
    entries: int = 0
    items: int = 0
    dead_letters: int = 0
    left_entries: int = 0
    left_items: dict[str, int] = field(default_factory=dict)  # signal -> items left locally
    why: str = ""  # budget_full | redis_unavailable | out_of_time ("" when nothing was left)
    on_volume: bool = False  # what is left stays on the storage volume (else a memory queue counts it at exit)


class HandoffStore:
    """The Redis side: a binary client (payloads are bytes) on the fleet's endpoint, TLS and AUTH."""

    def __init__(self, config: FleetConfig, keys: Keys) -> None:
        self.keys = keys
        self.max_bytes = mib_to_bytes(config.handoff.max_mib)
        self.client = make_client(config, COMMAND_TIMEOUT, decode_responses=False)
        self._add = self.client.register_script(ADD)
        self._ack = self.client.register_script(ACK)

    async def close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self.client.aclose()

    async def limit_for(self, endpoint: str) -> int:
        """The bytes `endpoint`'s streams may hold: the budget less what the other endpoints hold."""
        await self.client.sadd(self.keys.handoff_endpoints, endpoint)
        others = [e.decode() if isinstance(e, bytes) else str(e)
                  for e in await self.client.smembers(self.keys.handoff_endpoints)]
        held = 0
        for other in others:
            if other != endpoint:
                held += int(await self.client.get(self.keys.handoff_bytes(other)) or 0)
        return room(self.max_bytes, held)

    async def add(self, endpoint: str, signal: Signal, items: Sequence[HandedOff], limit: int) -> int:
        args: list[bytes | int | str] = [limit, GROUP]
        for item in items:
            header, payload = encode(item)
            args += [item.size, header, payload]
        return int(await self._add(keys=[self.keys.handoff(endpoint, signal.value),
                                         self.keys.handoff_bytes(endpoint)], args=args))

    async def ack(self, endpoint: str, signal: Signal, done: Sequence[tuple[bytes, int]]) -> int:
        args: list[bytes | int | str] = [GROUP]
        for entry_id, size in done:
            args += [entry_id, size]
        return int(await self._ack(keys=[self.keys.handoff(endpoint, signal.value),
                                         self.keys.handoff_bytes(endpoint)], args=args))

    async def ensure_group(self, stream: str) -> None:
        try:
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class HandoffSink:
    """The departing side, shared by the exporters (Exporter.handoff): `reserve` seconds of the shutdown
    budget are kept for `hand_off`."""

    def __init__(self, store: HandoffStore, instance: str, reserve: float, events: Events, clock: Clock) -> None:
        self.store = store
        self.instance = instance
        self.reserve = reserve
        self.events = events
        self.clock = clock
        self.departures: list[Departure] = []

    async def hand_off(self, exporter: Exporter, seconds: float) -> None:
        endpoint = next(iter(exporter.sender.endpoints))
        departure = Departure(exporter.name, endpoint, on_volume=exporter.storage_directory is not None)
        self.departures.append(departure)
        started = self.clock.monotonic()
        deadline = started + seconds
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                # Sentinel: this client's connections may still point at a primary that was just failed over
                # (it answers as one for seconds and its writes are then discarded); ask where it is first.
                await moved_primary(self.store.client)
                limit = await self.store.limit_for(endpoint)
                departure.why = await self._queue(exporter, departure, limit)
                if not departure.why:
                    departure.why = await self._dead_letters(exporter, departure, limit)
        except TimeoutError:
            departure.why = "out_of_time"
        except FAILURES as exc:
            departure.why = "redis_unavailable"
            log.warning("handoff: Redis failed; what it did not confirm stays in the local queue",
                        extra={"event": "handoff_failed", "exporter": exporter.name,
                               "error": f"{type(exc).__name__}: {exc}"[:300]})
        queue = exporter.queue
        if queue is not None:
            departure.left_entries = queue.count
            departure.left_items = await _items_by_signal(exporter)
        if exporter.dead_letters is not None and exporter.dead_letters.count:
            departure.left_entries += exporter.dead_letters.count
            with contextlib.suppress(Exception):  # (a count for the record; the store is about to close)
                offset = 0
                while page := await exporter.dead_letters.list(limit=1000, offset=offset):
                    offset += len(page)
                    for dead in page:
                        signal = dead.entry.signal.value
                        departure.left_items[signal] = departure.left_items.get(signal, 0) + dead.dropped_items
        if not departure.left_entries:
            departure.why = ""
        elif not departure.why:
            departure.why = "out_of_time" if self.clock.monotonic() >= deadline else "budget_full"
        self.events.handoff_departed(departure.exporter, departure.endpoint, departure.entries, departure.items,
                                     departure.dead_letters, departure.left_entries,
                                     sum(departure.left_items.values()), departure.why,
                                     self.clock.monotonic() - started)

    async def _queue(self, exporter: Exporter, departure: Departure, limit: int) -> str:
        queue = exporter.queue
        while queue is not None and queue.available:
            leases: list[Lease] = []
            size = 0
            while queue.available and len(leases) < BATCH_ENTRIES and size < BATCH_BYTES:
                lease = await queue.get()  # an entry is available: does not wait
                leases.append(lease)
                size += len(lease.entry.payload)
            done = [0]
            try:
                await self._write(departure, [HandedOff(lease.entry, self.instance) for lease in leases], limit, done)
            finally:
                # Only what Redis confirmed leaves the local queue (also when a later write failed or the
                # time ran out); the rest goes back in its place.
                await asyncio.shield(_settle(queue, leases, done[0]))
            confirmed = done[0]
            exporter.update_queue_gauges()
            if confirmed < len(leases):
                return "budget_full"
        return ""

    async def _dead_letters(self, exporter: Exporter, departure: Departure, limit: int) -> str:
        store = exporter.dead_letters
        while store is not None and store.count:
            page = await store.list(limit=BATCH_ENTRIES)
            if not page:
                return ""
            done = [0]
            try:
                await self._write(departure, [HandedOff(dead.entry, self.instance, dead) for dead in page], limit,
                                  done)
            finally:
                if done[0]:
                    await asyncio.shield(store.remove([dead.id for dead in page[:done[0]]]))
            confirmed = done[0]
            departure.dead_letters += confirmed
            if confirmed < len(page):
                return "budget_full"
        return ""

    async def _write(self, departure: Departure, items: list[HandedOff], limit: int, done: list[int]) -> None:
        """Write `items` (oldest first) to their signals' streams; `done[0]` counts the first ones Redis
        confirmed, as they are confirmed (a failure or timeout may interrupt the writes)."""
        for signal, run in _runs_by_signal(items):
            added = await self.store.add(departure.endpoint, signal, run, limit)
            done[0] += added
            for item in run[:added]:
                if item.dead is None:
                    departure.entries += 1
                    departure.items += item.entry.items
                self.events.handoff_handed_off(departure.endpoint, signal.value, item.entry.items)
            if added < len(run):
                break


def _runs_by_signal(items: list[HandedOff]) -> list[tuple[Signal, list[HandedOff]]]:
    """Consecutive items of one signal: each run goes to its signal's stream in one call, order kept."""
    runs: list[tuple[Signal, list[HandedOff]]] = []
    for item in items:
        if runs and runs[-1][0] is item.entry.signal:
            runs[-1][1].append(item)
        else:
            runs.append((item.entry.signal, [item]))
    return runs


async def _settle(queue: ManagedSendingQueue, leases: list[Lease], confirmed: int) -> None:
    # Acks together: the disk queue commits concurrent deletes in one transaction.
    await asyncio.gather(*(queue.ack(lease) for lease in leases[:confirmed]))
    for lease in leases[confirmed:]:
        await queue.nack(lease)


async def _items_by_signal(exporter: Exporter) -> dict[str, int]:
    """Items per signal still in the local queue (read by leasing and giving back every entry)."""
    queue = exporter.queue
    if queue is None:
        return {}
    leases: list[Lease] = []
    left: dict[str, int] = {}
    try:
        while queue.available:
            lease = await queue.get()
            leases.append(lease)
            left[lease.entry.signal.value] = left.get(lease.entry.signal.value, 0) + lease.entry.items
    finally:
        for lease in leases:
            await queue.nack(lease)
    return left


class Claimer:
    """Delivers one endpoint's handed-off entries of one signal through one exporter of this member."""

    def __init__(self, store: HandoffStore, conn: FleetConnection, exporter: Exporter, endpoint: str,
                 signal: Signal, instance: str, config: FleetConfig, events: Events, clock: Clock,
                 backlog: Callable[[], bool] | None = None) -> None:
        self.store = store
        self.conn = conn
        self.exporter = exporter
        self.endpoint = endpoint
        self.signal = signal
        self.instance = instance
        self.stream = store.keys.handoff(endpoint, signal.value)
        self.claim_timeout_ms = int(float(config.handoff.claim_timeout) * 1000)
        self.interval = float(config.handoff.claim_interval)
        self.events = events
        self.clock = clock
        self.held: dict[bytes, HandedOff] = {}
        self.concurrency = max(1, exporter.config.sending_queue.num_consumers)
        self._unreadable_logged = False
        # Whether the endpoint's handoff byte counter was above 0 at the last look (HandoffFleet watches it):
        # an idle member then sends nothing for its claimers. None: always look (tests drive one claimer).
        self.backlog = backlog
        self._swept_at = float("-inf")

    def closed_for_me(self) -> bool:
        """The member's own breaker for the endpoint is closed: a handoff never bypasses the breaker."""
        chain = self.exporter.sender.endpoints.get(self.endpoint)
        return chain is not None and chain.breaker.state is BreakerState.CLOSED

    async def run(self) -> None:
        while True:
            try:
                busy = await self.round()
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                log.warning("handoff claimer: %s", exc)
                busy = False
            except FAILURES as exc:
                log.debug("handoff claimer: Redis failed: %s", exc)
                busy = False
            except Exception:
                log.exception("handoff claimer failed", extra={"endpoint": self.endpoint})
                busy = False
            if not busy:
                await self.clock.sleep(self.interval)

    async def round(self) -> bool:
        """One pass: claim, deliver, acknowledge. True when it delivered something (go on at once)."""
        if not self.conn.connected or not self.closed_for_me():
            return False
        now = self.clock.monotonic()
        if self.backlog is not None and not self.held and not self.backlog() and now - self._swept_at < SWEEP_INTERVAL:
            return False
        self._swept_at = now
        if len(self.held) < CLAIM_COUNT:
            await self._claim(CLAIM_COUNT - len(self.held))
        if not self.held:
            return False
        done = await self._deliver_held()
        if done:
            await self.store.ack(self.endpoint, self.signal, done)
            for entry_id, _ in done:
                self.held.pop(entry_id, None)
        return bool(done)

    async def _claim(self, count: int) -> None:
        try:
            fresh: list[Any] = await self.store.client.xreadgroup(GROUP, self.instance, {self.stream: ">"},
                                                                  count=count)  # type: ignore[assignment]
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # No handoff yet on this endpoint, or a Redis that came back empty: make the group, look later.
            await self.store.ensure_group(self.stream)
            return
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        for _stream, rows in fresh or []:
            entries.extend(rows)
        if len(entries) < count:
            # Claims idle longer than claim_timeout: their claimer died or hangs. Our own held entries are
            # refreshed (`refresh`), so this takes only others' (or ours from before a restart).
            reply = await self.store.client.xautoclaim(self.stream, GROUP, self.instance, self.claim_timeout_ms,
                                                      start_id="0-0", count=count - len(entries))
            claimed: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[1]  # type: ignore[index]
            entries.extend(claimed)
        for entry_id, fields in entries:
            if entry_id in self.held or not fields or HEADER not in fields or PAYLOAD not in fields:
                continue
            try:
                item = decode(fields)
            except Unreadable as exc:
                if not self._unreadable_logged:
                    self._unreadable_logged = True
                    log.warning("handoff: an entry this version cannot read is left for another member",
                                extra={"event": "handoff_unreadable", "stream": self.stream, "error": str(exc)})
                continue
            self.held[entry_id] = item
            self.events.handoff_claimed(self.endpoint, self.signal.value, item.entry.items)

    def _batch_bounds(self) -> tuple[int, int]:
        """Entries and bytes per upstream request, as the exporter's batcher merges its own queue."""
        batch = self.exporter.config.sending_queue.batch
        if batch is None or not batch.enabled:
            return 1, 0
        limit = int(batch.max_size_mib * MIB)
        if self.exporter.sender.max_request_bytes is not None:
            limit = min(limit, self.exporter.sender.max_request_bytes)
        return batch.max_requests, limit

    async def _deliver_held(self) -> list[tuple[bytes, int]]:
        """Deliver what is held, a few requests at a time; the (id, size) of the ones that are done."""
        limit = asyncio.Semaphore(self.concurrency)

        async def deliver(group: list[Claimed]) -> list[tuple[bytes, int]]:
            async with limit:
                if not self.closed_for_me():
                    return []
                if len(group) == 1:
                    outcomes = [await self.exporter.take_handed_off(group[0][1].entry, group[0][1].dead)]
                else:
                    outcomes = await self.exporter.take_handed_off_batch([item.entry for _, item in group])
                done = []
                for (entry_id, item), ok in zip(group, outcomes, strict=True):
                    if ok:
                        if item.dead is None:
                            self.events.handoff_delivered(self.endpoint, self.signal.value, item.entry.items)
                        done.append((entry_id, item.size))
                return done

        groups = batches(list(self.held.items()), *self._batch_bounds())
        results = await asyncio.gather(*(deliver(group) for group in groups))
        return [done for group in results for done in group]

    async def refresh(self) -> None:
        """Reset the idle time of the entries held, so no other member takes over a slow delivery."""
        if self.held and self.conn.connected:
            await self.store.client.xclaim(self.stream, GROUP, self.instance, 0, list(self.held), justid=True)


class Handoff:
    """Handoff for one fleet member: the sink its exporters hand off to, its claimers and backlog gauges."""

    def __init__(self, config: FleetConfig, conn: FleetConnection, keys: Keys, instance: str, events: Events,
                 clock: Clock) -> None:
        self.config = config
        self.conn = conn
        self.instance = instance
        self.events = events
        self.clock = clock
        self.store = HandoffStore(config, keys)
        self.sink = HandoffSink(self.store, instance, float(config.handoff.timeout), events, clock)
        self.claimers: dict[tuple[str, Signal], Claimer] = {}
        self.backlog_bytes: dict[str, int] = {}  # per endpoint, at the last look (_watch_backlog)
        self._tasks: list[asyncio.Task[None]] = []
        self.storage: Path | None = None
        self.ledger = LeftBehindLedger(self.store.client, keys, instance, float(config.handoff.left_behind_timeout),
                                       events, clock)

    def attach(self, exporter: Exporter, signals: set[Signal]) -> None:
        """The exporter hands off through the sink, and claims its endpoints' entries of its signals."""
        exporter.handoff = self.sink
        if exporter.storage_directory is not None:
            self.storage = exporter.storage_directory
        for endpoint in exporter.sender.endpoints:
            for signal in sorted(signals):
                if (endpoint, signal) not in self.claimers:
                    self.claimers[(endpoint, signal)] = Claimer(
                        self.store, self.conn, exporter, endpoint, signal, self.instance, self.config,
                        self.events, self.clock, backlog=functools.partial(self.has_backlog, endpoint))
            self.events.handoff_endpoint_added(endpoint, signals)

    def has_backlog(self, endpoint: str) -> bool:
        return self.backlog_bytes.get(endpoint, 0) > 0

    def start(self) -> None:
        if self.storage is not None:
            self.ledger.volume = volume_id(self.storage)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._reconcile(), name="handoff-left-behind"))
        self._tasks += [loop.create_task(claimer.run(), name=f"handoff-claimer {endpoint} {signal}")
                        for (endpoint, signal), claimer in self.claimers.items()]
        self._tasks.append(loop.create_task(self._refresh(), name="handoff-refresh"))
        self._tasks.append(loop.create_task(self._watch_backlog(), name="handoff-backlog"))

    async def stop_claiming(self) -> None:
        """Before the exporters stop: entries held stay claimed in Redis and are taken over after
        `claim_timeout` by another member (this one's delivery may still be in flight)."""
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def close(self) -> None:
        """After the exporters stopped: record what the departures left on this volume, then disconnect."""
        await self.stop_claiming()
        left = [d for d in self.sink.departures if d.on_volume and d.left_entries]
        if left:
            items: dict[str, int] = {}
            for departure in left:
                for signal, count in departure.left_items.items():
                    items[signal] = items.get(signal, 0) + count
            await self.ledger.record(LeftBehind(self.instance, items, sum(d.left_entries for d in left),
                                                self.clock.wall(), ",".join(sorted({d.why for d in left}))),
                                     reachable=self.conn.connected)
        await self.store.close()

    async def _reconcile(self) -> None:
        """Left-behind records: forget this volume's (it replays), count the lost ones (leftbehind.py)."""
        interval = max(0.5, min(30.0, self.ledger.timeout / 4))
        while True:
            if self.conn.connected:
                try:
                    await self.ledger.reconcile()
                except FAILURES as exc:
                    log.debug("handoff: left-behind check failed: %s", exc)
            await self.clock.sleep(interval if self.conn.connected else 0.2)

    async def _refresh(self) -> None:
        interval = max(0.1, float(self.config.handoff.claim_timeout) / 3)
        while True:
            await self.clock.sleep(interval)
            for claimer in self.claimers.values():
                with contextlib.suppress(*FAILURES):
                    await claimer.refresh()

    async def _watch_backlog(self) -> None:
        """The backlog gauges, and the claimers' cue: one GET per endpoint while there is nothing to claim
        (a healthy fleet's usual state), the whole backlog read only while there is; looked at every
        claim_interval while some endpoint has a backlog, else every heartbeat_interval."""
        endpoints = sorted({endpoint for endpoint, _ in self.claimers})
        while True:
            for endpoint in endpoints:
                with contextlib.suppress(*FAILURES):
                    if self.conn.connected:
                        backlog = await read_backlog(self.store.client, self.store.keys, endpoint, self.clock.wall(),
                                                     skip_when_empty=True)
                        self.backlog_bytes[endpoint] = backlog.bytes
                        self.events.handoff_backlog(endpoint, backlog.bytes, backlog.entries, backlog.oldest_age)
            busy = any(self.backlog_bytes.get(endpoint, 0) > 0 for endpoint in endpoints)
            interval = self.config.handoff.claim_interval if busy else self.config.heartbeat_interval
            await self.clock.sleep(float(interval))

