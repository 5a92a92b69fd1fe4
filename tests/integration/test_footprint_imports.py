"""`run` loads only what its config uses (issue 24): a gRPC-only sidecar never imports the HTTP client or
server (aiohttp), Redis or fleet mode, the admin API, or the CLI's parts (rich, the admin client).

The sidecar runs as its own process through tests/fakes/module_census.py, the real start-up path that
writes sys.modules down at exit; the test sends real spans through it and asks /health, /ready and
/metrics, so the hot path and the endpoints have run before the list is taken.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sdk_app import SdkApp

# Top-level packages (and their submodules) a gRPC-only config has no use for.
NOT_FOR_GRPC_ONLY = ("aiohttp", "multidict", "yarl", "redis", "rich", "sidecar.admin", "sidecar.fleet",
                     "sidecar.receivers.otlp_http", "sidecar.exporters.transport_http", "sidecar.exporters.health_url",
                     # prometheus_client's HTTP servers and push-gateway client (sidecar/telemetry/prom.py)
                     "prometheus_client.exposition", "http.server", "socketserver", "wsgiref", "urllib.request",
                     "email",
                     # zstd and OTLP/JSON codecs: for zstd bodies, a zstd exporter, the HTTP receiver's JSON
                     "zstandard", "google.protobuf.json_format")


def grpc_only(config: dict[str, Any]) -> None:
    """gRPC in, gRPC out: no HTTP receiver; health, readiness and metrics endpoints at their defaults."""
    del config["receivers"]["otlp"]["protocols"]["http"]


def unexpected(census: list[str]) -> list[str]:
    return [name for name in census if any(name == banned or name.startswith(banned + ".")
                                           for banned in NOT_FOR_GRPC_ONLY)]


def test_grpc_only_run_imports_nothing_its_config_does_not_use(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    census_path = tmp_path / "modules.txt"
    monkeypatch.setenv("SIDECAR_MODULE_CENSUS", str(census_path))
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=grpc_only, module="tests.fakes.module_census")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    app = SdkApp("grpc")
    app.send_traces(20, error_every=4)  # error spans too: the enrich path runs
    assert app.flush()
    app.shutdown()
    assert upstream.wait_for_spans(20, timeout=15)
    for path in ("/health", "/ready", "/ready/upstream"):
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.ports.health}{path}", timeout=5) as response:
            assert response.status == 200, path
    assert "sidecar_receiver_accepted_spans_total" in sidecar.metrics_text()
    assert sidecar.stop() == 0
    census = census_path.read_text().split()
    assert "sidecar.service" in census and "grpc" in census  # the list is the real run's
    assert unexpected(census) == []


def test_the_census_sees_what_an_http_receiver_loads(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side: with the HTTP receiver configured, aiohttp is loaded, so the check above can fail."""
    census_path = tmp_path / "modules.txt"
    monkeypatch.setenv("SIDECAR_MODULE_CENSUS", str(census_path))
    sidecar = sidecar_factory(upstream.grpc_endpoint, module="tests.fakes.module_census")
    assert sidecar.stop() == 0
    loaded = unexpected(census_path.read_text().split())
    assert "aiohttp" in loaded and "sidecar.receivers.otlp_http" in loaded
    assert not any(name.startswith(("redis", "rich", "sidecar.fleet", "sidecar.admin")) for name in loaded)
