"""Choosing an endpoint among several (DESIGN.md §4).

Strategies:

* ``least_outstanding`` (default): fewest requests in flight.
* ``ewma_latency``: lowest EWMA of the success latency (alpha 0.3), weighted by load as in Finagle's
  peak-EWMA: cost = ewma x (outstanding + 1), so a fast endpoint is not flooded until it gets
  slow. An endpoint without a sample yet costs 0 (it gets explored first).
* ``round_robin``: in turn.

Ties are broken in rotating order so equal endpoints share the load. Endpoints whose breaker
does not allow a call are skipped; `pick` returns None when every breaker refuses, and
`acquire` waits until one allows (data is never dropped for want of an endpoint). `avoid`
expresses a preference (fail over away from the endpoint that just failed); an avoided endpoint
is still picked when it is the only one allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sidecar.exporters.breaker import EndpointBreaker

Strategy = Literal["least_outstanding", "ewma_latency", "round_robin"]
STRATEGIES: tuple[Strategy, ...] = ("least_outstanding", "ewma_latency", "round_robin")


@dataclass(slots=True)
class EndpointStats:
    name: str
    outstanding: int = 0
    ewma_latency: float | None = None  # seconds, successful calls only
    picks: int = 0


class Balancer:
    def __init__(
        self,
        endpoints: Sequence[str],
        breakers: Mapping[str, EndpointBreaker] | None = None,
        strategy: Strategy = "least_outstanding",
        alpha: float = 0.3,
    ) -> None:
        if not endpoints:
            raise ValueError("a balancer needs at least one endpoint")
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("endpoints must be distinct")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown balancer strategy {strategy!r}")
        self.endpoints = list(endpoints)
        self.strategy: Strategy = strategy
        self.alpha = alpha
        self._breakers = dict(breakers or {})
        self._stats = {name: EndpointStats(name) for name in self.endpoints}
        self._cursor = 0

    # ------------------------------------------------------------ observation

    def stats(self, endpoint: str) -> EndpointStats:
        return self._stats[endpoint]

    def allowed(self, endpoint: str) -> bool:
        breaker = self._breakers.get(endpoint)
        return breaker is None or breaker.allow()

    def time_until_available(self) -> float:
        """0 when some endpoint allows a call now, else the shortest wait until a probe."""
        if any(self.allowed(e) for e in self.endpoints):
            return 0.0
        waits = [b.time_until_probe_allowed() for b in self._breakers.values()]
        return min(waits) if waits else 0.0

    # ------------------------------------------------------------ choosing

    def pick(self, avoid: Collection[str] = ()) -> str | None:
        """The endpoint for the next call, or None when every breaker refuses. Non-blocking."""
        n = len(self.endpoints)
        order = [self.endpoints[(self._cursor + i) % n] for i in range(n)]
        allowed = [e for e in order if self.allowed(e)]
        if not allowed:
            return None
        candidates = [e for e in allowed if e not in avoid] or allowed
        if self.strategy == "round_robin":
            chosen = candidates[0]
        elif self.strategy == "least_outstanding":
            chosen = min(candidates, key=lambda e: self._stats[e].outstanding)
        else:
            chosen = min(candidates, key=self._ewma_cost)
        self._cursor = (self.endpoints.index(chosen) + 1) % n
        self._stats[chosen].picks += 1
        return chosen

    async def wait_available(self) -> None:
        """Wait until at least one endpoint's breaker allows a call."""
        while not any(self.allowed(e) for e in self.endpoints):
            waiters = [asyncio.ensure_future(b.wait_until_probe_allowed()) for b in self._breakers.values()]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    if not w.done():
                        w.cancel()
                for w in waiters:
                    if w.done() and not w.cancelled():
                        w.exception()  # retrieve, so nothing is logged as never retrieved

    async def acquire(self, avoid: Collection[str] = ()) -> str:
        """Like `pick`, but waits (does not drop) while every breaker refuses."""
        while True:
            chosen = self.pick(avoid)
            if chosen is not None:
                return chosen
            await self.wait_available()

    # ------------------------------------------------------------ bookkeeping

    def begin(self, endpoint: str) -> None:
        self._stats[endpoint].outstanding += 1

    def end(self, endpoint: str, latency: float | None = None) -> None:
        """The call finished; `latency` only for a call that got an answer worth measuring."""
        stats = self._stats[endpoint]
        stats.outstanding = max(0, stats.outstanding - 1)
        if latency is not None:
            if stats.ewma_latency is None:
                stats.ewma_latency = latency
            else:
                stats.ewma_latency = self.alpha * latency + (1.0 - self.alpha) * stats.ewma_latency

    @contextlib.contextmanager
    def track(self, endpoint: str) -> Iterator[EndpointStats]:
        """Count one outstanding call for the duration of the block (latency via `end` separately)."""
        self.begin(endpoint)
        try:
            yield self._stats[endpoint]
        finally:
            self.end(endpoint)

    def _ewma_cost(self, endpoint: str) -> float:
        stats = self._stats[endpoint]
        return (stats.ewma_latency or 0.0) * (stats.outstanding + 1)
