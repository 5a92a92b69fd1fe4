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
* `top_hotspots(n, window_minutes)`: error items counted by (service.name, span name or log name,
  signal, category, error_type) over a sliding window of 1, 5 (the default) or 15 minutes, not
  since start: where errors are happening now. Each key keeps its counts in 10-second buckets for
  the last 15 minutes (a bucket is in a window when it ends after now - window, as for the error
  rates); a key with nothing left in 15 minutes is forgotten. Memory is bounded: at most
  `max_hotspots` distinct keys are kept; when a new key would exceed that, keys with nothing in
  the last 15 minutes go first, then the quarter with the smallest 15-minute counts (ties: least
  recently seen) is forgotten at once (amortised O(1) per item) and counted in
  `hotspot_keys_evicted`. A key that keeps recurring survives the pruning of one-off keys; a
  forgotten key starts again from zero. Long names are cut to `MAX_NAME_CHARS`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

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


class HotspotKey(NamedTuple):
    """A tuple, so hashing and comparing it (several times per request and group) runs in C."""

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


HOTSPOT_BUCKET_SECONDS = 10
DEFAULT_HOTSPOT_WINDOW = 5


class _Count:
    """One hotspot key: its counts per 10-second bucket over the last 15 minutes, oldest first."""

    __slots__ = ("buckets", "count", "last_seen", "last_seen_mono")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [bucket index, count]
        self.count = 0  # the sum of `buckets`
        self.last_seen = 0.0
        self.last_seen_mono = 0.0

    def add(self, bucket: int, n: int) -> None:
        if self.buckets and self.buckets[-1][0] == bucket:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([bucket, n])
        self.count += n

    def expire(self, oldest_bucket: int) -> None:
        while self.buckets and self.buckets[0][0] < oldest_bucket:
            self.count -= self.buckets.popleft()[1]

    def within(self, oldest_bucket: int) -> int:
        total = 0
        for bucket, n in reversed(self.buckets):
            if bucket < oldest_bucket:
                break
            total += n
        return total


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
        # Error items per service since start, for the per-service anomaly scores; at most `max_hotspots`
        # services (the smallest quarter is forgotten when a new one would exceed that).
        self._service_totals: dict[str, int] = {}

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
        self.item_errors(signal, {(service, name, category, error_type): count})

    def item_errors(self, signal: str, counts: Mapping[tuple[str, str, str, str], int]) -> None:
        """Error spans / log records of one request, counted by (service, name, category, error_type):
        `item_error` for each group, with the clocks read once."""
        now = self._clock.monotonic()
        wall = self._clock.wall()
        bucket = math.floor(now / HOTSPOT_BUCKET_SECONDS)
        total = 0
        for (service, name, category, error_type), count in counts.items():
            if count <= 0:
                continue
            total += count
            key = HotspotKey(_clip(service or UNKNOWN_SERVICE), _clip(name), signal, category, error_type)
            entry = self._hotspots.get(key)
            if entry is None:
                if len(self._hotspots) >= self.max_hotspots:
                    self._prune(now)
                entry = self._hotspots[key] = _Count()
            entry.add(bucket, count)
            entry.last_seen = wall
            entry.last_seen_mono = now
            totals = self._service_totals
            if key.service not in totals and len(totals) >= self.max_hotspots:
                keep = self.max_hotspots - max(1, self.max_hotspots // 4)
                self._service_totals = totals = dict(sorted(totals.items(), key=lambda kv: -kv[1])[:keep])
            totals[key.service] = totals.get(key.service, 0) + count
        if total:
            self._add(0, total)

    def service_totals(self) -> dict[str, int]:
        """Error spans and log records per service.name since start (a forgotten service restarts at 0)."""
        return dict(self._service_totals)

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

    def minute_history(self, minutes: int = max(WINDOWS_MINUTES)) -> list[int]:
        """Errors in each of the last `minutes` minutes (at most 15, and no more than the aggregator has
        existed), oldest first; the last is the 60 s up to now. The error rate's sparkline in `status`."""
        now = self._clock.monotonic()
        self._expire(now)
        minutes = max(1, min(minutes, max(WINDOWS_MINUTES), math.ceil(max(1e-9, now - self.started_at) / 60)))
        counts = [0] * minutes
        for second, export, items in self._buckets:
            ago = int((now - (second + 1)) // 60)  # whole minutes between the bucket's end and now
            if 0 <= ago < minutes:
                counts[minutes - 1 - ago] += export + items
            elif ago < 0:  # the current second's bucket
                counts[-1] += export + items
        return counts

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

    def top_hotspots(self, n: int = 10, window_minutes: int = DEFAULT_HOTSPOT_WINDOW) -> list[Hotspot]:
        """The `n` keys with the most error items in the last `window_minutes` (at most 15)."""
        if not 0 < window_minutes <= max(WINDOWS_MINUTES):
            raise ValueError(f"window_minutes must be in 1..{max(WINDOWS_MINUTES)}")
        now = self._clock.monotonic()
        self._expire_hotspots(now)
        oldest = self._oldest_bucket(now, window_minutes)
        counted = [(key, entry, entry.within(oldest)) for key, entry in self._hotspots.items()]
        ranked = sorted((c for c in counted if c[2] > 0), key=lambda c: (-c[2], -c[1].last_seen_mono))
        return [Hotspot(key, count, entry.last_seen) for key, entry, count in ranked[: max(n, 0)]]

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

    @staticmethod
    def _oldest_bucket(now: float, window_minutes: int) -> int:
        """The first bucket [b, b+10) that ends after now - window."""
        return math.floor((now - window_minutes * 60) / HOTSPOT_BUCKET_SECONDS)

    def _expire_hotspots(self, now: float) -> None:
        oldest = self._oldest_bucket(now, max(WINDOWS_MINUTES))
        stale = []
        for key, entry in self._hotspots.items():
            entry.expire(oldest)
            if not entry.count:
                stale.append(key)
        for key in stale:
            del self._hotspots[key]

    def _prune(self, now: float) -> None:
        """Forget what is older than 15 minutes, then, if still full, the smallest quarter (at least
        one key) so the next keys fit."""
        self._expire_hotspots(now)
        if len(self._hotspots) < self.max_hotspots:
            return
        keep = self.max_hotspots - max(1, self.max_hotspots // 4)
        ranked = sorted(self._hotspots.items(), key=lambda kv: (-kv[1].count, -kv[1].last_seen_mono))
        self.hotspot_keys_evicted += len(ranked) - keep
        self._hotspots = dict(ranked[:keep])
