"""Process-level preconditions: the fast protobuf backend, uvloop, and glibc's malloc thresholds."""

from __future__ import annotations

import os
import sys
from typing import Any

MALLOC_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
MALLOC_TRIM_VALUE = "268435456"
# Setting the trim threshold turns off glibc's dynamic mmap threshold, which would otherwise rise to
# the size of the request buffers: without this every buffer of 128 KiB or more (a 512-span request
# is ~230 KiB) is a fresh mmap, page-faulted in and unmapped again, several times per request.
MALLOC_MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
MALLOC_MMAP_VALUE = "4194304"
MALLOC_ENV = {MALLOC_TRIM_ENV: MALLOC_TRIM_VALUE, MALLOC_MMAP_ENV: MALLOC_MMAP_VALUE}


class RuntimeRequirementError(RuntimeError):
    pass


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


def reexec_with_malloc_tuning(argv: list[str]) -> None:
    """glibc reads MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ only at start, so set them and
    exec ourselves once (a value already in the environment is kept).

    Protobuf churn fragments the heap; a high trim threshold roughly doubles throughput here, and
    the mmap threshold keeps request-sized buffers on the heap (see MALLOC_MMAP_ENV). Freed heap
    memory is then kept by the process: `release_free_memory` gives it back when memory is tight.
    """
    if sys.platform != "linux" or all(os.environ.get(name) for name in MALLOC_ENV):
        return
    env = dict(os.environ)
    for name, value in MALLOC_ENV.items():
        if not env.get(name):
            env[name] = value
    os.execve(sys.executable, [sys.executable, "-m", "sidecar", *argv], env)


_libc: Any = None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS (glibc `malloc_trim(0)`); False where not available.

    The high trim threshold makes glibc keep freed memory, so RSS stays at its high-water mark
    after a backlog drained; the memory limit looks at RSS, so it calls this before trusting it.
    Walks the heap: milliseconds for hundreds of MiB, so not on every request.
    """
    global _libc
    if sys.platform != "linux":
        return False
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True
