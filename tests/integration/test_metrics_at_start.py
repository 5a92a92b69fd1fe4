"""A fresh sidecar's first scrape: every counter with a known label set is there, at 0.

`rate()`, `increase()` and `absent()` alerts (collector-config/alerts.yml) need a sample before
the first event; a series that appears with its first increment hides that increment from them.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.drops import DropReason
from sidecar.core.taxonomy import Category
from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_first_scrape_has_every_known_counter_at_zero(upstream: FakeCollector,
                                                      sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    scraped = samples(sidecar.metrics_text())

    def at_zero(name: str, **labels: str) -> bool:
        return scraped.get((name, frozenset(labels.items()))) == 0.0

    missing = [f"{signal}/{reason}" for signal in ("traces", "metrics", "logs") for reason in DropReason
               if not at_zero("sidecar_dropped_items_total", signal=signal, reason=reason.value)]
    assert not missing, missing
    for signal, suffix in (("traces", "spans"), ("metrics", "metric_points"), ("logs", "log_records")):
        assert at_zero("sidecar_enrich_failures_total", signal=signal)
        assert at_zero(f"sidecar_exporter_sent_{suffix}_total", exporter="otlp_grpc")
        for transport in ("grpc", "http"):
            assert at_zero(f"sidecar_receiver_accepted_{suffix}_total", receiver="otlp", transport=transport)
            assert at_zero(f"sidecar_receiver_refused_{suffix}_total", receiver="otlp", transport=transport,
                           reason="refused")
    for category in Category:
        assert at_zero("sidecar_dead_letters_total", exporter="otlp_grpc", category=category.value)
    endpoint = upstream.grpc_endpoint
    assert at_zero("sidecar_exporter_retries_total", exporter="otlp_grpc", endpoint=endpoint)
    assert at_zero("sidecar_breaker_transitions_total", exporter="otlp_grpc", endpoint=endpoint,
                   from_state="closed", to_state="open", source="local")
    for result in ("applied", "partial", "invalid"):
        assert at_zero("sidecar_config_reloads_total", result=result)
