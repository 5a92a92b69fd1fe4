"""The interface that memory and disk queues share, and what they raise (DESIGN.md §5)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal


class Sizer(enum.StrEnum):
    REQUESTS = "requests"
    ITEMS = "items"
    BYTES = "bytes"

    def size_of(self, entry: QueueEntry) -> int:
        if self is Sizer.REQUESTS:
            return 1
        if self is Sizer.ITEMS:
            return entry.items
        return len(entry.payload)


@dataclass(frozen=True, slots=True)
class Lease:
    """An entry handed to a consumer; it stays owned by the queue until ack or nack."""

    lease_id: int
    entry: QueueEntry


class QueueFull(Exception):
    """The entry does not fit; the caller decides between shedding and backpressure.

    `reason` is what the client's push-back is counted and logged under: `queue_full` for the
    queue's own bound, or the storage reason (`disk_full`, ...) when the storage is what is full.
    """

    def __init__(self, message: str, *, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.reason = reason


class StorageFull(QueueFull):
    """The disk under a durable queue is full (SQLITE_FULL / ENOSPC): nothing was stored."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="disk_full")


class SendingQueue(Protocol):
    capacity: int
    sizer: Sizer

    @property
    def size(self) -> int:
        """Current size in the sizer's unit, including leased (in-flight) entries."""

    @property
    def bytes(self) -> int:
        """Payload bytes held, including leased entries."""

    @property
    def count(self) -> int:
        """Entries held, including leased ones."""

    async def put(self, entry: QueueEntry) -> None:
        """Store the entry durably (for the disk queue) before returning; raise QueueFull."""

    async def get(self) -> Lease:
        """Wait for the oldest available entry and lease it."""

    async def ack(self, lease: Lease) -> None:
        """Upstream accepted it (or it was dead-lettered): remove it for good."""

    async def nack(self, lease: Lease) -> None:
        """Give it back; it is offered again before newer entries."""

    async def close(self) -> None:
        """Release resources; leased entries stay stored (disk) for replay on restart."""


# ---------------------------------------------------------------- additions (queue implementations)


class QueueClosed(Exception):
    """The queue was closed: `put` refuses new entries and waiting `get` calls are released."""


class QueueStorageError(Exception):
    """The queue's storage cannot be used (corrupt, unreadable, locked by another process, I/O error).

    `path` names the database file; `corrupt` says whether moving it aside (`--recover`) would help.
    """

    def __init__(self, message: str, *, path: str | None = None, corrupt: bool = False,
                 lost: tuple[Signal, int] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.corrupt = corrupt
        self.lost = lost  # (signal, items) of an entry that became unreadable, when one did


class ManagedSendingQueue(SendingQueue, Protocol):
    """What both implementations offer beyond SendingQueue (memory and SQLite alike)."""

    durable: bool  # True when what `put` acknowledged survives a process crash

    @property
    def available(self) -> int:
        """Entries that are not leased, i.e. that a `get` would return without waiting."""

    @property
    def leased(self) -> int:
        """Entries handed to consumers and neither acked nor nacked yet."""

    @property
    def oldest_accepted_at(self) -> float | None:
        """`accepted_at` (wall clock) of the oldest entry held, leased ones included; None when empty."""

    async def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until nothing is held (leased entries included); False when the timeout expired."""
