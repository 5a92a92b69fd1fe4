"""A disk queue that keeps accepting into memory while its disk fails (issue 16, DESIGN.md §5).

`StorageFallbackQueue` wraps the exporter's `SqliteQueue` and a `MemoryQueue`:

* Normal: every put goes to the disk, as without the wrapper.
* Degraded: a put that fails on the storage (`disk_full`: SQLITE_FULL/ENOSPC; `io_error`: any
  other SQLite I/O error; `corrupt`: the file is damaged) goes to memory instead, and so do all
  later puts until memory is empty again, so that FIFO order holds. The client is acknowledged
  for what memory holds: such entries are not durable (a crash loses them), which the
  `storage_degraded` detail of /ready and the `storage_degraded` ladder driver say.
* Memory is bounded by `memory_bytes` of payload; with memory at that bound (or the queue at its
  capacity), `put` raises QueueFull with the true reason (`disk_full`, `io_error`, `corrupt` for
  the storage, `queue_full` for the capacity): the exporter pushes the client back with it.
* Recovery: every `retry_interval` seconds a background task moves the oldest memory entries
  back to the disk, a group at a time in ONE transaction; once memory is empty and a disk write
  succeeded the queue is normal again. While memory is empty, a put tries the disk at most once
  per `retry_interval` (one probe, not one failing fsync per request).
* Corruption at run time (a read or write answers SQLITE_CORRUPT/NOTADB): the file is
  quarantined as `--recover` does at start-up (moved aside to `<name>.corrupt-<timestamp>`), the
  rows that can still be read are carried over, a fresh file takes over, and what could not be
  read is reported lost with reason `corrupt`.

Order. Invariant: every entry on the disk was accepted before every entry in memory. Puts go
to memory while memory holds anything, and the recovery moves only the oldest memory entries,
and only when no memory entry is leased (a leased one could be older than what would move).
`get` serves the disk first, then memory, so consumers see acceptance order. The one exception:
puts already waiting for a disk commit when the disk fails may land after a later entry.

At-least-once. An entry leaves memory only when acked or committed to the disk (put first,
removed after); a lease from a quarantined file keeps its entry, so a nack puts it back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from sidecar.core.drops import DropReason
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.base import Lease, QueueClosed, QueueFull, QueueStorageError, Sizer, StorageFull
from sidecar.queue.memory import MemoryQueue, Waiters, fits
from sidecar.queue.sqlite import SqliteQueue, recover_database

log = logging.getLogger("sidecar.queue")

DISK_FULL = "disk_full"
IO_ERROR = "io_error"
CORRUPT = DropReason.CORRUPT
STORAGE_REASONS = (DISK_FULL, IO_ERROR, CORRUPT)

RETRY_INTERVAL = 1.0  # seconds between attempts to move memory entries back to the disk
MOVE_BATCH = 64  # entries per transaction when moving back
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024  # without a memory limit, what memory may hold meanwhile
MEMORY_LIMIT_SHARE = 0.5  # with a memory limit, the share of it memory may hold meanwhile


def storage_failure(exc: BaseException) -> str | None:
    """The storage reason of a failed queue operation, or None when it is not a storage failure."""
    if isinstance(exc, StorageFull):
        return DISK_FULL
    if isinstance(exc, QueueStorageError):
        return CORRUPT if exc.corrupt else IO_ERROR
    return None


def memory_bound(memory_limit_bytes: int | None) -> int:
    """Payload bytes memory may hold while the disk fails: a share of the memory limit, if any."""
    if memory_limit_bytes:
        return max(1, int(memory_limit_bytes * MEMORY_LIMIT_SHARE))
    return DEFAULT_MEMORY_BYTES


class StorageListener(Protocol):
    """What the queue reports; the exporter turns each call into a typed event."""

    def storage_error(self, reason: str, detail: str) -> None:
        """One failed storage operation (counted; logged rate-limited)."""

    def storage_degraded(self, reason: str) -> None:
        """The queue started accepting into memory."""

    def storage_restored(self) -> None:
        """Everything is on the disk again and writes succeed."""

    def lost(self, signal: Signal, items: int, reason: DropReason, detail: str) -> None:
        """Items that could not be kept (unreadable rows: `corrupt`; memory left at close: `shutdown`)."""


class _NoListener:
    def storage_error(self, reason: str, detail: str) -> None:
        log.warning("queue storage error", extra={"reason": reason, "detail": detail})

    def storage_degraded(self, reason: str) -> None:
        log.warning("queue storage degraded", extra={"reason": reason})

    def storage_restored(self) -> None:
        log.info("queue storage restored")

    def lost(self, signal: Signal, items: int, reason: DropReason, detail: str) -> None:
        log.error("queue entries lost", extra={"signal": signal.value, "items": items, "reason": reason,
                                               "detail": detail})


DiskOpener = Callable[[], Awaitable[SqliteQueue]]


class StorageFallbackQueue:
    """The ManagedSendingQueue of an exporter with `storage`. See the module docstring."""

    durable = True  # what close() cannot put on the disk is reported lost (reason shutdown)

    def __init__(self, disk: SqliteQueue, *, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 listener: StorageListener | None = None, reopen: DiskOpener | None = None,
                 retry_interval: float = RETRY_INTERVAL,
                 monotonic: Callable[[], float] | None = None) -> None:
        if memory_bytes < 1:
            raise ValueError(f"memory_bytes must be >= 1, got {memory_bytes}")
        self.disk = disk
        self.capacity = disk.capacity
        self.sizer = Sizer(disk.sizer)
        self.memory = MemoryQueue(self.capacity, self.sizer)
        self.memory_bytes = memory_bytes
        self.listener: StorageListener = listener or _NoListener()
        self.retry_interval = retry_interval
        # Opens a fresh, empty disk queue at the same path (after the old file was moved aside).
        self._reopen: DiskOpener = reopen or (lambda: SqliteQueue(
            disk.path, disk.capacity, disk.sizer, disk.synchronous).open())
        self._monotonic = monotonic or (lambda: asyncio.get_running_loop().time())
        self.degraded: str | None = None  # the storage reason while memory is in use, else None
        self.quarantined: list[str] = []  # where corrupt files were moved, oldest first
        self._owners: dict[int, SqliteQueue | MemoryQueue] = {}  # lease id -> the queue it came from
        self._last_probe = float("-inf")
        self._disk_written = False  # a move back succeeded since the last failure
        self._mover: asyncio.Task[None] | None = None
        self._quarantining: asyncio.Task[None] | None = None
        self._getters = Waiters()
        self._empty_waiters = Waiters()
        self._closed = False

    # ------------------------------------------------------------ figures

    @property
    def size(self) -> int:
        return self.disk.size + self.memory.size

    @property
    def bytes(self) -> int:
        return self.disk.bytes + self.memory.bytes

    @property
    def count(self) -> int:
        return self.disk.count + self.memory.count

    @property
    def available(self) -> int:
        return self.disk.available + self.memory.available

    @property
    def leased(self) -> int:
        return len(self._owners)

    @property
    def in_memory(self) -> int:
        """Entries held in memory only (not durable)."""
        return self.memory.count

    @property
    def oldest_accepted_at(self) -> float | None:
        """The older of the disk's and the memory's oldest entry (memory holds what arrived while the disk
        failed, and what is being moved back)."""
        times = [t for t in (self.disk.oldest_accepted_at, self.memory.oldest_accepted_at) if t is not None]
        return min(times) if times else None

    def __repr__(self) -> str:
        return (f"StorageFallbackQueue({self.disk!r}, memory={self.memory.count}, "
                f"degraded={self.degraded})")

    # ------------------------------------------------------------ put

    def fits(self, entry: QueueEntry) -> bool:
        return fits(self.size, self.count, self.sizer.size_of(entry), self.capacity)

    async def put(self, entry: QueueEntry) -> None:
        if self._closed:
            raise QueueClosed("queue is closed")
        if not self.fits(entry):
            raise QueueFull(f"queue full: {self.size}+{self.sizer.size_of(entry)} > {self.capacity} "
                            f"{self.sizer.value}")
        await self._quarantine_if_damaged()
        if self.memory.count == 0 and (self.degraded is None
                                       or self._monotonic() - self._last_probe >= self.retry_interval):
            self._last_probe = self._monotonic()
            await self._try_reopen()
            try:
                await self.disk.put(entry)
            except (StorageFull, QueueStorageError) as exc:
                await self._storage_failed(exc)
            except QueueClosed:
                if self._closed:
                    raise
                if self._quarantining is not None:  # quarantined under us (a get met the damage)
                    await asyncio.shield(self._quarantining)
                else:  # no fresh file could be opened after a quarantine: memory takes it
                    await self._storage_failed(QueueStorageError(
                        f"{self.disk.path}: the queue database is not open", path=str(self.disk.path)))
            else:
                if self.degraded is not None:
                    self._restored()
                self._getters.wake_one()
                return
        self._put_memory(entry)

    def _put_memory(self, entry: QueueEntry) -> None:
        reason = self.degraded or IO_ERROR
        if self.memory.count and self.memory.bytes + len(entry.payload) > self.memory_bytes:
            raise QueueFull(f"{self.disk.path}: storage failing ({reason}) and its memory fallback is full "
                            f"({self.memory.bytes} bytes)", reason=reason)
        self.memory.put_nowait(entry)
        self._getters.wake_one()
        self._start_mover()

    async def _storage_failed(self, exc: BaseException) -> None:
        reason = storage_failure(exc) or IO_ERROR
        self.listener.storage_error(reason, str(exc))
        if self.degraded is None:
            self.degraded = reason
            self.listener.storage_degraded(reason)
        elif self.degraded != reason:
            self.degraded = reason
        if reason == CORRUPT:
            await self._quarantine(str(exc))

    def _restored(self) -> None:
        self.degraded = None
        self.listener.storage_restored()

    # ------------------------------------------------------------ moving back to the disk

    def _start_mover(self) -> None:
        if not self._closed and (self._mover is None or self._mover.done()):
            self._mover = asyncio.get_running_loop().create_task(self._move_back_loop())

    async def _move_back_loop(self) -> None:
        while self.memory.count and not self._closed:
            await asyncio.sleep(self.retry_interval)
            while self.memory.count and not self._closed:
                moved = await self.move_back()
                if moved is None:
                    break  # the disk still fails (or a memory entry is leased): wait and retry
        if not self._closed and self.memory.count == 0 and self.degraded is not None and self._disk_written:
            self._restored()

    async def move_back(self, limit: int = MOVE_BATCH) -> int | None:
        """Move up to `limit` of the oldest memory entries to the disk in one transaction.

        Returns how many moved, or None when nothing could move: the disk failed again, or a
        memory entry is leased (it may be older than the ones that would move; see Order).
        """
        if self.memory.leased or not self.memory.available or self._quarantining is not None:
            return None
        await self._try_reopen()
        leases = [self.memory.get_nowait() for _ in range(min(limit, self.memory.available))]
        try:
            await self.disk.put_many([lease.entry for lease in leases])
        except BaseException as exc:
            for lease in leases:
                await self.memory.nack(lease)
            self._disk_written = False
            if isinstance(exc, (StorageFull, QueueStorageError)):
                await self._storage_failed(exc)
                return None
            if isinstance(exc, (QueueFull, QueueClosed)):
                return None
            raise
        for lease in leases:
            await self.memory.ack(lease)
        self._disk_written = True
        self._getters.wake_one()
        return len(leases)

    # ------------------------------------------------------------ quarantine (runtime corruption)

    async def _quarantine_if_damaged(self) -> None:
        """Wait for a quarantine under way, or start one when the disk reported damage itself."""
        if self._quarantining is not None:
            await asyncio.shield(self._quarantining)
        damaged = self.disk.damaged
        if damaged is not None and not self._closed:
            self.disk.damaged = None
            await self._storage_failed(damaged)

    async def _quarantine(self, detail: str) -> None:
        """Move a corrupt file aside, carry over what it still reads, continue on a fresh file."""
        if self._quarantining is None:
            self._quarantining = asyncio.get_running_loop().create_task(self._swap_file(detail))
        task = self._quarantining
        try:
            await asyncio.shield(task)
        finally:
            if self._quarantining is task and task.done():
                self._quarantining = None

    async def _swap_file(self, detail: str) -> None:
        old = self.disk
        readable, unreadable = await old.salvage()
        old.abandon()
        with contextlib.suppress(Exception):
            await old.close()
        try:
            moved = recover_database(old.path)
        except OSError as exc:
            log.error("cannot move the corrupt queue database aside: %s", exc)
            moved = None
        else:
            self.quarantined.append(str(moved))
        for signal, items in unreadable:
            self.listener.lost(signal, items, CORRUPT, f"{old.path}: unreadable queue row ({detail})")
        await self._try_reopen()  # when even a fresh file fails, memory takes over until it opens
        log.warning("corrupt queue database quarantined", extra={
            "path": str(old.path), "moved_to": str(moved), "carried_over": len(readable),
            "lost_entries": len(unreadable), "detail": detail})
        # Carried-over rows are older than everything in memory: on the fresh file they stay in
        # front of it (the Order invariant); when the fresh file fails too, in front of memory.
        if readable:
            try:
                await self.disk.put_many(readable)
            except Exception as exc:
                log.error("cannot carry the readable rows over to the fresh queue database: %s", exc)
                for entry in reversed(readable):
                    self.memory.put_front_nowait(entry)
                self._start_mover()
            self._getters.wake_all()
        if not self.count:
            self._empty_waiters.wake_all()

    async def _try_reopen(self) -> None:
        """Open a fresh file in place of a closed (quarantined) one; on failure keep the closed one:
        `put` then answers from memory and the next probe tries again."""
        if not self.disk.closed or self._closed:
            return
        try:
            self.disk = await self._reopen()
        except Exception as exc:
            log.error("cannot open a fresh queue database: %s", exc)

    # ------------------------------------------------------------ get / ack / nack

    async def get(self) -> Lease:
        while True:
            await self._quarantine_if_damaged()
            disk = self.disk
            if disk.available and not disk.closed:
                try:
                    lease = await disk.get()
                except QueueStorageError as exc:
                    if exc.lost is not None:
                        self.listener.lost(exc.lost[0], exc.lost[1], CORRUPT, str(exc))
                    await self._storage_failed(exc)
                    continue
                except QueueClosed:
                    if self._closed:
                        raise
                    continue  # the file was swapped: look again
                self._owners[lease.lease_id] = disk
                return lease
            if self.memory.available:
                lease = self.memory.get_nowait()
                self._owners[lease.lease_id] = self.memory
                return lease
            if self._closed:
                raise QueueClosed("queue is closed")
            await self._getters.wait()

    async def ack(self, lease: Lease) -> None:
        owner = self._owners.pop(lease.lease_id, None)
        if owner is None:
            return
        await owner.ack(lease)
        if not self.count:
            self._empty_waiters.wake_all()
        await self._quarantine_if_damaged()  # a DELETE is often the first write to meet the damage

    async def nack(self, lease: Lease) -> None:
        owner = self._owners.pop(lease.lease_id, None)
        if owner is None:
            return
        if owner is self.memory or (owner is self.disk and not self.disk.closed):
            await owner.nack(lease)
        else:
            # From a quarantined file: the entry lives on only in the lease. Older than anything
            # accepted since, so it goes in front.
            self.memory.put_front_nowait(lease.entry)
            self._start_mover()
        self._getters.wake_one()

    async def wait_empty(self, timeout: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.count:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            # Bounded waits: the count also falls where no ack wakes us (a quarantine, a drain).
            await self._empty_waiters.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    async def close(self) -> None:
        """Put what memory holds on the disk if it takes it; report the rest lost (`shutdown`)."""
        if self._closed:
            return
        self._closed = True
        self._getters.wake_all()
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(BaseException):
                await self._mover
        if self._quarantining is not None:
            with contextlib.suppress(BaseException):
                await self._quarantining
        # Leases still out (consumers already stopped) go back, so the entries are moved or counted.
        for lease_id, owner in list(self._owners.items()):
            if owner is self.memory:
                await self.memory.nack(Lease(lease_id, QueueEntry(Signal.TRACES, b"", 0, (), 0.0)))
        while self.memory.count:
            if not self.memory.available:
                break
            leases = [self.memory.get_nowait() for _ in range(min(MOVE_BATCH, self.memory.available))]
            try:
                await self.disk.put_many([lease.entry for lease in leases])
            except Exception as exc:
                for lease in leases:
                    await self.memory.nack(lease)
                log.error("shutdown: the disk still refuses the entries held in memory: %s", exc)
                break
            for lease in leases:
                await self.memory.ack(lease)
        left: dict[Signal, int] = {}
        for entry in self.memory.drain_nowait():
            left[entry.signal] = left.get(entry.signal, 0) + entry.items
        for signal, items in left.items():
            self.listener.lost(signal, items, DropReason.SHUTDOWN,
                               f"{self.disk.path}: held in memory while the storage failed ({self.degraded})")
        self._empty_waiters.wake_all()
        await self.disk.close()
