from __future__ import annotations

import asyncio

import pytest

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.base import QueueClosed, QueueFull, Sizer
from sidecar.queue.memory import MemoryQueue


def entry(n: int, items: int = 1, nbytes: int = 10) -> QueueEntry:
    payload = f"{n:08d}".encode().ljust(nbytes, b".")
    return QueueEntry(Signal.TRACES, payload, items, (("k", str(n)),), 1000.0 + n)


def num(e: QueueEntry) -> int:
    return int(e.payload[:8])


async def test_requests_sizer_counts_entries() -> None:
    q = MemoryQueue(3, Sizer.REQUESTS)
    for n in range(3):
        await q.put(entry(n, items=50, nbytes=100))
    assert (q.size, q.count, q.bytes, q.available) == (3, 3, 300, 3)
    with pytest.raises(QueueFull):
        await q.put(entry(3))
    assert q.count == 3


async def test_items_sizer_counts_items() -> None:
    q = MemoryQueue(10, Sizer.ITEMS)
    await q.put(entry(0, items=4))
    await q.put(entry(1, items=6))
    assert q.size == 10
    with pytest.raises(QueueFull):
        await q.put(entry(2, items=1))
    lease = await q.get()
    await q.ack(lease)
    assert q.size == 6
    await q.put(entry(3, items=4))
    assert q.size == 10


async def test_bytes_sizer_counts_payload_bytes() -> None:
    q = MemoryQueue(100, Sizer.BYTES)
    await q.put(entry(0, nbytes=60))
    with pytest.raises(QueueFull):
        await q.put(entry(1, nbytes=41))
    await q.put(entry(2, nbytes=40))
    assert q.size == q.bytes == 100


@pytest.mark.parametrize("sizer", [Sizer.ITEMS, Sizer.BYTES])
async def test_oversized_entry_is_accepted_only_into_an_empty_queue(sizer: Sizer) -> None:
    q = MemoryQueue(10, sizer)
    big = entry(0, items=50, nbytes=50)
    await q.put(big)  # empty: accepted, or it could never be
    assert q.size == 50
    with pytest.raises(QueueFull):
        await q.put(entry(1, items=1, nbytes=8))
    lease = await q.get()
    # Still held while leased: nothing else gets in.
    with pytest.raises(QueueFull):
        await q.put(big)
    await q.ack(lease)
    await q.put(entry(2, items=1, nbytes=8))
    with pytest.raises(QueueFull):
        await q.put(big)


async def test_leased_entries_count_toward_capacity() -> None:
    q = MemoryQueue(2, Sizer.REQUESTS)
    await q.put(entry(0))
    await q.put(entry(1))
    await q.get()
    await q.get()
    assert q.available == 0 and q.count == 2 and q.leased == 2
    with pytest.raises(QueueFull):
        await q.put(entry(2))


async def test_fifo_and_nack_goes_back_before_newer_entries() -> None:
    q = MemoryQueue(10)
    for n in range(4):
        await q.put(entry(n))
    a = await q.get()
    b = await q.get()
    assert (num(a.entry), num(b.entry)) == (0, 1)
    await q.nack(b)
    await q.nack(a)  # nacked in the other order: still offered in original order
    assert [num((await q.get()).entry) for _ in range(4)] == [0, 1, 2, 3]


async def test_nacked_entry_is_offered_before_a_newer_put() -> None:
    q = MemoryQueue(10)
    await q.put(entry(0))
    lease = await q.get()
    await q.put(entry(1))
    await q.nack(lease)
    assert num((await q.get()).entry) == 0


async def test_stale_lease_ack_and_nack_are_no_ops() -> None:
    q = MemoryQueue(10)
    await q.put(entry(0))
    lease = await q.get()
    await q.ack(lease)
    await q.put(entry(1))
    await q.ack(lease)
    await q.nack(lease)
    assert q.count == 1 and q.available == 1


async def test_get_waits_for_a_put() -> None:
    q = MemoryQueue(10)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    await q.put(entry(7))
    lease = await asyncio.wait_for(getter, 1)
    assert num(lease.entry) == 7


async def test_cancelled_getter_does_not_swallow_an_entry() -> None:
    q = MemoryQueue(10)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    await q.put(entry(1))  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs: the wake-up passes to `second`
    lease = await asyncio.wait_for(second, 1)
    assert num(lease.entry) == 1
    assert first.cancelled()


async def test_many_concurrent_consumers_each_entry_exactly_once() -> None:
    q = MemoryQueue(1000)
    acked: list[int] = []
    nacked: set[int] = set()

    async def consumer() -> None:
        while True:
            lease = await q.get()
            await asyncio.sleep(0)
            n = num(lease.entry)
            if n % 5 == 0 and n not in nacked:  # every fifth fails once: it must come back
                nacked.add(n)
                await q.nack(lease)
            else:
                acked.append(n)
                await q.ack(lease)

    consumers = [asyncio.create_task(consumer()) for _ in range(8)]
    for n in range(300):
        await q.put(entry(n))
        if n % 7 == 0:
            await asyncio.sleep(0)
    assert await q.wait_empty(timeout=5)
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(acked) == list(range(300))
    assert len(nacked) == 60


async def test_wait_empty() -> None:
    q = MemoryQueue(10)
    assert await q.wait_empty(timeout=0)
    await q.put(entry(0))
    lease = await q.get()
    assert not await q.wait_empty(timeout=0.01)  # leased still counts
    waiter = asyncio.create_task(q.wait_empty(timeout=5))
    await asyncio.sleep(0.01)
    await q.ack(lease)
    assert await waiter


async def test_drain_nowait_returns_everything_not_acked_in_order() -> None:
    q = MemoryQueue(10)
    for n in range(5):
        await q.put(entry(n))
    acked = await q.get()
    leased = await q.get()
    await q.ack(acked)
    drained = q.drain_nowait()
    assert [num(e) for e in drained] == [1, 2, 3, 4]
    assert (q.count, q.size, q.bytes, q.available, q.leased) == (0, 0, 0, 0, 0)
    await q.ack(leased)  # stale after drain: ignored
    assert q.count == 0


async def test_close_releases_getters_and_refuses_puts() -> None:
    q = MemoryQueue(10)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    await q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(getter, 1)
    with pytest.raises(QueueClosed):
        await q.put(entry(0))


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryQueue(0)


# ------------------------------------------------------------------ the oldest entry's age


async def test_oldest_accepted_at_follows_what_is_held() -> None:
    queue = MemoryQueue(10)
    assert queue.oldest_accepted_at is None

    def entry(accepted_at: float) -> QueueEntry:
        return QueueEntry(Signal.TRACES, b"x", 1, (), accepted_at)

    await queue.put(entry(100.0))
    await queue.put(entry(200.0))
    await queue.put(entry(50.0))  # a requeued part keeps its (older) acceptance time
    assert queue.oldest_accepted_at == 50.0
    first = await queue.get()  # the 100.0 entry, leased: still held
    assert queue.oldest_accepted_at == 50.0
    await queue.ack(first)
    second = await queue.get()
    await queue.nack(second)  # back in the queue: still held
    assert queue.oldest_accepted_at == 50.0
    for _ in range(2):
        await queue.ack(await queue.get())
    assert queue.oldest_accepted_at is None
    await queue.put(entry(300.0))
    assert queue.drain_nowait() and queue.oldest_accepted_at is None
