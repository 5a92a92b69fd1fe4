"""Partial-success dead letters (issue 16): the upstream accepted a request but rejected some of its items.

The stores keep the whole request with `rejected_items`; the dead letter stands for those items only
(eviction and expiry count them, never the accepted ones); an older dead-letter file gains the column
when opened; replay skips partial successes unless asked to include them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.queue.base import QueueStorageError
from sidecar.queue.deadletter import (
    DEAD_LETTER_SCHEMA_VERSION,
    DeadLetterStore,
    MemoryDeadLetters,
    SqliteDeadLetters,
    replay_dead_letters,
)
from sidecar.queue.deadletter_fallback import MEMORY_FIRST_ID, FallbackDeadLetters
from sidecar.queue.memory import MemoryQueue
from tests.fakes.clock import FakeClock
from tests.fakes.storage import OLD_DEAD_LETTER_SCHEMA, Recorder, num, numbered_entry, write_old_dead_letter_file

PARTIAL = Classification(Category.PROCESSING, Severity.MEDIUM, Recoverability.PERMANENT, Recovery.DROP,
                         "partial_success", "default:partial_success")
BAD_DATA = Classification(Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT, Recovery.DROP,
                          "INVALID_ARGUMENT", "default")


def entry(n: int, items: int = 10, nbytes: int = 32) -> QueueEntry:
    return numbered_entry(n, nbytes, signal=Signal.TRACES, items=items, metadata=(("tenant", "a"),),
                          accepted_at=1000.0)


Opener = Callable[..., Awaitable[DeadLetterStore]]


@pytest.fixture(params=["memory", "sqlite", "fallback"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[DeadLetterStore] = []

    async def opener(max_entries: int = 10_000, max_age: float | None = None) -> DeadLetterStore:
        store: DeadLetterStore
        if request.param == "memory":
            store = MemoryDeadLetters(max_entries, None, max_age)
        else:
            disk = await SqliteDeadLetters(tmp_path / "p.deadletter.sqlite", max_entries, None,
                                           max_age=max_age).open()
            store = disk if request.param == "sqlite" else FallbackDeadLetters(disk, Recorder(),
                                                                              FakeClock().monotonic)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


# ---------------------------------------------------------------- the field


async def test_rejected_items_are_kept_with_the_whole_payload(open_store: Opener) -> None:
    store = await open_store()
    await store.add(entry(1), PARTIAL, "3 spans dropped: bad attribute", dead_at=5000.0, rejected_items=3)
    await store.add(entry(2), BAD_DATA, "bad")
    partial, whole = await store.list()
    assert partial.entry == entry(1)  # every item kept, accepted ones too, for the operator to inspect
    assert (partial.rejected_items, partial.partial, partial.items) == (3, True, 3)
    assert (partial.message, partial.error_type, partial.dead_at) == (
        "3 spans dropped: bad attribute", "partial_success", 5000.0)
    assert (whole.rejected_items, whole.partial, whole.items) == (0, False, 10)
    assert [dl.rejected_items for dl in await store.get([partial.id])] == [3]
    assert [dl.rejected_items for dl in await store.take([partial.id])] == [3]


async def test_rejected_items_must_be_within_the_entry(open_store: Opener) -> None:
    store = await open_store()
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="rejected_items"):
            await store.add(entry(1), PARTIAL, "x", rejected_items=bad)
    assert store.count == 0


# ---------------------------------------------------------------- eviction and expiry


async def test_eviction_counts_only_the_rejected_items(open_store: Opener) -> None:
    store = await open_store(max_entries=1)
    await store.add(entry(1, items=10), PARTIAL, "x", rejected_items=3)
    (evicted,) = await store.add(entry(2, items=10), BAD_DATA, "x")
    assert (evicted.items, evicted.reason) == (3, "dead_letter_evicted")
    (evicted,) = await store.add(entry(3, items=10), PARTIAL, "x", rejected_items=4)
    assert evicted.items == 10  # a whole request that failed: all its items
    assert store.evicted == 2 and store.evicted_items == 13


async def test_expiry_counts_only_the_rejected_items(open_store: Opener) -> None:
    store = await open_store(max_age=60.0)
    await store.add(entry(1, items=10), PARTIAL, "x", dead_at=1000.0, rejected_items=2)
    await store.add(entry(2, items=10), PARTIAL, "x", dead_at=1001.0, rejected_items=5)
    expired = await store.expire(2000.0)
    assert [(e.items, e.reason) for e in expired] == [(2, "dead_letter_expired"), (5, "dead_letter_expired")]
    assert store.evicted_items == 7


async def test_sqlite_reopen_keeps_rejected_items_and_what_they_stand_for(tmp_path: Path) -> None:
    path = tmp_path / "r.deadletter.sqlite"
    store = await SqliteDeadLetters(path, max_entries=1).open()
    await store.add(entry(1, items=10), PARTIAL, "x", rejected_items=6)
    await store.close()
    store = await SqliteDeadLetters(path, max_entries=1).open()
    # Losing the file would lose no further item: the 6 were counted as upstream_rejected already.
    assert store.known()[0][1:] == (Signal.TRACES, 0)
    (dl,) = await store.list()
    assert dl.rejected_items == 6
    (evicted,) = await store.add(entry(2), BAD_DATA, "x")
    assert evicted.items == 6 and store.evicted_items == 6 and evicted.partial and evicted.dropped_items == 0
    (evicted,) = await store.add(entry(3, items=4), BAD_DATA, "x")  # a whole failed request: all its items
    assert evicted.dropped_items == evicted.items == 10 and not evicted.partial
    await store.close()


async def test_fallback_memory_keeps_rejected_items_and_moves_them_to_the_disk(tmp_path: Path) -> None:
    clock = FakeClock()
    disk = await SqliteDeadLetters(tmp_path / "f.deadletter.sqlite").open()
    store = FallbackDeadLetters(disk, Recorder(), clock.monotonic, retry_interval=1.0)

    def cap(conn: sqlite3.Connection, pages: int) -> None:
        conn.execute(f"PRAGMA max_page_count={pages}").fetchall()

    page_count = await disk._db.run(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await disk._db.run(lambda conn: cap(conn, page_count))  # full from now on
    await store.add(entry(1, nbytes=20_000), PARTIAL, "x", rejected_items=4)
    assert store.degraded == "disk_full"
    (held,) = await store.list()
    assert held.id >= MEMORY_FIRST_ID and held.rejected_items == 4
    await disk._db.run(lambda conn: cap(conn, 1073741823))
    clock.advance(1.0)
    await store.add(entry(2), BAD_DATA, "x")  # the probe succeeds: memory moves to the disk
    assert store.degraded is None and store.memory.count == 0
    assert [(num(dl.entry), dl.rejected_items) for dl in await store.list()] == [(2, 0), (1, 4)]
    await store.close()


async def test_fallback_close_counts_a_partial_successs_copy_as_no_further_loss(tmp_path: Path) -> None:
    rec = Recorder()
    disk = await SqliteDeadLetters(tmp_path / "c.deadletter.sqlite").open()
    store = FallbackDeadLetters(disk, rec, FakeClock().monotonic)
    await disk._db.run(lambda conn: conn.execute(
        f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}").fetchall())
    await store.add(entry(1, items=10, nbytes=20_000), PARTIAL, "x", rejected_items=3)
    await store.add(entry(2, items=4, nbytes=20_000), BAD_DATA, "x")
    await store.close()
    # The 3 rejected items were counted as upstream_rejected when refused; the whole failed request's 4
    # items are lost now.
    assert rec.lost_items == {"shutdown": 4}


# ---------------------------------------------------------------- an older file


async def test_a_dead_letter_file_of_an_older_sidecar_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.deadletter.sqlite"
    write_old_dead_letter_file(path)
    store = await SqliteDeadLetters(path).open()
    (old,) = await store.list()
    assert (old.entry.payload, old.entry.items, old.message, old.rejected_items) == (b"hello", 7, "old one", 0)
    await store.add(entry(2), PARTIAL, "x", rejected_items=2)
    await store.close()

    conn = sqlite3.connect(path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert columns[-1] == "rejected_items" and version == DEAD_LETTER_SCHEMA_VERSION

    store = await SqliteDeadLetters(path).open()  # migrated once; opens as a current file
    assert [(dl.entry.items, dl.rejected_items) for dl in await store.list()] == [(7, 0), (10, 2)]
    await store.close()


async def test_a_dead_letter_file_of_a_newer_sidecar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.deadletter.sqlite"
    store = await SqliteDeadLetters(path).open()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={DEAD_LETTER_SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(QueueStorageError, match="newer sidecar"):
        await SqliteDeadLetters(path).open()


async def test_a_table_missing_other_columns_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.deadletter.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(OLD_DEAD_LETTER_SCHEMA.replace("    dead_at        REAL    NOT NULL\n", "").replace(
        "message        TEXT    NOT NULL,", "message        TEXT    NOT NULL"))
    conn.close()
    with pytest.raises(QueueStorageError, match="not a sidecar database") as info:
        await SqliteDeadLetters(path).open()
    assert info.value.corrupt


# ---------------------------------------------------------------- replay


async def fill(store: DeadLetterStore) -> list[int]:
    """Whole, partial, whole, partial, whole: returns their ids."""
    for n in range(5):
        if n % 2:
            await store.add(entry(n), PARTIAL, "x", rejected_items=n)
        else:
            await store.add(entry(n), BAD_DATA, "x")
    return [dl.id for dl in await store.list()]


async def test_replay_skips_partial_successes_by_default(open_store: Opener) -> None:
    store = await open_store()
    await fill(store)
    queue = MemoryQueue(100)
    result = await replay_dead_letters(store, queue, batch=2)
    assert (result.replayed, result.items, result.remaining) == (3, 30, 0)
    assert (result.skipped_partial, result.skipped_partial_items) == (2, 1 + 3)
    assert [num(e) for e in queue.drain_nowait()] == [0, 2, 4]
    assert [(num(dl.entry), dl.rejected_items) for dl in await store.list()] == [(1, 1), (3, 3)]


async def test_replay_includes_partial_successes_when_asked(open_store: Opener) -> None:
    store = await open_store()
    await fill(store)
    queue = MemoryQueue(100)
    result = await replay_dead_letters(store, queue, batch=2, include_partial=True)
    assert (result.replayed, result.items, result.remaining, result.skipped_partial) == (5, 50, 0, 0)
    assert [num(e) for e in queue.drain_nowait()] == [0, 1, 2, 3, 4]
    assert store.count == 0


async def test_replay_of_ids_skips_the_partial_ones_among_them(open_store: Opener) -> None:
    store = await open_store()
    ids = await fill(store)
    queue = MemoryQueue(100)
    result = await replay_dead_letters(store, queue, [ids[1], ids[2]], batch=1)
    assert (result.replayed, result.skipped_partial, result.skipped_partial_items) == (1, 1, 1)
    assert [num(e) for e in queue.drain_nowait()] == [2]
    result = await replay_dead_letters(store, queue, [ids[1]], include_partial=True)
    assert (result.replayed, result.skipped_partial) == (1, 0)
    assert [num(e) for e in queue.drain_nowait()] == [1]


async def test_replay_into_a_full_queue_counts_remaining_apart_from_skipped(open_store: Opener) -> None:
    store = await open_store()
    await fill(store)
    queue = MemoryQueue(1)
    result = await replay_dead_letters(store, queue, batch=2)
    assert (result.replayed, result.remaining, result.skipped_partial) == (1, 2, 2)
    assert [num(dl.entry) for dl in await store.list()] == [1, 2, 3, 4]
