"""Build the queue and the dead-letter store of one exporter from its configuration.

Files, under `extensions.file_storage.directory` (created if missing):
  <sanitized exporter name>.sqlite             the sending queue
  <sanitized exporter name>.deadletter.sqlite  its dead letters
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.config.schema import SendingQueueConfig
from sidecar.queue.base import ManagedSendingQueue, QueueStorageError, Sizer
from sidecar.queue.deadletter import (
    DEFAULT_MAX_ENTRIES,
    DeadLetterStore,
    MemoryDeadLetters,
    SqliteDeadLetters,
)
from sidecar.queue.deadletter_fallback import FallbackDeadLetters
from sidecar.queue.fallback import StorageFallbackQueue, StorageListener, memory_bound
from sidecar.queue.memory import MemoryQueue
from sidecar.queue.sqlite import SqliteQueue, Synchronous, recover_database
from sidecar.queue.tiered import TieredQueue

log = logging.getLogger("sidecar.queue")

# Dead letters kept in memory are bounded in bytes too, so they cannot eat the memory limit.
MEMORY_DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 120


def sanitize_name(name: str) -> str:
    """A file-name-safe, collision-resistant form of an exporter name.

    The `/` between kind and name becomes `_` (`otlp_grpc/primary` -> `otlp_grpc_primary`; the
    kinds are fixed words, so `otlp_grpc_primary` is not itself a valid exporter name). Any other character outside
    `[A-Za-z0-9._-]` (a further `/` included), a leading dot, or an over-long name is replaced
    too, and then a short hash of the original name is appended so that two different names
    cannot share a file.
    """
    if not name:
        raise ValueError("exporter name is empty")
    base = name.replace("/", "_", 1)
    safe = _UNSAFE.sub("_", base).lstrip(".")
    if safe != base or not safe or len(safe) > _MAX_NAME:
        digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
        safe = f"{(safe or 'exporter')[:_MAX_NAME]}-{digest}"
    return safe


def queue_path(storage_directory: Path, exporter_name: str) -> Path:
    return Path(storage_directory) / f"{sanitize_name(exporter_name)}.sqlite"


def dead_letter_path(storage_directory: Path, exporter_name: str) -> Path:
    return Path(storage_directory) / f"{sanitize_name(exporter_name)}.deadletter.sqlite"


async def open_queue(exporter_name: str, config: SendingQueueConfig, storage_directory: Path | None,
                     *, recover: bool = False, memory_limit_bytes: int | None = None,
                     listener: StorageListener | None = None) -> ManagedSendingQueue:
    """The exporter's queue: SQLite when `config.storage` is set, memory otherwise; with
    `storage_mode: spill`, memory and SQLite behind a TieredQueue (the exporter sets `spilling`).

    The SQLite queue comes wrapped in a StorageFallbackQueue: while its disk fails it accepts
    into memory, up to `memory_bound(memory_limit_bytes)` of payload, and tells `listener`.

    `storage_directory` is `extensions.file_storage.directory`; it must be given when
    `config.storage` is set. With `recover=True` a corrupt database is moved aside
    (`recover_database`) and a fresh one created; without it, QueueStorageError.
    `config.enabled` is not looked at: whether to queue at all is the caller's decision.
    """
    sizer = Sizer(config.sizer)
    if config.storage is None:
        return MemoryQueue(config.queue_size, sizer)
    if storage_directory is None:
        raise ValueError(f"exporter {exporter_name}: sending_queue.storage={config.storage!r} "
                         f"needs a storage directory (extensions.file_storage.directory)")
    path = queue_path(_ensure_directory(storage_directory), exporter_name)
    try:
        disk = await SqliteQueue(path, config.queue_size, sizer, config.synchronous).open()
    except QueueStorageError as exc:
        if not (recover and exc.corrupt):
            raise
        moved = recover_database(path)
        log.warning("exporter %s: queue database %s was corrupt (%s); moved aside to %s, starting empty",
                    exporter_name, path, exc, moved)
        disk = await SqliteQueue(path, config.queue_size, sizer, config.synchronous).open()
    durable = StorageFallbackQueue(disk, memory_bytes=memory_bound(memory_limit_bytes), listener=listener)
    if config.storage_mode == "spill":
        return TieredQueue(MemoryQueue(config.queue_size, sizer), durable, config.queue_size, sizer)
    return durable


async def open_dead_letters(exporter_name: str, storage_directory: Path | None, *,
                            max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int | None = None,
                            max_age: float | None = None, synchronous: Synchronous = "FULL",
                            recover: bool = False, listener: StorageListener | None = None,
                            monotonic: Callable[[], float] = time.monotonic) -> DeadLetterStore:
    """The exporter's dead letters: a SQLite file next to its queue, or memory when no directory.

    In memory, `max_bytes` defaults to MEMORY_DEAD_LETTER_MAX_BYTES; on disk it is unbounded
    unless given (only `max_entries` bounds it). `max_age` (seconds, None: no limit) applies to both.
    With a `listener`, the SQLite store comes wrapped in FallbackDeadLetters: it keeps taking dead
    letters in memory while its disk fails.
    """
    if storage_directory is None:
        memory_bytes = MEMORY_DEAD_LETTER_MAX_BYTES if max_bytes is None else max_bytes
        return MemoryDeadLetters(max_entries, memory_bytes, max_age)
    path = dead_letter_path(_ensure_directory(storage_directory), exporter_name)
    try:
        disk = await SqliteDeadLetters(path, max_entries, max_bytes, synchronous, max_age).open()
    except QueueStorageError as exc:
        if not (recover and exc.corrupt):
            raise
        moved = recover_database(path)
        log.warning("exporter %s: dead-letter database %s was corrupt (%s); moved aside to %s, "
                    "starting empty", exporter_name, path, exc, moved)
        disk = await SqliteDeadLetters(path, max_entries, max_bytes, synchronous, max_age).open()
    if listener is None:
        return disk
    return FallbackDeadLetters(disk, listener, monotonic)


def _ensure_directory(directory: Path) -> Path:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QueueStorageError(f"{directory}: cannot create the storage directory: {exc}",
                                path=str(directory)) from exc
    return directory
