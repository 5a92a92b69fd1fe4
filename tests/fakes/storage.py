"""Shared by the storage tests: a listener that records what the fallback stores report, numbered entries
whose payload says which they are, and a dead-letter file as an older sidecar wrote it."""

from __future__ import annotations

import sqlite3
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


# The dead-letter table as the first release created it (no rejected_items), user_version 1.
OLD_DEAD_LETTER_SCHEMA = """
CREATE TABLE dead_letters (
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
    dead_at        REAL    NOT NULL
)
"""


def write_old_dead_letter_file(path: Path, payload: bytes = b"hello", items: int = 7) -> None:
    """A dead-letter file of an older sidecar holding one dead letter (a whole request refused as bad data;
    `payload` must be a serialized Export request of `items` items for a replay to deliver it)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(OLD_DEAD_LETTER_SCHEMA)
    conn.execute("INSERT INTO dead_letters (signal, payload, items, metadata, accepted_at, nbytes, category, "
                 "severity, recoverability, recovery, error_type, classified_by, message, dead_at) "
                 "VALUES ('traces', ?, ?, '[]', 1000.5, ?, 'serialization', 'high', 'permanent', 'drop', "
                 "'INVALID_ARGUMENT', 'default', 'old one', 1234.0)", (payload, items, len(payload)))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
