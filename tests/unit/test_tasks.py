"""cancel_and_wait stops every task however it ends, and never fails the stopper."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.core.tasks import cancel_and_wait


async def test_cancels_waits_and_swallows_how_tasks_end() -> None:
    finished: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append(name)

    async def fails_while_unwinding() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("cleanup failed")

    tasks = [asyncio.create_task(forever("a")), asyncio.create_task(fails_while_unwinding()), None,
             asyncio.create_task(forever("b"))]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks)
    assert finished == ["a", "b"]
    assert all(task.done() for task in tasks if task is not None)


async def test_the_callers_own_cancellation_propagates() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # takes a while to stop

    inner = asyncio.create_task(stubborn())
    stopper = asyncio.create_task(cancel_and_wait([inner]))
    await asyncio.sleep(0.01)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.gather(inner, return_exceptions=True)
