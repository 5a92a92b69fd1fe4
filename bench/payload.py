"""The benchmark's request: one ExportTraceServiceRequest of N HTTP server spans, some of them errors.

The spans look like what an instrumented web service sends through the OpenTelemetry SDK: a
resource with the usual attributes, one scope, spans with ids, timestamps and nine semantic
convention attributes (about 450 bytes each: 230 KB per 512-span request). An error span has
status ERROR, status code 500 and an `exception` event (type, message, a short stack trace), as
the SDK writes for a caught exception; it is spread evenly through the request (every 10th span
at 10 %).
"""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

ENRICHED_MARKER = b"sidecar.error.category"  # what the sidecar writes onto each enriched span


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def error_indices(spans: int, error_fraction: float) -> set[int]:
    """Which spans are errors: `round(spans * fraction)` of them, evenly spread."""
    errors = round(spans * error_fraction)
    if errors <= 0:
        return set()
    step = spans / errors
    return {int(i * step + step - 1) for i in range(errors)}


def build_request(spans: int = 512, error_fraction: float = 0.0, seed: int = 1) -> ExportTraceServiceRequest:
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([
        _kv("service.name", "checkout"), _kv("service.version", "1.4.2"),
        _kv("deployment.environment", "bench"), _kv("host.name", "bench-host-1"),
        _kv("telemetry.sdk.language", "python"), _kv("telemetry.sdk.name", "opentelemetry"),
        _kv("telemetry.sdk.version", "1.45.2"),
    ])
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "opentelemetry.instrumentation.flask"
    scope_spans.scope.version = "0.66b2"
    errors = error_indices(spans, error_fraction)
    start = 1_760_000_000_000_000_000
    for i in range(spans):
        span = scope_spans.spans.add()
        span.trace_id = rng.randbytes(16)
        span.span_id = rng.randbytes(8)
        span.parent_span_id = rng.randbytes(8)
        span.name = f"GET /api/orders/{{order_id}}/items/{i % 13}"
        span.kind = trace_pb2.Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = start + i * 1_000_000
        span.end_time_unix_nano = span.start_time_unix_nano + rng.randrange(200_000, 20_000_000)
        error = i in errors
        span.attributes.extend([
            _kv("http.request.method", "GET"),
            _kv("url.path", f"/api/orders/{rng.randrange(10**6)}/items/{i % 13}"),
            _kv("url.scheme", "https"),
            _kv("http.route", f"/api/orders/{{order_id}}/items/{i % 13}"),
            _kv("http.response.status_code", 500 if error else 200),
            _kv("server.address", "checkout.internal"),
            _kv("network.protocol.version", "1.1"),
            _kv("client.address", f"10.0.{i % 200}.{rng.randrange(1, 250)}"),
            _kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
        ])
        if error:
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            span.status.message = "ConnectionRefusedError: [Errno 111] Connection refused"
            event = span.events.add()
            event.name = "exception"
            event.time_unix_nano = span.end_time_unix_nano - 1000
            event.attributes.extend([
                _kv("exception.type", "ConnectionRefusedError"),
                _kv("exception.message", "[Errno 111] Connection refused: inventory-db:5432"),
                _kv("exception.stacktrace",
                    'Traceback (most recent call last):\n  File "app.py", line 42, in get_items\n'
                    "    rows = db.query(sql)\nConnectionRefusedError: [Errno 111] Connection refused"),
                _kv("exception.escaped", "False"),
            ])
    return request
