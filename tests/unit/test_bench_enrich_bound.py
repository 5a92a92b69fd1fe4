"""bench/bound_sidecar.py: the stand-ins for the traces enrichment that bench/enrich_bound.py measures."""

from __future__ import annotations

from typing import Any

import pytest

import sidecar.pipeline.router as router
from bench import bound_sidecar
from bench.payload import build_request
from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import enrich_traces_payload

CONFIG = EnrichProcessorConfig()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The requests the real enrichment is called for, with an empty cache."""
    calls: list[bytes] = []

    def real(raw: bytes, classifier: Classifier, config: EnrichProcessorConfig, *, collect: bool = False) -> Any:
        calls.append(raw)
        return enrich_traces_payload(raw, classifier, config, collect=collect)

    monkeypatch.setattr(bound_sidecar, "_real", real)
    monkeypatch.setattr(bound_sidecar, "_seen", {})
    return calls


def test_cached_gives_the_real_output_and_enriches_each_distinct_request_once(counted: list[bytes]) -> None:
    classifier = Classifier()
    raw = build_request(64, 0.5).SerializeToString()
    expected_stats, expected = enrich_traces_payload(raw, classifier, CONFIG, collect=True)
    assert expected is not None
    for _ in range(3):
        stats, enriched = bound_sidecar.cached(bytes(bytearray(raw)), classifier, CONFIG, collect=True)
        assert enriched == expected
        assert stats.by_class == expected_stats.by_class and stats.hotspots == expected_stats.hotspots
    assert len(counted) == 1


def test_cached_tells_apart_requests_of_the_same_length(counted: list[bytes]) -> None:
    classifier = Classifier()
    request = build_request(16, 0.5)
    first = request.SerializeToString()
    request.resource_spans[0].scope_spans[0].spans[1].name = "X" * len(request.resource_spans[0].scope_spans[0]
                                                                       .spans[1].name)
    second = request.SerializeToString()
    assert len(first) == len(second) and first != second
    _, out_first = bound_sidecar.cached(first, classifier, CONFIG)
    _, out_second = bound_sidecar.cached(second, classifier, CONFIG)
    assert counted == [first, second]
    assert out_first == enrich_traces_payload(first, classifier, CONFIG)[1]
    assert out_second == enrich_traces_payload(second, classifier, CONFIG)[1]


def test_off_forwards_the_received_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router, "enrich_traces_payload", router.enrich_traces_payload)  # restored afterwards
    bound_sidecar.install("off")
    raw = build_request(16, 0.5).SerializeToString()
    pipeline = router.Pipeline("traces", router.Signal.TRACES, ["otlp"], [], Classifier(), CONFIG)
    stats, payload = pipeline.enrich_payload(None, raw)  # type: ignore[arg-type]  # traces: the message is unused
    assert payload is raw and stats is not None and stats.enriched == 0


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(SystemExit, match="BENCH_ENRICH_MODE"):
        bound_sidecar.install("fast")
