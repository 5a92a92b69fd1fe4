"""Property tests for enrichment on generated OTLP trace and log requests.

Enrichment must keep every original field, only append missing attributes to error items, be
idempotent, leave non-error items byte-identical, and agree exactly with `classify_span` /
`classify_log` on which items are errors (the byte-level fast path must never miss one).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import ATTRIBUTE_NAMES, ERROR_TYPE_KEY, enrich_logs, enrich_traces

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

# ----------------------------------------------------------------------------- helpers


def _ser(message: Any) -> bytes:
    return message.SerializeToString(deterministic=True)  # type: ignore[no-any-return]


def _our_keys(config: EnrichProcessorConfig) -> set[str]:
    keys = {config.attribute_prefix + name for name in ATTRIBUTE_NAMES}
    if config.set_error_type:
        keys.add(ERROR_TYPE_KEY)
    return keys


def _check_item(before: Any, after: Any, is_error: bool, config: EnrichProcessorConfig) -> bool:
    """Asserts the item kept everything; returns whether it was changed."""
    n = len(before.attributes)
    assert len(after.attributes) >= n
    for old, new in zip(before.attributes, after.attributes[:n], strict=True):
        assert _ser(old) == _ser(new)  # every original attribute present, equal, in place
    added = [kv.key for kv in after.attributes[n:]]
    existing = {kv.key for kv in before.attributes}
    ours = _our_keys(config)
    assert len(set(added)) == len(added)
    assert set(added) <= ours - existing  # never overwrite or duplicate an existing key
    stripped = type(after)()
    stripped.CopyFrom(after)
    del stripped.attributes[n:]
    assert _ser(stripped) == _ser(before)  # ids, timestamps, events, links, status... unchanged
    if not is_error:
        assert _ser(after) == _ser(before)  # non-error items are byte-identical
        assert not added
    else:
        assert set(added) == ours - existing  # error items get every missing attribute
    return bool(added)


def _flat_spans(request: ExportTraceServiceRequest) -> list[trace_pb2.Span]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _flat_records(request: ExportLogsServiceRequest) -> list[logs_pb2.LogRecord]:
    return [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def _without_items(request: Any) -> bytes:
    clone = type(request)()
    clone.CopyFrom(request)
    if isinstance(clone, ExportTraceServiceRequest):
        for rs in clone.resource_spans:
            for ss in rs.scope_spans:
                del ss.spans[:]
    else:
        for rl in clone.resource_logs:
            for sl in rl.scope_logs:
                del sl.log_records[:]
    return _ser(clone)


# ----------------------------------------------------------------------------- properties

CLASSIFIER = Classifier()


def _check_traces(request: ExportTraceServiceRequest, config: EnrichProcessorConfig, with_raw: bool) -> None:
    original = ExportTraceServiceRequest()
    original.CopyFrom(request)
    original_bytes = request.SerializeToString()
    error_flags = [CLASSIFIER.classify_span(s) is not None for s in _flat_spans(original)]

    stats = enrich_traces(request, CLASSIFIER, config, raw=original_bytes if with_raw else None)

    changed = 0
    for before, after, is_error in zip(_flat_spans(original), _flat_spans(request), error_flags, strict=True):
        changed += _check_item(before, after, is_error, config)
    assert stats.enriched == changed
    assert sum(stats.by_class.values()) == stats.enriched
    assert _without_items(request) == _without_items(original)  # resource, scope, schema urls
    if stats.enriched == 0:
        assert request.SerializeToString() == original_bytes

    once = request.SerializeToString()
    again = enrich_traces(request, CLASSIFIER, config, raw=once if with_raw else None)
    assert again.enriched == 0
    assert request.SerializeToString() == once


@SETTINGS
@given(request=trace_requests(), config=configs, with_raw=st.booleans())
def test_trace_enrichment_properties(request: ExportTraceServiceRequest, config: EnrichProcessorConfig,
                                     with_raw: bool) -> None:
    _check_traces(request, config, with_raw)


@MANY
@given(request=realistic_trace_requests(), config=configs, with_raw=st.booleans())
def test_trace_enrichment_properties_on_realistic_requests(request: ExportTraceServiceRequest,
                                                           config: EnrichProcessorConfig, with_raw: bool) -> None:
    # Mostly clean spans, so the byte-level fast path (not the full-scan fallback) decides.
    _check_traces(request, config, with_raw)


@settings(SETTINGS, max_examples=200)
@given(request=log_requests(), config=configs, with_raw=st.booleans())
def test_log_enrichment_properties(request: ExportLogsServiceRequest, config: EnrichProcessorConfig,
                                   with_raw: bool) -> None:
    original = ExportLogsServiceRequest()
    original.CopyFrom(request)
    original_bytes = request.SerializeToString()
    error_flags = [CLASSIFIER.classify_log(r) is not None for r in _flat_records(original)]

    stats = enrich_logs(request, CLASSIFIER, config, raw=original_bytes if with_raw else None)

    changed = 0
    for before, after, is_error in zip(_flat_records(original), _flat_records(request), error_flags, strict=True):
        changed += _check_item(before, after, is_error, config)
    assert stats.enriched == changed
    assert _without_items(request) == _without_items(original)
    if stats.enriched == 0:
        assert request.SerializeToString() == original_bytes

    once = request.SerializeToString()
    assert enrich_logs(request, CLASSIFIER, config, raw=once if with_raw else None).enriched == 0
    assert request.SerializeToString() == once


@settings(SETTINGS, max_examples=60)
@given(request=trace_requests(), config=configs)
def test_preseeded_attributes_are_never_overwritten(request: ExportTraceServiceRequest,
                                                    config: EnrichProcessorConfig) -> None:
    # Seed error.type and one prefixed attribute (with an odd value type) on every other span.
    for i, s in enumerate(_flat_spans(request)):
        if i % 2 == 0:
            s.attributes.add(key=ERROR_TYPE_KEY).value.string_value = "app.Error"
            s.attributes.add(key=config.attribute_prefix + "severity").value.int_value = 42
    seeded = ExportTraceServiceRequest()
    seeded.CopyFrom(request)
    enrich_traces(request, CLASSIFIER, config)
    for i, (before, after) in enumerate(zip(_flat_spans(seeded), _flat_spans(request), strict=True)):
        first: dict[str, bytes] = {}
        for kv in after.attributes:
            first.setdefault(kv.key, _ser(kv.value))
        for kv in before.attributes:
            assert first[kv.key] == _ser(next(x.value for x in before.attributes if x.key == kv.key))
        if i % 2 == 0:
            keys = [kv.key for kv in after.attributes]
            assert keys.count(ERROR_TYPE_KEY) == [kv.key for kv in before.attributes].count(ERROR_TYPE_KEY)
            assert keys.count(config.attribute_prefix + "severity") == [
                kv.key for kv in before.attributes].count(config.attribute_prefix + "severity")
