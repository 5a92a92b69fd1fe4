"""A recorded `GetStatusResponse` for the `status` renderers' tests (plain table and live view)."""

from __future__ import annotations

from sidecar.admin.v1 import admin_pb2 as pb

NOW = 1_700_000_000.0


def recorded_status() -> pb.GetStatusResponse:
    status = pb.GetStatusResponse(uptime_seconds=3725, accepting=True, ready=False, stats_since=NOW - 3725)
    exporter = status.exporters.add(name="otlp_grpc/primary", degradation_level=1, degradation_cause="breaker_open",
                                    reachable=False)
    exporter.queue.CopyFrom(pb.QueueStatus(enabled=True, storage="file_storage", sizer="requests", size=12,
                                           capacity=1000, requests=12, bytes=3 * 1024 * 1024, in_flight=4))
    exporter.dead_letters.CopyFrom(pb.DeadLetterSummary(count=2, bytes=2048))
    exporter.endpoints.add(endpoint="collector-a:4317", breaker_state="open", breaker_seconds_in_state=12.5,
                           breaker_trips=3, consecutive_failures=7, concurrency_limit=4, in_flight=0,
                           retry_budget_tokens=2.75, health="unhealthy")
    exporter.endpoints.add(endpoint="collector-b:4317", breaker_state="half_open", breaker_seconds_in_state=0.25,
                           concurrency_limit=16, in_flight=9, retry_budget_tokens=13.0, health="healthy",
                           ewma_latency_seconds=0.012)
    sync = status.exporters.add(name="otlp_http", reachable=True)
    sync.queue.CopyFrom(pb.QueueStatus(enabled=False, sizer="requests"))
    for minutes, per_minute, export, items in ((1, 12.0, 10, 2), (5, 4.4, 20, 2), (15, 1.6, 22, 2)):
        status.error_rates.add(window_minutes=minutes, per_minute=per_minute, errors=export + items,
                               export_errors=export, item_errors=items)
    status.recovery.CopyFrom(pb.RecoveryStats(outages=3, recovered=2, ongoing=1, success_rate=2 / 3,
                                              mean_recovery_seconds=4.25, max_recovery_seconds=7.0))
    exporter.lag.CopyFrom(pb.QueueLag(oldest_age_seconds=65, time_to_full_seconds=450, net_fill_rate_per_second=2.2,
                                      size_history=[0, 2, 5, 9, 12, 900, 12], size_history_step_seconds=10))
    status.anomalies.add(category="timeout", score=9.5, active=True, errors_per_minute=300, baseline_per_minute=2,
                         since=NOW - 40)
    status.anomalies.add(category="transport", score=1.5, errors_per_minute=14, baseline_per_minute=10)
    status.anomalies.add(service="checkout", score=6.0, active=True, errors_per_minute=900, baseline_per_minute=10,
                         since=NOW - 20)
    status.anomalies.add(category="internal", score=0.0)
    status.error_rate_history.extend([1, 2, 2, 40, 300])
    status.hotspot_window_minutes = 5
    status.hotspots.add(service="checkout", name="POST /pay", signal="traces", category="transport",
                        error_type="connection_refused", count=1234, last_seen=NOW - 3)
    status.hotspots.add(service="cart", name="payments.db", signal="logs", category="processing",
                        error_type="deadlock", count=7, last_seen=NOW - 125)
    return status
