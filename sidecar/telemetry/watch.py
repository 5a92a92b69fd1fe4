"""What is coming (DESIGN.md §7): a once-a-second look at every queue and, each anomaly interval, at the
error counters. The pure parts are sidecar/telemetry/lag.py (time to full) and anomaly.py (the
EWMA detector); this module samples, keeps their state per exporter / category, and publishes
through typed events (gauges, the anomaly log line and counter).

* Lag, per exporter with a sending queue: the oldest entry's age (wall clock now minus its
  `accepted_at`, 0 when empty), the time to full from the last minute's net fill rate (+Inf while
  not growing), and a 10-second history of the queue size for the `status` sparklines.
* Anomalies, per error category: the rate of `sidecar_errors_total` over the interval (read from
  the counter itself, so the detector sees exactly what Prometheus sees), in errors per minute,
  scored against its EWMA baseline. Every category of the taxonomy is watched from the start, so a
  category that appears for the first time is scored against the quiet it had until then.
* The same per service.name of the error spans and log records (from the admin figures' per-service
  totals), for every service those keep (bounded); the score is exported for the `top_services` with
  the most errors, and a service seen for the first time starts from the quiet it had until then.
* The recovery success ratio gauge, from the admin figures' outage bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.core.clock import Clock
from sidecar.core.tasks import cancel_and_wait
from sidecar.core.taxonomy import Category
from sidecar.telemetry.anomaly import AnomalySettings, EwmaDetector
from sidecar.telemetry.events import Events
from sidecar.telemetry.lag import FillPredictor, History
from sidecar.telemetry.stats import ErrorStats

log = logging.getLogger("sidecar.watch")

LAG_INTERVAL = 1.0
HISTORY_STEP = 10.0  # seconds per sparkline point
HISTORY_LENGTH = 60  # ten minutes of them


class WatchedQueue(Protocol):
    capacity: int

    @property
    def size(self) -> int: ...

    @property
    def oldest_accepted_at(self) -> float | None: ...


class WatchedExporter(Protocol):
    name: str

    @property
    def queue(self) -> WatchedQueue | None: ...


@dataclass(frozen=True, slots=True)
class QueueLag:
    oldest_age: float | None  # seconds; None when the queue is empty
    time_to_full: float  # seconds; +Inf while not growing
    net_rate: float | None  # sizer units per second over the last minute; None before enough samples
    size_history: list[float]  # one point per HISTORY_STEP seconds, oldest first


@dataclass(frozen=True, slots=True)
class Anomaly:
    category: str  # "" for a service's
    score: float
    active: bool
    rate_per_minute: float  # the last interval's
    baseline_per_minute: float  # the EWMA mean before it
    since: float | None  # wall clock when the alarm was raised; None when not active
    service: str = ""  # set for a service's (category is "" then)


@dataclass(slots=True)
class _Series:
    detector: EwmaDetector
    last_total: float = 0.0
    last_rate: float = 0.0
    last_baseline: float = 0.0
    raised_at: float | None = None


class Watch:
    def __init__(self, events: Events, clock: Clock, exporters: Callable[[], Mapping[str, WatchedExporter]],
                 error_stats: ErrorStats | None, anomaly: AnomalySettings, anomaly_interval: float,
                 top_services: int = 0) -> None:
        if anomaly_interval <= 0:
            raise ValueError("anomaly_interval must be > 0")
        self.events = events
        self.metrics = events.metrics  # read: the errors counter the anomaly scores are computed from
        self.clock = clock
        self.exporters = exporters
        self.error_stats = error_stats
        self.anomaly_settings = anomaly
        self.anomaly_interval = anomaly_interval
        self.top_services = top_services
        self._services: dict[str, _Series] = {}
        self._exported_services: set[str] = set()
        self._intervals_scored = 0
        self._predictors: dict[str, FillPredictor] = {}
        self._histories: dict[str, History] = {}
        self._lag: dict[str, QueueLag] = {}
        self._series: dict[str, _Series] = {}
        self._last_anomaly_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        totals = self._errors_by_category()
        for category in Category:
            self._series[category.value] = _Series(EwmaDetector(anomaly), totals.get(category.value, 0.0))
            events.anomaly_score(category.value, 0.0)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sidecar-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def _run(self) -> None:
        self._last_anomaly_at = self.clock.monotonic()
        logged_failure_at = float("-inf")
        while True:
            await self.clock.sleep(LAG_INTERVAL)
            try:
                self.tick()
            except Exception:  # a bug here must not stop the sampling for good, nor flood the log
                if self.clock.monotonic() - logged_failure_at >= 60.0:
                    logged_failure_at = self.clock.monotonic()
                    log.exception("sampling queues and error rates failed (logged once a minute)")

    def tick(self) -> None:
        """Sample the queues; score the error rates when an anomaly interval has passed."""
        self.sample_queues()
        now = self.clock.monotonic()
        if self._last_anomaly_at is None:
            self._last_anomaly_at = now
        elif now - self._last_anomaly_at >= self.anomaly_interval:
            self.score_error_rates(now - self._last_anomaly_at)
            self._last_anomaly_at = now
        if self.error_stats is not None:
            self.events.recovery_ratio(self.error_stats.recovery().success_rate)

    # ------------------------------------------------------------ lag

    def sample_queues(self) -> None:
        now, wall = self.clock.monotonic(), self.clock.wall()
        for name, exporter in self.exporters().items():
            queue = exporter.queue
            if queue is None:
                continue
            predictor = self._predictors.setdefault(name, FillPredictor())
            history = self._histories.setdefault(name, History(HISTORY_STEP, HISTORY_LENGTH))
            size = queue.size
            predictor.observe(now, size)
            history.observe(now, size)
            oldest = queue.oldest_accepted_at
            age = None if oldest is None else max(0.0, wall - oldest)
            lag = QueueLag(age, predictor.time_to_full(size, queue.capacity), predictor.net_rate(), history.values())
            self._lag[name] = lag
            self.events.queue_lag(name, age or 0.0, lag.time_to_full)

    def lag(self, exporter: str) -> QueueLag | None:
        return self._lag.get(exporter)

    # ------------------------------------------------------------ anomalies

    def _errors_by_category(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for family in self.metrics.errors.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    category = sample.labels.get("category", "")
                    totals[category] = totals.get(category, 0.0) + sample.value
        return totals

    def score_error_rates(self, elapsed: float) -> None:
        """One anomaly interval of `elapsed` seconds has passed: score every category's rate."""
        if elapsed <= 0:
            return
        totals = self._errors_by_category()
        wall = self.clock.wall()
        for category in sorted(set(self._series) | set(totals)):
            series = self._series.get(category)
            if series is None:  # a category outside the taxonomy (a rule's own): watched from now on
                series = self._series[category] = _Series(EwmaDetector(self.anomaly_settings))
            total = totals.get(category, 0.0)
            rate = max(0.0, total - series.last_total) * 60.0 / elapsed
            series.last_total = total
            baseline = series.detector.mean
            verdict = series.detector.update(rate)
            series.last_rate, series.last_baseline = rate, baseline
            self.events.anomaly_score(category, verdict.score)
            if verdict.changed:
                series.raised_at = wall if verdict.active else None
                self.events.anomaly_changed(category, verdict.active, verdict.score, rate, baseline,
                                            self.anomaly_settings.threshold)
        self._intervals_scored += 1
        if self.top_services and self.error_stats is not None:
            self._score_services(self.error_stats.service_totals(), elapsed, wall)

    def _score_services(self, totals: dict[str, int], elapsed: float, wall: float) -> None:
        for service in set(self._services) - set(totals):  # forgotten by the bounded totals
            del self._services[service]
        for service, total in totals.items():
            series = self._services.get(service)
            if series is None:
                # New: quiet (no error at all) in every interval scored before this one, so a first burst
                # is scored against that quiet, as a category's is.
                series = self._services[service] = _Series(EwmaDetector(self.anomaly_settings))
                for _ in range(min(self._intervals_scored - 1, self.anomaly_settings.warmup)):
                    series.detector.update(0.0)
            rate = max(0.0, total - series.last_total) * 60.0 / elapsed
            series.last_total = total
            baseline = series.detector.mean
            verdict = series.detector.update(rate)
            series.last_rate, series.last_baseline = rate, baseline
            if verdict.changed:
                series.raised_at = wall if verdict.active else None
                self.events.service_anomaly_changed(service, verdict.active, verdict.score, rate, baseline,
                                                    self.anomaly_settings.threshold)
        top = set(sorted(totals, key=lambda s: (-totals[s], s))[: self.top_services])
        for service in self._exported_services - top:
            self.events.service_anomaly_score(service, None)
        for service in top:
            self.events.service_anomaly_score(service, self._services[service].detector.score)
        self._exported_services = top

    def reconfigure(self, settings: AnomalySettings, interval: float, top_services: int | None = None) -> None:
        """New detector settings (a reload): every baseline learned so far is kept."""
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.anomaly_settings = settings
        self.anomaly_interval = interval
        if top_services is not None:
            self.top_services = top_services
            if not top_services:
                for service in self._exported_services:
                    self.events.service_anomaly_score(service, None)
                self._exported_services = set()
        for series in (*self._series.values(), *self._services.values()):
            series.detector.settings = settings

    def anomalies(self) -> list[Anomaly]:
        """Every category scored so far, highest score first (active ones first)."""
        out = [Anomaly(category, s.detector.score, s.detector.active, s.last_rate, s.last_baseline, s.raised_at)
               for category, s in self._series.items()]
        out += [Anomaly("", s.detector.score, s.detector.active, s.last_rate, s.last_baseline, s.raised_at, service)
                for service, s in self._services.items()
                if service in self._exported_services or s.detector.active]
        out.sort(key=lambda a: (not a.active, -a.score if math.isfinite(a.score) else 0.0, a.category, a.service))
        return out
