"""Enrichment of error spans and log records: what is added, what is never touched, the fast path."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import ATTRIBUTE_NAMES, EnrichStats, enrich_logs
from tests.fakes.enrich_model import enrich_traces
from tests.fakes.spans import CLIENT, ERROR, INTERNAL, PREFIX, SERVER, add_attr, attrs_of, new_span

CONFIG = EnrichProcessorConfig()


def run(request: ExportTraceServiceRequest, *, with_raw: bool = True, config: EnrichProcessorConfig = CONFIG,
        classifier: Classifier | None = None) -> EnrichStats:
    raw = request.SerializeToString() if with_raw else None
    return enrich_traces(request, classifier or Classifier(), config, raw=raw)


# ----------------------------------------------------------------------------- what is added


@pytest.mark.parametrize("with_raw", [True, False])
def test_error_span_gets_every_attribute(with_raw: bool) -> None:
    request = ExportTraceServiceRequest()
    new_span(request, kind=SERVER, attrs={"http.response.status_code": 200})
    err = new_span(request, kind=CLIENT, status=ERROR, exception="ConnectionRefusedError",
                   attrs={"http.request.method": "GET"})
    stats = run(request, with_raw=with_raw)
    assert stats.enriched == 1
    assert stats.by_class == {("transport", "low", "retryable", "connection_refused"): 1}
    assert stats.by_category == {"transport": 1}
    got = attrs_of(err)
    assert got == {
        "http.request.method": "GET",
        PREFIX + "category": "transport",
        PREFIX + "severity": "low",
        PREFIX + "recoverability": "retryable",
        PREFIX + "retryable": True,
        PREFIX + "transient": True,
        PREFIX + "recovery": "retry_with_backoff",
        PREFIX + "classified_by": "default:exception",
        "error.type": "connection_refused",
    }


def test_bool_attributes_are_bools() -> None:
    request = ExportTraceServiceRequest()
    s = new_span(request, status=ERROR)
    run(request)
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in s.attributes}
    assert kinds[PREFIX + "retryable"] == kinds[PREFIX + "transient"] == "bool_value"
    assert all(kinds[PREFIX + name] == "string_value" for name in ATTRIBUTE_NAMES
               if name not in ("retryable", "transient"))
    assert attrs_of(s)[PREFIX + "retryable"] is False  # processing / permanent


def test_custom_prefix_and_no_error_type() -> None:
    request = ExportTraceServiceRequest()
    s = new_span(request, status=ERROR)
    run(request, config=EnrichProcessorConfig(attribute_prefix="x.", set_error_type=False))
    assert set(attrs_of(s)) == {"x." + name for name in ATTRIBUTE_NAMES}


def test_existing_error_type_and_prefixed_attributes_are_never_overwritten() -> None:
    request = ExportTraceServiceRequest()
    s = new_span(request, status=ERROR, exception="TimeoutError",
                 attrs={"error.type": "my.Error", PREFIX + "category": "mine", PREFIX + "retryable": 7})
    stats = run(request)
    assert stats.enriched == 1
    got = attrs_of(s)
    assert got["error.type"] == "my.Error"
    assert got[PREFIX + "category"] == "mine"
    assert got[PREFIX + "retryable"] == 7
    assert got[PREFIX + "recovery"] == "increase_timeout"
    assert [kv.key for kv in s.attributes].count("error.type") == 1
    assert [kv.key for kv in s.attributes].count(PREFIX + "category") == 1


def test_fully_enriched_span_is_left_alone() -> None:
    request = ExportTraceServiceRequest()
    attrs: dict[str, object] = {PREFIX + name: "x" for name in ATTRIBUTE_NAMES}
    new_span(request, status=ERROR, attrs=attrs | {"error.type": "e"})
    before = request.SerializeToString()
    assert run(request).enriched == 0
    assert request.SerializeToString() == before


def test_idempotent() -> None:
    request = ExportTraceServiceRequest()
    new_span(request, status=ERROR, exception="MemoryError")
    new_span(request, kind=CLIENT, attrs={"http.response.status_code": 503})
    new_span(request, kind=SERVER, attrs={"http.response.status_code": 200})
    assert run(request).enriched == 2
    once = request.SerializeToString()
    for with_raw in (True, False):
        assert run(request, with_raw=with_raw).enriched == 0
        assert request.SerializeToString() == once


def test_no_error_means_byte_identical() -> None:
    request = ExportTraceServiceRequest()
    for i in range(50):
        new_span(request, kind=SERVER if i % 2 else CLIENT,
                 attrs={"http.response.status_code": 200 + i, "rpc.grpc.status_code": 0})
    before = request.SerializeToString()
    stats = run(request)
    assert stats.enriched == 0 and not stats.by_class
    assert request.SerializeToString() == before


def test_ids_timestamps_and_other_fields_unchanged() -> None:
    request = ExportTraceServiceRequest()
    s = new_span(request, kind=CLIENT, status=ERROR, exception="X", attrs={"a": 1})
    s.links.add(trace_id=b"\x09" * 16, span_id=b"\x08" * 8)
    s.status.message = "boom"
    before = trace_pb2.Span()
    before.CopyFrom(s)
    run(request)
    after = trace_pb2.Span()
    after.CopyFrom(s)
    del after.attributes[len(before.attributes):]
    assert after == before


# ----------------------------------------------------------------------------- detection through the fast path


@pytest.mark.parametrize("with_raw", [True, False])
@pytest.mark.parametrize(
    ("kind", "value", "is_error"),
    [
        (CLIENT, 0, False), (CLIENT, 127, False), (CLIENT, 128, False), (CLIENT, 383, False),
        (CLIENT, 384, False), (CLIENT, 399, False), (CLIENT, 400, True), (CLIENT, 404, True),
        (SERVER, 404, False), (SERVER, 499, False), (SERVER, 500, True), (SERVER, 16383, True),
        (SERVER, 16384, True), (CLIENT, -1, False), (INTERNAL, 503, True), (CLIENT, "404", True),
        (SERVER, "200", False),
    ],
)
def test_http_status_detection_around_varint_boundaries(kind: int, value: object, is_error: bool,
                                                       with_raw: bool) -> None:
    request = ExportTraceServiceRequest()
    for _ in range(3):
        new_span(request, kind=SERVER, attrs={"http.response.status_code": 200})
    target = new_span(request, kind=kind, attrs={"http.response.status_code": value})
    new_span(request, status=ERROR)  # an ERROR span elsewhere does not hide the target
    stats = run(request, with_raw=with_raw)
    assert stats.enriched == 1 + is_error
    assert (PREFIX + "category" in attrs_of(target)) is is_error


@pytest.mark.parametrize(
    ("key", "value", "is_error"),
    [
        ("rpc.grpc.status_code", 0, False), ("rpc.grpc.status_code", 2, True),
        ("rpc.grpc.status_code", "OK", False), ("rpc.grpc.status_code", "0", False),
        ("rpc.grpc.status_code", "ok", False), ("rpc.response.status_code", "UNAVAILABLE", True),
        ("rpc.response.status_code", "OK", False), ("http.status_code", 502, True),
        ("http.status_code", 302, False), ("db.response.status_code", "40P01", False),
        ("x.status_code", 500, False),
    ],
)
def test_other_status_keys(key: str, value: object, is_error: bool) -> None:
    request = ExportTraceServiceRequest()
    target = new_span(request, kind=CLIENT, attrs={key: value})
    new_span(request, kind=CLIENT, attrs={key: value, "x": 1}, status=ERROR)
    stats = run(request)
    assert stats.enriched == 1 + is_error
    assert (PREFIX + "category" in attrs_of(target)) is is_error


def test_status_code_keys_outside_span_attributes_fall_back_to_a_full_scan() -> None:
    request = ExportTraceServiceRequest()
    new_span(request, kind=SERVER, attrs={"http.response.status_code": 200})
    request.resource_spans[0].resource.attributes.add(key="http.response.status_code").value.int_value = 500
    hidden = new_span(request, kind=CLIENT, attrs={"http.response.status_code": 404})
    ev = new_span(request).events.add(name="e")
    ev.attributes.add(key="rpc.grpc.status_code").value.int_value = 14
    assert run(request).enriched == 1
    assert PREFIX + "category" in attrs_of(hidden)


def test_exception_event_on_unset_span_among_error_spans() -> None:
    request = ExportTraceServiceRequest()
    new_span(request, status=ERROR, exception="TimeoutError")
    quiet = new_span(request, exception="ConnectionResetError")
    new_span(request, kind=SERVER, attrs={"http.response.status_code": 200})
    new_span(request, resource=1, status=ERROR)
    assert run(request).enriched == 3
    assert attrs_of(quiet)["error.type"] == "connection_reset"


def test_a_string_value_that_looks_like_a_status_attribute_is_harmless() -> None:
    request = ExportTraceServiceRequest()
    fake = b"\x0a\x19http.response.status_code\x12\x03\x18\xc8\x01".decode("latin-1")
    new_span(request, attrs={"note": fake})
    target = new_span(request, kind=CLIENT, attrs={"http.response.status_code": 500})
    assert run(request).enriched == 1
    assert PREFIX + "category" in attrs_of(target)


def test_classifier_failure_reaches_the_caller_instead_of_a_made_up_class() -> None:
    """The router fails open on it (tests/unit/test_enrich_fail_open.py): no invented attributes."""
    class Broken(Classifier):
        def classify_span_facts(self, facts: object) -> object:  # type: ignore[override]
            raise RuntimeError("bug")

    request = ExportTraceServiceRequest()
    new_span(request, status=ERROR)
    with pytest.raises(RuntimeError, match="bug"):
        run(request, classifier=Broken())


def test_weird_input_never_raises() -> None:
    request = ExportTraceServiceRequest()
    s = new_span(request, status=ERROR)
    s.attributes.add(key="").value.string_value = "x" * 1_000_000
    s.attributes.add(key="arr").value.array_value.values.add().kvlist_value.values.add(key="")
    s.attributes.add(key="bytes").value.bytes_value = bytes(range(256))
    s.attributes.add(key="d").value.double_value = float("nan")
    s.attributes.add(key="none")
    s.attributes.add(key="http.response.status_code").value.double_value = 500.0
    event = s.events.add(name="exception")
    event.attributes.add(key="exception.type").value.bytes_value = b"\xff"
    event.attributes.add(key="exception.message").value.string_value = "\u0000" + "é" * 10_000
    s2 = new_span(request, kind=CLIENT)
    s2.attributes.add(key="rpc.grpc.status_code").value.array_value.SetInParent()
    assert run(request).enriched == 1
    assert run(request, with_raw=False).enriched == 0


# ----------------------------------------------------------------------------- logs


def new_record(
    request: ExportLogsServiceRequest,
    severity: int,
    body: str | None = None,
    attrs: dict[str, object] | None = None,
) -> logs_pb2.LogRecord:
    if not request.resource_logs:
        request.resource_logs.add().scope_logs.add()
    scope = request.resource_logs[0].scope_logs[0]
    r = scope.log_records.add(severity_number=severity, time_unix_nano=len(scope.log_records) + 1)  # type: ignore[arg-type]
    if body is not None:
        r.body.string_value = body
    for key, value in (attrs or {}).items():
        add_attr(r.attributes, key, value)
    return r


@pytest.mark.parametrize("with_raw", [True, False])
def test_logs(with_raw: bool) -> None:
    request = ExportLogsServiceRequest()
    info = new_record(request, 9, "ok")
    err = new_record(request, 17, "connection refused")
    exc = new_record(request, 9, "x", {"exception.type": "TimeoutError"})
    warn = new_record(request, 13, "timed out")
    before_info, before_warn = info.SerializeToString(), warn.SerializeToString()
    raw = request.SerializeToString() if with_raw else None
    stats = enrich_logs(request, Classifier(), CONFIG, raw=raw)
    assert stats.enriched == 2
    assert attrs_of(err)["error.type"] == "connection_refused"
    assert attrs_of(exc)["error.type"] == "timeout"
    assert info.SerializeToString() == before_info
    assert warn.SerializeToString() == before_warn
    once = request.SerializeToString()
    assert enrich_logs(request, Classifier(), CONFIG).enriched == 0
    assert request.SerializeToString() == once


def test_logs_exception_type_elsewhere_falls_back_to_a_full_scan() -> None:
    request = ExportLogsServiceRequest()
    new_record(request, 17, "boom", {"exception.type": "KeyError"})
    body_only = new_record(request, 9)
    body_only.body.kvlist_value.values.add(key="exception.type").value.string_value = "X"
    hidden = new_record(request, 5, None, {"exception.type": "MemoryError"})
    stats = enrich_logs(request, Classifier(), CONFIG, raw=request.SerializeToString())
    assert stats.enriched == 2
    assert attrs_of(hidden)["error.type"] == "out_of_memory"
    assert PREFIX + "category" not in attrs_of(body_only)


def test_logs_keep_existing_attributes() -> None:
    request = ExportLogsServiceRequest()
    r = new_record(request, 18, "deadlock detected", {"error.type": "mine", PREFIX + "severity": "meh"})
    enrich_logs(request, Classifier(), CONFIG)
    got = attrs_of(r)
    assert (got["error.type"], got[PREFIX + "severity"], got[PREFIX + "category"]) == ("mine", "meh", "concurrency")


def test_enrich_stats_by_category() -> None:
    stats = EnrichStats()
    assert stats.enriched == 0 and stats.by_category == {}
    stats.by_class[("transport", "low", "retryable", "UNAVAILABLE")] += 2
    stats.by_class[("transport", "medium", "temporary", "UNAVAILABLE")] += 1
    stats.by_class[("timeout", "low", "retryable", "DEADLINE_EXCEEDED")] += 1
    assert stats.by_category == {"transport": 3, "timeout": 1}
