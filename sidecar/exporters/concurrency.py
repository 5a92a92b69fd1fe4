"""Adaptive concurrency per endpoint: AIMD on the in-flight limit, as Vector's ARC (DESIGN.md §4).

The limit starts at `min` and moves within [min, max]:

* +1 after a successful call whose RTT stayed within EWMA + 2.5sigma of the past RTTs, when the
  call was started with the limit fully used (as ARC: there is no point growing a limit that
  the load does not reach);
* x0.9 (at least -1, never below `min`) on throttling (RESOURCE_EXHAUSTED / HTTP 429), a
  timeout, or an RTT above EWMA + 2.5sigma;
* other failures (UNAVAILABLE, permanent errors...) leave it alone: the breaker deals with them;
* a cancelled call leaves it alone.

The latency check starts after `warmup` samples, so the first few RTTs only build the EWMA.
Mean and variance are exponentially weighted (alpha 0.3); the breach test uses the statistics of
the past calls, before the current sample is added. `adaptive: false` fixes the limit at `max`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sidecar.config.schema import ConcurrencyConfig
from sidecar.core.clock import Clock


class LoadSignal(enum.StrEnum):
    """What one finished call says about the endpoint's load."""

    OK = "ok"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    ERROR = "error"  # no adjustment


@dataclass(slots=True)
class Permit:
    """One admitted call; set `signal` before leaving the `slot()` block (default OK)."""

    at_limit: bool
    started_at: float
    signal: LoadSignal = LoadSignal.OK


class AdaptiveConcurrency:
    def __init__(
        self,
        config: ConcurrencyConfig,
        clock: Clock,
        *,
        alpha: float = 0.3,
        deviation_scale: float = 2.5,
        decrease_ratio: float = 0.9,
        warmup: int = 5,
        on_limit_change: Callable[[int], None] | None = None,
    ) -> None:
        if config.min > config.max:
            raise ValueError("concurrency.min must be <= concurrency.max")
        self.adaptive = config.adaptive
        self.min = config.min
        self.max = config.max
        self._clock = clock
        self._alpha = alpha
        self._scale = deviation_scale
        self._ratio = decrease_ratio
        self._warmup = warmup
        self._on_change = on_limit_change
        self._limit = self.min if self.adaptive else self.max
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._mean: float | None = None
        self._var = 0.0
        self._samples = 0

    @property
    def limit(self) -> int:
        return self._limit

    def reconfigure(self, config: ConcurrencyConfig) -> None:
        """New bounds in place (a SIGHUP reload): calls in flight keep their slots; the limit moves
        into [min, max] (to max when not adaptive) and waiting callers are admitted up to it."""
        if config.min > config.max:
            raise ValueError("concurrency.min must be <= concurrency.max")
        self.adaptive, self.min, self.max = config.adaptive, config.min, config.max
        self._set_limit(min(self.max, max(self.min, self._limit)) if self.adaptive else self.max)
        self._wake()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def rtt_mean(self) -> float | None:
        return self._mean

    @property
    def rtt_deviation(self) -> float:
        return math.sqrt(self._var)

    # ------------------------------------------------------------ admission

    async def acquire(self) -> bool:
        """Wait for a slot; returns whether the limit is now fully used (ARC's "at limit")."""
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return self._in_flight >= self._limit
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._in_flight -= 1  # granted, but the caller went away: give the slot back
                self._wake()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return self._in_flight >= self._limit

    def release(self, rtt: float | None, signal: LoadSignal, at_limit: bool = False) -> None:
        """One call ended; `rtt` in seconds (None when cancelled: no adjustment)."""
        self._in_flight -= 1
        if rtt is not None:
            self._adjust(rtt, signal, at_limit)
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Permit]:
        """``async with limiter.slot() as permit: ...; permit.signal = LoadSignal.THROTTLED``."""
        at_limit = await self.acquire()
        permit = Permit(at_limit=at_limit, started_at=self._clock.monotonic())
        cancelled = False
        try:
            yield permit
        except BaseException:
            cancelled = True
            raise
        finally:
            self._in_flight -= 1
            if not cancelled:
                self._adjust(self._clock.monotonic() - permit.started_at, permit.signal, permit.at_limit)
            self._wake()

    # ------------------------------------------------------------ AIMD

    def _adjust(self, rtt: float, signal: LoadSignal, at_limit: bool) -> None:
        if not self.adaptive:
            return
        if signal in (LoadSignal.THROTTLED, LoadSignal.TIMEOUT):
            self._decrease()
            return
        if signal is LoadSignal.ERROR:
            return
        breach = (
            self._mean is not None
            and self._samples >= self._warmup
            and rtt > self._mean + self._scale * math.sqrt(self._var) + 1e-9
        )
        self._observe(rtt)
        if breach:
            self._decrease()
        elif at_limit and self._limit < self.max:
            self._set_limit(self._limit + 1)

    def _observe(self, rtt: float) -> None:
        self._samples += 1
        if self._mean is None:
            self._mean = rtt
            return
        diff = rtt - self._mean
        self._mean += self._alpha * diff
        self._var = (1.0 - self._alpha) * (self._var + self._alpha * diff * diff)

    def _decrease(self) -> None:
        new = max(self.min, math.floor(self._limit * self._ratio))
        if new >= self._limit:
            new = max(self.min, self._limit - 1)
        self._set_limit(new)

    def _set_limit(self, new: int) -> None:
        if new != self._limit:
            self._limit = new
            if self._on_change is not None:
                self._on_change(new)

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)
