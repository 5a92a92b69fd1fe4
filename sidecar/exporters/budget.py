"""Retry budget per endpoint (DESIGN.md §4), in the manner of Finagle's and Linkerd's retry budgets.

Retries may add at most `ratio` of the *recent* first attempts, plus a floor of
`min_per_second` retries per second that is always allowed:

* every first attempt deposits `ratio` tokens; every retry funded by them withdraws 1;
* deposits and withdrawals both expire after `ttl` seconds (Finagle's leaky bucket), so a
  burst of traffic long ago does not fund a retry storm now, and retries that were paid for
  stop counting once their deposits have expired;
* the floor is a separate token bucket refilled at `min_per_second` per second, holding at
  most `max(1, min_per_second)` tokens; it is used only when the deposits cannot pay.

So within any `ttl` window, retries <= ratio * first attempts + floor refills, which is what
keeps a fleet of sidecars from turning an outage into a retry storm. A retry the budget refuses
is not dropped: the sender reports REQUEUE and the queue keeps the entry.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from sidecar.config.schema import RetryBudgetConfig
from sidecar.core.clock import Clock

_EPSILON = 1e-9


class SharedRetryBudget(Protocol):
    """A retry budget shared with other sidecars (fleet mode), checked on top of the local one."""

    def deposit(self) -> None:
        """A first attempt was made (never waits: deposits are sent in the background)."""
        ...

    async def try_spend(self) -> bool | None:
        """Take a fleet token for one retry: False refused, None unknown (Redis down: decide locally).
        Waits for Redis at most its short command timeout."""
        ...

    def reconfigure(self, config: RetryBudgetConfig) -> None:
        """A reload's new ratio and floor, used from the next exchange with the other sidecars."""
        ...


class WindowedCounts:
    """Sums of a few named counters over a sliding time window, kept in small time buckets.

    Values are added at the current time; everything older than `window` seconds is forgotten
    (at the granularity of `bucket` seconds). Cheap at any request rate: one bucket per
    `bucket` seconds, not one entry per event.
    """

    def __init__(self, clock: Clock, window: float, width: int = 1, bucket: float | None = None) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self._clock = clock
        self.window = float(window)
        self._bucket = bucket if bucket is not None else max(self.window / 100.0, 1e-3)
        self._width = width
        self._buckets: deque[tuple[int, list[float]]] = deque()
        self._totals = [0.0] * width

    def add(self, *values: float) -> None:
        if len(values) != self._width:
            raise ValueError(f"expected {self._width} values")
        now = self._clock.monotonic()
        self._expire(now)
        slot = math.floor(now / self._bucket)
        if self._buckets and self._buckets[-1][0] == slot:
            sums = self._buckets[-1][1]
        else:
            sums = [0.0] * self._width
            self._buckets.append((slot, sums))
        for i, value in enumerate(values):
            sums[i] += value
            self._totals[i] += value

    def totals(self) -> tuple[float, ...]:
        self._expire(self._clock.monotonic())
        return tuple(self._totals)

    def clear(self) -> None:
        self._buckets.clear()
        self._totals = [0.0] * self._width

    def _expire(self, now: float) -> None:
        # A bucket expires once its *end* is older than the window.
        oldest_kept = math.floor((now - self.window) / self._bucket)
        while self._buckets and self._buckets[0][0] < oldest_kept:
            _, sums = self._buckets.popleft()
            for i, value in enumerate(sums):
                self._totals[i] -= value
        if not self._buckets:
            self._totals = [0.0] * self._width  # no drift from float sums


class RetryBudget:
    """Token bucket of one endpoint. Not thread-safe; one event loop owns it."""

    def __init__(self, clock: Clock, ratio: float = 0.2, min_per_second: float = 3.0, ttl: float = 10.0) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ValueError("ratio and min_per_second must be >= 0")
        self._clock = clock
        self.ratio = float(ratio)
        self.min_per_second = float(min_per_second)
        self.ttl = float(ttl)
        self._ledger = WindowedCounts(clock, ttl, width=1, bucket=min(0.1, ttl / 10.0))
        self._floor_capacity = max(1.0, self.min_per_second) if self.min_per_second > 0 else 0.0
        self._floor_tokens = self._floor_capacity
        self._floor_at = clock.monotonic()
        self.deposits = 0  # totals since creation, for status and tests
        self.spent = 0
        self.refused = 0

    @classmethod
    def from_config(cls, config: RetryBudgetConfig, clock: Clock, ttl: float = 10.0) -> RetryBudget:
        return cls(clock, ratio=config.ratio, min_per_second=config.min_per_second, ttl=ttl)

    def reconfigure(self, config: RetryBudgetConfig) -> None:
        """New ratio and floor in place (a SIGHUP reload); tokens already funded stay."""
        self._refill()
        self.ratio = float(config.ratio)
        self.min_per_second = float(config.min_per_second)
        self._floor_capacity = max(1.0, self.min_per_second) if self.min_per_second > 0 else 0.0
        self._floor_tokens = min(self._floor_tokens, self._floor_capacity)

    @property
    def balance(self) -> float:
        """Tokens funded by recent first attempts (deposits minus withdrawals within the TTL)."""
        return self._ledger.totals()[0]

    @property
    def floor_tokens(self) -> float:
        self._refill()
        return self._floor_tokens

    def deposit(self) -> None:
        """A first attempt was made."""
        self.deposits += 1
        if self.ratio > 0:
            self._ledger.add(self.ratio)

    def try_spend(self) -> bool:
        """Take the token for one retry; False means the retry must not happen now."""
        if self.balance >= 1.0 - _EPSILON:
            self._ledger.add(-1.0)
            self.spent += 1
            return True
        self._refill()
        if self._floor_tokens >= 1.0 - _EPSILON:
            self._floor_tokens -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False

    def time_until_token(self) -> float | None:
        """Seconds until `try_spend` could succeed on the floor alone (0: now); None without a floor."""
        if self.balance >= 1.0 - _EPSILON:
            return 0.0
        self._refill()
        if self._floor_tokens >= 1.0 - _EPSILON:
            return 0.0
        if self.min_per_second <= 0:
            return None
        return (1.0 - self._floor_tokens) / self.min_per_second

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = max(0.0, now - self._floor_at)
        self._floor_at = now
        self._floor_tokens = min(self._floor_capacity, self._floor_tokens + elapsed * self.min_per_second)
