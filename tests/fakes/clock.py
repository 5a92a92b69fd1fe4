"""Virtual time for policy tests, in two flavours.

`FakeClock`: `sleep` waits until `advance` (or `run`) moves time past its deadline, so a test
decides when each sleeper wakes. `SteppingClock`: `sleep` simply moves time forward, for code that
sleeps on its own path and whose tests only look at the time that passed.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: float = 0.0, wall_offset: float = 0.0) -> None:
        self.now = start
        self.wall_offset = wall_offset  # wall() = now + wall_offset: a wall clock that is not the monotonic one
        self.sleeps: list[float] = []  # every duration slept, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_offset + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), self._seq, fut))
        await fut

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not fut.done():
                fut.set_result(None)
        self.now = target

    async def run(self, aw: Awaitable[T], limit: float = 100_000.0) -> T:
        """Run `aw` to completion, jumping virtual time to the next sleeper whenever all are idle."""
        task = asyncio.ensure_future(aw)
        start = self.now
        while True:
            for _ in range(50):
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            live = [s for s in self._sleepers if not s[2].done()]
            if not live:
                await asyncio.sleep(0.001)  # waiting on something real (a timeout)
                continue
            assert self.now - start < limit, "virtual time limit exceeded"
            self.advance(max(0.0, min(s[0] for s in live) - self.now))


class SteppingClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
