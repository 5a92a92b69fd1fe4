from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.queue.base import QueueStorageError
from sidecar.queue.deadletter import (
    MAX_MESSAGE_CHARS,
    DeadLetterStore,
    MemoryDeadLetters,
    SqliteDeadLetters,
    replay_dead_letters,
)
from sidecar.queue.memory import MemoryQueue

BAD_DATA = Classification(Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT,
                          Recovery.DROP, "invalid_argument", "grpc_status")
FATAL = Classification(Category.CONFIGURATION, Severity.CRITICAL, Recoverability.FATAL,
                       Recovery.VALIDATE_CONFIG, "unauthenticated")


def entry(n: int, items: int = 2, nbytes: int = 16) -> QueueEntry:
    signal = (Signal.TRACES, Signal.METRICS, Signal.LOGS)[n % 3]
    return QueueEntry(signal, f"{n:08d}".encode().ljust(nbytes, b"."), items, (("tenant", f"t{n}"),),
                      2000.25 + n)


def num(e: QueueEntry) -> int:
    return int(e.payload[:8])


Opener = Callable[..., Awaitable[DeadLetterStore]]


@pytest.fixture(params=["memory", "sqlite"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[DeadLetterStore] = []

    async def opener(max_entries: int = 10_000, max_bytes: int | None = None) -> DeadLetterStore:
        store: DeadLetterStore
        if request.param == "memory":
            store = MemoryDeadLetters(max_entries, max_bytes)
        else:
            store = await SqliteDeadLetters(tmp_path / "x.deadletter.sqlite", max_entries, max_bytes).open()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


async def test_add_and_list_keep_entry_class_and_time(open_store: Opener) -> None:
    store = await open_store()
    assert await store.add(entry(1), BAD_DATA, "rejected: bad span id", dead_at=5000.0) == []
    await store.add(entry(2), FATAL, "401")
    assert store.count == 2 and store.bytes == 32
    first, second = await store.list()
    assert first.entry == entry(1)
    assert (first.category, first.severity, first.recoverability, first.recovery) == (
        Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT, Recovery.DROP)
    assert (first.error_type, first.message, first.dead_at) == ("invalid_argument", "rejected: bad span id", 5000.0)
    assert first.classification == BAD_DATA
    assert second.classification == FATAL and second.dead_at > 1e9
    assert first.id < second.id


async def test_list_pages_oldest_first(open_store: Opener) -> None:
    store = await open_store()
    for n in range(10):
        await store.add(entry(n), BAD_DATA, f"m{n}")
    assert [num(d.entry) for d in await store.list(limit=3)] == [0, 1, 2]
    assert [num(d.entry) for d in await store.list(limit=3, offset=8)] == [8, 9]
    assert await store.list(limit=3, offset=10) == []
    assert await store.list(limit=0) == []


async def test_bounded_by_entries_oldest_evicted_and_counted(open_store: Opener) -> None:
    store = await open_store(max_entries=3)
    evicted_all = []
    for n in range(5):
        evicted_all += await store.add(entry(n, items=n + 1), BAD_DATA, "x")
    assert store.count == 3
    assert [num(d.entry) for d in await store.list()] == [2, 3, 4]
    assert [(e.signal, e.items) for e in evicted_all] == [(Signal.TRACES, 1), (Signal.METRICS, 2)]
    assert store.evicted == 2 and store.evicted_items == 3


async def test_bounded_by_bytes_keeps_at_least_the_newest(open_store: Opener) -> None:
    store = await open_store(max_entries=100, max_bytes=100)
    for n in range(4):
        await store.add(entry(n, nbytes=40), BAD_DATA, "x")
    assert [num(d.entry) for d in await store.list()] == [2, 3]
    assert store.bytes == 80
    evicted = await store.add(entry(9, nbytes=500), BAD_DATA, "huge")
    assert len(evicted) == 2  # everything older goes; the newest stays even alone over the bound
    assert [num(d.entry) for d in await store.list()] == [9]
    assert store.evicted == 4


async def test_take_removes_and_returns_for_replay(open_store: Opener) -> None:
    store = await open_store()
    for n in range(6):
        await store.add(entry(n), BAD_DATA, "x")
    ids = [d.id for d in await store.list()]
    taken = await store.take([ids[4], ids[1], 123456])  # unknown ids are ignored
    assert [num(d.entry) for d in taken] == [1, 4]
    assert store.count == 4
    assert [num(d.entry) for d in await store.take(limit=2)] == [0, 2]
    assert [num(d.entry) for d in await store.take()] == [3, 5]
    assert store.count == 0 and store.bytes == 0
    assert await store.take() == []


async def test_get_and_remove(open_store: Opener) -> None:
    store = await open_store()
    for n in range(4):
        await store.add(entry(n), BAD_DATA, "x")
    ids = [d.id for d in await store.list()]
    assert [num(d.entry) for d in await store.get([ids[3], ids[0], 999])] == [0, 3]
    assert store.count == 4
    assert await store.remove([ids[0], ids[0], 999]) == 1
    assert [num(d.entry) for d in await store.list()] == [1, 2, 3]
    assert store.bytes == 48


async def test_replay_into_the_queue_stops_when_full(open_store: Opener) -> None:
    store = await open_store()
    for n in range(5):
        await store.add(entry(n, items=3), BAD_DATA, "x")
    queue = MemoryQueue(3)
    result = await replay_dead_letters(store, queue, batch=2)
    assert (result.replayed, result.items, result.remaining) == (3, 9, 2)
    assert [num((await queue.get()).entry) for _ in range(3)] == [0, 1, 2]
    assert [num(d.entry) for d in await store.list()] == [3, 4]


async def test_replay_selected_ids(open_store: Opener) -> None:
    store = await open_store()
    for n in range(5):
        await store.add(entry(n), BAD_DATA, "x")
    ids = [d.id for d in await store.list()]
    queue = MemoryQueue(100)
    result = await replay_dead_letters(store, queue, [ids[4], ids[2], 12345], batch=1)
    assert (result.replayed, result.remaining) == (2, 0)
    assert [num(e) for e in queue.drain_nowait()] == [2, 4]
    assert [num(d.entry) for d in await store.list()] == [0, 1, 3]


async def test_long_messages_are_clipped(open_store: Opener) -> None:
    store = await open_store()
    await store.add(entry(0), BAD_DATA, "y" * (MAX_MESSAGE_CHARS * 3))
    (dl,) = await store.list()
    assert len(dl.message) == MAX_MESSAGE_CHARS


async def test_sqlite_dead_letters_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "e.deadletter.sqlite"
    store = await SqliteDeadLetters(path, max_entries=3).open()
    for n in range(4):
        await store.add(entry(n), BAD_DATA, f"m{n}")
    await store.close()
    store = await SqliteDeadLetters(path, max_entries=3).open()
    assert store.count == 3 and store.bytes == 48
    assert [num(d.entry) for d in await store.list()] == [1, 2, 3]
    await store.add(entry(7), FATAL, "again")  # the bound still holds after reopen
    assert [num(d.entry) for d in await store.list()] == [2, 3, 7]
    await store.close()


async def test_sqlite_dead_letters_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "e.deadletter.sqlite"
    path.write_bytes(os.urandom(10_000))
    with pytest.raises(QueueStorageError, match="--recover") as info:
        await SqliteDeadLetters(path).open()
    assert info.value.corrupt


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        MemoryDeadLetters(0)
    with pytest.raises(ValueError):
        MemoryDeadLetters(10, 0)


async def test_bounded_by_age_on_add_and_on_expire(tmp_path: Path) -> None:
    for store in (MemoryDeadLetters(100, None, max_age=60.0),
                  await SqliteDeadLetters(tmp_path / "age.deadletter.sqlite", 100, None, max_age=60.0).open()):
        for n in range(3):
            assert await store.add(entry(n), BAD_DATA, "x", dead_at=1000.0 + 10 * n) == []
        evicted = await store.add(entry(3), BAD_DATA, "x", dead_at=1065.0)  # 0 (at 1000) is now 65 s old
        assert [(e.expired, e.reason) for e in evicted] == [(True, "dead_letter_expired")]
        assert await store.expire(1070.0) == []  # 1 (at 1010) is exactly 60 s old: kept
        expired = await store.expire(1100.0)
        assert [e.items for e in expired] == [2, 2] and all(e.expired for e in expired)
        assert [num(d.entry) for d in await store.list()] == [3]
        assert store.evicted == 3 and store.evicted_items == 6 and store.bytes == 16
        assert len(await store.expire(2000.0)) == 1 and store.count == 0  # expire keeps nothing back
        await store.close()


async def test_count_bound_evictions_are_not_expiries(open_store: Opener) -> None:
    store = await open_store(max_entries=1)
    await store.add(entry(0), BAD_DATA, "x")
    (evicted,) = await store.add(entry(1), BAD_DATA, "x")
    assert not evicted.expired and evicted.reason == "dead_letter_evicted"


async def test_without_max_age_nothing_expires(open_store: Opener) -> None:
    store = await open_store()
    await store.add(entry(0), BAD_DATA, "x", dead_at=0.0)
    assert await store.expire(1e12) == [] and store.count == 1


async def test_sqlite_age_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "reopen.deadletter.sqlite"
    store = await SqliteDeadLetters(path, max_age=60.0).open()
    await store.add(entry(0), BAD_DATA, "x", dead_at=1000.0)
    await store.close()
    store = await SqliteDeadLetters(path, max_age=60.0).open()
    assert [e.expired for e in await store.expire(1061.0)] == [True] and store.count == 0
    await store.close()


def test_max_age_is_validated() -> None:
    with pytest.raises(ValueError):
        MemoryDeadLetters(10, None, max_age=0.0)
