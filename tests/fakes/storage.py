"""Shared by the storage-fallback tests: a listener that records what the fallback stores report, and
numbered entries whose payload says which they are."""

from __future__ import annotations

from pathlib import Path

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal


def numbered_entry(n: int, nbytes: int, *, signal: Signal = Signal.TRACES, items: int = 3,
                   metadata: tuple[tuple[str, str], ...] = (), accepted_at: float = 0.0) -> QueueEntry:
    """An entry whose payload starts with `n` (8 digits), padded to `nbytes`; `num` reads `n` back."""
    return QueueEntry(signal, f"{n:08d}".encode().ljust(nbytes, b"."), items, metadata, accepted_at + n)


def num(e: QueueEntry) -> int:
    return int(e.payload[:8])


def exists(path: str | Path) -> bool:
    return Path(path).exists()


class Recorder:
    """A StorageListener that keeps what it was told: events in order, lost items by reason."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.lost_items: dict[str, int] = {}

    def storage_error(self, reason: str, detail: str) -> None:
        self.events.append(("error", reason))

    def storage_degraded(self, reason: str) -> None:
        self.events.append(("degraded", reason))

    def storage_restored(self) -> None:
        self.events.append(("restored",))

    def lost(self, signal: Signal, items: int, reason: str, detail: str) -> None:
        self.lost_items[reason] = self.lost_items.get(reason, 0) + items
