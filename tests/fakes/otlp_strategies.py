"""Hypothesis strategies for OTLP requests shared by the enrichment property tests: arbitrary spans, log records
and requests (every AnyValue kind, the status-code and exception keys, pre-seeded enrichment attributes), and
realistic ones (the shapes instrumentations write)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import ATTRIBUTE_NAMES, ERROR_TYPE_KEY

CLASSIFIER = Classifier()

PREFIXES = ("sidecar.error.", "x.")
STATUS_KEYS = ("http.response.status_code", "http.status_code", "rpc.response.status_code", "rpc.grpc.status_code",
               "db.response.status_code")
SPECIAL_KEYS = (*STATUS_KEYS, "exception.type", "exception.message", ERROR_TYPE_KEY, "",
                *(p + n for p in PREFIXES for n in ATTRIBUTE_NAMES))
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(SETTINGS, max_examples=400)

# ----------------------------------------------------------------------------- strategies

texts = st.text(max_size=12)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _scalar(value: common_pb2.AnyValue, kind: str, payload: Any) -> common_pb2.AnyValue:
    if kind == "string":
        value.string_value = payload
    elif kind == "bool":
        value.bool_value = payload
    elif kind == "int":
        value.int_value = payload
    elif kind == "double":
        value.double_value = payload
    elif kind == "bytes":
        value.bytes_value = payload
    return value


scalar_values = st.one_of(
    st.just(("empty", None)),
    st.tuples(st.just("string"), texts),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("int"), int64),
    st.tuples(st.just("double"), st.floats(allow_nan=True)),
    st.tuples(st.just("bytes"), st.binary(max_size=8)),
)


def _build(spec: Any) -> common_pb2.AnyValue:
    value = common_pb2.AnyValue()
    kind, payload = spec
    if kind == "array":
        value.array_value.SetInParent()
        for item in payload:
            value.array_value.values.append(_build(item))
    elif kind == "kvlist":
        value.kvlist_value.SetInParent()
        for key, item in payload:
            value.kvlist_value.values.add(key=key).value.CopyFrom(_build(item))
    else:
        _scalar(value, kind, payload)
    return value


value_specs = st.recursive(
    scalar_values,
    lambda inner: st.one_of(
        st.tuples(st.just("array"), st.lists(inner, max_size=3)),
        st.tuples(st.just("kvlist"), st.lists(st.tuples(st.sampled_from(SPECIAL_KEYS) | texts, inner), max_size=3)),
    ),
    max_leaves=5,
)
any_values = value_specs.map(_build)

status_code_values = st.one_of(
    st.integers(min_value=-2, max_value=700).map(lambda n: _scalar(common_pb2.AnyValue(), "int", n)),
    st.sampled_from([0, 14, 127, 128, 383, 384, 399, 400, 499, 500, 16383, 16384, 2**40]).map(
        lambda n: _scalar(common_pb2.AnyValue(), "int", n)),
    st.sampled_from(["OK", "0", "ok", " OK", "", "UNAVAILABLE", "14", "503", "404", "200", "40P01", "-32603"]).map(
        lambda s: _scalar(common_pb2.AnyValue(), "string", s)),
    any_values,
)
exception_strings = st.sampled_from([
    "ConnectionRefusedError", "java.net.SocketTimeoutException", "MemoryError", "grpc.RpcError", "KeyError",
    "StatusCode.UNAVAILABLE", "deadlock detected", "connection reset by peer", "x" * 300, "",
]).map(lambda s: _scalar(common_pb2.AnyValue(), "string", s))


@st.composite
def key_values(draw: st.DrawFn) -> common_pb2.KeyValue:
    key = draw(st.one_of(st.sampled_from(SPECIAL_KEYS), texts))
    if key in STATUS_KEYS:
        value = draw(status_code_values)
    elif key.startswith("exception."):
        value = draw(st.one_of(exception_strings, any_values))
    else:
        value = draw(any_values)
    kv = common_pb2.KeyValue(key=key)
    if draw(st.booleans()) or value.WhichOneof("value") is not None:
        kv.value.CopyFrom(value)
    return kv


attribute_lists = st.lists(key_values(), max_size=6)


@st.composite
def spans(draw: st.DrawFn) -> trace_pb2.Span:
    s = trace_pb2.Span(
        trace_id=draw(st.sampled_from([b"", b"\x01" * 16]) | st.binary(min_size=16, max_size=16)),
        span_id=draw(st.binary(min_size=8, max_size=8)),
        parent_span_id=draw(st.sampled_from([b""]) | st.binary(min_size=8, max_size=8)),
        trace_state=draw(texts),
        name=draw(texts),
        kind=draw(st.integers(min_value=0, max_value=6)),  # type: ignore[arg-type]
        start_time_unix_nano=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        end_time_unix_nano=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        dropped_attributes_count=draw(st.integers(min_value=0, max_value=3)),
        flags=draw(st.integers(min_value=0, max_value=2**32 - 1)),
    )
    s.attributes.extend(draw(attribute_lists))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        event = s.events.add(name=draw(st.sampled_from(["exception", "message", "", "Exception"]) | texts),
                             time_unix_nano=draw(st.integers(min_value=0, max_value=2**64 - 1)))
        event.attributes.extend(draw(attribute_lists))
    for _ in range(draw(st.integers(min_value=0, max_value=1))):
        link = s.links.add(trace_id=draw(st.binary(min_size=16, max_size=16)),
                           span_id=draw(st.binary(min_size=8, max_size=8)))
        link.attributes.extend(draw(attribute_lists))
    if draw(st.booleans()):
        s.status.code = draw(st.sampled_from([0, 1, 2, 2, 7]))  # type: ignore[assignment]
        s.status.message = draw(st.sampled_from(["", "connection refused", "boom"]) | texts)
    return s


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        rs = request.resource_spans.add(schema_url=draw(texts))
        if draw(st.booleans()):
            rs.resource.attributes.extend(draw(attribute_lists))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(texts)
            ss.scope.attributes.extend(draw(st.lists(key_values(), max_size=2)))
            ss.spans.extend(draw(st.lists(spans(), max_size=6)))
    return request


@st.composite
def log_records(draw: st.DrawFn) -> logs_pb2.LogRecord:
    r = logs_pb2.LogRecord(
        time_unix_nano=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        observed_time_unix_nano=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        severity_number=draw(st.integers(min_value=0, max_value=24) | st.sampled_from([9, 17, 21, 99])),  # type: ignore[arg-type]
        severity_text=draw(texts),
        trace_id=draw(st.sampled_from([b""]) | st.binary(min_size=16, max_size=16)),
        span_id=draw(st.sampled_from([b""]) | st.binary(min_size=8, max_size=8)),
        flags=draw(st.integers(min_value=0, max_value=255)),
    )
    r.attributes.extend(draw(attribute_lists))
    body = draw(st.one_of(st.none(), any_values, exception_strings))
    if body is not None:
        r.body.CopyFrom(body)
    return r


@st.composite
def log_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        rl = request.resource_logs.add()
        if draw(st.booleans()):
            rl.resource.attributes.extend(draw(attribute_lists))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            sl = rl.scope_logs.add()
            sl.scope.name = draw(texts)
            sl.log_records.extend(draw(st.lists(log_records(), max_size=6)))
    return request


plain_attributes = st.lists(
    st.tuples(st.sampled_from(["http.route", "url.path", "server.port", "db.system", "peer.service"]),
              st.one_of(texts, st.integers(min_value=0, max_value=70000))),
    max_size=4,
)


@st.composite
def realistic_spans(draw: st.DrawFn) -> trace_pb2.Span:
    s = trace_pb2.Span(
        trace_id=draw(st.binary(min_size=16, max_size=16)),
        span_id=draw(st.binary(min_size=8, max_size=8)),
        name="op",
        kind=draw(st.integers(min_value=0, max_value=5)),  # type: ignore[arg-type]
        start_time_unix_nano=draw(st.integers(min_value=0, max_value=2**64 - 1)),
    )
    for key, value in draw(plain_attributes):
        kv = s.attributes.add(key=key)
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value
    for key in draw(st.lists(st.sampled_from(STATUS_KEYS), max_size=2, unique=True)):
        if draw(st.integers(min_value=0, max_value=3)):  # mostly OK values: the fast path decides
            ok = st.sampled_from([200, 204, 302]) if key.startswith("http") else st.sampled_from([0, "OK", "0"])
            value = draw(ok)
            _scalar(s.attributes.add(key=key).value, "int" if isinstance(value, int) else "string", value)
        else:
            value = draw(st.sampled_from([127, 128, 399, 400, 404, 499, 500, 503, 599, 600, 16384, -1, 1, 14,
                                          "UNAVAILABLE", "ok", "404", "503"]) | st.integers(-2, 700))
            _scalar(s.attributes.add(key=key).value, "int" if isinstance(value, int) else "string", value)
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        event = s.events.add(name=draw(st.sampled_from(["exception", "log"])))
        event.attributes.add(key="exception.type").value.CopyFrom(draw(exception_strings))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        s.status.code = draw(st.sampled_from([1, 2]))  # type: ignore[assignment]
    return s


@st.composite
def realistic_trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    rs.scope_spans.add().spans.extend(draw(st.lists(realistic_spans(), min_size=1, max_size=12)))
    return request


configs = st.builds(EnrichProcessorConfig, attribute_prefix=st.sampled_from(PREFIXES), set_error_type=st.booleans())
