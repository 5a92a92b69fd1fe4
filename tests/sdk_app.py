"""An instrumented application built on the real OpenTelemetry Python SDK.

It reads its destination only from OTEL_EXPORTER_OTLP_ENDPOINT (as a user's
application does), and produces traces with some error spans, metrics and logs.
Used by the integration tests and by the demo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

Protocol = Literal["grpc", "http"]


def _exporters(protocol: Protocol) -> tuple[object, object, object]:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(), HttpMetricExporter(), HttpLogExporter()


class SdkApp:
    def __init__(self, protocol: Protocol, service_name: str = "checkout", batch_size: int = 128) -> None:
        self.resource = Resource.create({"service.name": service_name, "deployment.environment": "test"})
        span_exporter, metric_exporter, log_exporter = _exporters(protocol)
        self.tracer_provider = TracerProvider(resource=self.resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(
            span_exporter, max_export_batch_size=batch_size, schedule_delay_millis=100))  # type: ignore[arg-type]
        self.tracer = self.tracer_provider.get_tracer("sdk_app", "1.0")
        self.reader = PeriodicExportingMetricReader(metric_exporter,  # type: ignore[arg-type]
                                                    export_interval_millis=60_000)
        self.meter_provider = MeterProvider(resource=self.resource, metric_readers=[self.reader])
        self.counter = self.meter_provider.get_meter("sdk_app").create_counter("orders_total")
        self.logger_provider = LoggerProvider(resource=self.resource)
        self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(
            log_exporter, schedule_delay_millis=100))  # type: ignore[arg-type]
        self.logger = self.logger_provider.get_logger("sdk_app")
        self.span_ids: list[int] = []
        self.error_span_ids: list[int] = []

    def send_traces(self, count: int, error_every: int = 0, http_503_every: int = 0) -> list[int]:
        """`count` spans; every `error_every`-th records an exception, every `http_503_every`-th is a 503."""
        ids = []
        for i in range(count):
            with self.tracer.start_as_current_span(f"GET /orders/{i % 7}", kind=SpanKind.SERVER,
                                                   record_exception=False, set_status_on_exception=False) as span:
                span.set_attribute("app.order_index", i)
                if error_every and i % error_every == error_every - 1:
                    try:
                        raise ConnectionRefusedError(111, "Connection refused: inventory-db:5432")
                    except ConnectionRefusedError as exc:
                        span.record_exception(exc)
                        span.set_status(Status(StatusCode.ERROR, "inventory unavailable"))
                    self.error_span_ids.append(span.get_span_context().span_id)
                elif http_503_every and i % http_503_every == http_503_every - 1:
                    span.set_attribute("http.response.status_code", 503)
                    self.error_span_ids.append(span.get_span_context().span_id)
                else:
                    span.set_attribute("http.response.status_code", 200)
                ids.append(span.get_span_context().span_id)
        self.span_ids.extend(ids)
        return ids

    def record_metrics(self, count: int) -> None:
        for i in range(count):
            self.counter.add(1, {"shop": f"shop-{i % 3}"})

    def emit_logs(self, count: int, error_every: int = 0) -> None:
        for i in range(count):
            if error_every and i % error_every == error_every - 1:
                self.logger.emit(severity_number=SeverityNumber.ERROR, severity_text="ERROR",
                                 body=f"payment {i} failed: deadline exceeded",
                                 attributes={"exception.type": "TimeoutError", "log.index": i})
            else:
                self.logger.emit(severity_number=SeverityNumber.INFO, severity_text="INFO",
                                 body=f"order {i} placed", attributes={"log.index": i})

    def flush(self, timeout_millis: int = 30_000) -> bool:
        ok = bool(self.tracer_provider.force_flush(timeout_millis))
        ok = bool(self.meter_provider.force_flush(timeout_millis)) and ok
        return bool(self.logger_provider.force_flush(timeout_millis)) and ok

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()


class RecordingExporter(SpanExporter):
    """The SDK's own OTLP/gRPC span exporter; remembers which spans each answer acknowledged,
    so a test or benchmark knows exactly what the application was told was delivered."""

    def __init__(self) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        self.inner = OTLPSpanExporter()
        self.acknowledged: set[bytes] = set()
        self.failed: set[bytes] = set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        ids = {span.context.span_id.to_bytes(8, "big") for span in spans if span.context is not None}
        (self.acknowledged if result is SpanExportResult.SUCCESS else self.failed).update(ids)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class RecordedTraffic:
    """An application sending spans through a RecordingExporter (OTEL_EXPORTER_OTLP_ENDPOINT)."""

    def __init__(self, service_name: str = "chaos", max_queue_size: int = 100_000) -> None:
        self.recorder = RecordingExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(
            self.recorder, max_export_batch_size=128, schedule_delay_millis=50, max_queue_size=max_queue_size))
        self.tracer = self.provider.get_tracer("chaos")
        self.sent = 0

    def send(self, count: int, padding: int = 200) -> None:
        for i in range(count):
            with self.tracer.start_as_current_span(f"GET /items/{i % 11}") as span:
                span.set_attribute("app.padding", "p" * padding)
        self.sent += count

    def flush(self, timeout_millis: int = 60_000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.provider.shutdown()


def quiet_sdk_logs() -> None:
    """The SDK logs every transient export failure; the demo reports them itself."""
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)


__all__ = ["RecordedTraffic", "RecordingExporter", "SdkApp", "quiet_sdk_logs", "trace"]
