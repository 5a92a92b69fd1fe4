"""The degradation ladder (DESIGN.md §5): levels, hysteresis, drivers, and the shedding each level orders."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from sidecar.config.schema import DegradationProcessorConfig
from sidecar.config.units import Duration
from sidecar.pipeline.degrade import (
    REASON_ESSENTIAL,
    REASON_SAMPLED,
    DegradationLadder,
    Level,
    Pressure,
    ShedResult,
    Transition,
    is_warn_or_above,
    partial_success_message,
    shed_logs,
    shed_metrics,
    shed_traces,
    trace_sample_point,
    trace_sampled,
)

# ---------------------------------------------------------------- helpers


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def is_error_span(span: Span) -> bool:
    return span.status.code == Status.STATUS_CODE_ERROR


def is_error_log(record: LogRecord) -> bool:
    return any(kv.key == "exception.type" for kv in record.attributes)


def traces(*resources: list[list[tuple[int, int, bool]]]) -> ExportTraceServiceRequest:
    """resources → scopes → spans given as (trace n, span n, error)."""
    request = ExportTraceServiceRequest()
    for r, scopes in enumerate(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc{r}"
        for s, spans in enumerate(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope{s}"
            for trace_n, span_n, error in spans:
                span = ss.spans.add(trace_id=tid(trace_n), span_id=sid(span_n), name=f"op{span_n}")
                span.start_time_unix_nano = 1_700_000_000_000_000_000 + span_n
                if error:
                    span.status.code = Status.STATUS_CODE_ERROR
    return request


def span_ids(request: ExportTraceServiceRequest) -> list[int]:
    return [int.from_bytes(span.span_id, "big") for rs in request.resource_spans
            for ss in rs.scope_spans for span in ss.spans]


def span_count(request: ExportTraceServiceRequest) -> int:
    return len(span_ids(request))


def find_trace(sampled: bool, ratio: float, start: int = 1) -> int:
    """A trace number whose id the reduce level keeps (or sheds) at `ratio`."""
    n = start
    while trace_sampled(tid(n), ratio) != sampled:
        n += 1
    return n


def logs(*records: tuple[int, int, str, bool, int]) -> ExportLogsServiceRequest:
    """One resource, one scope; records given as (severity number, trace n (0: none), text, error, t)."""
    request = ExportLogsServiceRequest()
    sl = request.resource_logs.add().scope_logs.add()
    for severity, trace_n, text, error, t in records:
        record = sl.log_records.add(severity_number=severity, time_unix_nano=t)  # type: ignore[arg-type]
        record.body.string_value = text
        if trace_n:
            record.trace_id = tid(trace_n)
        if error:
            record.attributes.add(key="exception.type").value.string_value = "ValueError"
    return request


def log_bodies(request: ExportLogsServiceRequest) -> list[str]:
    return [r.body.string_value for rl in request.resource_logs for sl in rl.scope_logs
            for r in sl.log_records]


def feed(ladder: DegradationLadder, *fills: float) -> list[Level]:
    return [ladder.update(Pressure(queue_fill=f)) for f in fills]


# ---------------------------------------------------------------- Level


def test_level_values_and_helpers() -> None:
    assert [int(level) for level in Level] == [0, 1, 2, 3, 4]
    assert [level.label for level in Level] == ["normal", "spill", "reduce", "essential", "backpressure"]
    assert [level.spills for level in Level] == [False, True, True, True, True]
    assert [level.sheds for level in Level] == [False, False, True, True, False]
    assert [level.rejects for level in Level] == [False, False, False, False, True]


# ---------------------------------------------------------------- ladder: queue fill


@pytest.mark.parametrize(("fill", "level"), [
    (0.0, Level.NORMAL), (0.49, Level.NORMAL), (0.5, Level.SPILL), (0.79, Level.SPILL),
    (0.8, Level.REDUCE), (0.94, Level.REDUCE), (0.95, Level.ESSENTIAL), (0.999, Level.ESSENTIAL),
    (1.0, Level.BACKPRESSURE), (1.3, Level.BACKPRESSURE),
])
def test_queue_thresholds_from_defaults(fill: float, level: Level) -> None:
    ladder = DegradationLadder(None)
    assert ladder.update(Pressure(queue_fill=fill)) is level
    assert ladder.level is level


def test_queue_full_flag_is_backpressure_at_any_fill() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.3, queue_full=True)) is Level.BACKPRESSURE
    assert ladder.cause == "queue_full"


def test_custom_thresholds() -> None:
    cfg = DegradationProcessorConfig(spill_at=0.2, reduce_at=0.4, essential_at=0.6, hysteresis=0.05)
    ladder = DegradationLadder(cfg)
    assert feed(ladder, 0.19, 0.2, 0.4, 0.6, 0.56, 0.54) == [
        Level.NORMAL, Level.SPILL, Level.REDUCE, Level.ESSENTIAL, Level.ESSENTIAL, Level.REDUCE]


def test_hysteresis_on_the_way_down() -> None:
    ladder = DegradationLadder()
    # entered reduce at 0.8: held down to 0.7, left below it; spill held down to 0.4.
    assert feed(ladder, 0.8, 0.75, 0.7, 0.69, 0.45, 0.4, 0.39) == [
        Level.REDUCE, Level.REDUCE, Level.REDUCE, Level.SPILL, Level.SPILL, Level.SPILL, Level.NORMAL]


def test_hysteresis_on_the_way_up_reenters_only_at_the_threshold() -> None:
    ladder = DegradationLadder()
    assert feed(ladder, 0.85, 0.65) == [Level.REDUCE, Level.SPILL]
    # back up: the band between exit (0.7) and entry (0.8) does not re-enter reduce
    assert feed(ladder, 0.75, 0.79, 0.8) == [Level.SPILL, Level.SPILL, Level.REDUCE]
    # from normal, 0.45 is below spill_at: stays normal although it is above spill's exit point
    ladder = DegradationLadder()
    assert feed(ladder, 0.45) == [Level.NORMAL]


def test_hysteresis_is_relative_to_the_threshold_not_the_entry_value() -> None:
    ladder = DegradationLadder()
    assert feed(ladder, 0.99, 0.86, 0.85, 0.84, 0.7, 0.69) == [
        Level.ESSENTIAL, Level.ESSENTIAL, Level.ESSENTIAL, Level.REDUCE, Level.REDUCE, Level.SPILL]


def test_backpressure_is_held_until_the_queue_drained_by_the_hysteresis() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=1.0, queue_full=True)) is Level.BACKPRESSURE
    assert ladder.update(Pressure(queue_fill=0.97)) is Level.BACKPRESSURE  # flag cleared, fill high
    assert ladder.update(Pressure(queue_fill=0.9)) is Level.BACKPRESSURE
    assert ladder.update(Pressure(queue_fill=0.89)) is Level.ESSENTIAL  # falls to what the fill holds
    assert ladder.update(Pressure(queue_fill=0.3)) is Level.NORMAL


def test_queue_full_leaves_straight_to_a_low_fill_level() -> None:
    ladder = DegradationLadder()
    ladder.update(Pressure(queue_fill=0.6, queue_full=True))  # e.g. one huge request did not fit
    assert ladder.update(Pressure(queue_fill=0.6)) is Level.SPILL


def test_zero_hysteresis_leaves_immediately() -> None:
    ladder = DegradationLadder(DegradationProcessorConfig(hysteresis=0.0))
    assert feed(ladder, 0.8, 0.79, 0.5, 0.49) == [Level.REDUCE, Level.SPILL, Level.SPILL, Level.NORMAL]


def test_an_empty_queue_always_leaves_even_when_the_threshold_is_below_the_hysteresis() -> None:
    ladder = DegradationLadder(DegradationProcessorConfig(spill_at=0.05, hysteresis=0.1))
    assert feed(ladder, 0.05, 0.01, 0.0) == [Level.SPILL, Level.SPILL, Level.NORMAL]


# ---------------------------------------------------------------- ladder: memory


def test_memory_above_80_percent_acts_as_essential() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.8)) is Level.NORMAL
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.81)) is Level.ESSENTIAL
    assert ladder.cause == "memory"


def test_memory_at_the_limit_is_backpressure() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=1.0)) is Level.BACKPRESSURE
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=1.4)) is Level.BACKPRESSURE


def test_memory_hysteresis() -> None:
    ladder = DegradationLadder()
    levels = [ladder.update(Pressure(queue_fill=0.0, memory_fraction=m))
              for m in (1.0, 0.95, 0.9, 0.89, 0.75, 0.71, 0.7)]
    # level 4 (at/above 1.0) is held at/above 0.9; level 3 (above 0.8) is held above 0.7
    assert levels == [Level.BACKPRESSURE, Level.BACKPRESSURE, Level.BACKPRESSURE, Level.ESSENTIAL,
                      Level.ESSENTIAL, Level.ESSENTIAL, Level.NORMAL]


def test_memory_overrides_a_lower_queue_level_and_the_queue_a_lower_memory_level() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.85, memory_fraction=0.85)) is Level.ESSENTIAL
    assert ladder.update(Pressure(queue_fill=1.0, memory_fraction=0.85)) is Level.BACKPRESSURE
    assert ladder.cause == "queue"


def test_no_memory_limit_resets_the_memory_driver() -> None:
    ladder = DegradationLadder()
    ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.9))
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=None)) is Level.NORMAL
    # and a new reading starts fresh: 0.75 no longer holds the level
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.75)) is Level.NORMAL


# ---------------------------------------------------------------- ladder: breaker, error rate, latency


def test_breaker_open_spills_and_leaves_immediately() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.0, breaker_open=True)) is Level.SPILL
    assert ladder.cause == "breaker_open"
    assert ladder.update(Pressure(queue_fill=0.0, breaker_open=False)) is Level.NORMAL


def test_storage_degraded_counts_as_spill_and_memory_still_pushes_back() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.0, storage_degraded=True)) is Level.SPILL
    assert ladder.cause == "storage_degraded"
    assert ladder.drivers == {"storage_degraded": Level.SPILL}
    # The memory fallback fills: the memory driver takes over, as for a memory queue.
    assert ladder.update(Pressure(queue_fill=0.0, storage_degraded=True, memory_fraction=1.0)) is Level.BACKPRESSURE
    assert ladder.cause == "memory"
    assert ladder.update(Pressure(queue_fill=0.0, storage_degraded=False)) is Level.NORMAL


def test_breaker_open_does_not_lower_a_higher_queue_level() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.9, breaker_open=True)) is Level.REDUCE


def test_error_rate_trigger_spills_with_hysteresis() -> None:
    ladder = DegradationLadder()
    rates = (0.49, 0.5, 0.45, 0.4, 0.39)
    levels = [ladder.update(Pressure(queue_fill=0.0, error_rate=r)) for r in rates]
    assert levels == [Level.NORMAL, Level.SPILL, Level.SPILL, Level.SPILL, Level.NORMAL]


def test_latency_trigger_spills_with_relative_hysteresis() -> None:
    ladder = DegradationLadder()  # 10s trigger, leave below 9s
    values = (9.99, 10.0, 9.5, 9.0, 8.99)
    levels = [ladder.update(Pressure(queue_fill=0.0, latency=v)) for v in values]
    assert levels == [Level.NORMAL, Level.SPILL, Level.SPILL, Level.SPILL, Level.NORMAL]
    assert ladder.update(Pressure(queue_fill=0.0, latency=12.0)) is Level.SPILL
    assert ladder.cause == "latency"


def test_latency_trigger_from_config() -> None:
    ladder = DegradationLadder(DegradationProcessorConfig(latency=Duration(2.0)))
    assert ladder.update(Pressure(queue_fill=0.0, latency=2.0)) is Level.SPILL


def test_error_rate_and_latency_never_shed_on_their_own() -> None:
    ladder = DegradationLadder()
    assert ladder.update(Pressure(queue_fill=0.1, error_rate=1.0, latency=60.0)) is Level.SPILL
    assert ladder.update(Pressure(queue_fill=0.85, error_rate=1.0, latency=60.0)) is Level.REDUCE


def test_missing_upstream_readings_reset_their_drivers() -> None:
    ladder = DegradationLadder()
    ladder.update(Pressure(queue_fill=0.0, error_rate=0.9, latency=30.0))
    assert ladder.update(Pressure(queue_fill=0.0)) is Level.NORMAL


# ---------------------------------------------------------------- ladder: transitions


def test_transitions_are_reported_once() -> None:
    ladder = DegradationLadder()
    assert not ladder.changed and ladder.last_transition is None
    ladder.update(Pressure(queue_fill=0.85))
    assert ladder.changed
    assert ladder.last_transition == Transition(Level.NORMAL, Level.REDUCE, "queue")
    ladder.update(Pressure(queue_fill=0.75))
    assert not ladder.changed and ladder.last_transition is None
    ladder.update(Pressure(queue_fill=0.1))
    assert ladder.last_transition == Transition(Level.REDUCE, Level.NORMAL, "normal")
    assert ladder.cause == "normal"


def test_drivers_snapshot() -> None:
    ladder = DegradationLadder()
    ladder.update(Pressure(queue_fill=0.6, breaker_open=True, memory_fraction=0.1, error_rate=0.7))
    assert ladder.drivers == {"queue": Level.SPILL, "breaker_open": Level.SPILL, "error_rate": Level.SPILL}
    assert ladder.cause == "queue"
    assert ladder.sample_ratio == pytest.approx(0.1)


# ---------------------------------------------------------------- sampling


def test_trace_sampling_is_deterministic_and_roughly_uniform() -> None:
    ids = [tid(n) for n in range(1, 4001)]
    assert [trace_sample_point(t) for t in ids[:50]] == [trace_sample_point(t) for t in ids[:50]]
    assert all(0.0 <= trace_sample_point(t) < 1.0 for t in ids)
    kept = sum(trace_sampled(t, 0.1) for t in ids)
    assert 300 < kept < 500
    assert all(trace_sampled(t, 1.0) for t in ids[:100])
    assert not any(trace_sampled(t, 0.0) for t in ids[:100])


def test_sampling_does_not_reuse_the_sdk_ratio_sampler_bits() -> None:
    # An SDK TraceIdRatioBased sampler at 5% keeps ids whose low 64 bits are < 0.05 * 2**64.
    # Those must still be sampled at about our ratio, not all kept.
    low = [(n * 7919).to_bytes(8, "big") + (n % 1000).to_bytes(8, "big") for n in range(1, 3001)]
    kept = sum(trace_sampled(t, 0.1) for t in low)
    assert 200 < kept < 400


# ---------------------------------------------------------------- shed_traces


MIXED = (
    [[(1, 1, False), (1, 2, True), (2, 3, False)], [(2, 4, False), (3, 5, False)]],
    [[(1, 6, False), (4, 7, True)], [(5, 8, False)]],
)


@pytest.mark.parametrize("level", [Level.NORMAL, Level.SPILL, Level.BACKPRESSURE])
def test_levels_without_shedding_leave_the_request_untouched(level: Level) -> None:
    request = traces(*MIXED)
    before = request.SerializeToString()
    result = shed_traces(request, level, 0.0, is_error_span)
    assert result == ShedResult(8, 0, {}, level, "spans")
    assert not result.changed
    assert result.message() == ""
    assert request.SerializeToString() == before


def test_reduce_keeps_error_spans_and_errored_traces_whole() -> None:
    request = traces(*MIXED)
    result = shed_traces(request, Level.REDUCE, 0.0, is_error_span)
    # trace 1 (spans 1, 2, 6: error in span 2, across resources) and trace 4 (error span 7) stay
    assert span_ids(request) == [1, 2, 6, 7]
    assert (result.kept, result.shed) == (4, 4)
    assert result.shed_by_reason == {REASON_SAMPLED: 4}
    assert result.changed


def test_reduce_with_ratio_one_sheds_nothing_and_does_not_touch_the_request() -> None:
    request = traces(*MIXED)
    before = request.SerializeToString()
    result = shed_traces(request, Level.REDUCE, 1.0, is_error_span)
    assert (result.kept, result.shed, result.shed_by_reason) == (8, 0, {})
    assert request.SerializeToString() == before


def test_reduce_samples_whole_traces() -> None:
    keep = find_trace(True, 0.5, start=100)
    drop = find_trace(False, 0.5, start=100)
    request = traces([[(keep, 1, False), (drop, 2, False), (keep, 3, False)],
                      [(drop, 4, False), (keep, 5, False)]])
    result = shed_traces(request, Level.REDUCE, 0.5, is_error_span)
    assert span_ids(request) == [1, 3, 5]
    assert (result.kept, result.shed) == (3, 2)


def test_reduce_decision_is_the_same_across_requests() -> None:
    drop = find_trace(False, 0.3)
    keep = find_trace(True, 0.3)
    first = traces([[(drop, 1, False), (keep, 2, False)]])
    second = traces([[(keep, 3, False)], [(drop, 4, False)]])
    shed_traces(first, Level.REDUCE, 0.3, is_error_span)
    shed_traces(second, Level.REDUCE, 0.3, is_error_span)
    assert span_ids(first) == [2]
    assert span_ids(second) == [3]


def test_essential_keeps_only_error_spans() -> None:
    request = traces(*MIXED)
    result = shed_traces(request, Level.ESSENTIAL, 1.0, is_error_span)
    assert span_ids(request) == [2, 7]
    assert (result.kept, result.shed) == (2, 6)
    assert result.shed_by_reason == {REASON_ESSENTIAL: 6}


def test_error_spans_are_never_shed() -> None:
    errors_only = traces([[(1, 1, True), (2, 2, True)]], [[(3, 3, True)]])
    before = errors_only.SerializeToString()
    for level in Level:
        result = shed_traces(errors_only, level, 0.0, is_error_span)
        assert result.shed == 0
    assert errors_only.SerializeToString() == before


def test_emptied_containers_are_pruned_and_kept_spans_unchanged() -> None:
    request = traces(*MIXED)
    originals = {int.from_bytes(s.span_id, "big"): s.SerializeToString()
                 for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
    shed_traces(request, Level.ESSENTIAL, 0.0, is_error_span)
    # resource 0 keeps scope0 (span 2), loses scope1; resource 1 keeps scope0 (span 7), loses scope1
    assert [[ss.scope.name for ss in rs.scope_spans] for rs in request.resource_spans] == [
        ["scope0"], ["scope0"]]
    assert [rs.resource.attributes[0].value.string_value for rs in request.resource_spans] == ["svc0", "svc1"]
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                assert span.SerializeToString() == originals[int.from_bytes(span.span_id, "big")]


def test_a_resource_left_without_spans_is_removed() -> None:
    request = traces([[(1, 1, False)], [(2, 2, False)]], [[(3, 3, True)]])
    shed_traces(request, Level.ESSENTIAL, 0.0, is_error_span)
    assert len(request.resource_spans) == 1
    assert request.resource_spans[0].resource.attributes[0].value.string_value == "svc1"


def test_containers_that_were_empty_before_are_left_alone() -> None:
    request = traces([[(1, 1, False)], []], [])
    shed_traces(request, Level.ESSENTIAL, 0.0, is_error_span)
    # resource 0 had two scopes: the emptied one went, the already-empty one stays; so does resource 1
    assert [len(rs.scope_spans) for rs in request.resource_spans] == [1, 0]
    assert span_count(request) == 0


def test_invalid_trace_ids_are_sampled_per_span_and_never_grouped() -> None:
    request = ExportTraceServiceRequest()
    ss = request.resource_spans.add().scope_spans.add()
    error = ss.spans.add(span_id=sid(1), name="err")  # no trace id
    error.status.code = Status.STATUS_CODE_ERROR
    for n in range(2, 202):
        ss.spans.add(trace_id=b"\x00" * 16 if n % 2 else b"", span_id=sid(n), name=f"op{n}")
    result = shed_traces(request, Level.REDUCE, 0.5, is_error_span)
    assert 1 in span_ids(request)
    # not all-or-nothing: the empty/zero trace ids neither group with the error span nor with each other
    assert 30 < result.shed < 170
    assert result.kept + result.shed == 201


def test_is_error_is_called_once_per_span() -> None:
    request = traces(*MIXED)
    calls: list[bytes] = []

    def counting(span: Span) -> bool:
        calls.append(bytes(span.span_id))
        return is_error_span(span)

    shed_traces(request, Level.REDUCE, 0.0, counting)
    assert len(calls) == 8


# ---------------------------------------------------------------- shed_logs

WARN, INFO, DEBUG, ERROR = 13, 9, 5, 17


def test_logs_reduce_keeps_warn_and_errors_and_samples_the_rest() -> None:
    request = logs((WARN, 0, "warn", False, 1), (INFO, 0, "info", False, 2),
                   (ERROR, 0, "error", False, 3), (DEBUG, 0, "debug-exc", True, 4),
                   (INFO, 0, "info2", False, 5))
    result = shed_logs(request, Level.REDUCE, 0.0, is_error_log)
    assert log_bodies(request) == ["warn", "error", "debug-exc"]
    assert (result.kept, result.shed, result.shed_by_reason) == (3, 2, {REASON_SAMPLED: 2})
    assert result.item_name == "log_records"


def test_logs_reduce_follows_the_trace_decision() -> None:
    keep = find_trace(True, 0.5)
    drop = find_trace(False, 0.5)
    request = logs((INFO, keep, "a", False, 1), (INFO, drop, "b", False, 2), (INFO, keep, "c", False, 3))
    shed_logs(request, Level.REDUCE, 0.5, is_error_log)
    assert log_bodies(request) == ["a", "c"]


def test_logs_without_trace_are_sampled_deterministically() -> None:
    records = [(INFO, 0, f"line {n}", False, 1000 + n) for n in range(400)]
    first, second = logs(*records), logs(*records)
    r1 = shed_logs(first, Level.REDUCE, 0.25, is_error_log)
    r2 = shed_logs(second, Level.REDUCE, 0.25, is_error_log)
    assert log_bodies(first) == log_bodies(second)
    assert 50 < r1.kept < 150 and r1 == r2


def test_logs_essential_keeps_only_warn_and_errors() -> None:
    request = logs((WARN, 0, "warn", False, 1), (INFO, 1, "info", False, 2),
                   (DEBUG, 0, "debug-exc", True, 3), (21, 0, "fatal", False, 4))
    result = shed_logs(request, Level.ESSENTIAL, 1.0, is_error_log)
    assert log_bodies(request) == ["warn", "debug-exc", "fatal"]
    assert result.shed_by_reason == {REASON_ESSENTIAL: 1}


def test_logs_severity_text_counts_when_the_number_is_unspecified() -> None:
    assert is_warn_or_above(LogRecord(severity_text="WARNING"))
    assert is_warn_or_above(LogRecord(severity_text="error"))
    assert is_warn_or_above(LogRecord(severity_text="Critical"))
    assert not is_warn_or_above(LogRecord(severity_text="INFO"))
    assert not is_warn_or_above(LogRecord())
    assert not is_warn_or_above(LogRecord(severity_number=INFO, severity_text="ERROR"))  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [Level.NORMAL, Level.SPILL, Level.BACKPRESSURE])
def test_logs_untouched_below_reduce_and_at_backpressure(level: Level) -> None:
    request = logs((INFO, 0, "info", False, 1), (DEBUG, 0, "debug", False, 2))
    before = request.SerializeToString()
    assert shed_logs(request, level, 0.0, is_error_log) == ShedResult(2, 0, {}, level, "log_records")
    assert request.SerializeToString() == before


def test_logs_emptied_containers_are_pruned() -> None:
    request = logs((INFO, 0, "info", False, 1))
    extra = request.resource_logs.add().scope_logs.add()
    extra.log_records.add(severity_number=ERROR).body.string_value = "kept"  # type: ignore[arg-type]
    shed_logs(request, Level.ESSENTIAL, 0.0, is_error_log)
    assert len(request.resource_logs) == 1
    assert log_bodies(request) == ["kept"]


# ---------------------------------------------------------------- metrics


def metrics_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    sm = request.resource_metrics.add().scope_metrics.add()
    gauge = sm.metrics.add(name="g")
    for v in range(3):
        gauge.gauge.data_points.add(as_double=float(v))
    total = sm.metrics.add(name="c")
    total.sum.data_points.add(as_int=5)
    sm.metrics.add(name="empty")
    return request


@pytest.mark.parametrize("level", list(Level))
def test_metrics_are_never_shed(level: Level) -> None:
    request = metrics_request()
    before = request.SerializeToString()
    result = shed_metrics(request, level)
    assert (result.kept, result.shed, result.shed_by_reason) == (4, 0, {})
    assert result.item_name == "metric_points"
    assert request.SerializeToString() == before


# ---------------------------------------------------------------- partial success message


def test_partial_success_message() -> None:
    assert partial_success_message({REASON_SAMPLED: 460}, level=Level.REDUCE, item_name="spans") == (
        "sidecar degraded to level 2 (reduce): 460 spans sampled out")
    assert partial_success_message({REASON_ESSENTIAL: 3}, item_name="log_records") == (
        "sidecar degraded to level 3 (essential): 3 log records shed as non-essential")
    assert partial_success_message({}) == ""
    assert partial_success_message({REASON_SAMPLED: 0}) == ""
    assert partial_success_message({"other": 2}, level=Level.ESSENTIAL) == (
        "sidecar degraded to level 3 (essential): 2 items dropped (other)")


def test_shed_result_message_matches_the_helper() -> None:
    request = traces(*MIXED)
    result = shed_traces(request, Level.REDUCE, 0.0, is_error_span)
    assert result.message() == "sidecar degraded to level 2 (reduce): 4 spans sampled out"
