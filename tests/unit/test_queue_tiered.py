"""The spill tier: memory while healthy, disk while spilling, one order across both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.base import QueueFull, Sizer
from sidecar.queue.memory import MemoryQueue
from sidecar.queue.sqlite import SqliteQueue
from sidecar.queue.tiered import TieredQueue


def entry(n: int) -> QueueEntry:
    return QueueEntry(Signal.TRACES, f"{n:04d}".encode(), 1, (), 1000.0 + n)


async def tiered(path: Path, capacity: int = 100) -> tuple[TieredQueue, list[str]]:
    seen: list[str] = []
    disk = await SqliteQueue(path, capacity, Sizer.REQUESTS).open()
    queue = TieredQueue(MemoryQueue(capacity), disk, capacity, Sizer.REQUESTS,
                        on_spill=lambda e: seen.append(f"spill {e.payload.decode()}"),
                        on_drain=lambda e: seen.append(f"drain {e.payload.decode()}"))
    return queue, seen


async def take_all(queue: TieredQueue) -> list[str]:
    out = []
    while queue.available:
        lease = await queue.get()
        out.append(lease.entry.payload.decode())
        await queue.ack(lease)
    return out


async def test_memory_while_healthy_disk_while_spilling_drained_in_acceptance_order(tmp_path: Path) -> None:
    queue, seen = await tiered(tmp_path / "q.sqlite")
    await queue.put(entry(1))
    queue.spilling = True
    await queue.put(entry(2))
    await queue.put(entry(3))
    queue.spilling = False
    await queue.put(entry(4))
    assert (queue.memory.count, queue.disk.count, queue.count, queue.available) == (2, 2, 4, 4)
    assert await take_all(queue) == ["0001", "0002", "0003", "0004"]
    assert (queue.spilled, queue.drained) == (2, 2)
    assert seen == ["spill 0002", "spill 0003", "drain 0002", "drain 0003"]
    assert await queue.wait_empty(1.0)
    await queue.close()


async def test_a_nacked_entry_keeps_its_turn(tmp_path: Path) -> None:
    queue, _ = await tiered(tmp_path / "q.sqlite")
    queue.spilling = True
    await queue.put(entry(1))
    queue.spilling = False
    await queue.put(entry(2))
    lease = await queue.get()
    await queue.nack(lease)
    assert queue.drained == 0
    assert await take_all(queue) == ["0001", "0002"]
    await queue.close()


async def test_capacity_bounds_both_tiers_together(tmp_path: Path) -> None:
    queue, _ = await tiered(tmp_path / "q.sqlite", capacity=2)
    await queue.put(entry(1))
    queue.spilling = True
    await queue.put(entry(2))
    with pytest.raises(QueueFull):
        await queue.put(entry(3))
    queue.spilling = False
    with pytest.raises(QueueFull):
        await queue.put(entry(3))
    await queue.close()


async def test_a_crash_keeps_the_spilled_requests_and_they_come_first_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    queue, _ = await tiered(path)
    await queue.put(entry(1))  # memory: lost in a crash
    queue.spilling = True
    await queue.put(entry(2))
    await queue.disk.close()  # the process dies: nothing else runs
    reopened, seen = await tiered(path)
    await reopened.put(entry(5))
    assert await take_all(reopened) == ["0002", "0005"]
    assert seen == ["drain 0002"]
    await reopened.close()


async def test_persist_memory_at_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    queue, _ = await tiered(path)
    await queue.put(entry(1))
    await queue.put(entry(2))
    leased = await queue.get()  # in flight at shutdown: persisted too (a duplicate at worst)
    assert await queue.persist_memory() == 2
    assert queue.memory.count == 0 and queue.disk.count == 2 and queue.available == 2
    await queue.ack(leased)  # stale for the memory tier: a no-op
    await queue.close()
    reopened, _ = await tiered(path)
    assert await take_all(reopened) == ["0001", "0002"]
    await reopened.close()


async def test_a_turn_whose_entry_the_tier_lost_is_skipped(tmp_path: Path) -> None:
    queue, _ = await tiered(tmp_path / "q.sqlite")
    queue.spilling = True
    await queue.put(entry(1))
    lost = await queue.disk.get()  # the disk tier loses the row behind the queue's back
    await queue.disk.ack(lost)
    queue.spilling = False
    await queue.put(entry(2))
    assert queue.available == 1
    lease = await asyncio.wait_for(queue.get(), 1.0)  # not stuck waiting on the disk
    assert lease.entry == entry(2)
    await queue.close()
