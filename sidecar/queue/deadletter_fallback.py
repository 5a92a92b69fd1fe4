"""Dead letters that stay writable while their disk fails (issue 16).

`FallbackDeadLetters` is the DeadLetterStore of an exporter with storage: SQLite, and a bounded
`MemoryDeadLetters` that takes new dead letters while the disk refuses them (full, I/O error,
corrupt). Memory dead letters are numbered from MEMORY_FIRST_ID, so ids never collide and the
admin API lists, replays and removes both kinds alike (disk ones first, each oldest first).

Once a disk write succeeds again, the memory dead letters are moved to the disk (they get new,
disk ids: an operator listing meanwhile sees them renumbered). At close, what the disk still
refuses is reported lost (reason `shutdown`), as for the queue.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence

from sidecar.core.drops import DropReason
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Classification
from sidecar.queue.base import QueueStorageError
from sidecar.queue.deadletter import DeadLetter, Evicted, MemoryDeadLetters, SqliteDeadLetters
from sidecar.queue.fallback import CORRUPT, DISK_FULL, IO_ERROR, RETRY_INTERVAL, StorageListener
from sidecar.queue.sqlite import is_disk_full, recover_database

log = logging.getLogger("sidecar.queue")

MEMORY_FIRST_ID = 1 << 48  # far above any SQLite AUTOINCREMENT id a dead-letter table reaches
MEMORY_MAX_BYTES = 16 * 1024 * 1024


def dead_letter_failure(exc: BaseException) -> str | None:
    """The storage reason of a failed dead-letter write, or None when it is not a storage failure."""
    if not isinstance(exc, (QueueStorageError, sqlite3.Error, OSError)):
        return None
    cause = exc.__cause__ if isinstance(exc, QueueStorageError) and exc.__cause__ is not None else exc
    if is_disk_full(cause):
        return DISK_FULL
    if isinstance(exc, QueueStorageError) and exc.corrupt:
        return CORRUPT
    return IO_ERROR


class FallbackDeadLetters:
    durable = True

    def __init__(self, disk: SqliteDeadLetters, listener: StorageListener,
                 monotonic: Callable[[], float], *, memory_max_bytes: int = MEMORY_MAX_BYTES,
                 retry_interval: float = RETRY_INTERVAL) -> None:
        self.disk = disk
        self.memory = MemoryDeadLetters(disk.max_entries, memory_max_bytes, disk.max_age,
                                        first_id=MEMORY_FIRST_ID)
        self.listener = listener
        self.max_entries = disk.max_entries
        self.max_bytes = disk.max_bytes
        self.max_age = disk.max_age
        self.retry_interval = retry_interval
        self._monotonic = monotonic
        self.degraded: str | None = None
        self.quarantined: list[str] = []  # where corrupt files were moved, oldest first
        self._failed_at = float("-inf")
        self._mover: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return self.disk.count + self.memory.count

    @property
    def bytes(self) -> int:
        return self.disk.bytes + self.memory.bytes

    @property
    def evicted(self) -> int:
        return self.disk.evicted + self.memory.evicted

    @property
    def evicted_items(self) -> int:
        return self.disk.evicted_items + self.memory.evicted_items

    async def expire(self, now: float) -> builtins.list[Evicted]:
        """Expire by age in both stores (the disk's failure is the caller's to see, as for `add`)."""
        evicted = [*await self.memory.expire(now), *await self.disk.expire(now)]
        self._restored_if_empty()  # nothing left in memory: nothing is held outside the disk
        return evicted

    async def add(self, entry: QueueEntry, classification: Classification, message: str,
                  dead_at: float | None = None, rejected_items: int = 0) -> builtins.list[Evicted]:
        probe_due = self._monotonic() - self._failed_at >= self.retry_interval
        if self.degraded is None or probe_due:
            try:
                evicted = await self.disk.add(entry, classification, message, dead_at, rejected_items)
            except Exception as exc:
                reason = dead_letter_failure(exc)
                if reason is None:
                    raise
                self._failed(reason, exc)
                if reason == CORRUPT:
                    await self._quarantine(str(exc))
            else:
                if self.degraded is not None:
                    evicted += await self._move_to_disk()
                return evicted
        evicted = await self.memory.add(entry, classification, message, dead_at, rejected_items)
        if self._mover is None or self._mover.done():
            self._mover = asyncio.get_running_loop().create_task(self._move_back_loop())
        return evicted

    async def _move_back_loop(self) -> None:
        """Without new dead letters nothing would probe the disk: retry the move every interval."""
        while self.degraded is not None and self.memory.count:
            await asyncio.sleep(self.retry_interval)
            for evicted in await self._move_to_disk():
                self.listener.lost(evicted.signal, evicted.dropped_items, evicted.reason,
                                   f"{self.disk.path}: dead-letter store full or past max_age")

    def _failed(self, reason: str, exc: BaseException) -> None:
        self._failed_at = self._monotonic()
        self.listener.storage_error(reason, str(exc))
        if self.degraded is None:
            self.listener.storage_degraded(reason)
        self.degraded = reason

    async def _quarantine(self, detail: str) -> None:
        """The file is damaged: carry what still reads into memory, move the file aside as
        --recover does, and continue on a fresh one; what cannot be read is lost as `corrupt`."""
        old = self.disk
        for dl_id, signal, items in old.known():
            try:
                letters = await old.get([dl_id])
            except Exception:
                letters = []
            if letters:
                dl = letters[0]
                for ev in await self.memory.add(dl.entry, dl.classification, dl.message, dl.dead_at,
                                                dl.rejected_items):
                    self.listener.lost(ev.signal, ev.dropped_items, ev.reason,
                                       f"{old.path}: carried over past the bound")
            else:
                self.listener.lost(signal, items, CORRUPT, f"{old.path}: unreadable dead letter")
        with contextlib.suppress(Exception):
            await old.close()
        try:
            moved = recover_database(old.path)
            self.disk = await SqliteDeadLetters(old.path, old.max_entries, old.max_bytes, old.synchronous,
                                                old.max_age).open()
        except Exception as exc:  # the memory store keeps them; the next probe fails on the closed file again
            log.error("cannot replace the corrupt dead-letter database %s: %s", old.path, exc)
            return
        self.quarantined.append(str(moved))
        log.warning("corrupt dead-letter database quarantined", extra={
            "path": str(old.path), "moved_to": str(moved), "detail": detail})
        if self._mover is None or self._mover.done():
            self._mover = asyncio.get_running_loop().create_task(self._move_back_loop())

    async def _move_to_disk(self) -> builtins.list[Evicted]:
        """Put the memory dead letters on the disk (oldest first); restored once all moved."""
        evicted: builtins.list[Evicted] = []
        for dl in await self.memory.list(limit=max(1, self.memory.count)):
            try:
                evicted += await self.disk.add(dl.entry, dl.classification, dl.message, dl.dead_at,
                                               dl.rejected_items)
            except Exception as exc:
                reason = dead_letter_failure(exc)
                if reason is None:
                    raise
                self._failed(reason, exc)
                return evicted
            await self.memory.remove([dl.id])
        if self.degraded is not None:
            self.degraded = None
            self.listener.storage_restored()
        return evicted

    async def list(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        on_disk = self.disk.count
        out = await self.disk.list(limit, offset) if offset < on_disk else []
        if len(out) < limit:
            out += await self.memory.list(limit - len(out), max(0, offset - on_disk))
        return out

    def _split(self, ids: Sequence[int]) -> tuple[builtins.list[int], builtins.list[int]]:
        disk = [i for i in ids if int(i) < MEMORY_FIRST_ID]
        memory = [i for i in ids if int(i) >= MEMORY_FIRST_ID]
        return disk, memory

    async def take(self, ids: Sequence[int] | None = None,
                   limit: int | None = None) -> builtins.list[DeadLetter]:
        if ids is None:
            out = await self.disk.take(None, limit)
            rest = None if limit is None else limit - len(out)
            out += await self.memory.take(None, rest)
        else:
            disk_ids, memory_ids = self._split(ids)
            out = await self.disk.take(disk_ids, limit) if disk_ids else []
            rest = None if limit is None else limit - len(out)
            out += await self.memory.take(memory_ids, rest) if memory_ids else []
        self._restored_if_empty()
        return out

    async def get(self, ids: Sequence[int]) -> builtins.list[DeadLetter]:
        disk_ids, memory_ids = self._split(ids)
        return await self.disk.get(disk_ids) + await self.memory.get(memory_ids)

    async def remove(self, ids: Sequence[int]) -> int:
        disk_ids, memory_ids = self._split(ids)
        removed = await self.disk.remove(disk_ids) + await self.memory.remove(memory_ids)
        self._restored_if_empty()
        return removed

    def _restored_if_empty(self) -> None:
        """Memory emptied by a take or remove: nothing is held outside the disk any more."""
        if self.degraded is not None and not self.memory.count:
            self.degraded = None
            self.listener.storage_restored()

    async def close(self) -> None:
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(BaseException):
                await self._mover
        if self.memory.count:
            self._failed_at = float("-inf")
            await self._move_to_disk()
        left = await self.memory.take()
        if left:
            log.error("shutdown: dead letters held in memory could not be written to the disk",
                      extra={"dead_letters": len(left)})
        lost: dict[Signal, int] = {}
        for dl in left:
            lost[dl.entry.signal] = lost.get(dl.entry.signal, 0) + dl.dropped_items
        for signal, items in lost.items():
            self.listener.lost(signal, items, DropReason.SHUTDOWN,
                               f"{self.disk.path}: dead letters held in memory while the storage failed")
        await self.disk.close()
