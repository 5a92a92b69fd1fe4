"""health_probe.health_check_url: the probe GETs the Collector's health_check extension, 200 = healthy."""

from __future__ import annotations

import pytest

from sidecar.config.schema import CircuitBreakerConfig, HealthProbeConfig
from sidecar.config.units import Duration
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError
from sidecar.exporters.breaker import BreakerState, EndpointBreaker
from sidecar.exporters.health import EndpointHealth, HealthProber
from sidecar.exporters.health_url import HealthCheckUrl, endpoint_host, health_url_for
from sidecar.exporters.transport import SendOutcome
from sidecar.pipeline.classify import Classifier
from tests.fakes.clock import FakeClock
from tests.fakes.health_check import FakeHealthCheck
from tests.sidecar_process import free_port


class CountingTransport:
    """An OTLP endpoint that always answers: if the prober used it, every probe would succeed."""

    endpoint = "127.0.0.1:4317"

    def __init__(self) -> None:
        self.probes = 0

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome:
        return SendOutcome()

    async def probe(self, timeout: float) -> None:
        self.probes += 1

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(("endpoint", "host"), [
    ("collector:4317", "collector"),
    ("dns:///collector:4317", "collector"),
    ("http://collector:4318", "collector"),
    ("https://collector.example:4318/", "collector.example"),
    ("[::1]:4317", "[::1]"),
    ("http://[::1]:4318/", "[::1]"),
    ("10.0.0.7:4317", "10.0.0.7"),
])
def test_endpoint_host(endpoint: str, host: str) -> None:
    assert endpoint_host(endpoint) == host


def test_health_url_for_replaces_the_host_placeholder_only() -> None:
    assert health_url_for("http://{host}:13133/", "otel-a:4317") == "http://otel-a:13133/"
    assert health_url_for("http://fixed:13133/", "otel-a:4317") == "http://fixed:13133/"


async def test_the_url_decides_not_the_otlp_port() -> None:
    clock, transport = FakeClock(), CountingTransport()
    breaker = EndpointBreaker(transport.endpoint, CircuitBreakerConfig(failure_threshold=2), clock)
    with FakeHealthCheck(status=503) as health:
        config = HealthProbeConfig(timeout=Duration(2.0), unhealthy_threshold=1, healthy_threshold=1,
                                   health_check_url=health.url)
        prober = HealthProber(transport, config, clock, breaker=breaker, classifier=Classifier())
        try:
            assert await prober.probe_once() is False  # 503: the Collector is starting
            assert prober.state is EndpointHealth.UNHEALTHY
            assert prober.last_error is not None and "503" in prober.last_error
            await prober.probe_once()
            assert breaker.state is BreakerState.OPEN  # a 503 is transient: it feeds the breaker
            health.status = 200
            assert await prober.probe_once() is True
            assert prober.state is EndpointHealth.HEALTHY
            assert breaker.state is BreakerState.HALF_OPEN  # a healthy probe lets real traffic decide sooner
        finally:
            await prober.stop()
        assert transport.probes == 0  # never an empty Export when the URL is set
        assert health.requests == ["/", "/", "/"]


async def test_only_200_is_healthy() -> None:
    with FakeHealthCheck(status=202) as health:
        check = HealthCheckUrl(health.url)
        try:
            with pytest.raises(ExportError) as info:
                await check.check(2.0)
            assert info.value.failure.http_status == 202
            health.status = 200
            await check.check(2.0)
        finally:
            await check.close()


async def test_unreachable_url_is_a_failed_probe() -> None:
    clock, transport = FakeClock(), CountingTransport()
    config = HealthProbeConfig(timeout=Duration(2.0), health_check_url=f"http://127.0.0.1:{free_port()}/")
    prober = HealthProber(transport, config, clock)
    try:
        assert await prober.probe_once() is False
    finally:
        await prober.stop()
    assert prober.state is EndpointHealth.UNHEALTHY
    assert prober.last_error is not None and prober.last_error.startswith("connection_refused")
    assert transport.probes == 0


async def test_without_url_the_probe_is_an_empty_export() -> None:
    clock, transport = FakeClock(), CountingTransport()
    prober = HealthProber(transport, HealthProbeConfig(), clock)
    assert await prober.probe_once() is True
    assert transport.probes == 1 and prober.url_check is None
