"""Hand-built OTLP spans for the enrichment tests: a span with a kind, status, attributes and an exception
event, whole error requests, and the attributes of a span as a dict."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

Kind = trace_pb2.Span
SERVER, CLIENT, INTERNAL = Kind.SPAN_KIND_SERVER, Kind.SPAN_KIND_CLIENT, Kind.SPAN_KIND_INTERNAL
ERROR = trace_pb2.Status.STATUS_CODE_ERROR
PREFIX = "sidecar.error."


def attrs_of(item: trace_pb2.Span | logs_pb2.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in item.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def add_attr(attrs: object, key: str, value: object) -> None:
    kv = attrs.add(key=key)  # type: ignore[attr-defined]
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = value


def new_span(
    request: ExportTraceServiceRequest,
    *,
    kind: int = INTERNAL,
    status: int = 0,
    attrs: dict[str, object] | None = None,
    exception: str | None = None,
    resource: int = 0,
) -> trace_pb2.Span:
    while len(request.resource_spans) <= resource:
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc{len(request.resource_spans)}"
        rs.scope_spans.add().scope.name = "lib"
    scope = request.resource_spans[resource].scope_spans[0]
    n = len(scope.spans)
    s = scope.spans.add(name=f"op{n}", kind=kind, trace_id=bytes([n + 1]) * 16, span_id=bytes([n + 1]) * 8)  # type: ignore[arg-type]
    s.start_time_unix_nano, s.end_time_unix_nano = 1000 + n, 2000 + n
    if status:
        s.status.code = status  # type: ignore[assignment]
    for key, value in (attrs or {}).items():
        add_attr(s.attributes, key, value)
    if exception is not None:
        event = s.events.add(name="exception", time_unix_nano=1500)
        event.attributes.add(key="exception.type").value.string_value = exception
    return s


def enriched_spans(payload: bytes) -> list[dict[str, object]]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    return [attrs_of(span) for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def error_request(n: int, *, exception: str = "ConnectionRefusedError", status: int = 500) -> bytes:
    request = ExportTraceServiceRequest()
    for i in range(n):
        new_span(request, kind=SERVER, status=ERROR, exception=exception,
                 attrs={"http.response.status_code": status, "url.path": f"/orders/{i}"})
    return request.SerializeToString()
