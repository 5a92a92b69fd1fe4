"""Derived error figures for the admin API and `status` (DESIGN.md §7): pure, clock injected.

What counts as an error ("errors observed by the sidecar") is exactly what increments
`sidecar_errors_total`, so `per_minute` over 5 minutes matches `rate(sidecar_errors_total[5m]) * 60`:

* export errors: every failed upstream export attempt (retried or not, whatever its class) and
  every partial success, reported by the sender (`export_error`);
* item errors: every error span and error log record classified and enriched on the way
  through, reported by the router (`item_error`), which also feeds the hotspots.

Figures:

* `error_rates()`: errors per minute over the last 1, 5 and 15 minutes, counted in one-second
  buckets (about 900 kept). The divisor is the window, or the time since the aggregator was
  created when that is shorter (but at least one minute), so a young sidecar does not report a
  5-minute rate diluted by minutes it was not running.
* `recovery()`: outage episodes per endpoint. An episode starts at the first retryable failure
  of an endpoint that had no failure pending (the sender's `first_failure_at`), and ends at the
  endpoint's next success, whose delay is the recovery time (the value observed into
  `sidecar_recovery_duration_seconds`). Success rate = recovered / started (an ongoing outage
  counts against it until it recovers); mean = the mean recovery time of the recovered episodes.
  Counted since start.
* `top_hotspots(n)`: error items counted by (service.name, span name or log name, signal,
  category, error_type) since start. Memory is bounded: at most `max_hotspots` distinct keys are
  kept; when a new key would exceed that, the quarter with the smallest counts (ties: least
  recently seen) is forgotten at once (amortised O(1) per item) and counted in
  `hotspot_keys_evicted`. A key that keeps recurring survives the pruning of one-off keys; a
  forgotten key starts again from zero. Long names are cut to `MAX_NAME_CHARS`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from sidecar.core.clock import Clock
from sidecar.core.taxonomy import Classification

WINDOWS_MINUTES = (1, 5, 15)
MAX_NAME_CHARS = 128
DEFAULT_MAX_HOTSPOTS = 1000
UNKNOWN_SERVICE = "unknown_service"


@dataclass(frozen=True, slots=True)
class ErrorRate:
    window_minutes: int
    per_minute: float
    errors: int
    export_errors: int
    item_errors: int


@dataclass(frozen=True, slots=True)
class RecoverySummary:
    outages: int
    recovered: int
    ongoing: int
    success_rate: float | None  # None when there was no outage
    mean_seconds: float | None  # None before the first recovery
    max_seconds: float | None
    last_seconds: float | None


@dataclass(frozen=True, slots=True)
class HotspotKey:
    service: str
    name: str
    signal: str
    category: str
    error_type: str


@dataclass(frozen=True, slots=True)
class Hotspot:
    key: HotspotKey
    count: int
    last_seen: float  # wall clock


class _Count:
    __slots__ = ("count", "last_seen", "last_seen_mono")

    def __init__(self) -> None:
        self.count = 0
        self.last_seen = 0.0
        self.last_seen_mono = 0.0


def _clip(text: str) -> str:
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"


class ErrorStats:
    """One per process; the router and every exporter's sender report into it."""

    def __init__(self, clock: Clock, max_hotspots: int = DEFAULT_MAX_HOTSPOTS) -> None:
        if max_hotspots < 1:
            raise ValueError("max_hotspots must be >= 1")
        self._clock = clock
        self.started_at = clock.monotonic()
        self.started_wall = clock.wall()
        self.max_hotspots = max_hotspots
        # [second, export errors, item errors], oldest first, at most 15 minutes' worth (+1 s)
        self._buckets: deque[list[int]] = deque()
        self._horizon = max(WINDOWS_MINUTES) * 60
        self._outages: dict[tuple[str, str], float] = {}  # (exporter, endpoint) -> started (monotonic)
        self.outages_started = 0
        self.recoveries = 0
        self._recovery_sum = 0.0
        self._recovery_max: float | None = None
        self._recovery_last: float | None = None
        self._hotspots: dict[HotspotKey, _Count] = {}
        self.hotspot_keys_evicted = 0

    # ------------------------------------------------------------ observations (the sender)

    def export_error(self, exporter: str, endpoint: str, classification: Classification) -> None:
        """A failed export attempt or a partial success (each increments sidecar_errors_total once)."""
        self._add(1, 0)

    def outage_started(self, exporter: str, endpoint: str) -> None:
        key = (exporter, endpoint)
        if key not in self._outages:
            self._outages[key] = self._clock.monotonic()
            self.outages_started += 1

    def recovered(self, exporter: str, endpoint: str, seconds: float) -> None:
        """The endpoint succeeded after failing for `seconds` (as observed into recovery_duration)."""
        if self._outages.pop((exporter, endpoint), None) is None:
            self.outages_started += 1  # an episode we did not see start still is one
        seconds = max(0.0, seconds)
        self.recoveries += 1
        self._recovery_sum += seconds
        self._recovery_last = seconds
        self._recovery_max = seconds if self._recovery_max is None else max(self._recovery_max, seconds)

    # ------------------------------------------------------------ observations (the router)

    def item_error(self, service: str, name: str, signal: str, category: str, error_type: str,
                   count: int = 1) -> None:
        """`count` error spans / log records of one class from one service and name were enriched."""
        if count <= 0:
            return
        self._add(0, count)
        key = HotspotKey(_clip(service or UNKNOWN_SERVICE), _clip(name), signal, category, error_type)
        entry = self._hotspots.get(key)
        if entry is None:
            if len(self._hotspots) >= self.max_hotspots:
                self._prune()
            entry = self._hotspots[key] = _Count()
        entry.count += count
        entry.last_seen = self._clock.wall()
        entry.last_seen_mono = self._clock.monotonic()

    # ------------------------------------------------------------ derived figures

    def error_rates(self, windows: tuple[int, ...] = WINDOWS_MINUTES) -> list[ErrorRate]:
        now = self._clock.monotonic()
        self._expire(now)
        elapsed = max(60.0, now - self.started_at)
        out = []
        for minutes in windows:
            oldest = now - minutes * 60 - 1  # a bucket [b, b+1) is in when it ends after now - window
            export = items = 0
            for bucket in reversed(self._buckets):
                if bucket[0] <= oldest:
                    break
                export += bucket[1]
                items += bucket[2]
            span = min(minutes * 60.0, elapsed) / 60.0
            out.append(ErrorRate(minutes, (export + items) / span, export + items, export, items))
        return out

    def recovery(self) -> RecoverySummary:
        outages = self.outages_started
        return RecoverySummary(
            outages=outages,
            recovered=self.recoveries,
            ongoing=len(self._outages),
            success_rate=self.recoveries / outages if outages else None,
            mean_seconds=self._recovery_sum / self.recoveries if self.recoveries else None,
            max_seconds=self._recovery_max,
            last_seconds=self._recovery_last,
        )

    def top_hotspots(self, n: int = 10) -> list[Hotspot]:
        ranked = sorted(self._hotspots.items(), key=lambda kv: (-kv[1].count, -kv[1].last_seen_mono))
        return [Hotspot(key, entry.count, entry.last_seen) for key, entry in ranked[: max(n, 0)]]

    @property
    def hotspot_keys(self) -> int:
        return len(self._hotspots)

    # ------------------------------------------------------------ internals

    def _add(self, export: int, items: int) -> None:
        now = self._clock.monotonic()
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
            bucket[1] += export
            bucket[2] += items
        else:
            self._buckets.append([second, export, items])
            self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self._horizon - 1:
            self._buckets.popleft()

    def _prune(self) -> None:
        """Forget the smallest quarter (at least one key) so the next keys fit."""
        keep = self.max_hotspots - max(1, self.max_hotspots // 4)
        ranked = sorted(self._hotspots.items(), key=lambda kv: (-kv[1].count, -kv[1].last_seen_mono))
        self.hotspot_keys_evicted += len(ranked) - keep
        self._hotspots = dict(ranked[:keep])
