"""Stopping background tasks: one way for every start/stop pair (probers, samplers, consumers, the fleet)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel `tasks` and wait until each has finished. How a task ends (cancelled, or an error it raised while
    unwinding) is not the stopper's concern: stopping must not fail. A cancellation of the caller still
    propagates."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)
