from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.base import QueueClosed, QueueFull, QueueStorageError, Sizer
from sidecar.queue.sqlite import SqliteQueue, page_size_for, recover_database


def entry(n: int, items: int = 1, nbytes: int = 10, signal: Signal = Signal.TRACES) -> QueueEntry:
    payload = f"{n:08d}".encode().ljust(nbytes, b".")
    return QueueEntry(signal, payload, items, (("x-tenant", f"t{n}"), ("authorization", "Bearer é")), 1000.5 + n)


def num(e: QueueEntry) -> int:
    return int(e.payload[:8])


async def opened(path: Path, capacity: int = 100, sizer: Sizer = Sizer.REQUESTS,
                 synchronous: str = "FULL") -> SqliteQueue:
    assert synchronous in ("FULL", "NORMAL")
    return await SqliteQueue(path, capacity, sizer, "FULL" if synchronous == "FULL" else "NORMAL").open()


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, signal, payload, items, metadata, accepted_at, nbytes FROM queue "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


def read(path: str) -> bytes:
    return Path(path).read_bytes()


# ---------------------------------------------------------------- sizers and capacity


async def test_requests_sizer(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", 2, Sizer.REQUESTS)
    await q.put(entry(0, items=9))
    await q.put(entry(1, items=9))
    with pytest.raises(QueueFull):
        await q.put(entry(2))
    assert (q.size, q.count, q.bytes) == (2, 2, 20)
    await q.close()


async def test_items_sizer(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", 10, Sizer.ITEMS)
    await q.put(entry(0, items=7))
    with pytest.raises(QueueFull):
        await q.put(entry(1, items=4))
    await q.put(entry(2, items=3))
    assert q.size == 10
    await q.close()
    q = await opened(tmp_path / "q.sqlite", 10, Sizer.ITEMS)
    assert (q.size, q.count, q.replayed) == (10, 2, 2)  # the index is rebuilt in the sizer's unit
    await q.close()


async def test_bytes_sizer_and_oversized_entry(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", 50, Sizer.BYTES)
    await q.put(entry(0, nbytes=80))  # oversized into an empty queue: accepted
    with pytest.raises(QueueFull):
        await q.put(entry(1, nbytes=8))
    lease = await q.get()
    await q.ack(lease)
    await q.put(entry(2, nbytes=30))
    with pytest.raises(QueueFull):
        await q.put(entry(3, nbytes=21))
    assert q.size == q.bytes == 30
    await q.close()


async def test_reopen_with_a_smaller_capacity_keeps_every_row(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", 10)
    for n in range(5):
        await q.put(entry(n))
    await q.close()
    q = await opened(tmp_path / "q.sqlite", 2)
    assert q.count == 5
    with pytest.raises(QueueFull):
        await q.put(entry(9))
    assert [num((await q.get()).entry) for _ in range(5)] == [0, 1, 2, 3, 4]
    await q.close()


# ---------------------------------------------------------------- durability and replay


async def test_put_is_committed_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path)
    await q.put(entry(1, items=3, signal=Signal.LOGS))
    # Another connection cannot read while we hold the exclusive lock; close first, then read raw.
    await q.close()
    rows = raw_rows(path)
    assert len(rows) == 1
    _, signal, payload, items, metadata, accepted_at, nbytes = rows[0]
    assert (signal, payload, items, accepted_at, nbytes) == ("logs", entry(1).payload, 3, 1001.5, 10)
    assert isinstance(metadata, str)
    assert orjson.loads(metadata) == [["x-tenant", "t1"], ["authorization", "Bearer é"]]


async def test_new_database_settings(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path)
    await q.close()
    conn = sqlite3.connect(path)
    try:
        settings = [conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("journal_mode", "page_size", "auto_vacuum", "user_version")]
    finally:
        conn.close()
    # 16 KiB pages, or 4 KiB on a small volume (where tmp_path may live on a CI machine).
    assert settings == ["wal", page_size_for(tmp_path), 2, 1]
    assert page_size_for(tmp_path) in (16384, 4096)


def test_small_volumes_get_small_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs

    def volume_of(total_bytes: int) -> Any:
        def statvfs(path: Any) -> Any:
            st = real(path)
            return type("StatVfs", (), {"f_blocks": total_bytes // st.f_frsize, "f_frsize": st.f_frsize,
                                        "f_bavail": st.f_bavail})()
        return statvfs

    monkeypatch.setattr(os, "statvfs", volume_of(1024 * 1024))
    assert page_size_for(tmp_path) == 4096
    monkeypatch.setattr(os, "statvfs", volume_of(10 * 1024**3))
    assert page_size_for(tmp_path) == 16384


async def test_replay_after_reopen_in_order_with_leased_rows_back(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path)
    for n in range(6):
        await q.put(entry(n))
    acked = await q.get()  # 0
    leased = await q.get()  # 1
    nacked = await q.get()  # 2
    await q.ack(acked)
    await q.nack(nacked)
    assert num(leased.entry) == 1
    await q.close()  # 1 is still leased: it must come back

    q = await opened(path)
    assert q.replayed == 5 and q.available == 5
    got = [(await q.get()).entry for _ in range(5)]
    assert [num(e) for e in got] == [1, 2, 3, 4, 5]
    assert got[0] == entry(1)  # exactly what was acknowledged, metadata and all
    await q.close()


async def test_nack_returns_to_original_position(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite")
    for n in range(3):
        await q.put(entry(n))
    a = await q.get()
    b = await q.get()
    await q.put(entry(3))
    await q.nack(b)
    await q.nack(a)
    assert [num((await q.get()).entry) for _ in range(4)] == [0, 1, 2, 3]
    await q.close()


async def test_ack_deletes_the_row(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path)
    await q.put(entry(0))
    await q.put(entry(1))
    await q.ack(await q.get())
    await q.close()
    assert [r[2] for r in raw_rows(path)] == [entry(1).payload]


async def test_stale_lease_is_a_no_op_even_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path)
    await q.put(entry(0))
    old = await q.get()
    await q.close()
    q = await opened(path)
    await q.ack(old)  # a lease from the previous instance must not delete anything
    assert q.count == 1
    lease = await q.get()
    assert lease.lease_id != old.lease_id
    await q.ack(lease)
    assert q.count == 0
    await q.close()


# ---------------------------------------------------------------- group commit and concurrency


async def test_group_commit_many_concurrent_puts_all_durable(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path, capacity=1000)
    await asyncio.gather(*(q.put(entry(n, nbytes=2000)) for n in range(200)))
    assert q.count == 200
    assert q.commits < 50, f"{q.commits} transactions for 200 concurrent puts: not grouped"
    await q.close()
    assert sorted(int(r[2][:8]) for r in raw_rows(path)) == list(range(200))


async def test_concurrent_consumers_each_row_exactly_once(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", capacity=1000)
    acked: list[int] = []
    nacked: set[int] = set()

    async def consumer() -> None:
        while True:
            lease = await q.get()
            n = num(lease.entry)
            if n % 4 == 0 and n not in nacked:
                nacked.add(n)
                await q.nack(lease)
            else:
                acked.append(n)
                await q.ack(lease)

    consumers = [asyncio.create_task(consumer()) for _ in range(8)]

    async def producer(start: int) -> None:
        for n in range(start, start + 50):
            await q.put(entry(n))

    await asyncio.gather(*(producer(k * 50) for k in range(4)))
    assert await q.wait_empty(timeout=10)
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(acked) == list(range(200))
    await q.close()


async def test_cancelled_get_gives_the_row_back(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite")
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    await q.put(entry(5))
    getter.cancel()
    await asyncio.gather(getter, return_exceptions=True)
    lease = await asyncio.wait_for(q.get(), 2)
    assert num(lease.entry) == 5
    assert q.leased == 1 and q.available == 0
    await q.close()


async def test_close_finishes_pending_puts_and_releases_getters(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path, capacity=1000)
    getter_q = await opened(tmp_path / "other.sqlite")
    getter = asyncio.create_task(getter_q.get())
    puts = [asyncio.create_task(q.put(entry(n))) for n in range(50)]
    await asyncio.sleep(0)
    await q.close()
    await asyncio.gather(*puts)
    assert len(raw_rows(path)) == 50
    with pytest.raises(QueueClosed):
        await q.put(entry(99))
    await getter_q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(getter, 2)


async def test_wait_empty(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite")
    assert await q.wait_empty(0)
    await q.put(entry(0))
    lease = await q.get()
    assert not await q.wait_empty(0.01)
    waiter = asyncio.create_task(q.wait_empty(5))
    await q.ack(lease)
    assert await waiter
    await q.close()


async def test_disk_full_is_queue_full_and_recoverable(tmp_path: Path) -> None:
    q = await opened(tmp_path / "q.sqlite", capacity=10_000)
    await q._db.run(lambda conn: conn.execute("PRAGMA max_page_count=8").fetchall())  # simulate a full disk
    with pytest.raises(QueueFull, match="disk full"):
        await q.put(entry(0, nbytes=200_000))
    assert (q.count, q.size, q.bytes) == (0, 0, 0)  # the reservation was released
    await q._db.run(lambda conn: conn.execute("PRAGMA max_page_count=1073741823").fetchall())
    await q.put(entry(1, nbytes=200_000))
    assert q.count == 1
    await q.close()


async def test_not_opened_and_closed(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.sqlite", 10)
    with pytest.raises(RuntimeError, match="open"):
        await q.put(entry(0))
    await q.open()
    await q.close()
    await q.close()  # idempotent
    with pytest.raises(QueueClosed):
        await q.put(entry(0))


async def test_async_context_manager(tmp_path: Path) -> None:
    async with SqliteQueue(tmp_path / "q.sqlite", 10) as q:
        await q.put(entry(0))
    async with SqliteQueue(tmp_path / "q.sqlite", 10) as q:
        assert q.replayed == 1


async def test_normal_synchronous_is_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path, synchronous="NORMAL")
    await asyncio.gather(*(q.put(entry(n)) for n in range(20)))
    await q.close()
    q = await opened(path, synchronous="NORMAL")
    assert q.replayed == 20
    await q.close()


def test_bad_synchronous_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteQueue(tmp_path / "q.sqlite", 10, Sizer.REQUESTS, "OFF")  # type: ignore[arg-type]


# ---------------------------------------------------------------- corruption, locking, recovery


async def test_garbage_file_raises_and_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "otlp_grpc.sqlite"
    garbage = os.urandom(64 * 1024)
    path.write_bytes(garbage)
    with pytest.raises(QueueStorageError) as info:
        await opened(path)
    assert info.value.corrupt
    assert str(path) in str(info.value) and "--recover" in str(info.value)
    assert path.read_bytes() == garbage  # never a silent reset
    assert names(tmp_path) == ["otlp_grpc.sqlite"]


async def _filled_database(path: Path, rows: int = 40, nbytes: int = 50_000) -> None:
    q = await opened(path, capacity=10_000)
    await asyncio.gather(*(q.put(entry(n, nbytes=nbytes)) for n in range(rows)))
    await q.close()


async def test_truncated_database_raises_then_recover_moves_it_aside(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    await _filled_database(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(QueueStorageError) as info:
        await opened(path)
    assert info.value.corrupt and info.value.path == str(path)
    assert "--recover" in str(info.value)

    moved = recover_database(path, now=0)
    assert moved == tmp_path / "q.sqlite.corrupt-19700101T000000Z"
    assert moved.exists() and not path.exists()
    assert moved.stat().st_size == size // 2

    q = await opened(path)  # a fresh, empty queue
    assert q.count == 0
    await q.close()


async def test_recover_moves_wal_and_shm_too_and_avoids_collisions(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    for suffix in ("", "-wal", "-shm"):
        write(f"{path}{suffix}", b"junk" + suffix.encode())
    first = recover_database(path, now=0)
    assert read(f"{first}-wal") == b"junk-wal"
    assert read(f"{first}-shm") == b"junk-shm"
    path.write_bytes(b"again")
    second = recover_database(path, now=0)
    assert second != first and second.read_bytes() == b"again"
    with pytest.raises(FileNotFoundError):
        recover_database(path)


async def test_other_schema_is_reported_as_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY, blob BLOB)")
    conn.commit()
    conn.close()
    with pytest.raises(QueueStorageError, match="expected") as info:
        await opened(path)
    assert info.value.corrupt


async def test_newer_schema_version_is_refused_but_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(QueueStorageError, match="newer") as info:
        await opened(path)
    assert not info.value.corrupt


async def test_second_opener_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    q = await opened(path)
    with pytest.raises(QueueStorageError, match="locked") as info:
        await opened(path)
    assert not info.value.corrupt
    await q.put(entry(0))  # the first one is unaffected
    await q.close()


async def test_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(QueueStorageError) as info:
        await opened(tmp_path / "missing" / "q.sqlite")
    assert not info.value.corrupt


async def test_oldest_accepted_at_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"

    def entry(accepted_at: float) -> QueueEntry:
        return QueueEntry(Signal.LOGS, b"payload", 1, (), accepted_at)

    async with SqliteQueue(path, 10) as queue:
        assert queue.oldest_accepted_at is None
        await queue.put(entry(100.0))
        await queue.put(entry(40.0))
        await queue.put(entry(200.0))
        assert queue.oldest_accepted_at == 40.0
        first = await queue.get()  # 100.0
        await queue.ack(first)
        assert queue.oldest_accepted_at == 40.0
    async with SqliteQueue(path, 10) as reopened:  # replayed rows keep their acceptance times
        assert reopened.oldest_accepted_at == 40.0
        leases = [await reopened.get(), await reopened.get()]
        assert reopened.oldest_accepted_at == 40.0, "leased rows are still held"
        for lease in leases:
            await reopened.ack(lease)
        assert reopened.oldest_accepted_at is None
