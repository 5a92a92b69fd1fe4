"""The in-memory sending queue (DESIGN.md §5): bounded, FIFO, leases, nack to the front.

Ordering. Every entry gets a sequence number when it is put. `get` always hands out the
available entry with the lowest sequence number, so a nacked entry goes back to its original
position: before every entry put after it. That is "nack to the front" for the usual case
(one entry nacked while newer ones wait) and stays well defined when several consumers nack
in any order. The SQLite queue orders by row id, which is the same rule.

Capacity. The bound is in the sizer's unit and counts leased (in-flight) entries too, so it
bounds memory. `put` raises QueueFull when the entry does not fit, with one exception: an
entry larger than the whole capacity is accepted when the queue holds nothing at all (no
entry, leased or not). Otherwise such an entry could never be accepted and the client would
retry it forever; accepting it into an empty queue lets at most one oversized entry in.

Leases. Lease ids are unique in the process (across queues and reopenings), so a stale lease
(already acked or nacked, or from before `drain_nowait`/a reopen) is recognised: `ack` and
`nack` of a lease the queue no longer knows are no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque

from sidecar.core.entry import QueueEntry
from sidecar.queue.base import Lease, QueueClosed, QueueFull, Sizer
from sidecar.queue.oldest import OldestTracker

_lease_ids = itertools.count(1)


def next_lease_id() -> int:
    """A lease id never used before in this process."""
    return next(_lease_ids)


def fits(size: int, count: int, entry_size: int, capacity: int) -> bool:
    """The admission rule both queues share (see the module docstring)."""
    return count == 0 or size + entry_size <= capacity


class Waiters:
    """Coroutines waiting for something (an available entry, an empty queue), woken in FIFO order."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait to be woken; False when the timeout expired first. Cancellation passes the wake-up on."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            self._discard(fut)
            return fut.done() and not fut.cancelled()
        except BaseException:
            woken = fut.done() and not fut.cancelled()
            self._discard(fut)
            if woken:
                self.wake_one()  # the wake-up was meant for someone: hand it on
            raise

    def _discard(self, fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.cancel()
        with contextlib.suppress(ValueError):  # already woken and removed
            self._waiters.remove(fut)

    def wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)


class MemoryQueue:
    """Bounded asyncio queue with leases. Not durable: a crash loses what it holds."""

    durable = False

    def __init__(self, capacity: int, sizer: Sizer = Sizer.REQUESTS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.sizer = Sizer(sizer)
        self._seq = itertools.count()
        self._front_seq = itertools.count(-1, -1)  # for put_front_nowait: before every seq handed out
        self._entries: dict[int, QueueEntry] = {}  # seq -> entry, everything held (leased or not)
        self._available: list[int] = []  # heap of seqs
        self._leases: dict[int, int] = {}  # lease id -> seq
        self._size = 0
        self._bytes = 0
        self._getters = Waiters()
        self._empty_waiters = Waiters()
        self._closed = False
        self._oldest = OldestTracker()

    # ------------------------------------------------------------ figures

    @property
    def size(self) -> int:
        return self._size

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def available(self) -> int:
        return len(self._available)

    @property
    def leased(self) -> int:
        return len(self._leases)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def oldest_accepted_at(self) -> float | None:
        """`accepted_at` of the oldest entry held (leased ones included); None when empty."""
        return self._oldest.oldest()

    def __repr__(self) -> str:
        return (f"MemoryQueue(capacity={self.capacity}, sizer={self.sizer.value}, size={self._size}, "
                f"count={self.count}, leased={self.leased})")

    # ------------------------------------------------------------ the interface

    def fits(self, entry: QueueEntry) -> bool:
        """Whether `put(entry)` would be accepted now."""
        return fits(self._size, len(self._entries), self.sizer.size_of(entry), self.capacity)

    def put_nowait(self, entry: QueueEntry) -> None:
        if self._closed:
            raise QueueClosed("queue is closed")
        entry_size = self.sizer.size_of(entry)
        if not fits(self._size, len(self._entries), entry_size, self.capacity):
            raise QueueFull(f"queue full: {self._size}+{entry_size} > {self.capacity} {self.sizer.value}")
        seq = next(self._seq)
        self._entries[seq] = entry
        self._oldest.add(seq, entry.accepted_at)
        self._size += entry_size
        self._bytes += len(entry.payload)
        heapq.heappush(self._available, seq)
        self._getters.wake_one()

    async def put(self, entry: QueueEntry) -> None:
        self.put_nowait(entry)

    def put_front_nowait(self, entry: QueueEntry) -> None:
        """Hold `entry` before every entry put so far, whatever the capacity.

        For entries that were already accepted elsewhere and come back older than everything
        here (rows carried over from a quarantined disk file): refusing them would lose them.
        """
        if self._closed:
            raise QueueClosed("queue is closed")
        seq = next(self._front_seq)
        self._entries[seq] = entry
        self._oldest.add(seq, entry.accepted_at)
        self._size += self.sizer.size_of(entry)
        self._bytes += len(entry.payload)
        heapq.heappush(self._available, seq)
        self._getters.wake_one()

    def get_nowait(self) -> Lease:
        """Lease the oldest available entry; IndexError when none is available."""
        if not self._available:
            raise IndexError("no entry available")
        seq = heapq.heappop(self._available)
        lease = Lease(next_lease_id(), self._entries[seq])
        self._leases[lease.lease_id] = seq
        return lease

    async def get(self) -> Lease:
        while not self._available:
            if self._closed:
                raise QueueClosed("queue is closed")
            await self._getters.wait()
        lease = self.get_nowait()
        if self._available:
            self._getters.wake_one()  # more than one may have arrived while we slept
        return lease

    async def ack(self, lease: Lease) -> None:
        seq = self._leases.pop(lease.lease_id, None)
        if seq is None:
            return
        entry = self._entries.pop(seq)
        self._oldest.discard(seq)
        self._size -= self.sizer.size_of(entry)
        self._bytes -= len(entry.payload)
        if not self._entries:
            self._empty_waiters.wake_all()

    async def nack(self, lease: Lease) -> None:
        seq = self._leases.pop(lease.lease_id, None)
        if seq is None:
            return
        heapq.heappush(self._available, seq)
        self._getters.wake_one()

    async def close(self) -> None:
        """Refuse new puts and release waiting `get` calls; what is held stays for `drain_nowait`."""
        self._closed = True
        self._getters.wake_all()

    # ------------------------------------------------------------ shutdown helpers

    async def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until nothing is held (leased entries included); False when the timeout expired."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._entries:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            await self._empty_waiters.wait(remaining)
        return True

    def drain_nowait(self) -> list[QueueEntry]:
        """Remove and return everything not acked (leased entries too), oldest first.

        For shutdown accounting: what this returns is lost unless the caller keeps it. Leases
        handed out before become stale (their ack/nack is a no-op).
        """
        drained = [self._entries[seq] for seq in sorted(self._entries)]
        self._entries.clear()
        self._oldest.clear()
        self._available.clear()
        self._leases.clear()
        self._size = 0
        self._bytes = 0
        self._empty_waiters.wake_all()
        return drained
