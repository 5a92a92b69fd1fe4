"""The durable sending queue: SQLite in WAL mode, one database file per exporter (DESIGN.md §5).

Acknowledgement. `put` returns only after the transaction holding the row committed (with
`synchronous=FULL`, after the WAL was fsynced), so whatever the client was told is accepted
survives a SIGKILL (and, with FULL, a power cut). `synchronous=NORMAL` keeps the SIGKILL
guarantee but may lose the last transactions on an OS crash or power cut.

Group commit. Puts and acks queue up while a transaction is being written; the next
transaction takes all of them at once. A put waits for the commit that includes it, never
less. One transaction at a time, so under load each fsync carries many rows.

Threads. All sqlite3 calls run on ONE dedicated worker thread (a single-thread executor that
owns the connection); the event loop only awaits them.

Leases live in memory. On open every row in the table is available again (replay after a
restart or a crash), in id order; a row is deleted only by `ack`. Delivery is at-least-once:
a row sent but not yet acked when the process died is sent again.

Exclusive. The database is opened with `locking_mode=EXCLUSIVE` and the write lock is taken at
open, so a second process pointed at the same file fails at open (QueueStorageError) instead of
replaying the same rows. That also means SQLite keeps the WAL index in process memory (no
-shm file).

Corruption. A database that is not SQLite, fails `PRAGMA quick_check`, or has another schema
raises QueueStorageError naming the file and suggesting `--recover`; `recover_database` moves
it (and its -wal/-shm) aside. Nothing is ever reset silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import heapq
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

import orjson

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.base import Lease, QueueClosed, QueueFull, QueueStorageError, Sizer, StorageFull
from sidecar.queue.memory import Waiters, fits, next_lease_id
from sidecar.queue.oldest import OldestTracker

log = logging.getLogger("sidecar.queue")

Synchronous = Literal["FULL", "NORMAL"]
T = TypeVar("T")

SCHEMA_VERSION = 1
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint
# 16 KiB pages (new files only) and a checkpoint every 16 MiB of WAL: measured ~20-30% more
# 100 KiB puts/s than the 4 KiB / 4 MiB defaults, small rows lose nothing noticeable.
PAGE_SIZE = 16384
WAL_AUTOCHECKPOINT_PAGES = 1024

_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

# Small volumes. Below LOW_SPACE_BYTES free on the volume, the WAL is checkpointed and truncated
# after a commit whenever it holds more than a quarter of the free space (or WAL_SMALL_BYTES):
# otherwise the WAL alone (up to WAL_AUTOCHECKPOINT_PAGES) fills a small disk, and then neither a
# checkpoint (the database file must grow) nor a delete (it needs WAL space) can ever succeed.
# Inserts stop at RESERVE_PAGES pages free, so acks (deletes) always find room to commit. A new
# file on a volume smaller than SMALL_VOLUME_BYTES gets SMALL_PAGE_SIZE pages: every page a
# transaction touches is a whole WAL frame, and 16 KiB frames waste a small volume.
LOW_SPACE_BYTES = 4 * WAL_AUTOCHECKPOINT_PAGES * PAGE_SIZE
WAL_SMALL_PAGES = 4
RESERVE_PAGES = 8
SMALL_VOLUME_BYTES = 256 * 1024 * 1024
SMALL_PAGE_SIZE = 4096

QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    signal      TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    items       INTEGER NOT NULL,
    metadata    TEXT    NOT NULL,
    accepted_at REAL    NOT NULL,
    nbytes      INTEGER NOT NULL
)
"""
QUEUE_COLUMNS = ("id", "signal", "payload", "items", "metadata", "accepted_at", "nbytes")


# ---------------------------------------------------------------- entry <-> columns


def entry_columns(entry: QueueEntry) -> tuple[str, bytes, int, str, float, int]:
    """(signal, payload, items, metadata JSON, accepted_at, nbytes): how an entry is stored."""
    metadata = orjson.dumps([list(pair) for pair in entry.metadata]).decode()
    return (entry.signal.value, entry.payload, entry.items, metadata, entry.accepted_at, len(entry.payload))


def entry_from_columns(signal: str, payload: bytes, items: int, metadata: str,
                       accepted_at: float) -> QueueEntry:
    """The inverse of `entry_columns`; ValueError/TypeError when a column does not decode."""
    pairs = orjson.loads(metadata)
    if not isinstance(pairs, list):
        raise ValueError("metadata is not a JSON array")
    meta: list[tuple[str, str]] = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"metadata pair {pair!r} is not [str, str]")
        meta.append((pair[0], pair[1]))
    return QueueEntry(
        signal=Signal(signal),
        payload=bytes(payload),
        items=int(items),
        metadata=tuple(meta),
        accepted_at=float(accepted_at),
    )


# ---------------------------------------------------------------- errors and recovery


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return isinstance(exc, sqlite3.Error) and _primary_code(exc) == sqlite3.SQLITE_FULL


def page_size_for(directory: Path) -> int:
    """The page size of a new database file in `directory` (see SMALL_VOLUME_BYTES)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return PAGE_SIZE
    return SMALL_PAGE_SIZE if st.f_blocks * st.f_frsize < SMALL_VOLUME_BYTES else PAGE_SIZE


def keep_wal_small(conn: sqlite3.Connection, path: Path, free: int | None = None) -> None:
    """After a commit on a low-space volume: checkpoint and truncate a WAL grown past its share.

    Worker thread. Failures are logged only: the commit stands and the next one tries again.
    """
    free = free_bytes(path.parent) if free is None else free
    if free is None or free >= LOW_SPACE_BYTES:
        return
    try:
        wal = os.path.getsize(f"{path}-wal")
    except OSError:
        return
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if wal > max(WAL_SMALL_PAGES * page_size, free // 4):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("%s: checkpoint on a low-space volume failed: %s", path, exc)


_SIGNALS = {signal.value: signal for signal in Signal}


def _load_index(conn: sqlite3.Connection, sizer: Sizer) -> tuple[
        dict[int, tuple[int, int, Signal, int]], list[int], OldestTracker, int, int]:
    """(index, available heap, oldest tracker, size, bytes) of every stored row. Worker thread;
    ValueError on a row whose signal is unknown (a damaged or foreign file)."""
    index: dict[int, tuple[int, int, Signal, int]] = {}
    oldest = OldestTracker()
    total_size = total_bytes = 0
    for row_id, items, nbytes, accepted_at, signal in conn.execute(
            "SELECT id, items, nbytes, accepted_at, signal FROM queue ORDER BY id"):
        kind = _SIGNALS.get(signal)
        if kind is None:
            raise ValueError(f"row {row_id} has an unknown signal {signal!r}")
        size = 1 if sizer is Sizer.REQUESTS else (int(items) if sizer is Sizer.ITEMS else int(nbytes))
        index[int(row_id)] = (size, int(nbytes), kind, int(items))
        oldest.add(int(row_id), float(accepted_at))
        total_size += size
        total_bytes += int(nbytes)
    return index, list(index), oldest, total_size, total_bytes  # ids ascending: already a heap


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the volume holding `directory`."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def corrupt_error(path: Path, detail: str) -> QueueStorageError:
    return QueueStorageError(
        f"{path}: the SQLite database is corrupt or unreadable ({detail}). Nothing was changed. "
        f"Start with --recover to move it aside to {path.name}.corrupt-<timestamp> (kept for "
        f"inspection) and start with an empty queue.",
        path=str(path),
        corrupt=True,
    )


def storage_error(path: Path, exc: BaseException) -> QueueStorageError:
    """Map an sqlite3 error met while opening or using `path` to a QueueStorageError."""
    if isinstance(exc, QueueStorageError):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = _primary_code(exc)
        if code in _CORRUPT_CODES or (code is None and isinstance(exc, sqlite3.DatabaseError)
                                      and not isinstance(exc, sqlite3.OperationalError)):
            return corrupt_error(path, str(exc))
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return QueueStorageError(
                f"{path}: the database is locked, most likely by another sidecar process using the "
                f"same storage directory ({exc})", path=str(path))
        if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY):
            return QueueStorageError(
                f"{path}: cannot open the database for writing ({exc}); check the directory exists "
                f"and is writable", path=str(path))
    return QueueStorageError(f"{path}: storage error: {exc}", path=str(path))


def recover_database(path: Path, *, now: float | None = None) -> Path:
    """Move a bad database (and its -wal and -shm files) aside; return where the database went.

    The new name is `<name>.corrupt-<UTC timestamp>` next to the original (with `-wal`/`-shm`
    appended to the same name, so SQLite can still open the moved copy with its WAL). The
    original path is then free for a fresh, empty database. Raises FileNotFoundError when
    there is nothing at `path`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no database to recover")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{target}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{target}{suffix}")
    log.warning("moved corrupt database %s aside to %s", path, target)
    return target


# ---------------------------------------------------------------- the database file and its thread


class SqliteFile:
    """One SQLite database and the single worker thread that owns its connection."""

    def __init__(self, path: Path, synchronous: Synchronous = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the worker thread."""
        if self._executor is None:
            raise QueueClosed(f"{self.path}: database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise QueueClosed(f"{self.path}: database is closed")
        return fn(self._conn)

    async def open(self, schema: str, table: str, columns: Sequence[str],
                   added_columns: Mapping[str, str] | None = None, schema_version: int = SCHEMA_VERSION) -> None:
        """Open (creating if missing), check and lock the database; raise QueueStorageError.

        `added_columns` (name -> column definition with its DEFAULT) are the trailing `columns` a
        later version added: a table that has all the columns but those gets them with ALTER TABLE
        (their default fills the existing rows), so a file written by an older sidecar still opens.
        `schema_version` is written to `user_version`; a file with a higher one is refused.
        """
        if self._executor is not None:
            raise RuntimeError(f"{self.path}: already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite:{self.path.name}")
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._open_sync, schema, table, tuple(columns), dict(added_columns or {}),
                schema_version)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self, schema: str, table: str, columns: tuple[str, ...], added_columns: dict[str, str],
                   schema_version: int) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(str(self.path), timeout=1.0, isolation_level=None)
            # Before anything touches the file: EXCLUSIVE keeps the WAL index in process memory and
            # the lock for the connection's lifetime; INCREMENTAL only matters for a new file.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute(f"PRAGMA page_size={page_size_for(self.path.parent)}")  # before auto_vacuum, or it is ignored
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueStorageError(f"{self.path}: cannot switch the database to WAL mode (got {mode})",
                                        path=str(self.path))
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > schema_version:
                raise QueueStorageError(
                    f"{self.path}: written by a newer sidecar (schema version {version}, this one "
                    f"knows {schema_version}); not touching it", path=str(self.path))
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise corrupt_error(self.path, "quick_check: " + "; ".join(problems[:3]))
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock, kept while the connection lives
            try:
                conn.execute(schema)
                found = tuple(str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})"))
                missing = columns[len(found):]
                if found == columns[:len(found)] and missing and all(name in added_columns for name in missing):
                    for name in missing:  # written by an older sidecar: add what it did not have
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {added_columns[name]}")
                    log.info("%s: added columns %s to table %s", self.path, list(missing), table)
                    found = columns
                if found != columns:
                    raise corrupt_error(
                        self.path, f"table {table} has columns {list(found)}, expected {list(columns)}; "
                        f"not a sidecar database of this kind")
                conn.execute(f"PRAGMA user_version={schema_version}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(self.path, exc) from exc
            raise
        self._conn = conn

    async def close(self, *, vacuum: bool = False) -> None:
        """Close the connection (checkpointing the WAL) and stop the thread. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync, vacuum)
        finally:
            executor.shutdown(wait=False)

    def _close_sync(self, vacuum: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if vacuum:
                conn.execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:  # best effort: only gives free pages back to the file system
            log.warning("%s: incremental_vacuum failed: %s", self.path, exc)
        finally:
            conn.close()


# ---------------------------------------------------------------- the queue


@dataclass(slots=True)
class _PendingPut:
    columns: tuple[str, bytes, int, str, float, int]
    size: int
    nbytes: int
    signal: Signal
    items: int
    done: asyncio.Future[None]


@dataclass(slots=True)
class _PendingAck:
    row_id: int
    done: asyncio.Future[None]


@dataclass(slots=True)
class _Batch:
    puts: list[_PendingPut] = field(default_factory=list)
    acks: list[_PendingAck] = field(default_factory=list)
    retry_deletes: list[int] = field(default_factory=list)


class SqliteQueue:
    """Durable queue with the SendingQueue interface. `await queue.open()` before use.

    Capacity is checked against committed rows plus puts waiting for their commit, leased rows
    included. Rows found at open are all kept even when they exceed a (since reduced) capacity;
    puts are then refused until enough are acked.
    """

    durable = True

    def __init__(self, path: Path, capacity: int, sizer: Sizer = Sizer.REQUESTS,
                 synchronous: Synchronous = "FULL") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.path = Path(path)
        self.capacity = capacity
        self.sizer = Sizer(sizer)
        self.synchronous: Synchronous = synchronous
        self.replayed = 0  # rows found at open: what a restart replays
        self._db = SqliteFile(self.path, synchronous)
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        # committed row id -> (size in sizer unit, nbytes, signal, items); signal and items say what
        # is lost should the row become unreadable
        self._index: dict[int, tuple[int, int, Signal, int]] = {}
        self._available: list[int] = []  # heap of row ids
        self._leases: dict[int, int] = {}  # lease id -> row id
        self._size = 0
        self._bytes = 0
        self._pending_size = 0  # reserved by puts waiting for their commit
        self._pending_bytes = 0
        self._pending_count = 0
        self._pending_puts: list[_PendingPut] = []
        self._pending_acks: list[_PendingAck] = []
        self._retry_deletes: list[int] = []  # acked rows whose DELETE failed; retried with the next batch
        self._flusher: asyncio.Task[None] | None = None
        self._getters = Waiters()
        self._empty_waiters = Waiters()
        self._closed_event = asyncio.Event()
        self._oldest = OldestTracker()  # committed rows' accepted_at
        self.commits = 0  # transactions written (a put batch is one)
        # Set when a write or delete found the file damaged (SQLITE_CORRUPT, a WAL cut short by
        # someone else): the owner quarantines the file (see StorageFallbackQueue).
        self.damaged: QueueStorageError | None = None
        self._wal = WalWatch(self.path)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> SqliteQueue:
        """Open the database and load the index; every stored row becomes available (replay)."""
        if self._state != "new":
            raise RuntimeError(f"{self.path}: queue already opened")
        await self._db.open(QUEUE_SCHEMA, "queue", QUEUE_COLUMNS)
        try:
            # Built on the worker thread: a replay of 10^5-10^6 rows must not hold the event loop
            # (/ready and /health answer meanwhile).
            loaded = await self._db.run(functools.partial(_load_index, sizer=self.sizer))
        except sqlite3.Error as exc:
            await self._db.close()
            raise storage_error(self.path, exc) from exc
        except ValueError as exc:
            await self._db.close()
            raise corrupt_error(self.path, str(exc)) from None
        except BaseException:
            await self._db.close()
            raise
        self._index, self._available, self._oldest, self._size, self._bytes = loaded
        rows = self._available
        self.replayed = len(rows)
        self._state = "open"
        if rows:
            log.info("%s: replaying %d stored entries", self.path, len(rows))
        return self

    async def __aenter__(self) -> SqliteQueue:
        return await self.open() if self._state == "new" else self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Finish pending commits and close. Leased and unacked rows stay stored for replay."""
        if self._state in ("closing", "closed"):
            await self._closed_event.wait()
            return
        if self._state == "new":
            self._state = "closed"
            self._closed_event.set()
            return
        self._state = "closing"
        self._getters.wake_all()
        try:
            while self._flusher is not None and not self._flusher.done():
                await asyncio.shield(self._flusher)
            if self._retry_deletes:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
                await self._flusher
        finally:
            await self._db.close(vacuum=not self._index)
            self._state = "closed"
            self._closed_event.set()
            self._empty_waiters.wake_all()

    @property
    def closed(self) -> bool:
        return self._state in ("closing", "closed")

    # ------------------------------------------------------------ figures

    @property
    def size(self) -> int:
        return self._size + self._pending_size

    @property
    def bytes(self) -> int:
        return self._bytes + self._pending_bytes

    @property
    def count(self) -> int:
        return len(self._index) + self._pending_count

    @property
    def available(self) -> int:
        return len(self._available)

    @property
    def oldest_accepted_at(self) -> float | None:
        """`accepted_at` of the oldest entry held (leased rows included, and puts not yet
        handed to a transaction; those are the newest anyway)."""
        oldest = self._oldest.oldest()
        for pending in self._pending_puts:
            accepted_at = pending.columns[4]
            oldest = accepted_at if oldest is None else min(oldest, accepted_at)
        return oldest

    @property
    def leased(self) -> int:
        return len(self._leases)

    def __repr__(self) -> str:
        return (f"SqliteQueue({str(self.path)!r}, capacity={self.capacity}, sizer={self.sizer.value}, "
                f"synchronous={self.synchronous}, size={self.size}, count={self.count}, "
                f"leased={self.leased})")

    # ------------------------------------------------------------ the interface

    def _require_open(self) -> None:
        if self._state == "new":
            raise RuntimeError(f"{self.path}: call `await queue.open()` first")
        if self._state != "open":
            raise QueueClosed(f"{self.path}: queue is closed")

    def fits(self, entry: QueueEntry) -> bool:
        """Whether `put(entry)` would be admitted now (it may still fail on a full disk)."""
        return fits(self.size, self.count, self.sizer.size_of(entry), self.capacity)

    async def put(self, entry: QueueEntry) -> None:
        """Return once the row is committed. QueueFull when it does not fit or the disk is full."""
        self._require_open()
        size = self.sizer.size_of(entry)
        if not fits(self.size, self.count, size, self.capacity):
            raise QueueFull(f"queue full: {self.size}+{size} > {self.capacity} {self.sizer.value}")
        done = self._enqueue_put(entry, size)
        self._kick()
        # If the caller is cancelled here the row is still committed (and delivered): at-least-once.
        await done

    async def put_many(self, entries: Sequence[QueueEntry]) -> None:
        """Store all of `entries` in ONE transaction, in order: all are committed or none is.

        The capacity check is the same as for `put`, for the whole group (a group into an empty
        queue is admitted like one oversized entry). Raises like `put`.
        """
        self._require_open()
        if not entries:
            return
        sizes = [self.sizer.size_of(entry) for entry in entries]
        if not fits(self.size, self.count, sum(sizes), self.capacity):
            raise QueueFull(f"queue full: {self.size}+{sum(sizes)} > {self.capacity} {self.sizer.value}")
        # Appended without an await in between, so the flusher takes them into the same batch.
        done = [self._enqueue_put(entry, size) for entry, size in zip(entries, sizes, strict=True)]
        self._kick()
        results = await asyncio.gather(*done, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _enqueue_put(self, entry: QueueEntry, size: int) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _PendingPut(entry_columns(entry), size, len(entry.payload), entry.signal, entry.items, done)
        self._pending_size += size
        self._pending_bytes += pending.nbytes
        self._pending_count += 1
        self._pending_puts.append(pending)
        return done

    def abandon(self) -> None:
        """Forget every row (the file is being given up after `salvage`): figures drop to zero and
        `get` finds nothing, whether or not a fresh file can take over. Leases stay valid as
        objects (they carry their entries) but this queue no longer knows them."""
        self._index.clear()
        self._available.clear()
        self._leases.clear()
        self._oldest.clear()
        self._retry_deletes.clear()
        self._size = self._bytes = 0
        self._empty_waiters.wake_all()

    async def salvage(self) -> tuple[list[QueueEntry], list[tuple[Signal, int]]]:
        """Read every stored row that is not leased, oldest first, for moving the queue to a new file.

        Returns (the entries that could be read, (signal, items) of those that could not). The
        rows stay in the file and in the index; the caller abandons the whole file afterwards.
        """
        # Leased rows are in flight (their lease keeps the entry); acked rows whose DELETE has not
        # committed yet are delivered: carrying them over would only send them again.
        skip = set(self._leases.values()) | set(self._retry_deletes) | {ack.row_id for ack in self._pending_acks}
        wanted = sorted(row_id for row_id in self._index if row_id not in skip)
        readable: list[QueueEntry] = []
        unreadable: list[tuple[Signal, int]] = []
        for row_id in wanted:
            try:
                entry = await self._db.run(functools.partial(self._read_row, row_id=row_id))
            except (sqlite3.Error, ValueError, TypeError):
                entry = None
            except QueueClosed:
                break
            if entry is None:
                _, _, signal, items = self._index[row_id]
                unreadable.append((signal, items))
            else:
                readable.append(entry)
        return readable, unreadable

    async def get(self) -> Lease:
        while True:
            while not self._available:
                if self._state != "open":
                    raise QueueClosed(f"{self.path}: queue is closed")
                await self._getters.wait()
            row_id = heapq.heappop(self._available)
            lease_id = next_lease_id()
            self._leases[lease_id] = row_id
            try:
                entry = await self._db.run(functools.partial(self._read_row, row_id=row_id))
            except BaseException as exc:
                lost: tuple[Signal, int] | None = None
                if self._leases.pop(lease_id, None) is not None:
                    if isinstance(exc, (asyncio.CancelledError, QueueClosed)):
                        heapq.heappush(self._available, row_id)  # untouched: offer it again
                        self._getters.wake_one()
                    else:
                        lost = self._forget(row_id)  # unreadable row: stays in the file, leaves the index
                if isinstance(exc, (sqlite3.Error, ValueError, TypeError)):
                    raise QueueStorageError(
                        f"{self.path}: row {row_id} cannot be read ({exc}); it stays in the file but is "
                        f"skipped until restart; check the database with --recover if this repeats",
                        path=str(self.path), corrupt=True, lost=lost) from exc
                raise
            if entry is None:  # the row vanished: the index was wrong; skip it
                self._leases.pop(lease_id, None)
                self._forget(row_id)
                continue
            if self._available:
                self._getters.wake_one()
            return Lease(lease_id, entry)

    @staticmethod
    def _read_row(conn: sqlite3.Connection, row_id: int) -> QueueEntry | None:
        row = conn.execute("SELECT signal, payload, items, metadata, accepted_at FROM queue WHERE id = ?",
                           (row_id,)).fetchone()
        return None if row is None else entry_from_columns(*row)

    async def ack(self, lease: Lease) -> None:
        """Delete the row; returns once the delete is committed. A stale lease is a no-op."""
        row_id = self._leases.pop(lease.lease_id, None)
        if row_id is None:
            return
        if self._state == "closed":  # too late to delete: the row is replayed after restart
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_acks.append(_PendingAck(row_id, done))
        self._kick()
        await done

    async def nack(self, lease: Lease) -> None:
        row_id = self._leases.pop(lease.lease_id, None)
        if row_id is None:
            return
        heapq.heappush(self._available, row_id)
        self._getters.wake_one()

    async def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until nothing is held (leased rows included); False when the timeout expired."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.count:
            if self._state == "closed":
                return False
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            await self._empty_waiters.wait(remaining)
        return True

    # ------------------------------------------------------------ group commit

    def _forget(self, row_id: int) -> tuple[Signal, int] | None:
        """Drop a row from the index; its (signal, items), or None when it was not indexed."""
        known = self._index.pop(row_id, None)
        self._oldest.discard(row_id)
        if known is not None:
            self._size -= known[0]
            self._bytes -= known[1]
        if not self.count:
            self._empty_waiters.wake_all()
        return None if known is None else (known[2], known[3])

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._pending_puts or self._pending_acks or (self._retry_deletes and self._state == "closing"):
            batch = _Batch(self._pending_puts, self._pending_acks, self._retry_deletes)
            self._pending_puts, self._pending_acks, self._retry_deletes = [], [], []
            rows = [p.columns for p in batch.puts]
            deletes = [a.row_id for a in batch.acks] + batch.retry_deletes
            try:
                ids = await self._db.run(functools.partial(_write, rows=rows, deletes=deletes, path=self.path,
                                                           wal=self._wal))
            except BaseException as exc:
                if is_disk_full(exc) and batch.puts and deletes:
                    # Acks must not wait for space behind puts that cannot fit: commit them alone
                    # (a delete needs far less room, and RESERVE_PAGES are kept for it).
                    batch = await self._commit_deletes_alone(batch, deletes)
                self._fail(batch, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if self._state == "closing":
                    return  # do not spin on a failing disk while closing
                continue
            self.commits += 1
            self._apply(batch, ids)

    async def _commit_deletes_alone(self, batch: _Batch, deletes: list[int]) -> _Batch:
        """Try the deletes of a failed batch on their own; the batch of what is still to fail."""
        try:
            await self._db.run(functools.partial(_write, rows=[], deletes=deletes, path=self.path, wal=self._wal))
        except Exception:
            return batch
        self.commits += 1
        self._apply(_Batch([], batch.acks, batch.retry_deletes), [])
        return _Batch(batch.puts)

    def _apply(self, batch: _Batch, ids: list[int]) -> None:
        for put, row_id in zip(batch.puts, ids, strict=True):
            self._pending_size -= put.size
            self._pending_bytes -= put.nbytes
            self._pending_count -= 1
            self._index[row_id] = (put.size, put.nbytes, put.signal, put.items)
            self._oldest.add(row_id, put.columns[4])
            self._size += put.size
            self._bytes += put.nbytes
            heapq.heappush(self._available, row_id)
            self._getters.wake_one()
            if not put.done.done():
                put.done.set_result(None)
        for ack in batch.acks:
            self._forget(ack.row_id)
            if not ack.done.done():
                ack.done.set_result(None)
        for row_id in batch.retry_deletes:
            self._forget(row_id)

    def _fail(self, batch: _Batch, exc: BaseException) -> None:
        if is_disk_full(exc):
            put_error: BaseException = StorageFull(f"{self.path}: disk full ({exc})")
        elif isinstance(exc, asyncio.CancelledError):
            put_error = QueueClosed(f"{self.path}: queue closed while committing")
        else:
            put_error = storage_error(self.path, exc)
            if isinstance(put_error, QueueStorageError) and put_error.corrupt and self.damaged is None:
                self.damaged = put_error
        for put in batch.puts:
            self._pending_size -= put.size
            self._pending_bytes -= put.nbytes
            self._pending_count -= 1
            if not put.done.done():
                put.done.set_exception(put_error)
        if batch.acks or batch.retry_deletes:
            # The rows are still stored. Keep them out of circulation (upstream has them) and retry
            # the delete with the next transaction; a crash before that only causes a duplicate.
            log.warning("%s: deleting %d acked rows failed, will retry: %s",
                        self.path, len(batch.acks) + len(batch.retry_deletes), exc)
            self._retry_deletes.extend(a.row_id for a in batch.acks)
            self._retry_deletes.extend(batch.retry_deletes)
        for ack in batch.acks:
            if not ack.done.done():
                ack.done.set_result(None)
        if not self.count:
            self._empty_waiters.wake_all()


class WalWatch:
    """Notices a WAL file cut short behind SQLite's back (worker thread only).

    With locking_mode=EXCLUSIVE the WAL index lives in process memory and points at frames by
    offset; if the file is truncated by someone else, those frames are gone and the next
    restart would lose every commit after the cut. The WAL only shrinks when this process
    truncates it (checkpoint TRUNCATE, or journal_size_limit on a reset), so a WAL found
    smaller than after the last commit, and below the limit, was damaged from outside.
    """

    def __init__(self, path: Path) -> None:
        self.wal_path = f"{path}-wal"
        self.size_after_commit: int | None = None

    def _size(self) -> int:
        try:
            return os.path.getsize(self.wal_path)
        except OSError:
            return 0

    def check(self, path: Path) -> None:
        if self.size_after_commit is None:
            return
        size, before = self._size(), self.size_after_commit
        if size < min(before, JOURNAL_SIZE_LIMIT):
            self.size_after_commit = None
            raise corrupt_error(path, f"the WAL was cut from {before} to {size} bytes while in use")

    def committed(self) -> None:
        self.size_after_commit = self._size()


def _write(conn: sqlite3.Connection, rows: list[tuple[str, bytes, int, str, float, int]],
           deletes: list[int], path: Path | None = None, wal: WalWatch | None = None) -> list[int]:
    """One transaction: insert `rows`, delete `deletes`; the new row ids in order. Worker thread.

    On a full disk, the WAL is checkpointed and truncated and the transaction tried once more:
    the WAL only grows until a checkpoint (up to WAL_AUTOCHECKPOINT_PAGES), so on a small
    volume it is often the WAL, not the rows, that fills the disk, and acks (deletes) need WAL
    space too. What the checkpoint frees is what keeps a full disk from becoming a stuck one.
    With `path`, the small-volume rules above apply (LOW_SPACE_BYTES, RESERVE_PAGES).
    """
    if wal is not None and path is not None:
        wal.check(path)
    try:
        return _write_checked(conn, rows, deletes, path)
    finally:
        if wal is not None:
            wal.committed()  # also after a failure: a rollback or a checkpoint may have resized it


def _write_checked(conn: sqlite3.Connection, rows: list[tuple[str, bytes, int, str, float, int]],
                   deletes: list[int], path: Path | None) -> list[int]:
    free = None if path is None else free_bytes(path.parent)
    if rows and free is not None and path is not None:
        _check_room(conn, path, free, sum(row[5] for row in rows))
    try:
        ids = _write_once(conn, rows, deletes)
    except sqlite3.Error as exc:
        if not is_disk_full(exc):
            raise
        if path is not None and free is not None and free >= LOW_SPACE_BYTES:
            _diagnose_full(conn, path, exc)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            raise exc from None
        if rows or len(deletes) < 2:
            ids = _write_once(conn, rows, deletes)
        else:
            # Acks on a full volume: one row per transaction needs the least WAL. A DELETE of a row
            # already gone is a no-op, so if one fails the caller retries the whole list safely.
            for row_id in deletes:
                _write_once(conn, [], [row_id])
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # each delete reuses the room
            ids = []
    if path is not None and free is not None and free < LOW_SPACE_BYTES:
        keep_wal_small(conn, path, free)
        if deletes and not rows:
            _give_back_free_pages(conn, path)
    return ids


def _give_back_free_pages(conn: sqlite3.Connection, path: Path) -> None:
    """On a low-space volume, return the pages acked rows freed to the file system.

    The volume is shared (the dead-letter file lives next to the queue): free pages kept inside
    the queue's file would leave the dead letters no room long after the queue drained.
    """
    try:
        if int(conn.execute("PRAGMA freelist_count").fetchone()[0]) < 4:
            return
        conn.execute("PRAGMA incremental_vacuum").fetchall()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("%s: giving free pages back on a low-space volume failed: %s", path, exc)


def _diagnose_full(conn: sqlite3.Connection, path: Path, exc: sqlite3.Error) -> None:
    """SQLITE_FULL with plenty of room on the volume: a damaged file (garbage page numbers) says
    that too. Raise the corruption if `quick_check` finds one; return (a real limit) otherwise."""
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.Error as check_exc:
        raise corrupt_error(path, f"{exc}; quick_check failed: {check_exc}") from exc
    if problems != ["ok"]:
        raise corrupt_error(path, f"{exc}; quick_check: {'; '.join(problems)}") from exc


def _check_room(conn: sqlite3.Connection, path: Path, free: int, need: int) -> None:
    """Raise ENOSPC when inserting `need` payload bytes would eat into the reserve (RESERVE_PAGES).

    Room is what the volume has free plus the free pages inside the database (acked rows leave
    those behind, and SQLite reuses them); a checkpoint that truncates the WAL is tried first.
    """
    # Every page an insert touches is written to the WAL first (`need`, plus a page per row of
    # slack), and the checkpoint then grows the database by what its free pages cannot hold.
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    wal_need = need + 2 * page_size
    reserve = RESERVE_PAGES * page_size

    def enough(free: int) -> bool:
        reusable = int(conn.execute("PRAGMA freelist_count").fetchone()[0]) * page_size
        return free >= reserve + wal_need + max(0, wal_need - reusable)

    if free >= reserve + 2 * wal_need or enough(free):
        return
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    free = free_bytes(path.parent) or 0
    if not enough(free):
        raise OSError(errno.ENOSPC, f"{free} bytes free on the volume, {reserve} kept in reserve for "
                                    f"acks; {need} bytes to insert")



@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock up front, so a conflict fails here and not at COMMIT) ... COMMIT;
    rolled back on any exception, cancellation included, and the exception goes on."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise

def _write_once(conn: sqlite3.Connection, rows: list[tuple[str, bytes, int, str, float, int]],
                deletes: list[int]) -> list[int]:
    with write_transaction(conn):
        ids: list[int] = []
        for row in rows:
            cursor = conn.execute(
                "INSERT INTO queue (signal, payload, items, metadata, accepted_at, nbytes) "
                "VALUES (?, ?, ?, ?, ?, ?)", row)
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
        if deletes:
            conn.executemany("DELETE FROM queue WHERE id = ?", [(row_id,) for row_id in deletes])
    return ids
