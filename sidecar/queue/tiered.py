"""The spill tier (DESIGN.md §5, degradation level 1): memory while healthy, disk from level 1 on.

With `sending_queue: {storage: file_storage, storage_mode: spill}` an exporter keeps its backlog in memory
while it is healthy (no commit per request) and, while its degradation level is 1 or more
(`spilling`, set by the exporter from the ladder), commits new requests to its SQLite queue
instead, so a backlog that builds up during an outage is on disk. A request is acknowledged to the
client once it is in the tier it went to: what was in memory is lost if the process is killed,
what was spilled is not. At shutdown what is left in memory is written to disk (`persist_memory`).

Both tiers drain in the order the requests were accepted: every `put` appends its tier to one
FIFO of turns and `get` takes from the tier at the head. Each tier is FIFO itself, and a nacked
entry goes back to the front of its tier, so its turn goes back to the front of the FIFO too.
Disk rows found at start-up (a previous run's spill) come first. A turn whose tier has nothing
available (an unreadable row the disk queue dropped) is skipped.

Capacity (`queue_size` in the sizer's unit) bounds both tiers together.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable

from sidecar.core.entry import QueueEntry
from sidecar.queue.base import Lease, ManagedSendingQueue, QueueClosed, QueueFull, Sizer
from sidecar.queue.memory import MemoryQueue, Waiters, fits


class Tier(enum.StrEnum):
    MEMORY = "memory"
    DISK = "disk"


class TieredQueue:
    """Memory and SQLite behind one SendingQueue interface; `spilling` picks where `put` goes."""

    durable = False  # what the memory tier holds is lost on a crash

    def __init__(self, memory: MemoryQueue, disk: ManagedSendingQueue, capacity: int, sizer: Sizer,
                 on_spill: Callable[[QueueEntry], None] | None = None,
                 on_drain: Callable[[QueueEntry], None] | None = None) -> None:
        self.memory = memory
        self.disk = disk
        self.capacity = capacity
        self.sizer = Sizer(sizer)
        self.spilling = False
        self.spilled = 0  # requests written to disk because the exporter was at level >= 1
        self.drained = 0  # spilled requests taken from disk by a consumer
        self.on_spill = on_spill  # called once per spilled / drained request (the exporter counts them)
        self.on_drain = on_drain
        self._order: deque[Tier] = deque([Tier.DISK] * disk.available)  # a previous run's spill first
        self._leases: dict[int, Tier] = {}
        self._getters = Waiters()
        self._closed = False

    # ------------------------------------------------------------ figures

    @property
    def size(self) -> int:
        return self.memory.size + self.disk.size

    @property
    def bytes(self) -> int:
        return self.memory.bytes + self.disk.bytes

    @property
    def count(self) -> int:
        return self.memory.count + self.disk.count

    @property
    def available(self) -> int:
        return self.memory.available + self.disk.available

    @property
    def leased(self) -> int:
        return len(self._leases)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_memory(self) -> int:
        """Requests held in memory only (not durable)."""
        return self.memory.count

    @property
    def oldest_accepted_at(self) -> float | None:
        times = [t for t in (self.memory.oldest_accepted_at, self.disk.oldest_accepted_at) if t is not None]
        return min(times) if times else None

    # ------------------------------------------------------------ the interface

    def fits(self, entry: QueueEntry) -> bool:
        return fits(self.size, self.count, self.sizer.size_of(entry), self.capacity)

    async def put(self, entry: QueueEntry) -> None:
        if self._closed:
            raise QueueClosed("queue is closed")
        size = self.sizer.size_of(entry)
        if not fits(self.size, self.count, size, self.capacity):
            raise QueueFull(f"queue full: {self.size}+{size} > {self.capacity} {self.sizer.value}")
        if self.spilling:
            await self.disk.put(entry)  # committed before the client is answered
            self.spilled += 1
            if self.on_spill is not None:
                self.on_spill(entry)
            self._order.append(Tier.DISK)
        else:
            self.memory.put_nowait(entry)
            self._order.append(Tier.MEMORY)
        self._getters.wake_one()

    async def get(self) -> Lease:
        while True:
            while not self._order:
                if self._closed:
                    raise QueueClosed("queue is closed")
                await self._getters.wait()
            tier = self._order.popleft()
            if (self.disk if tier is Tier.DISK else self.memory).available:
                break
            # A stale turn: its tier lost the entry (the disk queue drops a row it cannot read, and
            # reports it). Waiting on that tier would hold up everything behind it.
        try:
            lease = await (self.disk.get() if tier is Tier.DISK else self.memory.get())
        except BaseException:
            self._order.appendleft(tier)  # not taken: its turn stays
            raise
        self._leases[lease.lease_id] = tier
        if tier is Tier.DISK:
            self.drained += 1
            if self.on_drain is not None:
                self.on_drain(lease.entry)
        if self._order:
            self._getters.wake_one()
        return lease

    async def ack(self, lease: Lease) -> None:
        tier = self._leases.pop(lease.lease_id, None)
        if tier is not None:
            await (self.disk.ack(lease) if tier is Tier.DISK else self.memory.ack(lease))

    async def nack(self, lease: Lease) -> None:
        tier = self._leases.pop(lease.lease_id, None)
        if tier is None:
            return
        await (self.disk.nack(lease) if tier is Tier.DISK else self.memory.nack(lease))
        if tier is Tier.DISK:
            self.drained -= 1  # it will be drained again
        self._order.appendleft(tier)
        self._getters.wake_one()

    async def wait_empty(self, timeout: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.count:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            if not await self.memory.wait_empty(remaining):
                return False
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            if not await self.disk.wait_empty(remaining):
                return False
        return True

    async def persist_memory(self) -> int:
        """Write what the memory tier still holds (leased entries too) to disk, oldest first; for
        shutdown, so nothing accepted is lost when storage is configured. Returns how many."""
        entries = self.memory.drain_nowait()
        self._order = deque(tier for tier in self._order if tier is Tier.DISK)
        for entry in entries:
            await self.disk.put(entry)
            self._order.append(Tier.DISK)
        return len(entries)

    async def close(self) -> None:
        self._closed = True
        self._getters.wake_all()
        await self.memory.close()
        await self.disk.close()
