"""An example application for docker-compose.yml, on the OpenTelemetry Python SDK.

Configured only by the standard variables, as any instrumented application is:
OTEL_EXPORTER_OTLP_ENDPOINT (http://sidecar:4317 in the compose stack: the sidecar, not the
Collector), OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES. It serves fake checkout requests: traces
with some error spans (a refused database connection, a payment 503), a request counter and a
duration histogram, and logs through the standard `logging` module.

    python example_app.py                        # until SIGTERM / Ctrl-C
    python example_app.py --iterations 20 --interval 0
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
import time

from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import set_meter_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger("example_app")


class PaymentUnavailable(Exception):
    """The payment provider answered 503."""


def setup() -> tuple[TracerProvider, MeterProvider, LoggerProvider]:
    # Resource.create() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the exporters read
    # OTEL_EXPORTER_OTLP_ENDPOINT (and _INSECURE, _HEADERS, ...).
    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "example-app"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    meter_provider = MeterProvider(resource=resource, metric_readers=[
        PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=10_000)])
    set_meter_provider(meter_provider)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(logger_provider)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
    return tracer_provider, meter_provider, logger_provider


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=0, help="requests to serve; 0 = until stopped")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between requests")
    args = parser.parse_args(argv)

    tracer_provider, meter_provider, logger_provider = setup()
    tracer = trace.get_tracer("example_app", "1.0")
    meter = meter_provider.get_meter("example_app", "1.0")
    requests = meter.create_counter("app.requests", unit="{request}", description="Checkout requests")
    duration = meter.create_histogram("app.request.duration", unit="s", description="Checkout duration")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    i = 0
    while not stop.is_set() and (args.iterations == 0 or i < args.iterations):
        started = time.perf_counter()
        status = serve_checkout(tracer, i)
        requests.add(1, {"http.route": "/checkout", "http.response.status_code": status})
        duration.record(time.perf_counter() - started, {"http.route": "/checkout"})
        i += 1
        stop.wait(args.interval)

    log.info("stopping after %d requests", i)
    tracer_provider.shutdown()   # flushes what is batched
    meter_provider.shutdown()
    logger_provider.shutdown()
    return 0


def serve_checkout(tracer: trace.Tracer, i: int) -> int:
    """One request: a server span with a database and a payment client span; some of them fail."""
    order = f"order-{i}"
    with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER, attributes={
            "http.request.method": "POST", "http.route": "/checkout", "app.order_id": order}) as server:
        try:
            with tracer.start_as_current_span("SELECT inventory", kind=SpanKind.CLIENT, attributes={
                    "db.system": "postgresql", "server.address": "inventory-db", "server.port": 5432}):
                time.sleep(random.uniform(0.001, 0.005))
                if i % 10 == 9:
                    # Recorded on the span as an exception event and an ERROR status: the sidecar
                    # adds sidecar.error.category=transport, recoverability=retryable, ...
                    raise ConnectionRefusedError(111, "Connection refused: inventory-db:5432")
            with tracer.start_as_current_span("POST /payments", kind=SpanKind.CLIENT, attributes={
                    "http.request.method": "POST", "server.address": "payments"}) as payment:
                if i % 7 == 6:
                    payment.set_attribute("http.response.status_code", 503)
                    raise PaymentUnavailable("payment provider answered 503 Service Unavailable")
                payment.set_attribute("http.response.status_code", 201)
        except (ConnectionRefusedError, PaymentUnavailable) as exc:
            server.set_attribute("http.response.status_code", 503)
            server.set_status(Status(StatusCode.ERROR, str(exc)))
            log.error("checkout %s failed: %s", order, exc)
            return 503
        server.set_attribute("http.response.status_code", 200)
        log.info("checkout %s placed", order)
        return 200


if __name__ == "__main__":
    raise SystemExit(main())
