"""Enrichment fails open: whatever classification raises, the request goes on as received."""

from __future__ import annotations

import logging

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import (
    ClassifyProcessorConfig,
    DegradationProcessorConfig,
    EnrichProcessorConfig,
    SendingQueueConfig,
)
from sidecar.core.entry import QueueEntry
from sidecar.core.ingest import IngestResult
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Classification
from sidecar.exporters.exporter import Exporter
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.degrade import Level
from sidecar.pipeline.evidence import LogFacts, SpanFacts
from sidecar.pipeline.router import Pipeline, Router
from sidecar.queue.memory import MemoryQueue
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.stats import ErrorStats
from tests.fakes.clock import FakeClock
from tests.fakes.sender import FakeTransport, make_config, make_entry, sender_clock
from tests.fakes.sender import build as build_sender


class ExplodingClassifier(Classifier):
    """A classifier with a bug: every error span or error log record makes it raise."""

    def classify_span_facts(self, facts: SpanFacts) -> Classification:
        raise KeyError("a bug in classification")

    def classify_log_facts(self, facts: LogFacts, record: LogRecord) -> Classification:
        raise ZeroDivisionError("a bug in classification")


class Sink:
    name = "sink"

    def __init__(self) -> None:
        self.entries: list[tuple[QueueEntry, Message]] = []

    async def accept(self, entry: QueueEntry, message: Message,
                     degradation: DegradationProcessorConfig | None) -> IngestResult:
        self.entries.append((entry, message))
        return IngestResult()


def error_traces(name: str = "checkout") -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=name)
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = "connection refused"
    return request.SerializeToString()


def error_logs() -> bytes:
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(severity_number=17)
    record.body.string_value = "database timeout"
    return request.SerializeToString()


def router(signal: Signal, sink: Sink, classifier: Classifier, clock: FakeClock,
           metrics: Metrics, error_stats: ErrorStats | None = None) -> Router:
    pipeline = Pipeline(name=signal.value, signal=signal, receivers=["otlp"], exporters=[sink],
                        classifier=classifier, enrich=EnrichProcessorConfig())
    return Router([pipeline], Events(metrics, clock), clock, error_stats)


def failures(metrics: Metrics, signal: str) -> float:
    return metrics.registry.get_sample_value("sidecar_enrich_failures_total", {"signal": signal}) or 0.0


@pytest.mark.parametrize(("signal", "payload", "decode"), [
    (Signal.TRACES, error_traces(), ExportTraceServiceRequest.FromString),
    (Signal.LOGS, error_logs(), ExportLogsServiceRequest.FromString),
])
async def test_a_raising_classifier_forwards_the_original_bytes(
        signal: Signal, payload: bytes, decode: type[Message], caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics, sink = FakeClock(), Metrics(), Sink()
    route = router(signal, sink, ExplodingClassifier(ClassifyProcessorConfig()), clock, metrics, ErrorStats(clock))
    caplog.set_level(logging.ERROR, logger="sidecar.events")
    for _ in range(3):
        result = await route.ingest("otlp", signal, payload, decode(payload), (), "grpc")  # type: ignore[operator]
        assert result == IngestResult()  # the client is never failed for it
    assert [entry.payload for entry, _ in sink.entries] == [payload] * 3  # unchanged, byte for byte
    assert all(message.SerializeToString() == payload for _, message in sink.entries)  # no half-enriched message
    assert failures(metrics, signal.value) == 3
    assert metrics.registry.get_sample_value(
        f"sidecar_receiver_accepted_{'spans' if signal is Signal.TRACES else 'log_records'}_total",
        {"receiver": "otlp", "transport": "grpc"}) == 3
    logged = [r for r in caplog.records if getattr(r, "event", None) == "enrich_failed"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once per minute per cause
    clock.advance(61.0)
    await route.ingest("otlp", signal, payload, decode(payload), (), "grpc")  # type: ignore[operator]
    logged = [r for r in caplog.records if getattr(r, "event", None) == "enrich_failed"]
    assert len(logged) == 2 and logged[1].requests_since_last_log == 3  # the two held back, and this one


async def test_each_cause_is_logged_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics, sink = FakeClock(), Metrics(), Sink()
    caplog.set_level(logging.ERROR, logger="sidecar.events")
    classifier = ExplodingClassifier(ClassifyProcessorConfig())
    traces, logs = router(Signal.TRACES, sink, classifier, clock, metrics), router(Signal.LOGS, sink, classifier,
                                                                                   clock, metrics)
    for _ in range(2):
        await traces.ingest("otlp", Signal.TRACES, error_traces(), ExportTraceServiceRequest.FromString(
            error_traces()), (), "http")
        await logs.ingest("otlp", Signal.LOGS, error_logs(), ExportLogsServiceRequest.FromString(error_logs()),
                          (), "http")
    causes = sorted(r.cause for r in caplog.records if getattr(r, "event", None) == "enrich_failed")
    assert causes == ["KeyError", "ZeroDivisionError"]


async def test_a_working_classifier_still_enriches() -> None:
    clock, metrics, sink = FakeClock(), Metrics(), Sink()
    route = router(Signal.TRACES, sink, Classifier(ClassifyProcessorConfig()), clock, metrics)
    payload = error_traces()
    await route.ingest("otlp", Signal.TRACES, payload, ExportTraceServiceRequest.FromString(payload), (), "grpc")
    assert sink.entries[0][0].payload != payload and b"sidecar.error.category" in sink.entries[0][0].payload
    assert failures(metrics, "traces") == 0


class SpanClassifierBug(Classifier):
    """Raises where the exporter's shedding asks which spans are errors."""

    def classify_span(self, span: trace_pb2.Span) -> Classification | None:
        raise RuntimeError("a bug in span classification")


async def test_shedding_fails_open_and_keeps_the_whole_request() -> None:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock)
    config = make_config(["a:4317"], sending_queue=SendingQueueConfig(num_consumers=1, queue_size=10))
    ladder = DegradationProcessorConfig(spill_at=0.01, reduce_at=0.02, essential_at=0.05)
    exporter = Exporter("otlp_grpc", config, build_sender(config, [transport], clock, metrics),
                        SpanClassifierBug(ClassifyProcessorConfig()), Events(metrics, clock), clock, None, None,
                        degradation=ladder)
    exporter.accepting = True
    exporter.queue = MemoryQueue(10)  # not started: no consumer takes anything away
    await exporter.queue.put(make_entry(1))  # 10 % full: level 3 (essential), which sheds non-error spans
    entry = make_entry(5)
    result = await exporter.accept(entry, ExportTraceServiceRequest.FromString(entry.payload), ladder)
    assert exporter.ladder is not None and exporter.ladder.level is Level.ESSENTIAL
    assert result == IngestResult()  # nothing shed, nothing refused
    assert [e.items for e in exporter.queue.drain_nowait()] == [1, 5]  # the request kept whole
    assert failures(metrics, "traces") == 1
