"""Typed events: each logs one JSON line and updates its metrics in one place.

Repeated events are rate-limited in the log (once per key per minute, with the
count accumulated since the last line), never in the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sidecar.core.clock import SYSTEM_CLOCK, Clock
from sidecar.telemetry.metrics import Metrics

log = logging.getLogger("sidecar.events")

LOG_INTERVAL = 60.0


@dataclass
class _Throttle:
    last: float = float("-inf")
    pending: int = 0


@dataclass
class Events:
    metrics: Metrics
    clock: Clock = SYSTEM_CLOCK
    _throttles: dict[tuple[str, ...], _Throttle] = field(default_factory=dict)

    def _due(self, key: tuple[str, ...], amount: int) -> int:
        """Accumulate `amount`; return the total to log now, or 0 when this key logged recently."""
        throttle = self._throttles.setdefault(key, _Throttle())
        throttle.pending += amount
        now = self.clock.monotonic()
        if now - throttle.last < LOG_INTERVAL:
            return 0
        throttle.last = now
        total, throttle.pending = throttle.pending, 0
        return total

    def dropped(self, signal: str, reason: str, items: int, detail: str = "") -> None:
        if items <= 0:
            return
        self.metrics.dropped.labels(signal, reason).inc(items)
        total = self._due(("dropped", signal, reason), items)
        if total:
            log.warning("items dropped", extra={"event": "drop", "signal": signal, "reason": reason,
                                                 "items_since_last_log": total, "detail": detail})

    def dead_lettered(self, exporter: str, signal: str, items: int, category: str, error_type: str,
                      message: str) -> None:
        self.metrics.dead_letters.labels(exporter, category).inc()
        total = self._due(("dead_letter", exporter, category, error_type), items)
        if total:
            log.error("request dead-lettered", extra={
                "event": "dead_letter", "exporter": exporter, "signal": signal, "category": category,
                "error_type": error_type, "items_since_last_log": total, "error_message": message[:300]})

    def degradation_changed(self, exporter: str, old: int, new: int, cause: str) -> None:
        self.metrics.degradation_level.labels(exporter).set(new)
        self.metrics.degradation_transitions.labels(exporter, str(old), str(new)).inc()
        level = logging.WARNING if new > old else logging.INFO
        log.log(level, "degradation level changed", extra={
            "event": "degradation_level", "exporter": exporter, "from_level": old, "to_level": new,
            "cause": cause})

    def backpressure(self, exporter: str, signal: str, items: int, reason: str) -> None:
        total = self._due(("backpressure", exporter, signal, reason), items)
        if total:
            log.warning("client pushed back with a retryable status", extra={
                "event": "backpressure", "exporter": exporter, "signal": signal, "reason": reason,
                "items_since_last_log": total})


# Events raised where no Events object is at hand (the sender chain is built from Metrics alone):
# module functions, so their log line and their metrics still live together here.

def breaker_transition(metrics: Metrics, exporter: str, endpoint: str, old: str, new: str, gauge: int) -> None:
    metrics.breaker_state.labels(exporter, endpoint).set(gauge)
    metrics.breaker_transitions.labels(exporter, endpoint, old, new).inc()
    level = logging.WARNING if new == "open" else logging.INFO
    log.log(level, "circuit breaker %s -> %s", old, new, extra={
        "event": "breaker_transition", "exporter": exporter, "endpoint": endpoint,
        "from_state": old, "to_state": new})


def endpoint_health_changed(metrics: Metrics, exporter: str, endpoint: str, healthy: bool) -> None:
    metrics.endpoint_healthy.labels(exporter, endpoint).set(1 if healthy else 0)
    log.log(logging.INFO if healthy else logging.WARNING, "endpoint health changed", extra={
        "event": "endpoint_health", "exporter": exporter, "endpoint": endpoint, "healthy": healthy})



def outage_started(metrics: Metrics, exporter: str, endpoint: str) -> None:
    """An endpoint failed (retryably) with no failure pending: an outage episode begins. It ends at the
    endpoint's next success, observed into sidecar_recovery_duration_seconds (the outage's duration)."""
    metrics.outages.labels(exporter, endpoint).inc()
    log.warning("outage started", extra={"event": "outage", "exporter": exporter, "endpoint": endpoint})


def retry_refused(metrics: Metrics, exporter: str, endpoint: str) -> None:
    """The retry budget refused a retry; the request goes back to the queue (not dropped)."""
    metrics.retries_refused.labels(exporter, endpoint).inc()


def endpoint_counters_at_zero(metrics: Metrics, exporter: str, endpoint: str) -> None:
    """Create the per-endpoint children whose label sets are known when the exporter is built, so their
    families have samples from the first scrape."""
    metrics.outages.labels(exporter, endpoint)
    metrics.retries_refused.labels(exporter, endpoint)
    metrics.exporter_retries.labels(exporter, endpoint)
    metrics.recovery_duration.labels(exporter, endpoint)


def exporter_counters_at_zero(metrics: Metrics, exporter: str) -> None:
    """The same for one exporter's families (levels 0..4 of the degradation ladder are known in advance)."""
    metrics.queue_oldest_age.labels(exporter).set(0)
    metrics.queue_time_to_full.labels(exporter).set(float("inf"))
    metrics.delivery_latency.labels(exporter)
    metrics.degradation_level.labels(exporter).set(0)
    for old in range(5):
        for new in range(5):
            if old != new:
                metrics.degradation_transitions.labels(exporter, str(old), str(new))


def queue_lag(metrics: Metrics, exporter: str, oldest_age: float, time_to_full: float) -> None:
    metrics.queue_oldest_age.labels(exporter).set(oldest_age)
    metrics.queue_time_to_full.labels(exporter).set(time_to_full)


def delivered(metrics: Metrics, exporter: str, accepted_at: float, now: float) -> None:
    """Upstream acknowledged an entry the client's acknowledgement was given for at `accepted_at` (wall)."""
    metrics.delivery_latency.labels(exporter).observe(max(0.0, now - accepted_at))


def recovery_ratio(metrics: Metrics, ratio: float | None) -> None:
    metrics.recovery_success_ratio.set(1.0 if ratio is None else ratio)


def anomaly_score(metrics: Metrics, category: str, score: float) -> None:
    metrics.error_rate_anomaly.labels(category).set(score)
    metrics.error_rate_anomalies.labels(category)  # a sample from the first scrape


def anomaly_changed(metrics: Metrics, category: str, active: bool, score: float, rate_per_minute: float,
                    baseline_per_minute: float, threshold: float) -> None:
    """The error rate of `category` became unusual (its score reached the threshold) or normal again."""
    if active:
        metrics.error_rate_anomalies.labels(category).inc()
        log.warning("error rate anomaly", extra={
            "event": "error_rate_anomaly", "category": category, "state": "raised", "score": round(score, 2),
            "threshold": threshold, "errors_per_minute": round(rate_per_minute, 2),
            "baseline_per_minute": round(baseline_per_minute, 2)})
    else:
        log.info("error rate back to normal", extra={
            "event": "error_rate_anomaly", "category": category, "state": "cleared", "score": round(score, 2),
            "errors_per_minute": round(rate_per_minute, 2), "baseline_per_minute": round(baseline_per_minute, 2)})
