"""health_probe.health_check_url end to end: the Collector's health_check extension gates /ready/upstream.

The fake Collector's OTLP port answers all along, as a real Collector's does while it is still
starting; only its health_check URL says 503. /ready (can the sidecar accept data?) stays 200
throughout; /ready/upstream follows the URL, not the OTLP port.
"""

from __future__ import annotations

import time

from tests.fakes.collector import FakeCollector
from tests.fakes.health_check import FakeHealthCheck
from tests.integration.conftest import SidecarFactory
from tests.sidecar_process import get_json


def test_health_check_url_moves_ready_upstream_from_503_to_200(sidecar_factory: SidecarFactory) -> None:
    with FakeCollector() as collector, FakeHealthCheck(status=503) as health:
        sidecar = sidecar_factory(collector.grpc_endpoint, health_probe={
            "interval": "200ms", "timeout": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
            "health_check_url": health.url})
        base = f"http://127.0.0.1:{sidecar.ports.health}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(health.requests) < 3:
            time.sleep(0.05)
        assert len(health.requests) >= 3, "the sidecar never asked the health_check URL"
        code, body = get_json(f"{base}/ready/upstream")
        assert code == 503, body
        exporter = body["exporters"]["otlp_grpc"]  # type: ignore[index]
        assert exporter["upstream"] == "unreachable", body
        assert exporter["endpoints"][0]["health"] == "unhealthy", body
        assert "http_503" in exporter["endpoints"][0]["probe_error"], body  # the health_check URL's answer
        assert get_json(f"{base}/ready")[0] == 200  # the sidecar itself accepts data all the while
        assert not collector.probes()  # no empty Export probes went to the OTLP port

        health.status = 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and get_json(f"{base}/ready/upstream")[0] != 200:
            time.sleep(0.05)
        code, body = get_json(f"{base}/ready/upstream")
        assert code == 200 and body["exporters"]["otlp_grpc"]["upstream"] == "reachable", body  # type: ignore[index]
        assert body["exporters"]["otlp_grpc"]["endpoints"][0]["probe_error"] is None  # type: ignore[index]
