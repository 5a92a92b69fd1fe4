"""Waiting in tests by polling a condition with a bounded deadline, never by sleeping "long enough"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll until the predicate holds (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until the predicate returns something truthy and return it; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def holds_for(predicate: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    """True when the predicate holds at every poll for `seconds`; False at the first poll where it does not.

    For "X did not happen" (no retry, no second attempt): the check fails as soon as X happens instead of
    sleeping and looking once.
    """
    deadline = time.monotonic() + seconds
    while True:
        if not predicate():
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(interval)
