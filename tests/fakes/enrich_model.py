"""The reference model of traces enrichment: `enrich_traces` edits a decoded request in place.

Production enriches traces on the serialized bytes (`sidecar.pipeline.enrich.enrich_traces_payload`); the
property tests hold that path to this model exactly (same attributes appended to the same spans). The model
keeps its own byte pre-scan (suspect status codes, exception events) so the tests of that pre-scan's
completeness still run against it; it reaches into enrich's private byte constants on purpose.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import (
    _HTTP_200,
    _STATUS_CODE,
    EnrichStats,
    _serialized,
    _status_code_suspects,
    writer_for,
)
from sidecar.pipeline.evidence import STATUS_CODE_KEYS, SpanFacts, http_value, rpc_value, span_facts

_STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
_KIND_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
_EXCEPTION_EVENT = b"\x12\x09exception"  # Span.Event.name (field 2) == "exception"


def _attribute_suspects(raw: bytes) -> tuple[int, int]:
    """`_status_code_suspects`, answered by two or three `count`s when every occurrence is an HTTP 200."""
    total = raw.count(_STATUS_CODE)
    if total == 0:
        return 0, 0
    ok = raw.count(_HTTP_200[0])
    if ok != total:
        ok += raw.count(_HTTP_200[1])
    if ok == total:
        return 0, 0
    return _status_code_suspects(raw)


def span_attributes_may_error(span: trace_pb2.Span) -> bool:
    """A cheap pre-filter: could the span's http/rpc status attributes make it an error span?

    True whenever `span_facts(span).is_error` would be True because of those attributes (it may
    also be True when the preferred attribute overrides a deprecated one that looks like an error).
    """
    attributes = span.attributes
    key_list = [kv.key for kv in attributes]
    if STATUS_CODE_KEYS.isdisjoint(key_list):
        return False
    threshold = 400 if span.kind == _KIND_CLIENT else 500
    for index, key in enumerate(key_list):
        if key in STATUS_CODE_KEYS:
            value = attributes[index].value
            if key.startswith("http"):
                status = http_value(value)
                if status is not None and status >= threshold:
                    return True
            elif rpc_value(value)[1]:
                return True
    return False


def _enrich_span(
    span: trace_pb2.Span,
    facts: SpanFacts,
    classifier: Classifier,
    writer: Any,
    stats: EnrichStats,
) -> None:
    if writer.complete(facts.keys):
        return
    classification = classifier.classify_span_facts(facts)
    writer.write(span, facts.keys, classification, stats, span.name)


def enrich_traces(
    request: ExportTraceServiceRequest,
    classifier: Classifier,
    config: EnrichProcessorConfig,
    *,
    raw: bytes | None = None,
    collect: bool = False,
) -> EnrichStats:
    """Add classification attributes to every error span of `request`, in place.

    `raw`: the protobuf serialization of `request` when the caller has it (saves serializing here).
    `collect`: count each enriched span in `stats.hotspots` by where it is, its name and its class.
    """
    stats = EnrichStats(hotspots=Counter() if collect else None)
    writer = writer_for(config.attribute_prefix, config.set_error_type, False)
    data = _serialized(request, raw)
    if data is None:
        suspects = suspects_4xx = exception_events = -1  # unknown: scan every span
    else:
        suspects, suspects_4xx = _attribute_suspects(data)
        exception_events = data.count(_EXCEPTION_EVENT)
    found_suspects = found_4xx = found_exceptions = 0
    need_rest = suspects != 0 or exception_events != 0
    rest: list[trace_pb2.Span] = []
    starts: list[int] = []  # when collecting: where each (resource, scope) begins in `rest`
    places: list[tuple[int, int]] = []
    for ri, resource_spans in enumerate(request.resource_spans):
        for si, scope_spans in enumerate(resource_spans.scope_spans):
            if collect:
                stats.where = (ri, si)
                starts.append(len(rest))
                places.append(stats.where)
            for span in scope_spans.spans:
                if span.status.code == _STATUS_ERROR:
                    facts = span_facts(span)
                    found_suspects += facts.suspects
                    found_4xx += facts.suspects_4xx
                    found_exceptions += facts.exception_events
                    _enrich_span(span, facts, classifier, writer, stats)
                elif need_rest:
                    rest.append(span)
    if not rest:
        return stats
    remaining = suspects - found_suspects
    check_events = found_exceptions != exception_events
    if remaining == 0 and not check_events:
        return stats
    # Suspects left that are all http 4xx can only make CLIENT spans errors: skip reading the others.
    clients_only = 0 < remaining == suspects_4xx - found_4xx
    for index, span in enumerate(rest):
        scan_attributes = remaining != 0 and (not clients_only or span.kind == _KIND_CLIENT)
        if (scan_attributes and span_attributes_may_error(span)) or (check_events and len(span.events) > 0):
            facts = span_facts(span)
            if facts.is_error:
                if collect:
                    stats.where = places[bisect.bisect_right(starts, index) - 1]
                _enrich_span(span, facts, classifier, writer, stats)
    return stats
