"""Prometheus metrics with the names of DESIGN.md §7, in one registry per process.

A `Metrics` object is created once by the service and passed to the parts that
count; tests create their own to start from zero.

Counters whose label sets are known in advance start at 0, so every series has a sample from the
first scrape (`rate()`, `increase()` and `absent()` alerts work before the first event): here the
ones that depend on nothing configured (drops by signal x reason, enrichment failures by signal,
reloads by result); `Events.*_declared` / `endpoint_added` the ones that depend on the configured
receivers, exporters and endpoints. Series labelled with an open set (an error_type, a category x
severity x recoverability combination) appear with their first sample.
"""

from __future__ import annotations

from typing import Literal, get_args

from sidecar.core.drops import DropReason
from sidecar.core.signals import SPECS, Signal
from sidecar.core.taxonomy import Category
from sidecar.telemetry.prom import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_ITEM_SUFFIX = {Signal.TRACES: "spans", Signal.METRICS: "metric_points", Signal.LOGS: "log_records"}
ReloadResult = Literal["applied", "partial", "invalid"]  # the `result` of sidecar_config_reloads_total
RELOAD_RESULTS: tuple[ReloadResult, ...] = get_args(ReloadResult)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc., for the memory alert
        self.receiver_accepted = {
            s: Counter(f"sidecar_receiver_accepted_{_ITEM_SUFFIX[s]}", f"{SPECS[s].item_name} accepted",
                       ["receiver", "transport"], registry=r) for s in Signal}
        self.receiver_refused = {
            s: Counter(f"sidecar_receiver_refused_{_ITEM_SUFFIX[s]}", f"{SPECS[s].item_name} refused",
                       ["receiver", "transport", "reason"], registry=r) for s in Signal}
        self.exporter_sent = {
            s: Counter(f"sidecar_exporter_sent_{_ITEM_SUFFIX[s]}", f"{SPECS[s].item_name} accepted upstream",
                       ["exporter"], registry=r) for s in Signal}
        self.exporter_send_failed = {
            s: Counter(f"sidecar_exporter_send_failed_{_ITEM_SUFFIX[s]}",
                       f"{SPECS[s].item_name} in failed export attempts",
                       ["exporter", "category", "error_type"], registry=r) for s in Signal}
        self.exporter_retries = Counter("sidecar_exporter_retries", "Export retries",
                                        ["exporter", "endpoint"], registry=r)
        self.queue_size = Gauge("sidecar_exporter_queue_size", "Queue size in the sizer's unit",
                                ["exporter"], registry=r)
        self.queue_capacity = Gauge("sidecar_exporter_queue_capacity", "Queue capacity in the sizer's unit",
                                    ["exporter"], registry=r)
        self.queue_bytes = Gauge("sidecar_exporter_queue_bytes", "Payload bytes held in the queue",
                                 ["exporter"], registry=r)
        self.dropped = Counter("sidecar_dropped_items", "Items dropped, by signal and reason",
                               ["signal", "reason"], registry=r)
        self.errors = Counter("sidecar_errors", "Classified errors",
                              ["category", "severity", "recoverability", "error_type"], registry=r)
        self.enriched = Counter("sidecar_enriched_items", "Spans and log records enriched",
                                ["signal", "category"], registry=r)
        self.spilled = Counter("sidecar_exporter_spilled_requests",
                               "Requests committed to disk because the exporter was at degradation level >= 1 "
                               "(storage_mode: spill)", ["exporter"], registry=r)
        self.spill_drained = Counter("sidecar_exporter_spill_drained_requests",
                                     "Spilled requests taken back from disk by a consumer", ["exporter"], registry=r)
        self.enrich_failures = Counter("sidecar_enrich_failures",
                                       "Requests forwarded unenriched because classification or enrichment raised",
                                       ["signal"], registry=r)
        self.breaker_state = Gauge("sidecar_breaker_state", "0 closed, 1 half-open, 2 open",
                                   ["exporter", "endpoint"], registry=r)
        self.breaker_transitions = Counter(
            "sidecar_breaker_transitions", "Circuit breaker transitions; source: local (own calls) or fleet (shared)",
            ["exporter", "endpoint", "from_state", "to_state", "source"], registry=r)
        self.degradation_level = Gauge("sidecar_degradation_level", "Degradation ladder level 0..4",
                                       ["exporter"], registry=r)
        self.concurrency_limit = Gauge("sidecar_concurrency_limit", "Adaptive in-flight limit",
                                       ["endpoint"], registry=r)
        self.dead_letters = Counter("sidecar_dead_letters", "Requests written to the dead-letter table",
                                    ["exporter", "category"], registry=r)
        self.queue_storage_errors = Counter(
            "sidecar_exporter_queue_storage_errors", "Failed writes/reads of a queue or dead-letter store",
            ["exporter", "store", "reason"], registry=r)
        self.queue_storage_degraded = Gauge(
            "sidecar_exporter_queue_storage_degraded",
            "1 while a store keeps data in memory because its disk fails (the reason is in /ready)",
            ["exporter", "store"], registry=r)
        self.endpoint_healthy = Gauge("sidecar_endpoint_healthy", "1 when the active probe finds it healthy",
                                      ["exporter", "endpoint"], registry=r)
        self.config_reloads = Counter("sidecar_config_reloads", "SIGHUP reloads by result (applied, partial, invalid)",
                                      ["result"], registry=r)
        # Fleet mode (extensions.fleet, DESIGN.md §9)
        self.fleet_connected = Gauge("sidecar_fleet_connected", "1 while the fleet's Redis answers, else 0",
                                     registry=r)
        self.fleet_members = Gauge("sidecar_fleet_members", "Sidecars with a live heartbeat in the fleet",
                                   registry=r)
        self.fleet_leases_won = Counter("sidecar_fleet_probe_leases_won", "Recovery-probe leases won",
                                        ["endpoint"], registry=r)
        self.fleet_budget_refused = Counter("sidecar_fleet_budget_refused_retries",
                                            "Retries refused by the fleet-wide retry budget",
                                            ["exporter", "endpoint"], registry=r)
        self.fleet_evidence_opens = Counter(
            "sidecar_fleet_evidence_opens", "Fleet-wide opens decided by this sidecar's failure report completing "
            "the fleet's evidence (failure_ratio of its calls in a short window, from two sidecars at least)",
            ["endpoint"], registry=r)
        # Fleet handoff (extensions.fleet.handoff): a departing sidecar's backlog delivered by the others
        self.handoff_handed_off = Counter("sidecar_handoff_handed_off_items",
                                          "Items this sidecar moved to the fleet's Redis when it stopped",
                                          ["endpoint", "signal"], registry=r)
        self.handoff_claimed = Counter("sidecar_handoff_claimed_items",
                                       "Handed-off items this sidecar claimed for delivery (takeovers included)",
                                       ["endpoint", "signal"], registry=r)
        self.handoff_delivered = Counter("sidecar_handoff_delivered_items",
                                         "Handed-off items this sidecar delivered upstream",
                                         ["endpoint", "signal"], registry=r)
        self.handoff_backlog_bytes = Gauge("sidecar_handoff_backlog_bytes",
                                           "Payload bytes waiting in the fleet's handoff streams of the endpoint",
                                           ["endpoint"], registry=r)
        self.handoff_backlog_entries = Gauge("sidecar_handoff_backlog_entries",
                                             "Requests waiting in the fleet's handoff streams of the endpoint",
                                             ["endpoint"], registry=r)
        self.handoff_backlog_oldest_age = Gauge(
            "sidecar_handoff_backlog_oldest_age_seconds",
            "Age of the oldest handed-off request waiting (since its client's acknowledgement); 0 when none",
            ["endpoint"], registry=r)
        self.export_duration = Histogram(
            "sidecar_export_duration_seconds", "Duration of one upstream export attempt",
            ["exporter", "endpoint", "outcome"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        # Lag and foresight (DESIGN.md §7), per exporter; set by sidecar/telemetry/watch.py each second.
        self.queue_oldest_age = Gauge("sidecar_exporter_queue_oldest_age_seconds",
                                      "Age of the oldest entry waiting in the queue (memory or disk); 0 when empty",
                                      ["exporter"], registry=r)
        self.queue_time_to_full = Gauge("sidecar_exporter_queue_time_to_full_seconds",
                                        "Predicted from the last minute's net fill rate; +Inf while not growing",
                                        ["exporter"], registry=r)
        self.delivery_latency = Histogram(
            "sidecar_exporter_delivery_latency_seconds", "From the client's acknowledgement to upstream's",
            ["exporter"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.outages = Counter("sidecar_outages", "Outage episodes started (first retryable failure after a success)",
                               ["exporter", "endpoint"], registry=r)
        self.recovery_success_ratio = Gauge("sidecar_recovery_success_ratio",
                                            "Outages that ended in a success / outages started (1 before any)",
                                            registry=r)
        self.degradation_transitions = Counter("sidecar_degradation_transitions", "Degradation level changes",
                                               ["exporter", "from_level", "to_level"], registry=r)
        self.retries_refused = Counter("sidecar_exporter_retries_refused",
                                       "Retries the retry budget refused (the request went back to the queue)",
                                       ["exporter", "endpoint"], registry=r)
        self.error_rate_anomaly = Gauge("sidecar_error_rate_anomaly",
                                        "Deviation of the error rate from its EWMA baseline, in standard deviations",
                                        ["category"], registry=r)
        self.service_error_rate_anomaly = Gauge(
            "sidecar_service_error_rate_anomaly",
            "The same score for the error spans / log records of a service (the top services by errors only)",
            ["service"], registry=r)
        self.error_rate_anomalies = Counter("sidecar_error_rate_anomalies",
                                            "Times the anomaly score crossed its threshold", ["category"], registry=r)
        self.recovery_duration = Histogram(
            "sidecar_recovery_duration_seconds", "From the first failure to the next success, per endpoint",
            ["exporter", "endpoint"], registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        for signal in Signal:
            for reason in DropReason:
                self.dropped.labels(signal.value, reason.value)
            self.enrich_failures.labels(signal.value)
        for signal in (Signal.TRACES, Signal.LOGS):  # the signals that are enriched
            for category in Category:
                self.enriched.labels(signal.value, category.value)
        for result in RELOAD_RESULTS:
            self.config_reloads.labels(result)
