"""Typed events: each logs one JSON line and updates its metrics in one place.

Repeated events are rate-limited in the log (once per key per minute, with the
count accumulated since the last line), never in the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sidecar.clock import SYSTEM_CLOCK, Clock
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

def breaker_transition(metrics: Metrics, exporter: str, endpoint: str, old: str, new: str, gauge: int,
                       source: str = "local") -> None:
    metrics.breaker_state.labels(exporter, endpoint).set(gauge)
    metrics.breaker_transitions.labels(exporter, endpoint, old, new, source).inc()
    level = logging.WARNING if new == "open" else logging.INFO
    log.log(level, "circuit breaker %s -> %s (%s)", old, new, source, extra={
        "event": "breaker_transition", "exporter": exporter, "endpoint": endpoint,
        "from_state": old, "to_state": new, "source": source})


def fleet_connection_changed(metrics: Metrics, connected: bool, endpoint: str, reason: str = "") -> None:
    """Redis answers again (the sidecar resyncs) or stopped answering (it goes on with local state)."""
    metrics.fleet_connected.set(1 if connected else 0)
    if connected:
        log.info("fleet store connected; resyncing shared state", extra={
            "event": "fleet_connection", "connected": True, "redis": endpoint})
    else:
        log.warning("fleet store unreachable; going on with local state", extra={
            "event": "fleet_connection", "connected": False, "redis": endpoint, "reason": reason[:300]})


def fleet_members(metrics: Metrics, members: int) -> None:
    metrics.fleet_members.set(members)


def fleet_lease_won(metrics: Metrics, endpoint: str, instance: str) -> None:
    metrics.fleet_leases_won.labels(endpoint).inc()
    log.info("recovery-probe lease won: this sidecar probes for the fleet", extra={
        "event": "fleet_lease", "endpoint": endpoint, "instance": instance})


def fleet_budget_refused(metrics: Metrics, exporter: str, endpoint: str) -> None:
    metrics.fleet_budget_refused.labels(exporter, endpoint).inc()


def fleet_budget_initialised(metrics: Metrics, exporter: str, endpoint: str) -> None:
    """A known label set starts at 0 so it has a sample from the first scrape."""
    metrics.fleet_budget_refused.labels(exporter, endpoint)


def fleet_endpoint_initialised(metrics: Metrics, endpoint: str) -> None:
    metrics.fleet_leases_won.labels(endpoint)


def endpoint_health_changed(metrics: Metrics, exporter: str, endpoint: str, healthy: bool) -> None:
    metrics.endpoint_healthy.labels(exporter, endpoint).set(1 if healthy else 0)
    log.log(logging.INFO if healthy else logging.WARNING, "endpoint health changed", extra={
        "event": "endpoint_health", "exporter": exporter, "endpoint": endpoint, "healthy": healthy})

