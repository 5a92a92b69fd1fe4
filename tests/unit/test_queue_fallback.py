"""StorageFallbackQueue: a full or failing disk under the SQLite queue (issue 16).

A full disk is simulated with `PRAGMA max_page_count` on the queue's own connection: SQLite
then answers SQLITE_FULL exactly as on ENOSPC. The tmpfs version is in tests/integration/test_chaos.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sidecar.core.entry import QueueEntry
from sidecar.queue import sqlite as sqlite_queue
from sidecar.queue.base import Lease, QueueFull, QueueStorageError
from sidecar.queue.fallback import CORRUPT, DISK_FULL, IO_ERROR, StorageFallbackQueue, memory_bound, storage_failure
from sidecar.queue.sqlite import SqliteQueue
from tests.fakes.storage import Recorder, exists, num, numbered_entry


def entry(n: int, nbytes: int = 2000, items: int = 3) -> QueueEntry:
    return numbered_entry(n, nbytes, items=items, metadata=(("k", "v"),), accepted_at=1000.0)


async def opened(path: Path, capacity: int = 1000, memory_bytes: int = 1 << 20,
                 recorder: Recorder | None = None) -> StorageFallbackQueue:
    disk = await SqliteQueue(path, capacity).open()
    return StorageFallbackQueue(disk, memory_bytes=memory_bytes, listener=recorder, retry_interval=0.01)


async def fill_disk(q: StorageFallbackQueue) -> None:
    """Cap the file at its current size: the next write that needs a page fails with SQLITE_FULL."""
    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}").fetchall()
    await q.disk._db.run(cap)


async def free_disk(q: StorageFallbackQueue) -> None:
    await q.disk._db.run(lambda conn: conn.execute("PRAGMA max_page_count=1073741823").fetchall())


async def drain(q: StorageFallbackQueue) -> list[int]:
    out = []
    while q.count:  # not `available`: entries being moved back to the disk are briefly neither
        lease = await asyncio.wait_for(q.get(), 5)
        out.append(num(lease.entry))
        await q.ack(lease)
    return out


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_storage_failure_reasons() -> None:
    from sidecar.queue.base import StorageFull

    assert storage_failure(StorageFull("x")) == DISK_FULL
    assert storage_failure(QueueStorageError("x", corrupt=True)) == CORRUPT
    assert storage_failure(QueueStorageError("x")) == IO_ERROR
    assert storage_failure(QueueFull("x")) is None
    assert storage_failure(ValueError("x")) is None
    assert memory_bound(None) == 64 * 1024 * 1024
    assert memory_bound(100 * 1024 * 1024) == 50 * 1024 * 1024


async def test_disk_full_accepts_into_memory_in_order_then_returns_to_disk(tmp_path: Path) -> None:
    rec = Recorder()
    q = await opened(tmp_path / "q.sqlite", recorder=rec)
    for n in range(5):
        await q.put(entry(n))
    await fill_disk(q)
    for n in range(5, 40):
        await q.put(entry(n))  # acknowledged: held in memory
    assert q.degraded == DISK_FULL
    assert rec.events[:2] == [("error", DISK_FULL), ("degraded", DISK_FULL)]
    assert q.in_memory > 0 and q.count == 40
    assert q.disk.count + q.in_memory == 40

    await free_disk(q)
    await wait_until(lambda: q.in_memory == 0 and q.degraded is None)
    assert rec.events[-1] == ("restored",)
    assert q.disk.count == 40  # back on the disk, durable again
    await q.put(entry(40))
    assert q.disk.count == 41
    assert await drain(q) == list(range(41))  # acceptance order, nothing twice
    await q.close()


async def test_memory_bound_pushes_back_with_the_true_reason(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", memory_bytes=50_000)
    await q.put(entry(0, nbytes=20_000))
    await fill_disk(q)
    await q.put(entry(1, nbytes=20_000))  # larger than a page: never fits a capped file
    await q.put(entry(2, nbytes=20_000))
    assert q.in_memory == 2
    with pytest.raises(QueueFull) as info:
        await q.put(entry(3, nbytes=20_000))
    assert info.value.reason == DISK_FULL  # not queue_full: the queue is far from its capacity
    assert q.count == 3
    await q.close()


async def test_capacity_still_says_queue_full(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", capacity=2)
    await q.put(entry(0))
    await q.put(entry(1))
    with pytest.raises(QueueFull) as info:
        await q.put(entry(2))
    assert info.value.reason == "queue_full"
    await q.close()


async def test_leased_memory_entry_blocks_the_move_back_until_settled(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite")
    await fill_disk(q)
    for n in range(3):
        await q.put(entry(n, nbytes=20_000))
    lease = await q.get()
    assert num(lease.entry) == 0
    await free_disk(q)
    assert await q.move_back() is None  # entry 0 is in flight and older than 1, 2
    await q.nack(lease)
    await wait_until(lambda: q.in_memory == 0)
    assert await drain(q) == [0, 1, 2]
    await q.close()


async def test_acks_and_nacks_while_degraded_lose_nothing(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite")
    for n in range(10):
        await q.put(entry(n))
    await fill_disk(q)
    for n in range(10, 30):
        await q.put(entry(n, nbytes=20_000))
    assert q.in_memory == 20
    delivered: list[int] = []
    leases: list[Lease] = [await q.get() for _ in range(15)]
    for i, lease in enumerate(leases):
        if i % 3 == 0:
            await q.nack(lease)  # upstream refused: comes back
        else:
            delivered.append(num(lease.entry))
            await q.ack(lease)
    await free_disk(q)
    delivered += await drain(q)
    assert sorted(delivered) == list(range(30))
    await wait_until(lambda: q.count == 0)
    await q.close()


async def test_close_puts_memory_on_the_disk_when_it_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    rec = Recorder()
    q = await opened(path, recorder=rec)
    await fill_disk(q)
    for n in range(4):
        await q.put(entry(n, nbytes=20_000))
    await free_disk(q)
    q.retry_interval = 3600  # the mover would not run before close
    await q.close()
    assert rec.lost_items == {}
    again = await SqliteQueue(path, 100).open()
    assert again.count == 4
    await again.close()


async def test_close_with_the_disk_still_full_reports_memory_lost(tmp_path: Path) -> None:
    rec = Recorder()
    q = await opened(tmp_path / "q.sqlite", recorder=rec)
    await q.put(entry(0))
    await fill_disk(q)
    for n in range(1, 4):
        await q.put(entry(n, nbytes=20_000, items=5))
    await q.close()
    assert rec.lost_items == {"shutdown": 15}


async def test_corrupt_row_quarantines_the_file_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    rec = Recorder()
    q = await opened(path, recorder=rec)
    for n in range(6):
        await q.put(entry(n, items=2))
    # Damage one row the way a bad sector would: its metadata no longer decodes.
    await q.disk._db.run(lambda conn: conn.execute(
        "UPDATE queue SET metadata = 'not json' WHERE id = 3").fetchall())
    got = await drain(q)
    assert got == [0, 1, 3, 4, 5]  # row id 3 holds entry 2
    assert rec.lost_items == {CORRUPT: 2}
    assert ("degraded", CORRUPT) in rec.events
    assert len(q.quarantined) == 1 and exists(q.quarantined[0])
    assert exists(path)  # a fresh file took over
    await q.put(entry(9))
    assert q.disk.count == 1 and q.degraded is None
    await q.close()


def wal_size(path: Path) -> int:
    return path.stat().st_size


def cut(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


async def test_wal_cut_short_behind_sqlites_back_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    rec = Recorder()
    q = await opened(path, recorder=rec)
    for n in range(200):
        await q.put(entry(n, nbytes=20_000))
    wal = tmp_path / "q.sqlite-wal"
    cut(wal, wal_size(wal) // 2)
    await q.put(entry(200, nbytes=20_000))  # the next write notices
    assert len(q.quarantined) == 1
    assert ("degraded", CORRUPT) in rec.events
    got = await drain(q)
    lost = rec.lost_items.get(CORRUPT, 0)
    assert len(got) + lost // 3 == 201 and len(set(got)) == len(got)  # 3 items an entry
    assert got == sorted(got)  # carried-over rows first, then what came after, in order
    await q.close()


async def test_no_fresh_file_after_a_quarantine_means_memory_until_one_opens(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    rec = Recorder()
    disk = await SqliteQueue(path, 1000).open()
    attempts = {"n": 0}

    async def reopen() -> SqliteQueue:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise OSError("directory not writable (test)")
        return await SqliteQueue(path, 1000).open()

    q = StorageFallbackQueue(disk, listener=rec, reopen=reopen, retry_interval=0.01)
    for n in range(4):
        await q.put(entry(n))
    await q.disk._db.run(lambda conn: conn.execute("UPDATE queue SET metadata = 'x' WHERE id = 2").fetchall())
    first = await q.get()
    assert num(first.entry) == 0  # leased from the file before the damage was met
    second = await q.get()  # meets row 2 (entry 1): quarantine; no fresh file opens
    assert num(second.entry) == 2 and q.disk.closed
    assert rec.lost_items == {CORRUPT: 3}
    await q.put(entry(9))  # answered from memory, not an error
    assert q.degraded == CORRUPT and q.count == 3  # entries 2 (leased), 3, 9; the file's rows are gone
    await q.nack(first)  # a lease of the quarantined file: its entry comes back, in front
    await q.ack(second)
    await wait_until(lambda: not q.disk.closed and q.in_memory == 0 and q.degraded is None)
    assert attempts["n"] == 2  # the next probe opened a fresh file
    assert await drain(q) == [0, 3, 9]
    await q.close()


async def test_an_io_error_on_write_is_answered_from_memory_as_io_error(tmp_path: Path) -> None:
    rec = Recorder()
    q = await opened(tmp_path / "q.sqlite", recorder=rec)
    run = q.disk._db.run
    failing = {"on": True}

    async def eio_on_write(fn: object) -> object:
        if failing["on"] and getattr(fn, "func", None) is sqlite_queue._write:
            raise sqlite3.OperationalError("disk I/O error")
        return await run(fn)  # type: ignore[arg-type]

    q.disk._db.run = eio_on_write  # type: ignore[method-assign,assignment]
    await q.put(entry(0))
    await q.put(entry(1))
    assert q.degraded == IO_ERROR and q.in_memory == 2
    assert rec.events[:2] == [("error", IO_ERROR), ("degraded", IO_ERROR)]
    failing["on"] = False
    await wait_until(lambda: q.degraded is None and q.in_memory == 0)
    assert q.disk.count == 2 and await drain(q) == [0, 1]
    await q.close()


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


async def test_pages_overwritten_while_running_are_detected_and_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    rec = Recorder()
    q = await opened(path, recorder=rec)
    for n in range(60):
        await q.put(entry(n, nbytes=20_000))

    def to_main_file_and_small_cache(conn: sqlite3.Connection) -> int:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # the rows now live in the main file
        conn.execute("PRAGMA cache_size=4").fetchall()  # and are read from it, not from the page cache
        conn.execute("PRAGMA shrink_memory").fetchall()
        return int(conn.execute("PRAGMA page_size").fetchone()[0])

    page = await q.disk._db.run(to_main_file_and_small_cache)
    size = path.stat().st_size
    overwrite(path, (size // 2) // page * page, b"\xa5" * (4 * page))  # four pages of garbage mid-file
    got = await drain(q)
    lost = rec.lost_items.get(CORRUPT, 0)
    assert ("degraded", CORRUPT) in rec.events and len(q.quarantined) == 1
    assert lost > 0 and len(got) + lost // 3 == 60  # every entry delivered or counted lost (3 items each)
    assert len(set(got)) == len(got)
    await q.put(entry(99))
    assert q.count == 1
    await q.close()
