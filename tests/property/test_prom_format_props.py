"""sidecar/telemetry/prom.generate_latest writes what prometheus_client.exposition.generate_latest writes, for
every metric type, any label values and help text (quotes, backslashes, newlines, non-ASCII), UTF-8 metric and
label names, timestamps and both escaping schemes."""

from __future__ import annotations

import prometheus_client.exposition as exposition
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import ALLOWUTF8, UNDERSCORES
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample, Timestamp

from sidecar.telemetry.prom import generate_latest

TYPES = ("counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown")
legacy_name = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
utf8_name = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10)
name = st.one_of(legacy_name, utf8_name)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
value = st.one_of(st.floats(allow_nan=True), st.integers(-10**12, 10**12).map(float))
timestamp = st.one_of(st.none(), st.floats(0, 2e9), st.builds(Timestamp, st.integers(0, 2 * 10**9),
                                                                st.integers(0, 10**9 - 1)))
SUFFIXES = ("", "_total", "_created", "_gsum", "_gcount", "_bucket", "_sum", "_count", "_info")


class Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:  # type: ignore[override]
        return self.metrics


@st.composite
def metric(draw: st.DrawFn) -> Metric:
    family = Metric(draw(name), draw(text), draw(st.sampled_from(TYPES)))
    for _ in range(draw(st.integers(0, 4))):
        labels = draw(st.dictionaries(name, text, max_size=3))
        family.samples.append(Sample(family.name + draw(st.sampled_from(SUFFIXES)), labels, draw(value),
                                     draw(timestamp)))
    return family


@settings(max_examples=300, deadline=None)
@given(st.lists(metric(), max_size=4), st.sampled_from((UNDERSCORES, ALLOWUTF8)))
def test_same_bytes_as_prometheus_client(metrics: list[Metric], escaping: str) -> None:
    registry = Fixed(metrics)
    assert generate_latest(registry, escaping) == exposition.generate_latest(registry, escaping)
