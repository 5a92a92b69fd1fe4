"""Prometheus metrics with the names of DESIGN.md §7, in one registry per process.

A `Metrics` object is created once by the service and passed to the parts that
count; tests create their own to start from zero.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from sidecar.core.signals import SPECS, Signal

_ITEM_SUFFIX = {Signal.TRACES: "spans", Signal.METRICS: "metric_points", Signal.LOGS: "log_records"}


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
                              ["category", "severity", "recoverability"], registry=r)
        self.enriched = Counter("sidecar_enriched_items", "Spans and log records enriched",
                                ["signal", "category"], registry=r)
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
        self.export_duration = Histogram(
            "sidecar_export_duration_seconds", "Duration of one upstream export attempt",
            ["exporter", "endpoint", "outcome"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.recovery_duration = Histogram(
            "sidecar_recovery_duration_seconds", "From the first failure to the next success, per endpoint",
            ["exporter", "endpoint"], registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
