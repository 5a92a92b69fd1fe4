"""Counters with label sets known in advance have a 0 sample before their first event."""

from __future__ import annotations

from sidecar.core.drops import DropReason
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category
from sidecar.telemetry.events import BREAKER_TRANSITIONS, Events
from sidecar.telemetry.metrics import RELOAD_RESULTS, Metrics


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_configuration_independent_counters_start_at_zero() -> None:
    metrics = Metrics()
    for signal in Signal:
        for reason in DropReason:
            assert value(metrics, "sidecar_dropped_items_total", signal=signal.value, reason=reason.value) == 0.0
        assert value(metrics, "sidecar_enrich_failures_total", signal=signal.value) == 0.0
    for result in RELOAD_RESULTS:
        assert value(metrics, "sidecar_config_reloads_total", result=result) == 0.0


def test_a_drop_counts_on_the_series_that_was_there() -> None:
    metrics = Metrics()
    Events(metrics).dropped("traces", DropReason.SHUTDOWN, 7)
    assert value(metrics, "sidecar_dropped_items_total", signal="traces", reason="shutdown") == 7.0
    series = [s for m in metrics.registry.collect() if m.name == "sidecar_dropped_items" for s in m.samples
              if s.name.endswith("_total")]
    assert len(series) == len(Signal) * len(DropReason)  # no stray reason spelled differently


def test_declared_receivers_exporters_and_endpoints_start_at_zero() -> None:
    metrics = Metrics()
    events = Events(metrics)
    events.receiver_declared("otlp", "grpc", {Signal.TRACES, Signal.LOGS})
    events.exporter_declared("otlp_grpc/a", {Signal.METRICS})
    events.endpoint_added("otlp_grpc/a", "c:4317", 0, 1, probed=True)
    for suffix in ("spans", "log_records"):
        labels = {"receiver": "otlp", "transport": "grpc"}
        assert value(metrics, f"sidecar_receiver_accepted_{suffix}_total", **labels) == 0.0
        assert value(metrics, f"sidecar_receiver_refused_{suffix}_total", **labels, reason="refused") == 0.0
    assert value(metrics, "sidecar_receiver_accepted_metric_points_total", receiver="otlp", transport="grpc") is None
    assert value(metrics, "sidecar_exporter_sent_metric_points_total", exporter="otlp_grpc/a") == 0.0
    assert value(metrics, "sidecar_exporter_sent_spans_total", exporter="otlp_grpc/a") is None  # carries no traces
    for category in Category:
        assert value(metrics, "sidecar_dead_letters_total", exporter="otlp_grpc/a", category=category.value) == 0.0
    assert value(metrics, "sidecar_exporter_retries_total", exporter="otlp_grpc/a", endpoint="c:4317") == 0.0
    for old, new in BREAKER_TRANSITIONS:
        assert value(metrics, "sidecar_breaker_transitions_total", exporter="otlp_grpc/a", endpoint="c:4317",
                     from_state=old, to_state=new, source="local") == 0.0
