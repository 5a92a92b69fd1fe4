"""Dead letters (DESIGN.md §5): entries that failed permanently, kept with their class and time.

Two stores with one interface: `MemoryDeadLetters` (no storage configured) and
`SqliteDeadLetters` (its own database file next to the exporter's queue,
`<exporter>.deadletter.sqlite`, same WAL/exclusive/corruption rules as the queue; a separate
file so dead-letter writes never contend with the queue's group commits).

Bounded: at most `max_entries` (default 10000) and, when set, `max_bytes` of payload and
`max_age` seconds of age. Adding beyond the bound evicts the oldest dead letters; `add` returns
what it evicted (signal and item count, so the caller can count the items as dropped with reason
`dead_letter_evicted`, or `dead_letter_expired` for those past `max_age`) and the
`evicted`/`evicted_items` counters keep the totals since open. A single dead letter larger than
`max_bytes` is still kept (alone). `expire(now)` evicts what is past `max_age` without an add (the
exporter calls it periodically, so retention holds when nothing new fails).

Partial successes. The upstream accepted a request but rejected `rejected_items` of its items
(OTLP does not say which). The whole request is kept, so an operator can inspect it, with
`rejected_items` set: the dead letter stands for those items only. Eviction and expiry count
them, never the items the upstream accepted. A dead letter with `rejected_items` 0 is a whole
request that failed.

`list` pages oldest first; `take` removes and returns; `replay_dead_letters` puts them back into
the queue (put first, remove after, so a crash duplicates rather than loses). It skips partial
successes unless asked to include them: resending one would deliver its accepted items again.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from sidecar.core.drops import DropReason
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.queue.base import QueueClosed, QueueFull, SendingQueue
from sidecar.queue.sqlite import (
    SqliteFile,
    Synchronous,
    entry_columns,
    entry_from_columns,
    keep_wal_small,
    storage_error,
    write_transaction,
)

DEFAULT_MAX_ENTRIES = 10_000
MAX_MESSAGE_CHARS = 4096  # error messages can carry whole upstream responses; keep the head


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    entry: QueueEntry
    category: Category
    severity: Severity
    recoverability: Recoverability
    recovery: Recovery
    error_type: str
    classified_by: str
    message: str
    dead_at: float  # wall-clock seconds when it was dead-lettered
    rejected_items: int = 0  # a partial success: the items the upstream rejected (0: the whole request failed)

    @property
    def partial(self) -> bool:
        """A partial success: the upstream accepted the rest of `entry`'s items."""
        return self.rejected_items > 0

    @property
    def items(self) -> int:
        """The items this dead letter stands for: the rejected ones of a partial success, else all."""
        return self.rejected_items if self.partial else self.entry.items

    @property
    def dropped_items(self) -> int:
        """What losing this dead letter adds to `sidecar_dropped_items_total`: a partial success's
        rejected items were counted once already, as `upstream_rejected`, when the upstream refused
        them; losing the kept copy loses no further item."""
        return dropped_items(self.items, self.partial)

    @property
    def classification(self) -> Classification:
        return Classification(self.category, self.severity, self.recoverability, self.recovery,
                              self.error_type, self.classified_by)


@dataclass(frozen=True, slots=True)
class Evicted:
    """A dead letter pushed out by the bound: enough to count its items as dropped."""

    id: int
    signal: Signal
    items: int
    nbytes: int
    expired: bool = False  # past max_age (else pushed out by the count or size bound)
    partial: bool = False  # a partial success's copy: its items were counted when the upstream refused them

    @property
    def dropped_items(self) -> int:
        """What it adds to `sidecar_dropped_items_total` (see `DeadLetter.dropped_items`)."""
        return dropped_items(self.items, self.partial)

    @property
    def reason(self) -> DropReason:
        """The `sidecar_dropped_items_total` reason its items are counted under."""
        return DropReason.DEAD_LETTER_EXPIRED if self.expired else DropReason.DEAD_LETTER_EVICTED


class _Indexed(NamedTuple):
    """What a store keeps in memory per dead letter, oldest first."""

    signal: Signal
    items: int  # what it stands for: a partial success's rejected items, else the entry's
    nbytes: int
    dead_at: float
    partial: bool


def dropped_items(items: int, partial: bool) -> int:
    return 0 if partial else items


def _dead_items(entry: QueueEntry, rejected_items: int) -> int:
    return rejected_items if rejected_items > 0 else entry.items


def _check_rejected(entry: QueueEntry, rejected_items: int) -> None:
    if not 0 <= rejected_items <= entry.items:
        raise ValueError(f"rejected_items must be 0..{entry.items} (the entry's items), got {rejected_items}")


class DeadLetterStore(Protocol):
    max_entries: int
    max_bytes: int | None
    max_age: float | None

    @property
    def count(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    @property
    def evicted(self) -> int:
        """Dead letters evicted by the bound since open."""

    @property
    def evicted_items(self) -> int:
        """Items in the evicted dead letters since open."""

    async def add(self, entry: QueueEntry, classification: Classification, message: str,
                  dead_at: float | None = None, rejected_items: int = 0) -> builtins.list[Evicted]:
        """Store one dead letter; return the ones evicted to make room (oldest first).

        `rejected_items` > 0: a partial success, standing for that many of `entry`'s items."""

    async def expire(self, now: float) -> builtins.list[Evicted]:
        """Evict the dead letters older than `max_age` at wall time `now`; return them."""

    async def list(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        """A page of dead letters, oldest first."""

    async def take(self, ids: Sequence[int] | None = None,
                   limit: int | None = None) -> builtins.list[DeadLetter]:
        """Remove and return the given ids (all when None; unknown ids ignored), oldest first."""

    async def get(self, ids: Sequence[int]) -> builtins.list[DeadLetter]:
        """The given dead letters without removing them (unknown ids ignored), oldest first."""

    async def remove(self, ids: Sequence[int]) -> int:
        """Delete the given dead letters; how many there were."""

    async def close(self) -> None: ...


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def _check_bounds(max_entries: int, max_bytes: int | None, max_age: float | None) -> None:
    if max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, got {max_entries}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
    if max_age is not None and max_age <= 0:
        raise ValueError(f"max_age must be > 0 or None, got {max_age}")


def _to_evict(candidates: Iterable[tuple[int, _Indexed]], count: int, total_bytes: int,
              max_entries: int, max_bytes: int | None, expire_before: float | None,
              keep_one: bool = True) -> builtins.list[Evicted]:
    """The oldest ids to drop so the bound holds.

    `candidates` are (id, _Indexed) oldest first; `count` and `total_bytes` include the dead letter
    being added (`keep_one`), which is never evicted (it is not among the candidates, and the loop
    stops when it would be the only one left). Dead letters older than `expire_before` (wall time)
    go whatever the other bounds say.
    """
    out: builtins.list[Evicted] = []
    floor = 1 if keep_one else 0
    for dl_id, indexed in candidates:
        if count <= floor:
            break
        expired = expire_before is not None and indexed.dead_at < expire_before
        over_bytes = max_bytes is not None and total_bytes > max_bytes
        if not expired and count <= max_entries and not over_bytes:
            break
        out.append(Evicted(dl_id, indexed.signal, indexed.items, indexed.nbytes, expired, indexed.partial))
        count -= 1
        total_bytes -= indexed.nbytes
    return out


def _expire_before(max_age: float | None, now: float) -> float | None:
    return None if max_age is None else now - max_age


class MemoryDeadLetters:
    """Dead letters in process memory: lost on restart."""

    durable = False

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int | None = None,
                 max_age: float | None = None, first_id: int = 1) -> None:
        _check_bounds(max_entries, max_bytes, max_age)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._items: OrderedDict[int, DeadLetter] = OrderedDict()
        self._index: OrderedDict[int, _Indexed] = OrderedDict()
        self._next_id = first_id  # the fallback store numbers its own far from the disk's
        self._bytes = 0
        self._evicted = 0
        self._evicted_items = 0

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def evicted(self) -> int:
        return self._evicted

    @property
    def evicted_items(self) -> int:
        return self._evicted_items

    async def add(self, entry: QueueEntry, classification: Classification, message: str,
                  dead_at: float | None = None, rejected_items: int = 0) -> builtins.list[Evicted]:
        _check_rejected(entry, rejected_items)
        dl = DeadLetter(self._next_id, entry, classification.category, classification.severity,
                        classification.recoverability, classification.recovery, classification.error_type,
                        classification.classified_by, _clip(message),
                        time.time() if dead_at is None else dead_at, rejected_items)
        self._next_id += 1
        nbytes = len(entry.payload)
        evicted = _to_evict(self._index.items(), len(self._index) + 1, self._bytes + nbytes,
                            self.max_entries, self.max_bytes, _expire_before(self.max_age, dl.dead_at))
        self._items[dl.id] = dl
        self._index[dl.id] = _Indexed(entry.signal, dl.items, nbytes, dl.dead_at, dl.partial)
        self._bytes += nbytes
        self._forget(evicted)
        return evicted

    async def expire(self, now: float) -> builtins.list[Evicted]:
        if self.max_age is None:
            return []
        evicted = _to_evict(self._index.items(), len(self._index), self._bytes, self.max_entries,
                            self.max_bytes, _expire_before(self.max_age, now), keep_one=False)
        self._forget(evicted)
        return evicted

    def _forget(self, evicted: builtins.list[Evicted]) -> None:
        for ev in evicted:
            del self._items[ev.id]
            del self._index[ev.id]
            self._bytes -= ev.nbytes
            self._evicted += 1
            self._evicted_items += ev.items

    async def list(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        if limit <= 0 or offset >= len(self._items):
            return []
        out: builtins.list[DeadLetter] = []
        for i, dl in enumerate(self._items.values()):
            if i >= offset + limit:
                break
            if i >= offset:
                out.append(dl)
        return out

    async def take(self, ids: Sequence[int] | None = None,
                   limit: int | None = None) -> builtins.list[DeadLetter]:
        chosen = builtins.list(self._items) if ids is None else sorted({i for i in ids if i in self._items})
        if limit is not None:
            chosen = chosen[: max(limit, 0)]
        out = [self._items.pop(i) for i in chosen]
        for dl in out:
            del self._index[dl.id]
            self._bytes -= len(dl.entry.payload)
        return out

    async def get(self, ids: Sequence[int]) -> builtins.list[DeadLetter]:
        return [self._items[i] for i in sorted({i for i in ids if i in self._items})]

    async def remove(self, ids: Sequence[int]) -> int:
        return len(await self.take(ids))

    async def close(self) -> None:
        return None


DEAD_LETTER_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    signal         TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    items          INTEGER NOT NULL,
    metadata       TEXT    NOT NULL,
    accepted_at    REAL    NOT NULL,
    nbytes         INTEGER NOT NULL,
    category       TEXT    NOT NULL,
    severity       TEXT    NOT NULL,
    recoverability TEXT    NOT NULL,
    recovery       TEXT    NOT NULL,
    error_type     TEXT    NOT NULL,
    classified_by  TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    dead_at        REAL    NOT NULL,
    rejected_items INTEGER NOT NULL DEFAULT 0
)
"""
DEAD_LETTER_COLUMNS = ("id", "signal", "payload", "items", "metadata", "accepted_at", "nbytes", "category",
                       "severity", "recoverability", "recovery", "error_type", "classified_by", "message",
                       "dead_at", "rejected_items")
# Columns added after the first release, with the default that old rows get (SqliteFile.open adds them).
DEAD_LETTER_ADDED_COLUMNS = {"rejected_items": "INTEGER NOT NULL DEFAULT 0"}
# user_version of a dead-letter file: 2 since `rejected_items` (a sidecar knowing only 1 refuses the file
# as written by a newer one, instead of taking the unknown column for damage).
DEAD_LETTER_SCHEMA_VERSION = 2
_SELECT = ("SELECT id, signal, payload, items, metadata, accepted_at, category, severity, recoverability, "
           "recovery, error_type, classified_by, message, dead_at, rejected_items FROM dead_letters")

_Row = tuple[int, str, bytes, int, str, float, str, str, str, str, str, str, str, float, int]


def _from_row(row: _Row) -> DeadLetter:
    (dl_id, signal, payload, items, metadata, accepted_at, category, severity, recoverability, recovery,
     error_type, classified_by, message, dead_at, rejected_items) = row
    return DeadLetter(
        id=int(dl_id),
        entry=entry_from_columns(signal, payload, items, metadata, accepted_at),
        category=Category(category),
        severity=Severity(severity),
        recoverability=Recoverability(recoverability),
        recovery=Recovery(recovery),
        error_type=str(error_type),
        classified_by=str(classified_by),
        message=str(message),
        dead_at=float(dead_at),
        rejected_items=int(rejected_items),
    )


class SqliteDeadLetters:
    """Dead letters in their own SQLite file (WAL). `await store.open()` before use."""

    durable = True

    def __init__(self, path: Path, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int | None = None,
                 synchronous: Synchronous = "FULL", max_age: float | None = None) -> None:
        _check_bounds(max_entries, max_bytes, max_age)
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._db = SqliteFile(self.path, synchronous)
        self._index: OrderedDict[int, _Indexed] = OrderedDict()  # oldest first
        self._bytes = 0
        self._evicted = 0
        self._evicted_items = 0
        self._lock = asyncio.Lock()  # add/take change the index after their transaction: one at a time
        self._opened = False

    async def open(self) -> SqliteDeadLetters:
        if self._opened:
            raise RuntimeError(f"{self.path}: already opened")
        await self._db.open(DEAD_LETTER_SCHEMA, "dead_letters", DEAD_LETTER_COLUMNS, DEAD_LETTER_ADDED_COLUMNS,
                            DEAD_LETTER_SCHEMA_VERSION)
        try:
            rows = await self._db.run(lambda conn: conn.execute(
                "SELECT id, signal, CASE WHEN rejected_items > 0 THEN rejected_items ELSE items END, nbytes, "
                "dead_at, rejected_items > 0 FROM dead_letters ORDER BY id").fetchall())
            for dl_id, signal, items, nbytes, dead_at, partial in rows:
                self._index[int(dl_id)] = _Indexed(Signal(signal), int(items), int(nbytes), float(dead_at),
                                                   bool(partial))
                self._bytes += int(nbytes)
        except (sqlite3.Error, ValueError) as exc:
            await self._db.close()
            raise storage_error(self.path, exc) from exc
        self._opened = True
        return self

    @property
    def synchronous(self) -> Synchronous:
        return self._db.synchronous

    def known(self) -> builtins.list[tuple[int, Signal, int]]:
        """(id, signal, items its loss counts as dropped) of every dead letter held, oldest first: what a
        lost file would lose (a partial success's copy: nothing more, see `DeadLetter.dropped_items`)."""
        return [(dl_id, known.signal, dropped_items(known.items, known.partial))
                for dl_id, known in self._index.items()]

    @property
    def count(self) -> int:
        return len(self._index)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def evicted(self) -> int:
        return self._evicted

    @property
    def evicted_items(self) -> int:
        return self._evicted_items

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError(f"{self.path}: call `await store.open()` first")
        if not self._db.is_open:
            raise QueueClosed(f"{self.path}: dead-letter store is closed")

    async def add(self, entry: QueueEntry, classification: Classification, message: str,
                  dead_at: float | None = None, rejected_items: int = 0) -> builtins.list[Evicted]:
        self._require_open()
        _check_rejected(entry, rejected_items)
        when = time.time() if dead_at is None else dead_at
        columns = (*entry_columns(entry), classification.category.value, classification.severity.value,
                   classification.recoverability.value, classification.recovery.value,
                   classification.error_type, classification.classified_by, _clip(message), when, rejected_items)
        async with self._lock:
            nbytes = len(entry.payload)
            evicted = _to_evict(self._index.items(), len(self._index) + 1, self._bytes + nbytes,
                                self.max_entries, self.max_bytes, _expire_before(self.max_age, when))
            evict_ids = [ev.id for ev in evicted]

            def write(conn: sqlite3.Connection) -> int:
                with write_transaction(conn):
                    cursor = conn.execute(
                        "INSERT INTO dead_letters (signal, payload, items, metadata, accepted_at, nbytes, "
                        "category, severity, recoverability, recovery, error_type, classified_by, message, "
                        "dead_at, rejected_items) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", columns)
                    if evict_ids:
                        conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in evict_ids])
                assert cursor.lastrowid is not None
                return cursor.lastrowid

            def write_and_keep_wal_small(conn: sqlite3.Connection) -> int:
                written = write(conn)
                keep_wal_small(conn, self.path)  # a small volume is shared with the queue
                return written

            try:
                new_id = await self._db.run(write_and_keep_wal_small)
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
            self._index[new_id] = _Indexed(entry.signal, _dead_items(entry, rejected_items), nbytes, when,
                                           rejected_items > 0)
            self._bytes += nbytes
            self._forget(evicted)
            return evicted

    async def expire(self, now: float) -> builtins.list[Evicted]:
        self._require_open()
        if self.max_age is None:
            return []
        async with self._lock:
            evicted = _to_evict(self._index.items(), len(self._index), self._bytes, self.max_entries,
                                self.max_bytes, _expire_before(self.max_age, now), keep_one=False)
            if not evicted:
                return []
            ids = [ev.id for ev in evicted]

            def delete(conn: sqlite3.Connection) -> None:
                with write_transaction(conn):
                    conn.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in ids])

            try:
                await self._db.run(delete)
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
            self._forget(evicted)
            return evicted

    def _forget(self, evicted: builtins.list[Evicted]) -> None:
        for ev in evicted:
            del self._index[ev.id]
            self._bytes -= ev.nbytes
            self._evicted += 1
            self._evicted_items += ev.items

    async def list(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        self._require_open()
        if limit <= 0:
            return []
        try:
            rows = await self._db.run(lambda conn: conn.execute(
                f"{_SELECT} ORDER BY id LIMIT ? OFFSET ?", (limit, max(offset, 0))).fetchall())
            return [_from_row(row) for row in rows]
        except (sqlite3.Error, ValueError) as exc:
            raise storage_error(self.path, exc) from exc

    async def take(self, ids: Sequence[int] | None = None,
                   limit: int | None = None) -> builtins.list[DeadLetter]:
        self._require_open()
        async with self._lock:
            chosen = builtins.list(self._index) if ids is None else sorted(
                {int(i) for i in ids if int(i) in self._index})
            if limit is not None:
                chosen = chosen[: max(limit, 0)]
            if not chosen:
                return []

            def read_and_delete(conn: sqlite3.Connection) -> builtins.list[DeadLetter]:
                with write_transaction(conn):
                    out: builtins.list[DeadLetter] = []
                    for start in range(0, len(chosen), 500):
                        part = chosen[start:start + 500]
                        marks = ",".join("?" * len(part))
                        # Decoded before COMMIT: an undecodable row rolls the whole take back.
                        out.extend(_from_row(row) for row in conn.execute(
                            f"{_SELECT} WHERE id IN ({marks}) ORDER BY id", part))
                        conn.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", part)
                return out

            try:
                out = await self._db.run(read_and_delete)
            except (sqlite3.Error, ValueError) as exc:
                raise storage_error(self.path, exc) from exc
            for dl_id in chosen:
                self._bytes -= self._index.pop(dl_id).nbytes
            return out

    async def get(self, ids: Sequence[int]) -> builtins.list[DeadLetter]:
        self._require_open()
        chosen = sorted({int(i) for i in ids if int(i) in self._index})

        def read(conn: sqlite3.Connection) -> builtins.list[DeadLetter]:
            out: builtins.list[DeadLetter] = []
            for start in range(0, len(chosen), 500):
                part = chosen[start:start + 500]
                marks = ",".join("?" * len(part))
                out.extend(_from_row(row) for row in conn.execute(
                    f"{_SELECT} WHERE id IN ({marks}) ORDER BY id", part))
            return out

        try:
            return await self._db.run(read) if chosen else []
        except (sqlite3.Error, ValueError) as exc:
            raise storage_error(self.path, exc) from exc

    async def remove(self, ids: Sequence[int]) -> int:
        self._require_open()
        async with self._lock:
            chosen = sorted({int(i) for i in ids if int(i) in self._index})
            if not chosen:
                return 0

            def delete(conn: sqlite3.Connection) -> None:
                with write_transaction(conn):
                    for start in range(0, len(chosen), 500):
                        part = chosen[start:start + 500]
                        conn.execute(f"DELETE FROM dead_letters WHERE id IN ({','.join('?' * len(part))})", part)

            try:
                await self._db.run(delete)
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
            for dl_id in chosen:
                self._bytes -= self._index.pop(dl_id).nbytes
            return len(chosen)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close(vacuum=not self._index)


# ---------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: int  # dead letters put back into the queue (and removed from the store)
    items: int  # items in them
    remaining: int  # of those asked for and not skipped, still dead letters (the queue was full)
    skipped_partial: int = 0  # partial successes left in the store (not asked to include them)
    skipped_partial_items: int = 0  # the rejected items they stand for


async def replay_dead_letters(store: DeadLetterStore, queue: SendingQueue,
                              ids: Sequence[int] | None = None, batch: int = 100,
                              include_partial: bool = False) -> ReplayResult:
    """Put dead letters back into the queue, oldest first (all when `ids` is None).

    Each one is put first and removed from the store only after `put` returned, so a crash in
    between duplicates it rather than losing it. A full queue (QueueFull) stops the replay; what
    was not replayed stays a dead letter and is counted in `remaining`.

    Partial successes stay where they are unless `include_partial`: the upstream already accepted
    the rest of their items, which a resend would deliver a second time. They are counted in
    `skipped_partial` (and their rejected items in `skipped_partial_items`).
    """
    replayed = items = remaining = skipped = skipped_items = 0
    wanted = None if ids is None else sorted(set(ids))
    position = 0
    kept = 0  # walked past and left in the store: with ids None, the next page starts after them
    full = False
    while True:
        if wanted is None:
            page = await store.list(limit=batch, offset=kept)
            if not page:
                break
        else:
            if position >= len(wanted):
                break
            page = await store.get(wanted[position:position + batch])
            position += batch
        for dl in page:
            if dl.partial and not include_partial:
                skipped += 1
                skipped_items += dl.items
                kept += 1
                continue
            if not full:
                try:
                    await queue.put(dl.entry)
                except QueueFull:
                    full = True  # keep walking: what is left is counted, skipped or remaining
                else:
                    await store.remove([dl.id])
                    replayed += 1
                    items += dl.entry.items
                    continue
            remaining += 1
            kept += 1
    return ReplayResult(replayed, items, remaining, skipped, skipped_items)
