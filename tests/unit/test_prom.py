"""sidecar/telemetry/prom.py: prometheus_client without its exposition module's imports, and the same text format."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import prometheus_client.exposition as exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sidecar.telemetry import prom
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.prom import CONTENT_TYPE_LATEST, generate_latest


class Frozen(Collector):
    """One snapshot of a registry, so that both writers see the same samples (the process collector's move)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:  # type: ignore[override]
        return self.metrics


def test_the_sidecars_own_registry_is_written_as_prometheus_client_writes_it() -> None:
    """Its counters with known label sets start at 0 (sidecar/telemetry/metrics.py): every family has samples."""
    metrics = Metrics()
    frozen = Frozen(list(metrics.registry.collect()))
    ours = generate_latest(frozen)
    assert ours == exposition.generate_latest(frozen)
    assert b"\nsidecar_dropped_items_total{" in ours and b"_created{" in ours
    assert CONTENT_TYPE_LATEST == exposition.CONTENT_TYPE_LATEST


def test_importing_it_loads_no_http_server_and_the_full_package_comes_on_demand() -> None:
    """In a fresh interpreter (this one has loaded prometheus_client whole already)."""
    script = textwrap.dedent("""
        import sys
        import sidecar.telemetry.metrics
        from sidecar.telemetry import prom
        heavy = ("prometheus_client.exposition", "http.server", "urllib.request", "wsgiref", "email", "socketserver")
        print(sorted(name for name in heavy if name in sys.modules))
        from prometheus_client import start_http_server, CollectorRegistry, values
        print(CollectorRegistry is prom.CollectorRegistry, callable(start_http_server), values.__name__)
        print("prometheus_client.exposition" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["[]", "True True prometheus_client.values", "True"]


def test_a_package_already_imported_whole_is_left_as_it_is() -> None:
    import prometheus_client

    assert prom._load() is prometheus_client
    assert prometheus_client.generate_latest is exposition.generate_latest
