"""Fakes for the sender chain and the exporter: a scripted transport, the DESIGN.md §3 default table as
a fake classifier, entry and config builders, and a sender built on them."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.config.schema import (
    CircuitBreakerConfig,
    ConcurrencyConfig,
    ExporterConfig,
    HealthProbeConfig,
    RetryBudgetConfig,
    RetryConfig,
)
from sidecar.config.units import Duration
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.exporters.sender import build_sender
from sidecar.exporters.transport import SendOutcome
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.stats import ErrorStats
from tests.fakes.clock import FakeClock


def sender_clock() -> FakeClock:
    """The virtual clock the sender tests use: a monotonic start away from 0, a wall clock elsewhere."""
    return FakeClock(1000.0, wall_offset=1_700_000_000.0)


def cls(category: Category, recoverability: Recoverability, recovery: Recovery, error_type: str,
        retry_after: float | None = None) -> Classification:
    return Classification(category, Severity.MEDIUM, recoverability, recovery, error_type, "fake", retry_after)


class FakeClassifier:
    """The DESIGN.md §3 default table, enough of it for these tests."""

    def classify_export(self, f: ExportFailure) -> Classification:
        code, status = f.grpc_code, f.http_status
        if f.client_error == "timeout" or code == "DEADLINE_EXCEEDED":
            return cls(Category.TIMEOUT, Recoverability.RETRYABLE, Recovery.INCREASE_TIMEOUT, "DEADLINE_EXCEEDED")
        if status == 413 or (code == "RESOURCE_EXHAUSTED" and "too large" in f.message):
            return cls(Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.SPLIT_AND_RETRY,
                       "payload_too_large")
        if code == "RESOURCE_EXHAUSTED" or status == 429:
            return cls(Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.RETRY_WITH_BACKOFF,
                       code or "http_429", f.retry_after)
        if code == "INVALID_ARGUMENT" or status == 400:
            return cls(Category.SERIALIZATION, Recoverability.PERMANENT, Recovery.DROP, code or "http_400")
        if code == "UNAUTHENTICATED":
            return cls(Category.CONFIGURATION, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION, code)
        if f.client_error == "internal":
            return cls(Category.INTERNAL, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION, "internal")
        return cls(Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF,
                   code or f.client_error or "error")

    def classify_partial_success(self, rejected: int, message: str) -> Classification:
        return cls(Category.PROCESSING, Recoverability.PERMANENT, Recovery.DROP, "partial_success")


UNAVAILABLE = ExportFailure(grpc_code="UNAVAILABLE", message="down")
INVALID = ExportFailure(grpc_code="INVALID_ARGUMENT", message="bad")
TOO_LARGE = ExportFailure(http_status=413, message="too large")

Action = SendOutcome | ExportFailure | Callable[[QueueEntry], Awaitable[SendOutcome]]


class FakeTransport:
    def __init__(self, endpoint: str, clock: FakeClock, script: list[Action] | None = None,
                 default: Action | None = None) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.script = list(script or [])
        self.default: Action = default if default is not None else SendOutcome()
        self.calls: list[tuple[float, QueueEntry]] = []
        self.probes = 0
        self.headers: dict[str, str] = {}

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome:
        self.calls.append((self.clock.now, entry))
        action = self.script.pop(0) if self.script else self.default
        if isinstance(action, ExportFailure):
            raise ExportError(action)
        if isinstance(action, SendOutcome):
            return action
        return await action(entry)

    async def probe(self, timeout: float) -> None:
        self.probes += 1

    def set_headers(self, headers: Mapping[str, str]) -> None:
        self.headers = dict(headers)

    async def close(self) -> None:
        pass


def span_names(entry: QueueEntry) -> list[str]:
    req = ExportTraceServiceRequest.FromString(entry.payload)
    return [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def make_entry(spans: int, resources: int = 1, tag: str = "") -> QueueEntry:
    req = ExportTraceServiceRequest()
    per = max(1, spans // resources)
    made = 0
    for r in range(resources):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc{r}"
        ss = rs.scope_spans.add()
        ss.scope.name = "lib"
        count = per if r < resources - 1 else spans - made
        for _ in range(count):
            ss.spans.add(name=f"{tag}s{made}", trace_id=bytes(16), span_id=made.to_bytes(8, "big"))
            made += 1
    return QueueEntry(Signal.TRACES, req.SerializeToString(), spans, (("k", "v"),), 1.0)


def make_config(endpoints: list[str], **overrides: Any) -> ExporterConfig:
    retry = overrides.pop("retry", RetryConfig(
        initial_interval=Duration(1.0), max_interval=Duration(10.0), multiplier=2.0,
        max_elapsed_time=Duration(300.0), budget=RetryBudgetConfig(ratio=0.2, min_per_second=3.0)))
    return ExporterConfig(
        endpoints=endpoints,
        timeout=overrides.pop("timeout", Duration(5.0)),
        retry_on_failure=retry,
        circuit_breaker=overrides.pop("circuit_breaker", CircuitBreakerConfig()),
        concurrency=overrides.pop("concurrency", ConcurrencyConfig()),
        health_probe=HealthProbeConfig(),
        **overrides,
    )


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def build(config: ExporterConfig, transports: list[FakeTransport], clock: FakeClock, metrics: Metrics,
          error_stats: ErrorStats | None = None) -> Any:
    return build_sender("otlp_grpc", config, list(transports), FakeClassifier(), Events(metrics, clock), clock,
                        random.Random(7), error_stats=error_stats)
