from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.schema import SendingQueueConfig
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.base import QueueStorageError, Sizer
from sidecar.queue.deadletter import MemoryDeadLetters, SqliteDeadLetters
from sidecar.queue.factory import (
    MEMORY_DEAD_LETTER_MAX_BYTES,
    dead_letter_path,
    open_dead_letters,
    open_queue,
    queue_path,
    sanitize_name,
)
from sidecar.queue.fallback import StorageFallbackQueue
from sidecar.queue.memory import MemoryQueue
from sidecar.queue.sqlite import SqliteQueue


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(("name", "expected"), [
    ("otlp_grpc", "otlp_grpc"),
    ("otlp_grpc/primary", "otlp_grpc_primary"),
    ("otlp_http/eu-west.1", "otlp_http_eu-west.1"),
])
def test_sanitize_plain_names(name: str, expected: str) -> None:
    assert sanitize_name(name) == expected


@pytest.mark.parametrize("name", ["otlp_grpc/a b", "otlp_grpc/../../etc", "otlp_http/ü", ".hidden", "x" * 300])
def test_sanitize_unsafe_names_get_a_hash(name: str) -> None:
    safe = sanitize_name(name)
    assert "/" not in safe and not safe.startswith(".") and len(safe) <= 130
    assert all(c.isalnum() or c in "._-" for c in safe)
    assert sanitize_name(name) == safe  # stable


def test_sanitize_keeps_names_apart() -> None:
    names = ["otlp_grpc/a b", "otlp_grpc/a_b", "otlp_grpc/a?b", "otlp_grpc/a/b"]
    assert len({sanitize_name(n) for n in names}) == len(names)
    with pytest.raises(ValueError):
        sanitize_name("")


async def test_memory_queue_without_storage(tmp_path: Path) -> None:
    q = await open_queue("otlp_grpc", SendingQueueConfig(queue_size=7, sizer="items"), tmp_path)
    assert isinstance(q, MemoryQueue)
    assert (q.capacity, q.sizer, q.durable) == (7, Sizer.ITEMS, False)
    assert names(tmp_path) == []


async def test_sqlite_queue_with_storage(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "queues"  # created on demand
    config = SendingQueueConfig(queue_size=5, sizer="bytes", storage="file_storage", synchronous="NORMAL")
    q = await open_queue("otlp_grpc/primary", config, directory, memory_limit_bytes=1000)
    assert isinstance(q, StorageFallbackQueue)  # accepts into memory while the disk fails
    assert q.memory_bytes == 500  # half the memory limit
    disk = q.disk
    assert isinstance(disk, SqliteQueue)
    assert disk.path == directory / "otlp_grpc_primary.sqlite" == queue_path(directory, "otlp_grpc/primary")
    assert (disk.capacity, disk.sizer, disk.synchronous, q.durable) == (5, Sizer.BYTES, "NORMAL", True)
    assert (q.capacity, q.sizer) == (5, Sizer.BYTES)
    await q.put(QueueEntry(Signal.TRACES, b"abc", 1, (), 1.0))
    assert disk.count == 1 and q.in_memory == 0
    await q.close()
    assert disk.path.exists()


async def test_storage_without_directory_is_an_error() -> None:
    with pytest.raises(ValueError, match="file_storage"):
        await open_queue("otlp_grpc", SendingQueueConfig(storage="file_storage"), None)


async def test_corrupt_queue_fails_without_recover_and_is_moved_aside_with_it(tmp_path: Path) -> None:
    config = SendingQueueConfig(storage="file_storage")
    path = queue_path(tmp_path, "otlp_grpc")
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(QueueStorageError, match="--recover"):
        await open_queue("otlp_grpc", config, tmp_path)
    q = await open_queue("otlp_grpc", config, tmp_path, recover=True)
    assert q.count == 0
    await q.close()
    moved = [name for name in names(tmp_path) if ".corrupt-" in name]
    assert len(moved) == 1 and moved[0].startswith("otlp_grpc.sqlite.corrupt-")


async def test_dead_letters_in_memory_or_next_to_the_queue(tmp_path: Path) -> None:
    memory = await open_dead_letters("otlp_grpc", None)
    assert isinstance(memory, MemoryDeadLetters)
    assert (memory.max_entries, memory.max_bytes) == (10_000, MEMORY_DEAD_LETTER_MAX_BYTES)

    disk = await open_dead_letters("otlp_http/b", tmp_path, max_entries=5)
    assert isinstance(disk, SqliteDeadLetters)
    assert disk.path == tmp_path / "otlp_http_b.deadletter.sqlite" == dead_letter_path(tmp_path, "otlp_http/b")
    assert (disk.max_entries, disk.max_bytes) == (5, None)
    await disk.close()


async def test_corrupt_dead_letters_recover(tmp_path: Path) -> None:
    dead_letter_path(tmp_path, "otlp_grpc").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(QueueStorageError):
        await open_dead_letters("otlp_grpc", tmp_path)
    store = await open_dead_letters("otlp_grpc", tmp_path, recover=True)
    assert store.count == 0
    await store.close()
