"""Model-based tests of both sending queues against one simple model.

The model: entries are numbered in put order; the queue holds every entry whose put returned and
that was not acked; `get` returns the lowest-numbered available entry (so a nacked entry comes
back before every newer one); the size never exceeds the capacity except for one oversized entry
alone. SQLite additionally survives close-and-reopen with every unacked entry (leased ones
included) available again in put order; memory instead has a "drain" rule.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue import sqlite as sqlite_queue
from sidecar.queue.base import Lease, QueueFull, Sizer
from sidecar.queue.fallback import StorageFallbackQueue
from sidecar.queue.memory import MemoryQueue
from sidecar.queue.sqlite import SqliteQueue

T = TypeVar("T")

CAPACITY = {
    Sizer.REQUESTS: st.integers(1, 6),
    Sizer.ITEMS: st.integers(1, 15),
    Sizer.BYTES: st.integers(8, 160),
}


def make_entry(key: int, items: int, pad: int) -> QueueEntry:
    return QueueEntry(
        signal=(Signal.TRACES, Signal.METRICS, Signal.LOGS)[key % 3],
        payload=key.to_bytes(4, "big") + b"x" * pad,
        items=items,
        metadata=(("tenant", f"t{key}"),) if key % 2 else (),
        accepted_at=1_700_000_000.0 + key,
    )


def key_of(entry: QueueEntry) -> int:
    return int.from_bytes(entry.payload[:4], "big")


class Model:
    def __init__(self, capacity: int, sizer: Sizer) -> None:
        self.capacity = capacity
        self.sizer = sizer
        self.held: dict[int, QueueEntry] = {}  # key -> entry: put returned, not acked
        self.available: set[int] = set()
        self.leased: dict[int, int] = {}  # lease id -> key
        self.next_key = 0

    @property
    def size(self) -> int:
        return sum(self.sizer.size_of(e) for e in self.held.values())

    def fits(self, entry: QueueEntry) -> bool:
        return not self.held or self.size + self.sizer.size_of(entry) <= self.capacity


class QueueMachine(RuleBasedStateMachine):
    """Rules shared by both implementations; subclasses open the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.queue: MemoryQueue | SqliteQueue | None = None
        self.model = Model(1, Sizer.REQUESTS)
        self.leases: dict[int, Lease] = {}
        self.stale: list[Lease] = []  # acked, nacked or from before a reopen/drain

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def q(self) -> MemoryQueue | SqliteQueue:
        assert self.queue is not None
        return self.queue

    def open_queue(self, capacity: int, sizer: Sizer) -> MemoryQueue | SqliteQueue:
        raise NotImplementedError

    @initialize(sizer=st.sampled_from(list(Sizer)), data=st.data())
    def setup(self, sizer: Sizer, data: st.DataObject) -> None:
        capacity = data.draw(CAPACITY[sizer], label="capacity")
        self.model = Model(capacity, sizer)
        self.queue = self.open_queue(capacity, sizer)

    def teardown(self) -> None:
        try:
            if self.queue is not None:
                self.run(self.queue.close())
        finally:
            self.loop.close()

    # ------------------------------------------------------------ rules

    @rule(items=st.integers(0, 5), pad=st.integers(0, 60))
    def put(self, items: int, pad: int) -> None:
        key = self.model.next_key
        self.model.next_key += 1
        entry = make_entry(key, items, pad)
        if self.model.fits(entry):
            self.run(self.q.put(entry))
            self.model.held[key] = entry
            self.model.available.add(key)
        else:
            with pytest.raises(QueueFull):
                self.run(self.q.put(entry))

    @precondition(lambda self: self.model.available)
    @rule()
    def get(self) -> None:
        lease = self.run(asyncio.wait_for(self.q.get(), 2))
        key = key_of(lease.entry)
        assert key == min(self.model.available), "not FIFO (with nacked entries at their original place)"
        assert lease.entry == self.model.held[key], "entry changed in the queue"
        assert lease.lease_id not in self.leases
        self.model.available.remove(key)
        self.model.leased[lease.lease_id] = key
        self.leases[lease.lease_id] = lease

    @precondition(lambda self: not self.model.available)
    @rule()
    def get_blocks_when_nothing_available(self) -> None:
        with pytest.raises(TimeoutError):
            self.run(asyncio.wait_for(self.q.get(), 0.005))

    @precondition(lambda self: self.model.leased)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.model.leased)), label="lease")
        lease = self.leases.pop(lease_id)
        self.run(self.q.ack(lease))
        key = self.model.leased.pop(lease_id)
        del self.model.held[key]
        self.stale.append(lease)

    @precondition(lambda self: self.model.leased)
    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.model.leased)), label="lease")
        lease = self.leases.pop(lease_id)
        self.run(self.q.nack(lease))
        self.model.available.add(self.model.leased.pop(lease_id))
        self.stale.append(lease)

    @precondition(lambda self: self.stale)
    @rule(data=st.data(), ack=st.booleans())
    def stale_lease_is_a_no_op(self, data: st.DataObject, ack: bool) -> None:
        lease = data.draw(st.sampled_from(self.stale), label="stale lease")
        self.run(self.q.ack(lease) if ack else self.q.nack(lease))

    # ------------------------------------------------------------ invariants

    @invariant()
    def figures_match_the_model(self) -> None:
        if self.queue is None:
            return
        m = self.model
        assert self.q.count == len(m.held)
        assert self.q.size == m.size
        assert self.q.bytes == sum(len(e.payload) for e in m.held.values())
        assert self.q.available == len(m.available)
        assert self.q.leased == len(m.leased)

    @invariant()
    def capacity_is_never_exceeded(self) -> None:
        if self.queue is None:
            return
        assert self.q.size <= self.q.capacity or self.q.count == 1, "only a lone oversized entry may exceed"


class MemoryQueueMachine(QueueMachine):
    def open_queue(self, capacity: int, sizer: Sizer) -> MemoryQueue:
        return MemoryQueue(capacity, sizer)

    @rule()
    def drain(self) -> None:
        assert isinstance(self.queue, MemoryQueue)
        drained = self.queue.drain_nowait()
        assert [key_of(e) for e in drained] == sorted(self.model.held), "drain lost, duplicated or reordered"
        assert drained == [self.model.held[k] for k in sorted(self.model.held)]
        self.stale.extend(self.leases.values())
        self.leases.clear()
        self.model.held.clear()
        self.model.available.clear()
        self.model.leased.clear()


class SqliteQueueMachine(QueueMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="queue-model-"))
        self.path = self.tmp / "exporter.sqlite"

    def open_queue(self, capacity: int, sizer: Sizer) -> SqliteQueue:
        return self.run(SqliteQueue(self.path, capacity, sizer, "FULL").open())

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @rule()
    def crash_and_reopen(self) -> None:
        """Close without acking what is leased, reopen the same file: every unacked entry is back."""
        self.run(self.q.close())
        self.queue = self.open_queue(self.model.capacity, self.model.sizer)
        assert isinstance(self.queue, SqliteQueue)
        assert self.queue.replayed == len(self.model.held), "an acknowledged entry was lost (or resurrected)"
        self.stale.extend(self.leases.values())
        self.leases.clear()
        self.model.available |= set(self.model.leased.values())
        self.model.leased.clear()


class FallbackQueueMachine(SqliteQueueMachine):
    """StorageFallbackQueue (issue 16): the same model holds while the disk fills up and frees again.

    A full disk: every transaction of the queue's worker thread that inserts fails with ENOSPC
    (reads, and deletes, which the queue keeps a reserve for, still work). Moving memory entries back to the disk,
    which the queue does on its own every second, is a rule here (the background mover is
    switched off), so every step is deterministic; the probe interval runs on a fake clock.
    """

    full = False

    def open_queue(self, capacity: int, sizer: Sizer) -> Any:
        disk = self.run(SqliteQueue(self.path, capacity, sizer, "FULL").open())
        run = disk._db.run

        async def run_unless_full(fn: Any) -> Any:
            # Inserts fail; deletes (acks) still commit, as the queue keeps a reserve for them.
            if self.full and getattr(fn, "func", None) is sqlite_queue._write and fn.keywords.get("rows"):
                raise OSError(errno.ENOSPC, "No space left on device (test)")
            return await run(fn)

        disk._db.run = run_unless_full  # type: ignore[method-assign]
        self.now = 0.0
        queue = StorageFallbackQueue(disk, memory_bytes=1 << 30, retry_interval=1.0, monotonic=lambda: self.now)
        queue._start_mover = lambda: None  # type: ignore[method-assign]
        return queue

    @property
    def fq(self) -> StorageFallbackQueue:
        assert isinstance(self.queue, StorageFallbackQueue)
        return self.queue

    @rule(full=st.booleans())
    def disk_fills_or_frees(self, full: bool) -> None:
        self.full = full

    @rule()
    def time_passes(self) -> None:
        self.now += 1.0

    @rule()
    def move_back(self) -> None:
        before = self.fq.in_memory
        moved = self.run(self.fq.move_back())
        assert moved is None or self.fq.in_memory == before - moved

    @rule()
    def crash_and_reopen(self) -> None:
        """Entries held in memory are not durable: a crash loses them, so only close cleanly here
        (close puts memory on the disk when it takes it, else reports it lost)."""
        self.run(self.disk_frees_then_close())
        self.queue = self.open_queue(self.model.capacity, self.model.sizer)
        assert self.fq.disk.replayed == len(self.model.held), "an acknowledged entry was lost (or resurrected)"
        self.stale.extend(self.leases.values())
        self.leases.clear()
        self.model.available |= set(self.model.leased.values())
        self.model.leased.clear()

    async def disk_frees_then_close(self) -> None:
        self.full = False
        await self.fq.close()

    @invariant()
    def memory_holds_entries_only_while_degraded(self) -> None:
        if self.queue is not None and self.fq.degraded is None:
            assert self.fq.in_memory == 0, "normal again while entries are still only in memory"


MEMORY_SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])
SQLITE_SETTINGS = settings(max_examples=80, stateful_step_count=40, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow])

TestMemoryQueueModel = MemoryQueueMachine.TestCase
TestMemoryQueueModel.settings = MEMORY_SETTINGS
TestSqliteQueueModel = SqliteQueueMachine.TestCase
TestSqliteQueueModel.settings = SQLITE_SETTINGS
TestFallbackQueueModel = FallbackQueueMachine.TestCase
TestFallbackQueueModel.settings = SQLITE_SETTINGS

