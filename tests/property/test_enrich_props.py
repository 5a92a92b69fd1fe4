"""Property tests for enrichment on generated OTLP trace and log requests.

Enrichment must keep every original field, only append missing attributes to error items, be
idempotent, leave non-error items byte-identical, and agree exactly with `classify_span` /
`classify_log` on which items are errors (the byte-level fast path must never miss one).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.enrich import ATTRIBUTE_NAMES, ERROR_TYPE_KEY, enrich_logs
from tests.fakes.enrich_model import enrich_traces
from tests.fakes.otlp_strategies import (
    CLASSIFIER,
    MANY,
    SETTINGS,
    configs,
    log_requests,
    realistic_trace_requests,
    trace_requests,
)

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
