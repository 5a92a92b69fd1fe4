"""Typed events: each logs one JSON line and updates its metrics in one place.

Repeated events are rate-limited in the log (once per key per minute, with the
count accumulated since the last line), never in the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sidecar.core.clock import SYSTEM_CLOCK, Clock
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Classification
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

    # -------------------------------------------------------------- receivers and the pipeline

    def received(self, signal: Signal, receiver: str, transport: str, items: int) -> None:
        self.metrics.receiver_accepted[signal].labels(receiver, transport).inc(items)

    def refused(self, signal: Signal, receiver: str, transport: str, items: int, reason: str) -> None:
        self.metrics.receiver_refused[signal].labels(receiver, transport, reason).inc(items)

    def classified(self, signal: Signal, category: str, severity: str, recoverability: str, items: int) -> None:
        """Error spans / log records classified and enriched on their way through."""
        self.metrics.errors.labels(category, severity, recoverability).inc(items)
        self.metrics.enriched.labels(signal.value, category).inc(items)

    def config_reloaded(self, result: str) -> None:
        self.metrics.config_reloads.labels(result).inc()

    # -------------------------------------------------------------- queues

    def queue_opened(self, exporter: str, capacity: int) -> None:
        self.metrics.queue_capacity.labels(exporter).set(capacity)

    def queue_changed(self, exporter: str, size: int, held_bytes: int) -> None:
        self.metrics.queue_size.labels(exporter).set(size)
        self.metrics.queue_bytes.labels(exporter).set(held_bytes)

    def backpressure(self, exporter: str, signal: str, items: int, reason: str) -> None:
        total = self._due(("backpressure", exporter, signal, reason), items)
        if total:
            log.warning("client pushed back with a retryable status", extra={
                "event": "backpressure", "exporter": exporter, "signal": signal, "reason": reason,
                "items_since_last_log": total})

    # -------------------------------------------------------------- the sender chain

    def endpoint_added(self, exporter: str, endpoint: str, closed_gauge: int, concurrency_limit: int,
                       probed: bool) -> None:
        """Gauges an endpoint has from the first scrape: breaker closed, the initial limit, health unknown (0)."""
        self.metrics.breaker_state.labels(exporter, endpoint).set(closed_gauge)
        self.metrics.concurrency_limit.labels(endpoint).set(concurrency_limit)
        if probed:
            self.metrics.endpoint_healthy.labels(exporter, endpoint).set(0)

    def concurrency_limit_changed(self, endpoint: str, limit: int) -> None:
        self.metrics.concurrency_limit.labels(endpoint).set(limit)

    def export_attempted(self, exporter: str, endpoint: str, outcome: str, seconds: float) -> None:
        self.metrics.export_duration.labels(exporter, endpoint, outcome).observe(max(0.0, seconds))

    def export_failed(self, exporter: str, endpoint: str, signal: Signal, items: int,
                      classification: Classification) -> None:
        """One failed attempt: its items and its class (each attempt counts, retries included)."""
        category, error_type = classification.category.value, classification.error_type
        self.metrics.exporter_send_failed[signal].labels(exporter, category, error_type).inc(items)
        self.metrics.errors.labels(category, classification.severity.value,
                                   classification.recoverability.value).inc()
        total = self._due(("export_failed", exporter, endpoint, error_type), 1)
        if total:
            log.warning("export attempt failed", extra={
                "event": "export_failed", "exporter": exporter, "endpoint": endpoint, "signal": signal.value,
                "category": category, "error_type": error_type,
                "recoverability": classification.recoverability.value, "attempts_since_last_log": total})

    def retry_scheduled(self, exporter: str, endpoint: str, error_type: str, delay: float) -> None:
        self.metrics.exporter_retries.labels(exporter, endpoint).inc()
        log.debug("%s: retry in %.3fs after %s from %s", exporter, delay, error_type, endpoint)

    def exported(self, exporter: str, signal: Signal, items: int) -> None:
        """Items the upstream accepted (a partial success's rejected items excluded)."""
        self.metrics.exporter_sent[signal].labels(exporter).inc(items)

    def partial_success(self, exporter: str, endpoint: str, signal: Signal, rejected: int,
                        classification: Classification | None) -> None:
        """The upstream accepted a request but rejected some items: dropped, never retried."""
        self.dropped(signal.value, "upstream_rejected", rejected, f"exporter {exporter}, endpoint {endpoint}")
        if classification is not None:
            self.metrics.errors.labels(classification.category.value, classification.severity.value,
                                       classification.recoverability.value).inc()

    def endpoint_recovered(self, exporter: str, endpoint: str, seconds: float) -> None:
        self.metrics.recovery_duration.labels(exporter, endpoint).observe(seconds)
        log.info("endpoint recovered", extra={"event": "endpoint_recovered", "exporter": exporter,
                                               "endpoint": endpoint, "outage_seconds": round(seconds, 3)})

    def breaker_transition(self, exporter: str, endpoint: str, old: str, new: str, gauge: int,
                           source: str = "local") -> None:
        """`source`: local (this sidecar's own calls and timers) or fleet (followed from other sidecars)."""
        self.metrics.breaker_state.labels(exporter, endpoint).set(gauge)
        self.metrics.breaker_transitions.labels(exporter, endpoint, old, new, source).inc()
        level = logging.WARNING if new == "open" else logging.INFO
        log.log(level, "circuit breaker %s -> %s (%s)", old, new, source, extra={
            "event": "breaker_transition", "exporter": exporter, "endpoint": endpoint,
            "from_state": old, "to_state": new, "source": source})

    def endpoint_health_changed(self, exporter: str, endpoint: str, healthy: bool) -> None:
        self.metrics.endpoint_healthy.labels(exporter, endpoint).set(1 if healthy else 0)
        log.log(logging.INFO if healthy else logging.WARNING, "endpoint health changed", extra={
            "event": "endpoint_health", "exporter": exporter, "endpoint": endpoint, "healthy": healthy})

    # -------------------------------------------------------------- fleet mode (extensions.fleet)

    def fleet_connection_changed(self, connected: bool, endpoint: str, reason: str = "") -> None:
        """Redis answers again (the sidecar resyncs) or stopped answering (it goes on with local state)."""
        self.metrics.fleet_connected.set(1 if connected else 0)
        if connected:
            log.info("fleet store connected; resyncing shared state", extra={
                "event": "fleet_connection", "connected": True, "redis": endpoint})
        else:
            log.warning("fleet store unreachable; going on with local state", extra={
                "event": "fleet_connection", "connected": False, "redis": endpoint, "reason": reason[:300]})

    def fleet_not_reachable_yet(self, endpoint: str, reason: str) -> None:
        """Redis did not answer at start-up: the sidecar runs locally until it does."""
        self.metrics.fleet_connected.set(0)
        log.warning("fleet store not reachable yet; going on with local state", extra={
            "event": "fleet_connection", "connected": False, "redis": endpoint, "reason": reason[:300]})

    def fleet_members(self, members: int) -> None:
        self.metrics.fleet_members.set(members)

    def fleet_lease_won(self, endpoint: str, instance: str) -> None:
        self.metrics.fleet_leases_won.labels(endpoint).inc()
        log.info("recovery-probe lease won: this sidecar probes for the fleet", extra={
            "event": "fleet_lease", "endpoint": endpoint, "instance": instance})

    def fleet_budget_refused(self, exporter: str, endpoint: str) -> None:
        self.metrics.fleet_budget_refused.labels(exporter, endpoint).inc()
        total = self._due(("fleet_budget_refused", exporter, endpoint), 1)
        if total:
            log.info("retries refused by the fleet's retry budget; the entries stay queued", extra={
                "event": "fleet_budget_refused", "exporter": exporter, "endpoint": endpoint,
                "refused_since_last_log": total})

    def fleet_endpoint_added(self, exporter: str, endpoint: str) -> None:
        """Known label sets start at 0, so they have samples from the first scrape."""
        self.metrics.fleet_budget_refused.labels(exporter, endpoint)
        self.metrics.fleet_leases_won.labels(endpoint)
