"""`enrich_traces_payload` (the byte-level path the router uses) must agree exactly with `enrich_traces`.

For any request: the bytes it returns parse to the request `enrich_traces` leaves behind (same
attributes appended to the same spans, nothing else changed), the statistics are the same, and
None (forward the received bytes) exactly when nothing was enriched. Requests are also sent in
encodings other than protobuf-python's own (status not last, flags after status, fields reversed)
so the exact fallbacks are exercised.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.enrich import _not_http_200, enrich_traces_payload
from sidecar.pipeline.wire import SpliceView, evidence_keys, facts_of_view, span_view, unproven_floor
from tests.fakes.enrich_model import enrich_traces
from tests.fakes.otlp_strategies import (
    CLASSIFIER,
    MANY,
    SETTINGS,
    configs,
    realistic_spans,
    realistic_trace_requests,
    spans,
    trace_requests,
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes) -> list[bytes]:
    """Split a message's encoding into its top-level fields (each with its tag)."""
    out, pos = [], 0
    while pos < len(data):
        start = pos
        key = 0
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        wire = key & 7
        if wire == 0:
            while data[pos] >= 0x80:
                pos += 1
            pos += 1
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length = 0
            shift = 0
            while True:
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            pos += length
        else:  # pragma: no cover - no groups in OTLP
            raise AssertionError(f"wire type {wire}")
        out.append(data[start:pos])
    return out


def _field_number(field: bytes) -> int:
    key = shift = 0
    for byte in field:
        key |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return key >> 3
    raise AssertionError("truncated tag")


def _reencode(request: ExportTraceServiceRequest, reverse_spans: bool) -> bytes:
    """A valid encoding of `request` that is not protobuf-python's: span fields reversed (so status
    comes first) or unchanged, every container rebuilt by hand."""
    out = bytearray()
    for resource in request.resource_spans:
        body = bytearray()
        if resource.HasField("resource"):
            body += b"\x0a" + _varint(resource.resource.ByteSize()) + resource.resource.SerializeToString()
        for scope in resource.scope_spans:
            scope_body = bytearray()
            for span in scope.spans:
                data = span.SerializeToString()
                if reverse_spans:  # fields in descending number order, repeated ones kept in their order
                    groups: dict[int, list[bytes]] = {}
                    for field in _fields(data):
                        groups.setdefault(_field_number(field), []).append(field)
                    data = b"".join(b"".join(groups[n]) for n in sorted(groups, reverse=True))
                scope_body += b"\x12" + _varint(len(data)) + data
            if scope.HasField("scope"):
                scope_body = b"\x0a" + _varint(scope.scope.ByteSize()) + scope.scope.SerializeToString() + scope_body
            if scope.schema_url:
                scope_body += b"\x1a" + _varint(len(scope.schema_url.encode())) + scope.schema_url.encode()
            body += b"\x12" + _varint(len(scope_body)) + scope_body
        if resource.schema_url:
            body += b"\x1a" + _varint(len(resource.schema_url.encode())) + resource.schema_url.encode()
        out += b"\x0a" + _varint(len(body)) + body
    return bytes(out)


def _check(request: ExportTraceServiceRequest, config: EnrichProcessorConfig, raw: bytes) -> None:
    parsed = ExportTraceServiceRequest.FromString(raw)
    assert parsed == request
    expected = ExportTraceServiceRequest.FromString(raw)
    expected_stats = enrich_traces(expected, CLASSIFIER, config, collect=True)  # in place, on a canonical copy

    stats, payload = enrich_traces_payload(raw, CLASSIFIER, config, collect=True)

    assert stats.enriched == expected_stats.enriched
    assert stats.by_class == expected_stats.by_class
    assert stats.hotspots == expected_stats.hotspots  # the same spans, by place, name and class
    if expected_stats.enriched == 0:
        assert payload is None
    else:
        assert payload is not None
        assert ExportTraceServiceRequest.FromString(payload) == expected
        again, twice = enrich_traces_payload(payload, CLASSIFIER, config)  # idempotent
        assert again.enriched == 0 and twice is None


@MANY
@given(request=realistic_trace_requests(), config=configs)
def test_payload_path_matches_in_place_on_realistic_requests(request: ExportTraceServiceRequest,
                                                             config: EnrichProcessorConfig) -> None:
    _check(request, config, request.SerializeToString())


@SETTINGS
@given(request=trace_requests(), config=configs, reverse=st.booleans())
def test_payload_path_matches_in_place(request: ExportTraceServiceRequest, config: EnrichProcessorConfig,
                                       reverse: bool) -> None:
    _check(request, config, request.SerializeToString())
    _check(request, config, _reencode(request, reverse_spans=reverse))


@SETTINGS
@given(request=realistic_trace_requests(), config=configs, flags=st.integers(min_value=0, max_value=2**32 - 1))
def test_payload_path_with_flags_and_reversed_fields(request: ExportTraceServiceRequest,
                                                      config: EnrichProcessorConfig, flags: int) -> None:
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                span.flags = flags
    _check(request, config, request.SerializeToString())
    _check(request, config, _reencode(request, reverse_spans=True))


@MANY
@given(span=spans())
def test_span_view_facts_match_span_facts(span: trace_pb2.Span) -> None:
    from sidecar.pipeline.evidence import span_facts

    keys = [kv.key for kv in span.attributes]
    expected = span_facts(span)
    got = facts_of_view(span_view(span.SerializeToString()))
    if len(keys) != len(set(keys)):  # a repeated key counts once in the view (the last value wins in both)
        got.suspects, got.suspects_4xx = expected.suspects, expected.suspects_4xx
    assert got == expected
    assert got.is_error == expected.is_error


def _span_bytes(raw: bytes) -> list[bytes]:
    view = SpliceView()
    view.ParseFromString(raw)
    return [span for resource in view.resource_spans for scope in resource.scope_spans for span in scope.spans]


@MANY
@given(span=st.one_of(spans(), realistic_spans()), deprecated_key=st.booleans(), reverse=st.booleans())
def test_unproven_floor_never_exceeds_the_byte_count(span: trace_pb2.Span, deprecated_key: bool,
                                                       reverse: bool) -> None:
    """The floor taken from a span's evidence key is at most what the byte count finds in the span, in any
    field order: the enrichment trusts it to skip counting, so a floor too high would leave a span whose
    status code is an error unchecked."""
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    (data,) = _span_bytes(_reencode(request, reverse_spans=reverse))
    floor = unproven_floor(evidence_keys([data]).keys[0], deprecated_key)
    assert 0 <= floor <= _not_http_200(data, deprecated_key)
