"""FallbackDeadLetters: dead letters stay writable while their disk is full (issue 16).

A full disk is simulated with `PRAGMA max_page_count`, which makes SQLite answer SQLITE_FULL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.queue.base import QueueStorageError
from sidecar.queue.deadletter import SqliteDeadLetters, replay_dead_letters
from sidecar.queue.deadletter_fallback import MEMORY_FIRST_ID, FallbackDeadLetters, dead_letter_failure
from sidecar.queue.memory import MemoryQueue
from tests.fakes.clock import FakeClock
from tests.fakes.storage import Recorder, exists, num, numbered_entry

BAD_DATA = Classification(Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT,
                          Recovery.DROP, "INVALID_ARGUMENT", "default")


def entry(n: int, nbytes: int = 20_000) -> QueueEntry:
    return numbered_entry(n, nbytes, signal=Signal.LOGS, items=4, accepted_at=100.0)


async def set_max_pages(store: SqliteDeadLetters, pages: int | None) -> None:
    def cap(conn: sqlite3.Connection) -> None:
        limit = conn.execute("PRAGMA page_count").fetchone()[0] if pages is None else pages
        conn.execute(f"PRAGMA max_page_count={limit}").fetchall()
    await store._db.run(cap)


async def opened(tmp_path: Path, rec: Recorder, clock: FakeClock) -> FallbackDeadLetters:
    disk = await SqliteDeadLetters(tmp_path / "dl.sqlite").open()
    return FallbackDeadLetters(disk, rec, clock.monotonic, retry_interval=1.0)


def test_failure_reasons() -> None:
    full = QueueStorageError("x")
    full.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert dead_letter_failure(QueueStorageError("x", corrupt=True)) == "corrupt"
    assert dead_letter_failure(QueueStorageError("x")) == "io_error"
    assert dead_letter_failure(OSError(28, "No space left on device")) == "disk_full"
    assert dead_letter_failure(ValueError("x")) is None


async def test_full_disk_keeps_dead_letters_in_memory_then_moves_them_back(tmp_path: Path) -> None:
    rec, clock = Recorder(), FakeClock()
    store = await opened(tmp_path, rec, clock)
    await store.add(entry(0), BAD_DATA, "bad")
    await set_max_pages(store.disk, None)  # full from now on
    await store.add(entry(1), BAD_DATA, "bad")
    await store.add(entry(2), BAD_DATA, "bad")  # within the retry interval: straight to memory
    assert store.degraded == "disk_full"
    assert rec.events == [("error", "disk_full"), ("degraded", "disk_full")]
    assert (store.disk.count, store.memory.count, store.count) == (1, 2, 3)

    listed = await store.list()
    assert [num(dl.entry) for dl in listed] == [0, 1, 2]
    assert [dl.id >= MEMORY_FIRST_ID for dl in listed] == [False, True, True]
    assert [num(dl.entry) for dl in await store.get([listed[2].id])] == [2]
    assert [num(dl.entry) for dl in await store.list(limit=1, offset=1)] == [1]

    await set_max_pages(store.disk, 1073741823)
    clock.advance(1.0)
    await store.add(entry(3), BAD_DATA, "bad")  # the probe succeeds: memory moves to the disk
    assert store.degraded is None and rec.events[-1] == ("restored",)
    assert (store.disk.count, store.memory.count) == (4, 0)
    assert sorted(num(dl.entry) for dl in await store.list()) == [0, 1, 2, 3]
    await store.close()


async def test_replay_and_remove_reach_memory_dead_letters(tmp_path: Path) -> None:
    rec, clock = Recorder(), FakeClock()
    store = await opened(tmp_path, rec, clock)
    await store.add(entry(0), BAD_DATA, "bad")
    await set_max_pages(store.disk, None)
    for n in (1, 2):
        await store.add(entry(n), BAD_DATA, "bad")
    queue = MemoryQueue(100)
    result = await replay_dead_letters(store, queue)
    assert (result.replayed, result.remaining) == (3, 0)
    assert [num(queue.get_nowait().entry) for _ in range(3)] == [0, 1, 2]
    assert store.count == 0
    await store.add(entry(5), BAD_DATA, "bad")
    (dl,) = await store.list()
    assert await store.remove([dl.id]) == 1
    await store.close()


async def test_close_reports_what_the_disk_still_refuses(tmp_path: Path) -> None:
    rec, clock = Recorder(), FakeClock()
    store = await opened(tmp_path, rec, clock)
    await set_max_pages(store.disk, None)
    await store.add(entry(1), BAD_DATA, "bad")
    await store.add(entry(2), BAD_DATA, "bad")
    await store.close()
    assert rec.lost_items == {"shutdown": 8}


async def test_a_dead_letter_file_damaged_while_running_is_quarantined(tmp_path: Path) -> None:
    rec, clock = Recorder(), FakeClock()
    disk = await SqliteDeadLetters(tmp_path / "dl.sqlite").open()
    store = FallbackDeadLetters(disk, rec, clock.monotonic, retry_interval=0.01)
    for n in range(3):
        await store.add(entry(n), BAD_DATA, "bad")
    await disk._db.run(lambda conn: conn.execute("UPDATE dead_letters SET category = 'bogus' WHERE id = 2"))
    run = disk._db.run

    async def malformed_on_write(fn: Any) -> Any:
        if getattr(fn, "__name__", "") == "write_and_keep_wal_small":
            raise sqlite3.DatabaseError("database disk image is malformed")
        return await run(fn)

    disk._db.run = malformed_on_write  # type: ignore[method-assign]
    await store.add(entry(3), BAD_DATA, "bad")
    assert ("degraded", "corrupt") in rec.events
    assert rec.lost_items == {"corrupt": 4}  # entry 1: its row no longer decodes
    assert len(store.quarantined) == 1 and exists(store.quarantined[0])
    assert store.disk is not disk and exists(tmp_path / "dl.sqlite")
    for _ in range(200):
        if store.degraded is None:
            break
        await asyncio.sleep(0.01)
    assert store.degraded is None and store.memory.count == 0
    assert sorted(num(dl.entry) for dl in await store.list()) == [0, 2, 3]
    await store.close()
