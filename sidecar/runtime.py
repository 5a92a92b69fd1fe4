"""Process-level preconditions: the fast protobuf backend, uvloop, and glibc's malloc thresholds and arena count."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MALLOC_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
MALLOC_TRIM_VALUE = "268435456"
# Setting the trim threshold turns off glibc's dynamic mmap threshold, which would otherwise rise to
# the size of the request buffers: without this every buffer of 128 KiB or more (a 512-span request
# is ~230 KiB) is a fresh mmap, page-faulted in and unmapped again, several times per request.
MALLOC_MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
MALLOC_MMAP_VALUE = "4194304"
MALLOC_ENV = {MALLOC_TRIM_ENV: MALLOC_TRIM_VALUE, MALLOC_MMAP_ENV: MALLOC_MMAP_VALUE}
# One malloc arena for every thread. grpc's EventEngine threads allocate the socket buffers of a burst in
# arenas of their own; the space freed at the top of such a per-thread arena is given back only by a free()
# that finds it over the trim threshold (never, at 256 MiB), not by malloc_trim(0), which trims the main
# arena's top and the free chunks inside every arena: 60 s after a 30 s burst four EventEngine arenas still
# held 16.8 MiB resident, nearly all of it free (malloc_info: 5.8-7.3 MiB free of 5.9-7.4 MiB each). With
# one arena, IdleMemoryRelease gets it all back; throughput unchanged within noise (bench/notes.md, Footprint).
# Set only for the sidecar's own process (not in MALLOC_ENV, which bench/run.py also gives its tools).
MALLOC_ARENA_ENV = "MALLOC_ARENA_MAX"
MALLOC_ARENA_VALUE = "1"


class RuntimeRequirementError(RuntimeError):
    """The interpreter lacks something the sidecar relies on (protobuf's upb backend)."""


def require_upb() -> None:
    from google.protobuf.internal import api_implementation

    backend = api_implementation.Type()
    if backend != "upb":
        raise RuntimeRequirementError(
            f"protobuf is using its {backend!r} backend; the sidecar needs the 'upb' backend "
            "(the pure-Python one is ~300x slower). Install a binary protobuf wheel (pip install "
            "--force-reinstall protobuf) and unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION.")


def install_uvloop() -> None:
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# mallopt(3) parameter numbers (malloc.h): what the environment variables set.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
_MALLOPT = {MALLOC_TRIM_ENV: M_TRIM_THRESHOLD, MALLOC_MMAP_ENV: M_MMAP_THRESHOLD, MALLOC_ARENA_ENV: M_ARENA_MAX}
_MALLOPT_VALUES = {**MALLOC_ENV, MALLOC_ARENA_ENV: MALLOC_ARENA_VALUE}


def tune_malloc(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Set glibc's trim and mmap thresholds (MALLOC_ENV) and its arena count (MALLOC_ARENA_ENV) with
    mallopt(3), in this process, now; returns the names set. A value already in the environment is glibc's
    already (it read it at start) and kept. Called before any thread runs: the arena count applies to the
    arenas threads create after it.

    Protobuf churn fragments the heap; a high trim threshold roughly doubles throughput here, and
    the mmap threshold keeps request-sized buffers on the heap (see MALLOC_MMAP_ENV). Freed heap
    memory is then kept by the process: `release_free_memory` gives it back when memory is tight, and
    IdleMemoryRelease once the process is quiet after a burst. mallopt sets the same parameters as the
    variables (both turn off the dynamic mmap threshold); the launcher used to set the variables and
    exec itself a second time, which cost a second interpreter start-up on the way to /ready.
    """
    libc = _load_libc()
    if not libc:
        return []
    done = []
    for name, param in _MALLOPT.items():
        if not environ.get(name) and libc.mallopt(param, int(_MALLOPT_VALUES[name])) == 1:
            done.append(name)
    return done


_libc: Any = None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS (glibc `malloc_trim(0)`); False where not available.

    The high trim threshold makes glibc keep freed memory, so RSS stays at its high-water mark
    after a backlog drained; the memory limit looks at RSS, so it calls this before trusting it.
    Walks the heap: milliseconds for hundreds of MiB, so not on every request.
    """
    libc = _load_libc()
    if not libc:
        return False
    libc.malloc_trim(0)
    return True


def _load_libc() -> Any:
    """glibc through ctypes, or False (not Linux, or another C library)."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform == "linux":
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _libc = libc
            except (OSError, AttributeError) as exc:  # not glibc (musl, ...): no tuning, no trimming
                log.debug("glibc's malloc controls are not available: %s", exc)
    return _libc


def collect_and_release() -> bool:
    """A full garbage collection (cycles left by the burst free their blocks), then `release_free_memory`."""
    gc.collect()
    return release_free_memory()


class IdleMemoryRelease:
    """Give freed heap back to the OS once the process has gone quiet after being busy.

    The trim threshold (MALLOC_ENV) keeps glibc from returning freed memory while requests churn
    buffers, which is what buys the throughput; but after a burst it leaves RSS at its high-water
    mark for good. This looks at the process's own CPU time every `interval` seconds: after an
    interval busier than `idle_share` of a core, the first quiet interval calls `release` once (a full
    gc and malloc_trim(0): tens of milliseconds, once). Under steady load it never runs, so the
    throughput stays; at rest after a burst RSS comes back within an interval or two; at rest it costs
    one clock read per interval.
    """

    def __init__(self, interval: float = 5.0, idle_share: float = 0.02,
                 cpu_seconds: Callable[[], float] = time.process_time,
                 release: Callable[[], bool] = collect_and_release) -> None:
        self.interval = interval
        self.idle_share = idle_share
        self._cpu_seconds = cpu_seconds
        self._release = release
        self._last = cpu_seconds()
        self._busy_since_release = False
        self.releases = 0
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> bool:
        """One interval has passed: release when it was quiet after a busy one; True if it released."""
        now = self._cpu_seconds()
        share, self._last = (now - self._last) / self.interval, now
        if share > self.idle_share:
            self._busy_since_release = True
            return False
        if not self._busy_since_release:
            return False
        self._busy_since_release = False
        self.releases += 1
        return self._release()

    def start(self) -> None:
        self._last = self._cpu_seconds()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="idle-memory-release")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
