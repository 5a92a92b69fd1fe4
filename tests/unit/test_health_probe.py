"""HealthProber: thresholds, breaker feeding, state-change callback, start/stop on a fake clock."""

from __future__ import annotations

import asyncio

from sidecar.config.schema import CircuitBreakerConfig, HealthProbeConfig
from sidecar.config.units import Duration
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.exporters.breaker import BreakerState, EndpointBreaker
from sidecar.exporters.health import EndpointHealth, HealthProber
from sidecar.exporters.transport import SendOutcome
from tests.fakes.clock import FakeClock


class ProbeTransport:
    endpoint = "c:4317"

    def __init__(self) -> None:
        self.fail: ExportFailure | None = None
        self.hang = False
        self.probes = 0

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome:
        return SendOutcome()

    async def probe(self, timeout: float) -> None:
        self.probes += 1
        if self.hang:
            await asyncio.sleep(10)
        if self.fail is not None:
            raise ExportError(self.fail)

    async def close(self) -> None:
        pass


class Classifier:
    def classify_export(self, f: ExportFailure) -> Classification:
        if f.grpc_code == "UNAUTHENTICATED":
            return Classification(Category.CONFIGURATION, Severity.HIGH, Recoverability.FATAL,
                                  Recovery.MANUAL_INTERVENTION, "UNAUTHENTICATED")
        return Classification(Category.TRANSPORT, Severity.MEDIUM, Recoverability.RETRYABLE,
                              Recovery.RETRY_WITH_BACKOFF, f.grpc_code or "error")

    def classify_partial_success(self, rejected: int, message: str) -> Classification:
        raise NotImplementedError


CFG = HealthProbeConfig(interval=Duration(30.0), timeout=Duration(5.0), unhealthy_threshold=3, healthy_threshold=2)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_unhealthy_after_threshold_and_healthy_again() -> None:
    clock, transport = FakeClock(), ProbeTransport()
    changes: list[tuple[str, bool]] = []
    prober = HealthProber(transport, CFG, clock, on_change=lambda e, h: changes.append((e, h)))
    assert prober.state is EndpointHealth.UNKNOWN and not prober.healthy  # never healthy by assumption
    assert await prober.probe_once() is True
    assert prober.state is EndpointHealth.HEALTHY  # the first answer decides, whatever the thresholds
    transport.fail = ExportFailure(grpc_code="UNAVAILABLE")
    assert await prober.probe_once() is False
    assert await prober.probe_once() is False
    assert prober.healthy and prober.consecutive_failures == 2
    await prober.probe_once()
    assert prober.state is EndpointHealth.UNHEALTHY and prober.last_error == "UNAVAILABLE"
    transport.fail = None
    assert await prober.probe_once() is True
    assert not prober.healthy
    await prober.probe_once()
    assert prober.healthy
    assert changes == [("c:4317", True), ("c:4317", False), ("c:4317", True)]


async def test_unknown_until_the_first_probe_answers_then_its_answer_decides() -> None:
    clock, transport = FakeClock(), ProbeTransport()
    changes: list[tuple[str, bool]] = []
    prober = HealthProber(transport, CFG, clock, on_change=lambda e, h: changes.append((e, h)))
    transport.fail = ExportFailure(client_error="connection_refused")
    assert await prober.probe_once() is False
    # One failure is below unhealthy_threshold (3), but there is no healthy state to keep.
    assert prober.state is EndpointHealth.UNHEALTHY and changes == [("c:4317", False)]
    transport.fail = None
    await prober.probe_once()
    assert prober.state is EndpointHealth.UNHEALTHY  # from here on healthy_threshold (2) applies
    await prober.probe_once()
    assert prober.state is EndpointHealth.HEALTHY


async def test_probe_timeout_is_a_failure() -> None:
    clock, transport = FakeClock(), ProbeTransport()
    transport.hang = True
    prober = HealthProber(transport, HealthProbeConfig(timeout=Duration(0.01), unhealthy_threshold=1), clock)
    assert await prober.probe_once() is False
    assert not prober.healthy and prober.last_error is not None and "timeout" in prober.last_error


async def test_feeds_the_breaker() -> None:
    clock, transport = FakeClock(), ProbeTransport()
    breaker = EndpointBreaker("c:4317", CircuitBreakerConfig(failure_threshold=2, recovery_timeout=Duration(60.0)),
                              clock)
    prober = HealthProber(transport, CFG, clock, breaker=breaker, classifier=Classifier())
    transport.fail = ExportFailure(grpc_code="UNAVAILABLE")
    await prober.probe_once()
    await prober.probe_once()
    assert breaker.state is BreakerState.OPEN  # failed probes record failures
    transport.fail = None
    await prober.probe_once()
    assert breaker.state is BreakerState.HALF_OPEN  # a healthy probe lets it go half-open sooner


async def test_non_transient_probe_failures_do_not_feed_the_breaker() -> None:
    clock, transport = FakeClock(), ProbeTransport()
    breaker = EndpointBreaker("c:4317", CircuitBreakerConfig(failure_threshold=1), clock)
    prober = HealthProber(transport, CFG, clock, breaker=breaker, classifier=Classifier())
    transport.fail = ExportFailure(grpc_code="UNAUTHENTICATED")
    for _ in range(3):
        await prober.probe_once()
    assert breaker.state is BreakerState.CLOSED and not prober.healthy


async def test_start_probes_every_interval_and_stop() -> None:
    clock, transport = FakeClock(), ProbeTransport()
    prober = HealthProber(transport, CFG, clock)
    prober.start()
    await settle()
    assert transport.probes == 1 and prober.running  # once at start-up, not after a whole interval
    assert prober.state is EndpointHealth.HEALTHY
    for expected in (2, 3, 4):
        clock.advance(30.0)
        await settle()
        assert transport.probes == expected
    await prober.stop()
    assert not prober.running
    clock.advance(300.0)
    await settle()
    assert transport.probes == 4


async def test_disabled_prober_does_not_start() -> None:
    prober = HealthProber(ProbeTransport(), HealthProbeConfig(enabled=False), FakeClock())
    prober.start()
    assert not prober.running
    await prober.stop()
