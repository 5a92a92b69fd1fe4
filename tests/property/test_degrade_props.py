"""Properties of shedding (DESIGN.md §5) over generated requests: errors survive, counts add up,
survivors are untouched, and the reduce level keeps or drops whole traces."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from sidecar.config.schema import DegradationProcessorConfig
from sidecar.pipeline.degrade import (
    REASON_ESSENTIAL,
    REASON_SAMPLED,
    DegradationLadder,
    Level,
    Pressure,
    is_warn_or_above,
    shed_logs,
    shed_traces,
    trace_sampled,
    valid_trace_id,
)

SpanKey = tuple[bytes, bytes]

trace_ids = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.sampled_from([b"", b"\x00" * 16]),  # invalid ids: sampled per span, never grouped
)
ratios = st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0))
shedding_levels = st.sampled_from([Level.REDUCE, Level.ESSENTIAL])


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    pool = draw(st.lists(trace_ids, min_size=1, max_size=6))
    request = ExportTraceServiceRequest()
    span_n = 0
    for r in range(draw(st.integers(0, 3))):
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc{r}"
        for s in range(draw(st.integers(0, 3))):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope{s}"
            for _ in range(draw(st.integers(0, 6))):
                span_n += 1
                span = ss.spans.add(trace_id=draw(st.sampled_from(pool)), span_id=span_n.to_bytes(8, "big"),
                                    name=draw(st.text(max_size=8)))
                span.start_time_unix_nano = draw(st.integers(0, 2**63))
                if draw(st.booleans()):
                    span.status.code = Status.STATUS_CODE_ERROR
                if draw(st.booleans()):
                    span.attributes.add(key="k").value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    return request


def is_error_span(span: Span) -> bool:
    return span.status.code == Status.STATUS_CODE_ERROR


def spans_of(request: ExportTraceServiceRequest) -> dict[SpanKey, Span]:
    return {(s.trace_id, s.span_id): s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}


def serialized(request: ExportTraceServiceRequest) -> dict[SpanKey, bytes]:
    return {key: span.SerializeToString() for key, span in spans_of(request).items()}


def copy(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    clone = ExportTraceServiceRequest()
    clone.CopyFrom(request)
    return clone


@settings(max_examples=300, deadline=None)
@given(trace_requests(), shedding_levels, ratios)
def test_traces_errors_survive_counts_add_up_and_survivors_are_intact(
        request: ExportTraceServiceRequest, level: Level, ratio: float) -> None:
    original = copy(request)
    before = serialized(original)
    error_keys = {key for key, span in spans_of(original).items() if is_error_span(span)}

    result = shed_traces(request, level, ratio, is_error_span)
    after = serialized(request)

    assert error_keys <= after.keys()  # no error span is ever shed
    assert result.kept + result.shed == len(before)
    assert result.kept == len(after)
    assert sum(result.shed_by_reason.values()) == result.shed
    if result.shed:
        assert set(result.shed_by_reason) == {REASON_SAMPLED if level == Level.REDUCE else REASON_ESSENTIAL}
    else:
        assert request.SerializeToString() == original.SerializeToString()
    for key, data in after.items():
        assert data == before[key]  # byte-identical
    # order preserved; containers this call emptied are gone, the others are still there
    assert list(after) == [k for k in before if k in after]
    if result.shed:
        assert structure(request) == expected_structure(original, set(after))


Structure = list[tuple[str, list[tuple[str, list[SpanKey]]]]]


def structure(request: ExportTraceServiceRequest) -> Structure:
    return [(rs.resource.attributes[0].value.string_value,
             [(ss.scope.name, [(s.trace_id, s.span_id) for s in ss.spans]) for ss in rs.scope_spans])
            for rs in request.resource_spans]


def expected_structure(original: ExportTraceServiceRequest, kept: set[SpanKey]) -> Structure:
    """A model of pruning: drop the scopes that lost all their spans, then the resources that lost
    all their scopes; containers that were empty to begin with stay."""
    model: Structure = []
    for name, scopes in structure(original):
        kept_scopes = [(scope, [k for k in keys if k in kept]) for scope, keys in scopes
                       if not keys or any(k in kept for k in keys)]
        if kept_scopes or not scopes:
            model.append((name, kept_scopes))
    return model


@settings(max_examples=300, deadline=None)
@given(trace_requests(), ratios)
def test_reduce_keeps_or_drops_whole_traces(request: ExportTraceServiceRequest, ratio: float) -> None:
    original = spans_of(request)
    shed_traces(request, Level.REDUCE, ratio, is_error_span)
    kept = spans_of(request).keys()

    by_trace: dict[bytes, list[SpanKey]] = defaultdict(list)
    for key in original:
        if valid_trace_id(key[0]):
            by_trace[key[0]].append(key)
    for trace_id, keys in by_trace.items():
        survivors = [k for k in keys if k in kept]
        errored = any(is_error_span(original[k]) for k in keys)
        if errored:
            assert len(survivors) == len(keys)  # an errored trace is kept whole
        else:
            assert len(survivors) in (0, len(keys))  # all or nothing
            assert bool(survivors) == trace_sampled(trace_id, ratio)


@settings(max_examples=200, deadline=None)
@given(trace_requests(), ratios)
def test_essential_keeps_exactly_the_error_spans(request: ExportTraceServiceRequest, ratio: float) -> None:
    original = spans_of(request)
    shed_traces(request, Level.ESSENTIAL, ratio, is_error_span)
    assert set(spans_of(request)) == {k for k, s in original.items() if is_error_span(s)}


@settings(max_examples=100, deadline=None)
@given(trace_requests(), st.sampled_from([Level.NORMAL, Level.SPILL, Level.BACKPRESSURE]), ratios)
def test_other_levels_change_nothing(request: ExportTraceServiceRequest, level: Level, ratio: float) -> None:
    before = request.SerializeToString()
    result = shed_traces(request, level, ratio, is_error_span)
    assert result.shed == 0 and request.SerializeToString() == before


@settings(max_examples=100, deadline=None)
@given(trace_requests(), ratios)
def test_reduce_never_sheds_more_than_essential(request: ExportTraceServiceRequest, ratio: float) -> None:
    essential = copy(request)
    reduced = shed_traces(request, Level.REDUCE, ratio, is_error_span)
    strict = shed_traces(essential, Level.ESSENTIAL, ratio, is_error_span)
    assert reduced.kept >= strict.kept
    assert spans_of(essential).keys() <= spans_of(request).keys()


# ---------------------------------------------------------------- logs


@st.composite
def log_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    pool = draw(st.lists(trace_ids, min_size=1, max_size=4))
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rl = request.resource_logs.add()
        for _ in range(draw(st.integers(0, 3))):
            sl = rl.scope_logs.add()
            for _ in range(draw(st.integers(0, 6))):
                record = sl.log_records.add(
                    severity_number=draw(st.integers(0, 24)),  # type: ignore[arg-type]
                    severity_text=draw(st.sampled_from(["", "INFO", "WARN", "ERROR", "debug"])),
                    time_unix_nano=draw(st.integers(0, 2**63)),
                    trace_id=draw(st.sampled_from(pool)),
                )
                record.body.string_value = draw(st.text(max_size=10))
                if draw(st.integers(0, 4)) == 0:
                    record.attributes.add(key="exception.type").value.string_value = "E"
    return request


def is_error_log(record: LogRecord) -> bool:
    return record.severity_number >= 17 or any(kv.key == "exception.type" for kv in record.attributes)


def records_of(request: ExportLogsServiceRequest) -> list[bytes]:
    return [r.SerializeToString() for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


@settings(max_examples=300, deadline=None)
@given(log_requests(), shedding_levels, ratios)
def test_logs_keep_warn_and_errors_and_count_honestly(
        request: ExportLogsServiceRequest, level: Level, ratio: float) -> None:
    protected = [r.SerializeToString() for rl in request.resource_logs for sl in rl.scope_logs
                 for r in sl.log_records if is_warn_or_above(r) or is_error_log(r)]
    before = records_of(request)
    result = shed_logs(request, level, ratio, is_error_log)
    after = records_of(request)

    assert result.kept + result.shed == len(before)
    assert result.kept == len(after)
    assert sum(result.shed_by_reason.values()) == result.shed
    # survivors are an order-preserving, byte-identical subsequence that contains every protected record
    it = iter(before)
    assert all(any(record == b for b in it) for record in after)
    remaining = list(after)
    for record in protected:
        remaining.remove(record)
    if level == Level.ESSENTIAL:
        assert remaining == []


# ---------------------------------------------------------------- ladder


pressures = st.builds(
    Pressure,
    queue_fill=st.floats(0.0, 1.5),
    queue_full=st.booleans(),
    breaker_open=st.booleans(),
    memory_fraction=st.one_of(st.none(), st.floats(0.0, 1.5)),
    error_rate=st.one_of(st.none(), st.floats(0.0, 1.0)),
    latency=st.one_of(st.none(), st.floats(0.0, 60.0)),
)


def raw_level(p: Pressure, cfg: DegradationProcessorConfig) -> Level:
    """The level without hysteresis: what the thresholds alone say."""
    level = Level.NORMAL
    if p.queue_full or p.queue_fill >= 1.0:
        level = Level.BACKPRESSURE
    elif p.queue_fill >= cfg.essential_at:
        level = Level.ESSENTIAL
    elif p.queue_fill >= cfg.reduce_at:
        level = Level.REDUCE
    elif p.queue_fill >= cfg.spill_at:
        level = Level.SPILL
    if p.memory_fraction is not None:
        if p.memory_fraction >= 1.0:
            level = max(level, Level.BACKPRESSURE)
        elif p.memory_fraction > 0.8:
            level = max(level, Level.ESSENTIAL)
    if p.breaker_open or (p.error_rate is not None and p.error_rate >= cfg.error_rate) or (
            p.latency is not None and p.latency >= cfg.latency):
        level = max(level, Level.SPILL)
    return level


@settings(max_examples=300, deadline=None)
@given(st.lists(pressures, min_size=1, max_size=20))
def test_ladder_is_never_below_the_thresholds_and_without_hysteresis_equals_them(
        readings: list[Pressure]) -> None:
    cfg = DegradationProcessorConfig()
    sticky = DegradationLadder(cfg)
    plain = DegradationLadder(DegradationProcessorConfig(hysteresis=0.0))
    previous = Level.NORMAL
    for p in readings:
        level = sticky.update(p)
        assert level >= raw_level(p, cfg)
        assert plain.update(p) == raw_level(p, cfg)
        assert sticky.changed == (level != previous)
        previous = level
