"""Process-level preconditions: the fast protobuf backend, uvloop, and glibc's malloc trim threshold."""

from __future__ import annotations

import os
import sys

MALLOC_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
MALLOC_TRIM_VALUE = "268435456"


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
    """glibc reads MALLOC_TRIM_THRESHOLD_ only at start, so set it and exec ourselves once.

    Protobuf churn fragments the heap; a high trim threshold roughly doubles throughput here.
    """
    if os.environ.get(MALLOC_TRIM_ENV) or sys.platform != "linux":
        return
    env = dict(os.environ)
    env[MALLOC_TRIM_ENV] = MALLOC_TRIM_VALUE
    os.execve(sys.executable, [sys.executable, "-m", "sidecar", *argv], env)
