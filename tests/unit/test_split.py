"""Splitting requests: counts add up, nothing lost or duplicated, resources and scopes preserved."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import SPECS, Signal, count_items
from sidecar.exporters.split import split_entry, split_entry_to_limit, split_request, split_to_limit

# ---------------------------------------------------------------- builders

Shape = list[list[int]]  # resources -> scopes -> item count
MetricShape = list[list[list[tuple[str, int]]]]  # resources -> scopes -> metrics (kind, data points)
KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def traces(shape: Shape) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for r, scopes in enumerate(shape):
        rs = req.resource_spans.add(schema_url=f"https://schema/{r}")
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc{r}"
        for s, n in enumerate(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = f"scope{r}.{s}", "1.0"
            for i in range(n):
                ss.spans.add(name=f"{r}.{s}.{i}")
    return req


def logs(shape: Shape) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for r, scopes in enumerate(shape):
        rl = req.resource_logs.add()
        rl.resource.attributes.add(key="service.name").value.string_value = f"svc{r}"
        for s, n in enumerate(scopes):
            sl = rl.scope_logs.add()
            sl.scope.name = f"scope{r}.{s}"
            for i in range(n):
                sl.log_records.add(severity_number=17).body.string_value = f"{r}.{s}.{i}"
    return req


def metrics(shape: MetricShape) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    stamp = 0
    for r, scopes in enumerate(shape):
        rm = req.resource_metrics.add()
        rm.resource.attributes.add(key="service.name").value.string_value = f"svc{r}"
        for s, ms in enumerate(scopes):
            sm = rm.scope_metrics.add()
            sm.scope.name = f"scope{r}.{s}"
            for m, (kind, n) in enumerate(ms):
                metric = sm.metrics.add(name=f"m{r}.{s}.{m}", unit="ms", description="d")
                data = getattr(metric, kind)
                data.SetInParent()
                if kind in ("sum", "histogram", "exponential_histogram"):
                    data.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                if kind == "sum":
                    data.is_monotonic = True
                for _ in range(n):
                    stamp += 1
                    data.data_points.add(time_unix_nano=stamp)
    return req


def flat(signal: Signal, req: Any) -> list[tuple[Any, ...]]:
    """Every item with everything it inherits from its containers, in document order."""
    out: list[tuple[Any, ...]] = []
    if signal is Signal.TRACES:
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.append((rs.resource.SerializeToString(), rs.schema_url, ss.scope.SerializeToString(),
                                span.name))
    elif signal is Signal.LOGS:
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    out.append((rl.resource.SerializeToString(), sl.scope.name, rec.body.string_value))
    else:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    data = getattr(metric, kind)
                    meta = (metric.name, metric.unit, metric.description, kind,
                            getattr(data, "aggregation_temporality", None), getattr(data, "is_monotonic", None))
                    for dp in data.data_points:
                        out.append((rm.resource.SerializeToString(), sm.scope.name, meta, dp.time_unix_nano))
    return out


def check_halves(signal: Signal, req: Any) -> None:
    payload = req.SerializeToString()
    total = count_items(signal, req)
    halves = split_request(signal, payload)
    if total < 2:
        assert halves is None
        return
    assert halves is not None
    parsed = [SPECS[signal].request_type.FromString(h) for h in halves]
    counts = [count_items(signal, p) for p in parsed]
    assert counts == [total // 2, total - total // 2]
    assert flat(signal, parsed[0]) + flat(signal, parsed[1]) == flat(signal, req)


# ---------------------------------------------------------------- examples


def test_single_item_or_none_cannot_split() -> None:
    assert split_request(Signal.TRACES, traces([[1]]).SerializeToString()) is None
    assert split_request(Signal.TRACES, traces([[0], []]).SerializeToString()) is None
    assert split_request(Signal.LOGS, logs([[0, 1]]).SerializeToString()) is None
    assert split_request(Signal.METRICS, metrics([[[("sum", 1)]]]).SerializeToString()) is None
    assert split_request(Signal.TRACES, b"") is None


def test_single_resource_many_spans_splits_by_spans() -> None:
    req = traces([[7]])
    a, b = (ExportTraceServiceRequest.FromString(x) for x in split_request(Signal.TRACES, req.SerializeToString())
            or ())
    assert [s.name for s in a.resource_spans[0].scope_spans[0].spans] == ["0.0.0", "0.0.1", "0.0.2"]
    assert len(b.resource_spans[0].scope_spans[0].spans) == 4
    for half in (a, b):
        assert half.resource_spans[0].resource == req.resource_spans[0].resource
        assert half.resource_spans[0].schema_url == "https://schema/0"
        assert half.resource_spans[0].scope_spans[0].scope == req.resource_spans[0].scope_spans[0].scope


def test_several_resources_split_between_resources() -> None:
    req = traces([[2], [2]])
    a, b = (ExportTraceServiceRequest.FromString(x) for x in split_request(Signal.TRACES, req.SerializeToString())
            or ())
    assert len(a.resource_spans) == 1 and len(b.resource_spans) == 1
    assert a.resource_spans[0] == req.resource_spans[0] and b.resource_spans[0] == req.resource_spans[1]


def test_single_metric_splits_by_data_points() -> None:
    req = metrics([[[("histogram", 5)]]])
    check_halves(Signal.METRICS, req)
    a, _ = (ExportMetricsServiceRequest.FromString(x)
            for x in split_request(Signal.METRICS, req.SerializeToString()) or ())
    metric = a.resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.name == "m0.0.0" and metric.unit == "ms"
    assert metric.histogram.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert len(metric.histogram.data_points) == 2


def test_empty_containers_are_kept() -> None:
    req = traces([[0], [3], [], [1, 0]])
    halves = split_request(Signal.TRACES, req.SerializeToString())
    assert halves is not None
    parsed = [ExportTraceServiceRequest.FromString(h) for h in halves]
    names = [rs.resource.attributes[0].value.string_value for p in parsed for rs in p.resource_spans]
    assert {"svc0", "svc1", "svc2", "svc3"} <= set(names)


def test_entries_keep_metadata_and_count_items() -> None:
    req = logs([[3, 2]])
    entry = QueueEntry(Signal.LOGS, req.SerializeToString(), 5, (("tenant", "a"),), 12.5)
    parts = split_entry(entry)
    assert parts is not None
    assert [p.items for p in parts] == [2, 3]
    assert all(p.metadata == entry.metadata and p.accepted_at == 12.5 and p.signal is Signal.LOGS for p in parts)
    assert split_entry(QueueEntry(Signal.LOGS, logs([[1]]).SerializeToString(), 1, (), 0.0)) is None


def test_split_entry_to_limit() -> None:
    req = traces([[20], [20]])
    entry = QueueEntry(Signal.TRACES, req.SerializeToString(), 40, (), 0.0)
    assert split_entry_to_limit(entry, len(entry.payload)) == [entry]
    parts = split_entry_to_limit(entry, len(entry.payload) // 6)
    assert len(parts) >= 6 and sum(p.items for p in parts) == 40
    assert all(len(p.payload) <= len(entry.payload) // 6 for p in parts)


def test_oversized_single_item_is_returned_as_is() -> None:
    req = traces([[1]])
    req.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="big").value.string_value = "x" * 1000
    payload = req.SerializeToString()
    assert split_to_limit(Signal.TRACES, payload, 100) == [payload]


# ---------------------------------------------------------------- properties

shapes = st.lists(st.lists(st.integers(0, 6), max_size=3), max_size=4)
metric_shapes = st.lists(
    st.lists(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 4)), max_size=3), max_size=3), max_size=3)


@settings(max_examples=150, deadline=None)
@given(shapes)
def test_trace_halves_add_up(shape: Shape) -> None:
    check_halves(Signal.TRACES, traces(shape))


@settings(max_examples=150, deadline=None)
@given(shapes)
def test_log_halves_add_up(shape: Shape) -> None:
    check_halves(Signal.LOGS, logs(shape))


@settings(max_examples=150, deadline=None)
@given(metric_shapes)
def test_metric_halves_add_up(shape: MetricShape) -> None:
    check_halves(Signal.METRICS, metrics(shape))


@settings(max_examples=100, deadline=None)
@given(shapes, st.integers(20, 400))
def test_split_to_limit_loses_nothing(shape: Shape, max_bytes: int) -> None:
    req = traces(shape)
    parts = split_to_limit(Signal.TRACES, req.SerializeToString(), max_bytes)
    parsed = [ExportTraceServiceRequest.FromString(p) for p in parts]
    assert [x for p in parsed for x in flat(Signal.TRACES, p)] == flat(Signal.TRACES, req)
    for raw, p in zip(parts, parsed, strict=True):
        assert len(raw) <= max_bytes or count_items(Signal.TRACES, p) <= 1
