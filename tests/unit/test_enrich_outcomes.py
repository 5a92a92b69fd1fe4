"""The byte-level trace enrichment classifies each distinct span evidence once per classifier."""

from __future__ import annotations

from typing import Any

import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.config.schema import ClassifyProcessorConfig, EnrichProcessorConfig
from sidecar.pipeline import enrich
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import enrich_traces_payload
from sidecar.pipeline.wire import evidence_keys, unproven_floor
from tests.fakes.spans import CLIENT, ERROR, PREFIX, SERVER, enriched_spans, error_request, new_span

CONFIG = EnrichProcessorConfig()


class CountingClassifier(Classifier):
    def __init__(self, config: ClassifyProcessorConfig | None = None) -> None:
        super().__init__(config)
        self.calls = 0

    def classify_span_facts(self, facts: Any) -> Any:
        self.calls += 1
        return super().classify_span_facts(facts)


def test_spans_with_the_same_evidence_are_classified_once_per_classifier() -> None:
    classifier = CountingClassifier()
    stats, payload = enrich_traces_payload(error_request(20), classifier, CONFIG)
    assert stats.enriched == 20 and payload is not None
    assert classifier.calls == 1  # twenty spans differing only in ids, times and url.path
    stats, _ = enrich_traces_payload(error_request(5), classifier, CONFIG)
    assert stats.enriched == 5 and classifier.calls == 1  # remembered across requests
    enrich_traces_payload(error_request(3, exception="TimeoutError"), classifier, CONFIG)
    assert classifier.calls == 2  # other evidence: classified anew
    assert all(span[PREFIX + "category"] for span in enriched_spans(payload))


def test_a_new_classifier_does_not_reuse_the_old_ones_outcomes() -> None:
    raw = error_request(4)
    _, before = enrich_traces_payload(raw, Classifier(), CONFIG)
    assert before is not None
    rules = msgspec.convert({"rules": [{"id": "db-down", "match": {"exception_type": "ConnectionRefused"},
                                        "set": {"error_type": "db_down"}}]},
                            ClassifyProcessorConfig)
    _, after = enrich_traces_payload(raw, Classifier(rules), CONFIG)  # what a SIGHUP reload builds
    assert after is not None
    assert {span["error.type"] for span in enriched_spans(after)} == {"db_down"}
    assert {span["error.type"] for span in enriched_spans(before)} != {"db_down"}


def _key(span: Any) -> Any:
    return evidence_keys([span.SerializeToString()]).keys[0]


def test_evidence_keys_differ_exactly_where_the_classification_inputs_differ() -> None:
    request = ExportTraceServiceRequest()
    base = new_span(request, kind=SERVER, status=ERROR, attrs={"http.response.status_code": 500, "a": "1"})
    other_attr = new_span(request, kind=SERVER, status=ERROR, attrs={"http.response.status_code": 500, "a": "2"})
    other_code = new_span(request, kind=SERVER, status=ERROR, attrs={"http.response.status_code": 503, "a": "1"})
    other_kind = new_span(request, kind=CLIENT, status=ERROR, attrs={"http.response.status_code": 500, "a": "1"})
    with_message = new_span(request, kind=SERVER, status=ERROR, attrs={"http.response.status_code": 500})
    with_message.status.message = "boom"
    key = _key(base)
    assert _key(other_attr) == key  # "a" is no evidence
    for span in (other_code, other_kind, with_message):
        assert _key(span) != key


def test_spans_that_already_carry_some_attributes_get_only_the_missing_ones() -> None:
    classifier = CountingClassifier()
    request = ExportTraceServiceRequest()
    plain = new_span(request, kind=SERVER, status=ERROR, attrs={"http.response.status_code": 500})
    partial = new_span(request, kind=SERVER, status=ERROR, attrs={"http.response.status_code": 500})
    partial.attributes.add(key="error.type").value.string_value = "mine"
    partial.attributes.add(key=PREFIX + "severity").value.string_value = "mine too"
    assert _key(plain) == _key(partial)
    _, payload = enrich_traces_payload(request.SerializeToString(), classifier, CONFIG)
    assert payload is not None
    first, second = enriched_spans(payload)
    assert first["error.type"] == "http_500" and first[PREFIX + "severity"] != "mine too"
    assert second["error.type"] == "mine" and second[PREFIX + "severity"] == "mine too"
    assert second[PREFIX + "category"] == first[PREFIX + "category"]
    assert classifier.calls == 1


def test_outcomes_kept_are_bounded_and_huge_spans_are_not_kept() -> None:
    classifier = CountingClassifier()
    huge = error_request(2, exception="E" * 40_000)  # each span's evidence holds the 40 KB exception type
    _, payload = enrich_traces_payload(huge, classifier, CONFIG)
    assert payload is not None and classifier.calls == 1  # once for the request's two spans, not remembered
    assert not enrich._outcomes(classifier)
    enrich_traces_payload(huge, classifier, CONFIG)
    assert classifier.calls == 2
    for i in range(enrich._OUTCOMES_LIMIT + 10):
        enrich_traces_payload(error_request(1, exception=f"E{i}"), classifier, CONFIG)
    assert 0 < len(enrich._outcomes(classifier)) <= enrich._OUTCOMES_LIMIT


def test_the_floor_is_the_byte_count_on_the_usual_status_codes() -> None:
    request = ExportTraceServiceRequest()
    cases = [
        ({"http.response.status_code": 500}, False, 1),
        ({"http.response.status_code": 200}, False, 0),
        ({"http.status_code": 200}, False, 1),  # the deprecated key's 200 counts only when asked
        ({"http.status_code": 200}, True, 0),
        ({"http.response.status_code": 503, "rpc.grpc.status_code": 14}, False, 2),
        ({"db.response.status_code": "08006"}, True, 1),
        ({"url.path": "/x"}, False, 0),
    ]
    for attrs, deprecated_key, expected in cases:
        data = new_span(request, kind=SERVER, status=ERROR, attrs=attrs).SerializeToString()
        assert unproven_floor(evidence_keys([data]).keys[0], deprecated_key) == expected
        assert enrich._not_http_200(data, deprecated_key) == expected


def test_error_spans_whose_floors_account_for_the_status_codes_are_not_counted_again(monkeypatch: Any) -> None:
    counted: list[int] = []
    count = enrich._not_http_200

    def spy(data: bytes, deprecated_key: bool = True) -> int:
        counted.append(len(data))
        return count(data, deprecated_key)

    monkeypatch.setattr(enrich, "_not_http_200", spy)
    raw = error_request(20)
    stats, payload = enrich_traces_payload(raw, Classifier(), CONFIG)
    assert stats.enriched == 20 and payload is not None
    assert counted == [len(raw)]  # the request once; the error spans' keys give the rest
    # A status code the keys do not see (in a string value) makes the floor short: counted exactly then.
    request = ExportTraceServiceRequest.FromString(raw)
    new_span(request, kind=SERVER, status=ERROR, attrs={"note": "status_code"})
    counted.clear()
    stats, _ = enrich_traces_payload(request.SerializeToString(), Classifier(), CONFIG)
    assert stats.enriched == 21 and len(counted) > 1
