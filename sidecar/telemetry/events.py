"""Typed events: each logs one JSON line and updates its metrics in one place.

Repeated events are rate-limited in the log (once per key per minute, with the
count accumulated since the last line), never in the metrics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sidecar.core.clock import SYSTEM_CLOCK, Clock
from sidecar.core.drops import DropReason
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import SEVERITY_ORDER, Category, Classification, Severity
from sidecar.telemetry.metrics import Metrics, ReloadResult

log = logging.getLogger("sidecar.events")

LOG_INTERVAL = 60.0
RefusalReason = Literal["refused"]  # the `reason` of sidecar_receiver_refused_*_total
REFUSAL_REASONS: tuple[RefusalReason, ...] = get_args(RefusalReason)
# Every (from, to) a breaker can take (an operator's reset closes an open one); the names are BreakerState's.
BREAKER_TRANSITIONS = (("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open"),
                       ("open", "closed"))
EXPORT_OUTCOMES = ("success", "partial_success", "failure")  # the `outcome` of sidecar_export_duration_seconds


@dataclass
class _Throttle:
    last: float = float("-inf")
    pending: int = 0


@dataclass
class Events:
    metrics: Metrics
    clock: Clock = SYSTEM_CLOCK
    _throttles: dict[tuple[str, ...], _Throttle] = field(default_factory=dict)
    # (exporter, category, error_type) -> the severity last reported for failed exports of that class
    _severities: dict[tuple[str, str, str], Severity] = field(default_factory=dict)
    # The labelled children of the metrics updated for every request, by (metric, labels): `.labels()`
    # validates and stringifies its labels and takes a lock on every call (2-4 us a call, ~20 us a request).
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once (no metric here ever removes a child)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

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

    def dropped(self, signal: str, reason: DropReason, items: int, detail: str = "") -> None:
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

    # -------------------------------------------------------------- receivers and the pipeline

    def received(self, signal: Signal, receiver: str, transport: str, items: int) -> None:
        self._child(self.metrics.receiver_accepted[signal], receiver, transport).inc(items)

    def refused(self, signal: Signal, receiver: str, transport: str, items: int, reason: RefusalReason) -> None:
        self.metrics.receiver_refused[signal].labels(receiver, transport, reason).inc(items)

    def classified(self, signal: Signal, category: str, severity: str, recoverability: str, error_type: str,
                   items: int) -> None:
        """Error spans / log records classified and enriched on their way through."""
        self._child(self.metrics.errors, category, severity, recoverability, error_type).inc(items)
        self._child(self.metrics.enriched, signal.value, category).inc(items)

    def enrich_failed(self, signal: Signal, items: int, error: BaseException) -> None:
        """Classification or enrichment raised: the request goes on unenriched (fail open).
        Logged once per minute per cause (the exception's type), with the traceback of that one."""
        self.metrics.enrich_failures.labels(signal.value).inc()
        cause = type(error).__name__
        total = self._due(("enrich_failed", cause), 1)
        if total:
            log.error("enrichment failed; the request is forwarded unenriched", exc_info=error, extra={
                "event": "enrich_failed", "signal": signal.value, "cause": cause, "items": items,
                "requests_since_last_log": total})

    def config_reloaded(self, result: ReloadResult) -> None:
        self.metrics.config_reloads.labels(result).inc()

    # -------------------------------------------------------------- queues

    def queue_opened(self, exporter: str, capacity: int) -> None:
        self.metrics.queue_capacity.labels(exporter).set(capacity)

    def spilled(self, exporter: str, signal: str, items: int) -> None:
        """A request committed to disk because the exporter is at degradation level 1 or more."""
        self.metrics.spilled.labels(exporter).inc()
        total = self._due(("spilled", exporter), 1)
        if total:
            log.info("requests spilled to disk", extra={"event": "spill", "exporter": exporter, "signal": signal,
                                                        "requests_since_last_log": total})

    def spill_drained(self, exporter: str, signal: str, items: int) -> None:
        """A spilled request taken from disk by a consumer, on its way upstream."""
        self.metrics.spill_drained.labels(exporter).inc()

    def queue_changed(self, exporter: str, size: int, held_bytes: int) -> None:
        self._child(self.metrics.queue_size, exporter).set(size)
        self._child(self.metrics.queue_bytes, exporter).set(held_bytes)

    # -------------------------------------------------------------- queue storage (issue 16)

    def storage_initialised(self, exporter: str, stores: tuple[str, ...], reasons: tuple[str, ...]) -> None:
        """Start the storage error counters and the degraded gauge at 0 for an exporter with storage."""
        for store in stores:
            self.metrics.queue_storage_degraded.labels(exporter, store).set(0)
            for reason in reasons:
                self.metrics.queue_storage_errors.labels(exporter, store, reason)

    def storage_error(self, exporter: str, store: str, reason: str, detail: str) -> None:
        self.metrics.queue_storage_errors.labels(exporter, store, reason).inc()
        total = self._due(("storage_error", exporter, store, reason), 1)
        if total:
            log.error("queue storage error", extra={
                "event": "storage_error", "exporter": exporter, "store": store, "reason": reason,
                "errors_since_last_log": total, "detail": detail[:300]})

    def storage_degraded(self, exporter: str, store: str, reason: str) -> None:
        self.metrics.queue_storage_degraded.labels(exporter, store).set(1)
        log.warning("queue storage degraded: accepting into memory until the disk takes writes again", extra={
            "event": "storage_degraded", "exporter": exporter, "store": store, "reason": reason})

    def storage_restored(self, exporter: str, store: str) -> None:
        self.metrics.queue_storage_degraded.labels(exporter, store).set(0)
        log.info("queue storage restored: writing to the disk again", extra={
            "event": "storage_restored", "exporter": exporter, "store": store})

    def backpressure(self, exporter: str, signal: str, items: int, reason: str) -> None:
        total = self._due(("backpressure", exporter, signal, reason), items)
        if total:
            log.warning("client pushed back with a retryable status", extra={
                "event": "backpressure", "exporter": exporter, "signal": signal, "reason": reason,
                "items_since_last_log": total})

    # -------------------------------------------------------------- the sender chain

    def endpoint_added(self, exporter: str, endpoint: str, closed_gauge: int, concurrency_limit: int,
                       probed: bool) -> None:
        """Gauges an endpoint has from the first scrape: breaker closed, the initial limit, health unknown (0);
        and its counters at 0: retries and every breaker transition there can be."""
        self.metrics.breaker_state.labels(exporter, endpoint).set(closed_gauge)
        self.metrics.concurrency_limit.labels(endpoint).set(concurrency_limit)
        if probed:
            self.metrics.endpoint_healthy.labels(exporter, endpoint).set(0)
        # Counters and histograms whose label sets are known now: samples from the first scrape.
        for outcome in EXPORT_OUTCOMES:
            self.metrics.export_duration.labels(exporter, endpoint, outcome)
        for old, new in BREAKER_TRANSITIONS:
            self.metrics.breaker_transitions.labels(exporter, endpoint, old, new, "local")
        self.metrics.outages.labels(exporter, endpoint)
        self.metrics.retries_refused.labels(exporter, endpoint)
        self.metrics.exporter_retries.labels(exporter, endpoint)
        self.metrics.recovery_duration.labels(exporter, endpoint)

    def receiver_declared(self, receiver: str, transport: str, signals: Iterable[Signal]) -> None:
        """A receiver listening on `transport` for `signals`: its accepted and refused counters start at 0."""
        for signal in signals:
            self.metrics.receiver_accepted[signal].labels(receiver, transport)
            for reason in REFUSAL_REASONS:
                self.metrics.receiver_refused[signal].labels(receiver, transport, reason)

    def exporter_declared(self, exporter: str, signals: Iterable[Signal]) -> None:
        """An exporter carrying `signals`: sent items, dead letters (by category) and spills start at 0."""
        for signal in signals:
            self.metrics.exporter_sent[signal].labels(exporter)
        for category in Category:
            self.metrics.dead_letters.labels(exporter, category.value)
        self.metrics.spilled.labels(exporter)  # 0 for good without storage_mode: spill
        self.metrics.spill_drained.labels(exporter)

    def concurrency_limit_changed(self, endpoint: str, limit: int) -> None:
        self.metrics.concurrency_limit.labels(endpoint).set(limit)

    def export_attempted(self, exporter: str, endpoint: str, outcome: str, seconds: float) -> None:
        self._child(self.metrics.export_duration, exporter, endpoint, outcome).observe(max(0.0, seconds))

    def export_failed(self, exporter: str, endpoint: str, signal: Signal, items: int,
                      classification: Classification, base_severity: Severity | None = None) -> None:
        """One failed attempt: its items and its class (each attempt counts, retries included).

        `classification.severity` is the reported one, raised when the class keeps recurring
        (pipeline/escalation.py); `base_severity` the class's own. A change of the reported severity
        of a class is logged at once (worsening as a warning, easing as info)."""
        category, error_type = classification.category.value, classification.error_type
        severity = classification.severity
        self.metrics.exporter_send_failed[signal].labels(exporter, category, error_type).inc(items)
        self.metrics.errors.labels(category, severity.value, classification.recoverability.value, error_type).inc()
        base = base_severity or severity
        self._severity_reported(exporter, classification, base)
        total = self._due(("export_failed", exporter, endpoint, error_type), 1)
        if total:
            log.warning("export attempt failed", extra={
                "event": "export_failed", "exporter": exporter, "endpoint": endpoint, "signal": signal.value,
                "category": category, "error_type": error_type, "severity": severity.value,
                "base_severity": base.value, "recoverability": classification.recoverability.value,
                "attempts_since_last_log": total})

    def export_held(self, exporter: str, endpoint: str, classification: Classification,
                    base_severity: Severity) -> None:
        """A request held back by an open breaker, counted as one occurrence of the class that opened it
        (pipeline/escalation.py): no attempt was made, so no failure is counted, but a change of the
        reported severity is logged as for a failed attempt."""
        self._severity_reported(exporter, classification, base_severity)

    def _severity_reported(self, exporter: str, classification: Classification, base: Severity) -> None:
        """Log a change of the reported severity of a class at once (worsening as a warning, easing as info)."""
        category, error_type, severity = classification.category.value, classification.error_type, \
            classification.severity
        key = (exporter, category, error_type)
        previous = self._severities.get(key, base)
        self._severities[key] = severity
        if severity is not previous:
            worse = SEVERITY_ORDER.index(severity) > SEVERITY_ORDER.index(previous)
            log.log(logging.WARNING if worse else logging.INFO,
                    "export errors worsening" if worse else "export errors easing", extra={
                        "event": "error_escalation", "exporter": exporter, "category": category,
                        "error_type": error_type, "from_severity": previous.value, "to_severity": severity.value,
                        "base_severity": base.value})

    def retry_scheduled(self, exporter: str, endpoint: str, error_type: str, delay: float) -> None:
        self.metrics.exporter_retries.labels(exporter, endpoint).inc()
        log.debug("%s: retry in %.3fs after %s from %s", exporter, delay, error_type, endpoint)

    def exported(self, exporter: str, signal: Signal, items: int) -> None:
        """Items the upstream accepted (a partial success's rejected items excluded)."""
        self._child(self.metrics.exporter_sent[signal], exporter).inc(items)

    def partial_success(self, exporter: str, endpoint: str, signal: Signal, rejected: int,
                        classification: Classification | None) -> None:
        """The upstream accepted a request but rejected some items: dropped, never retried."""
        self.dropped(signal.value, DropReason.UPSTREAM_REJECTED, rejected, f"exporter {exporter}, endpoint {endpoint}")
        if classification is not None:
            self.metrics.errors.labels(classification.category.value, classification.severity.value,
                                       classification.recoverability.value, classification.error_type).inc()

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

    def outage_started(self, exporter: str, endpoint: str) -> None:
        """An endpoint failed (retryably) with no failure pending: an outage episode begins. It ends at the
        endpoint's next success (`endpoint_recovered`, whose duration is the outage's)."""
        self.metrics.outages.labels(exporter, endpoint).inc()
        log.warning("outage started", extra={"event": "outage", "exporter": exporter, "endpoint": endpoint})

    def retry_refused(self, exporter: str, endpoint: str) -> None:
        """The retry budget refused a retry; the request goes back to the queue (not dropped)."""
        self.metrics.retries_refused.labels(exporter, endpoint).inc()
        total = self._due(("retry_refused", exporter, endpoint), 1)
        if total:
            log.warning("retry budget exhausted: request requeued", extra={
                "event": "retry_refused", "exporter": exporter, "endpoint": endpoint,
                "refusals_since_last_log": total})

    # -------------------------------------------------------------- lag, foresight and anomalies

    def exporter_added(self, exporter: str) -> None:
        """One exporter's families with known label sets, from the first scrape (every pair of the
        degradation ladder's levels 0..4; an empty queue; nothing delivered yet)."""
        self.metrics.queue_oldest_age.labels(exporter).set(0)
        self.metrics.queue_time_to_full.labels(exporter).set(float("inf"))
        self.metrics.delivery_latency.labels(exporter)
        self.metrics.degradation_level.labels(exporter).set(0)
        self.metrics.spilled.labels(exporter)  # 0 for good without storage_mode: spill
        self.metrics.spill_drained.labels(exporter)
        for old in range(5):
            for new in range(5):
                if old != new:
                    self.metrics.degradation_transitions.labels(exporter, str(old), str(new))

    def queue_lag(self, exporter: str, oldest_age: float, time_to_full: float) -> None:
        self.metrics.queue_oldest_age.labels(exporter).set(oldest_age)
        self.metrics.queue_time_to_full.labels(exporter).set(time_to_full)

    def delivered(self, exporter: str, accepted_at: float, now: float) -> None:
        """Upstream acknowledged an entry whose client was acknowledged at `accepted_at` (wall clock)."""
        self._child(self.metrics.delivery_latency, exporter).observe(max(0.0, now - accepted_at))

    def recovery_ratio(self, ratio: float | None) -> None:
        self.metrics.recovery_success_ratio.set(1.0 if ratio is None else ratio)

    def anomaly_score(self, category: str, score: float) -> None:
        self.metrics.error_rate_anomaly.labels(category).set(score)
        self.metrics.error_rate_anomalies.labels(category)  # a sample from the first scrape

    def service_anomaly_score(self, service: str, score: float | None) -> None:
        """A top service's score; None: it left the top services, its series goes (bounded cardinality)."""
        if score is None:
            with contextlib.suppress(KeyError):  # it never had a series
                self.metrics.service_error_rate_anomaly.remove(service)
        else:
            self.metrics.service_error_rate_anomaly.labels(service).set(score)

    def service_anomaly_changed(self, service: str, active: bool, score: float, rate_per_minute: float,
                                baseline_per_minute: float, threshold: float) -> None:
        """The error rate of a service's spans and log records became unusual, or normal again (logged)."""
        detail = {"event": "error_rate_anomaly", "service": service, "score": round(score, 2),
                  "errors_per_minute": round(rate_per_minute, 2),
                  "baseline_per_minute": round(baseline_per_minute, 2)}
        if active:
            log.warning("error rate anomaly", extra={**detail, "state": "raised", "threshold": threshold})
        else:
            log.info("error rate back to normal", extra={**detail, "state": "cleared"})

    def anomaly_changed(self, category: str, active: bool, score: float, rate_per_minute: float,
                        baseline_per_minute: float, threshold: float) -> None:
        """The error rate of `category` became unusual (its score reached the threshold) or normal again."""
        detail = {"event": "error_rate_anomaly", "category": category, "score": round(score, 2),
                  "errors_per_minute": round(rate_per_minute, 2),
                  "baseline_per_minute": round(baseline_per_minute, 2)}
        if active:
            self.metrics.error_rate_anomalies.labels(category).inc()
            log.warning("error rate anomaly", extra={**detail, "state": "raised", "threshold": threshold})
        else:
            log.info("error rate back to normal", extra={**detail, "state": "cleared"})

    # -------------------------------------------------------------- label sets known from the config

    def exporter_route_added(self, exporter: str, signal: Signal, export_classes: list[Classification]) -> None:
        """`exporter` sends `signal`; `export_classes` are the classes of the failures an exporter expects
        (the OTLP spec's retryable answers and the usual client errors, classified by the running rules)."""
        self.metrics.exporter_sent[signal].labels(exporter)
        for c in export_classes:
            self.metrics.exporter_send_failed[signal].labels(exporter, c.category.value, c.error_type)
            self.metrics.errors.labels(c.category.value, c.severity.value, c.recoverability.value, c.error_type)

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

    def fleet_opened_on_evidence(self, endpoint: str, failures: int, needed: int) -> None:
        self.metrics.fleet_evidence_opens.labels(endpoint).inc()
        log.warning("endpoint opened fleet-wide: the fleet's sidecars see it failing", extra={
            "event": "fleet_evidence_open", "endpoint": endpoint, "failures": failures, "needed": needed})

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
        self.metrics.fleet_evidence_opens.labels(endpoint)
        for old, new in BREAKER_TRANSITIONS:
            self.metrics.breaker_transitions.labels(exporter, endpoint, old, new, "fleet")
