"""The reloadable classifier handle the exporters hold answers exactly as the classifier it wraps."""

from __future__ import annotations

import inspect

import msgspec

from sidecar.config.schema import ClassifyProcessorConfig, EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import enrich_traces_payload
from sidecar.reload import ClassifierHandle
from tests.fakes.spans import enriched_spans, error_request


def test_every_public_classifier_method_is_delegated() -> None:
    # The handle skips Classifier.__init__, so an inherited method would run without any state.
    public = {name for name, _ in inspect.getmembers(Classifier, inspect.isfunction) if not name.startswith("_")}
    assert public, "Classifier has public methods"
    not_delegated = {name for name in public if getattr(ClassifierHandle, name) is getattr(Classifier, name)}
    assert not not_delegated


def test_the_handle_classifies_spans_like_its_current_classifier_and_follows_a_swap() -> None:
    raw = error_request(3)
    plain = Classifier()
    handle = ClassifierHandle(plain)
    _, by_plain = enrich_traces_payload(raw, plain, EnrichProcessorConfig())
    _, by_handle = enrich_traces_payload(raw, handle, EnrichProcessorConfig())
    assert by_plain is not None and by_handle is not None
    assert enriched_spans(by_handle) == enriched_spans(by_plain)
    assert {span["sidecar.error.classified_by"] for span in enriched_spans(by_handle)} != {"default:fallback"}
    handle.current = Classifier(msgspec.convert(
        {"rules": [{"id": "db", "match": {"exception_type": "ConnectionRefused"}, "set": {"error_type": "db_down"}}]},
        ClassifyProcessorConfig))
    _, swapped = enrich_traces_payload(raw, handle, EnrichProcessorConfig())
    assert swapped is not None
    assert {span["error.type"] for span in enriched_spans(swapped)} == {"db_down"}
