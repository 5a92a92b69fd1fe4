"""A small tmpfs for the disk-full tests (issue 16): mounted by the test, which needs root.

Where mounting is impossible the test skips with the reason, except under CI (`CI` set in the
environment), where it fails instead: CI must run it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _cannot_mount() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    return None


@contextlib.contextmanager
def mounted_tmpfs(mountpoint: Path, size: str = "1m") -> Iterator[Path]:
    """A tmpfs of `size` at `mountpoint` (created), unmounted afterwards; skips (fails under CI) when
    it cannot be mounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    reason = _cannot_mount()
    if reason is None:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            reason = f"mount -t tmpfs failed: {result.stderr.strip() or result.returncode}"
    if reason is not None:
        message = f"disk-full test needs a {size} tmpfs and cannot mount one here ({reason})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run it (run the tests as root)")
        pytest.skip(message)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False)


def resize_tmpfs(mountpoint: Path, size: str) -> None:
    """Grow (or shrink) a mounted tmpfs in place: the disk "comes back" with room, files kept."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], capture_output=True, text=True,
                   timeout=30, check=True)


def fill_up(directory: Path) -> Path:
    """Write a file until the volume has no byte left; returns it (unlink it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    return filler
