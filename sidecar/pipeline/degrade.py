"""The degradation ladder (DESIGN.md §5) and the shedding it orders. Pure: no I/O, no clocks, no randomness.

One `DegradationLadder` per exporter turns a `Pressure` reading (queue fill, memory, upstream
error rate and latency, breaker state) into a `Level`. The `shed_*` functions then remove the
least valuable items of a decoded OTLP request in place and say how many they removed and why,
so the caller can answer an OTLP partial success and count `sidecar_dropped_items_total`.

Decisions where the design is silent (documented here once, tested in tests/unit/test_degrade.py):

* Drivers. Each driver has its own level; the ladder's level is the highest of them.
  - queue fill: 1 at `spill_at`, 2 at `reduce_at`, 3 at `essential_at`, 4 at 1.0 or when
    `queue_full` is set (all thresholds inclusive: fill >= threshold enters);
  - memory (RSS / memory limit): level 3 above `memory_essential_above` (0.8; held while above
    0.7), level 4 at or above `memory_backpressure_at` (1.0; held while at or above 0.9);
  - breaker open: level 1 (its queue holds the data; spill to disk when configured);
  - storage degraded (the disk queue's storage fails, so it accepts into memory, issue 16):
    level 1. Memory is then what fills; the memory driver sheds and pushes back as it does.
  - error rate >= `error_rate` or latency >= `latency`: level 1. A failing or slow upstream
    means the queue is about to grow, so we start spilling early, but we never shed data only
    because the upstream is slow: shedding waits until the queue (or memory) actually fills.
* Hysteresis. A driver enters a level at the level's threshold and leaves it only when its
  value drops `hysteresis` below that threshold (reduce entered at 0.8 is held while
  fill >= 0.7). Thresholds are the reference, not the value observed on entry, so a jump from
  0.3 to 0.99 behaves the same as a slow climb. For latency (seconds, not a fraction) the margin
  is relative: leave when latency < latency_trigger * (1 - hysteresis). A value of zero (empty
  queue, no errors) always leaves, so a threshold smaller than the hysteresis cannot pin a level.
  - Breaker open leaves level 1 as soon as the breaker closes (or half-opens).
  - Level 4 from the queue is held while `queue_full` is set or fill >= 1 - hysteresis: the
    queue must drain by `hysteresis` before clients are let in again, so accept/reject does
    not flap at the brim. It then drops straight to the level the fill still holds.
  - `memory_fraction=None` (no memory limit) / `error_rate=None` / `latency=None` (no data yet)
    reset that driver to 0.
* Sampling is deterministic by trace id: blake2b(trace_id) → uniform in [0, 1) → keep when
  below `sample_ratio`. Every span of a trace (and every log record carrying that trace id)
  gets the same decision in every request and every sidecar. The trace id is hashed rather
  than read directly so the decision is independent of an SDK's TraceIdRatioBased sampler
  (which already filtered on the low 64 bits: reusing them would keep everything). Spans
  without a valid trace id are decided by a hash of their own bytes; log records without one
  by a hash of their timestamp and body.
* Level 2 (reduce), traces: keep every error span and every span whose (valid) trace id has an
  error span in the same request; sample the rest per trace. Reason `degradation_sampled`.
* Level 3 (essential), traces: keep only error spans (as the design says; the rest of an
  errored trace is shed). Reason `degradation_essential`.
* Logs: WARN+ means severity_number >= 13 (SEVERITY_NUMBER_WARN); a record with an
  unspecified severity number but a severity_text such as "WARNING" / "ERROR" / "FATAL" /
  "CRITICAL" counts as WARN+ too. Level 2 keeps WARN+ and error records and samples the rest;
  level 3 keeps only WARN+ and error records. Same reasons as traces.
* Metrics are never shed (`shed_metrics` only counts): level 3 keeps metrics by design.
* Levels 0, 1 and 4 shed nothing here; at 4 the caller rejects the whole request with a
  retryable status (UNAVAILABLE + RetryInfo / 503 + Retry-After).
* Error items are never shed at any level: the guarantee "never error spans while anything
  else is left to shed" holds trivially, since no level sheds them at all.
* A request from which nothing was shed is not touched (the caller may forward its original
  bytes). When items are shed, scope and resource containers that this call emptied are
  removed; containers that were empty already are left as they were.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.config.schema import DegradationProcessorConfig
from sidecar.core.drops import DropReason

REASON_SAMPLED = DropReason.DEGRADATION_SAMPLED
REASON_ESSENTIAL = DropReason.DEGRADATION_ESSENTIAL

SEVERITY_WARN = 13  # SeverityNumber.SEVERITY_NUMBER_WARN

_WARN_TEXTS = ("WARN", "ERROR", "ERR", "FATAL", "CRIT", "ALERT", "EMERG", "SEVERE", "PANIC")
_HASH_PERSON = b"otlp-sidecar"
_TWO_64 = float(2**64)


class Level(enum.IntEnum):
    NORMAL = 0
    SPILL = 1
    REDUCE = 2
    ESSENTIAL = 3
    BACKPRESSURE = 4

    @property
    def label(self) -> str:
        """normal, spill, reduce, essential, backpressure."""
        return self.name.lower()

    @property
    def spills(self) -> bool:
        """Whether the exporter should spill to disk (when storage is configured)."""
        return self >= Level.SPILL

    @property
    def sheds(self) -> bool:
        """Whether `shed_traces` / `shed_logs` remove anything at this level."""
        return Level.REDUCE <= self <= Level.ESSENTIAL

    @property
    def rejects(self) -> bool:
        """Whether the caller must refuse new requests with a retryable status."""
        return self >= Level.BACKPRESSURE


@dataclass(frozen=True, slots=True)
class Pressure:
    """One reading of what weighs on an exporter, taken by the caller (which owns the clock)."""

    queue_fill: float  # used / capacity in the queue's sizer, 0..1 (may exceed 1 when full)
    queue_full: bool = False  # the last put did not fit, or the queue reports full
    breaker_open: bool = False
    memory_fraction: float | None = None  # RSS / memory_limit; None when no limit is set
    error_rate: float | None = None  # recent failed / total export attempts; None without data
    latency: float | None = None  # recent export latency in seconds; None without data
    storage_degraded: bool = False  # the disk queue accepts into memory because its storage fails


@dataclass(frozen=True, slots=True)
class Transition:
    """A level change, for the caller to emit as one typed event (log + counter + gauge)."""

    previous: Level
    level: Level
    cause: str  # the driver holding the new level: queue_full, memory, queue, breaker_open, ...


# A band: (level, threshold, strict). Entered when value >= threshold (value > threshold if strict).
_Band = tuple[Level, float, bool]


def _sticky(current: Level, value: float, bands: tuple[_Band, ...], hysteresis: float) -> Level:
    """The level a driver holds: enter at a band's threshold, leave `hysteresis` below it.

    A strict band ("above 80%") is held while the value stays above threshold - hysteresis,
    an inclusive one while it is at or above it.
    """
    entered = Level.NORMAL
    for level, threshold, strict in bands:
        if value > threshold or (not strict and value == threshold):
            entered = max(entered, level)
    if entered >= current:
        return entered
    if value > 0:
        for level, threshold, strict_exit in sorted(bands, key=lambda band: band[0], reverse=True):
            if level > current:
                continue
            if level <= entered:
                break
            exit_at = round(threshold - hysteresis, 9)
            if value > exit_at or (not strict_exit and value == exit_at):
                return level
    return entered


class DegradationLadder:
    """The per-exporter degradation state machine of DESIGN.md §5. Feed it `Pressure`, read `level`."""

    def __init__(self, config: DegradationProcessorConfig | None = None) -> None:
        self.config = config if config is not None else DegradationProcessorConfig()
        cfg = self.config
        self._queue_bands: tuple[_Band, ...] = (
            (Level.SPILL, float(cfg.spill_at), False),
            (Level.REDUCE, float(cfg.reduce_at), False),
            (Level.ESSENTIAL, float(cfg.essential_at), False),
            (Level.BACKPRESSURE, 1.0, False),
        )
        self._memory_bands: tuple[_Band, ...] = (
            (Level.ESSENTIAL, float(cfg.memory_essential_above), True),
            (Level.BACKPRESSURE, float(cfg.memory_backpressure_at), False),
        )
        self._error_bands: tuple[_Band, ...] = ((Level.SPILL, float(cfg.error_rate), False),)
        self._latency_bands: tuple[_Band, ...] = ((Level.SPILL, float(cfg.latency), False),)
        self._drivers: dict[str, Level] = {}
        self._level = Level.NORMAL
        self._last_transition: Transition | None = None

    # ---------------------------------------------------------------- reading

    @property
    def level(self) -> Level:
        return self._level

    @property
    def sample_ratio(self) -> float:
        return float(self.config.sample_ratio)

    @property
    def changed(self) -> bool:
        """Whether the last `update` changed the level."""
        return self._last_transition is not None

    @property
    def last_transition(self) -> Transition | None:
        """The change made by the last `update`, or None when it kept the level."""
        return self._last_transition

    @property
    def drivers(self) -> dict[str, Level]:
        """Every driver currently above normal, with the level it holds (for the admin status)."""
        return {name: level for name, level in self._drivers.items() if level > Level.NORMAL}

    @property
    def cause(self) -> str:
        """The driver holding the current level ("normal" at level 0)."""
        return _cause(self._drivers, self._level)

    # ---------------------------------------------------------------- update

    def update(self, pressure: Pressure) -> Level:
        """Fold one reading into the ladder and return the new level (see `last_transition`)."""
        cfg = self.config
        hysteresis = float(cfg.hysteresis)
        previous_drivers = self._drivers
        drivers: dict[str, Level] = {}

        queue_prev = max(previous_drivers.get("queue", Level.NORMAL),
                         previous_drivers.get("queue_full", Level.NORMAL))
        if pressure.queue_full:
            drivers["queue_full"] = Level.BACKPRESSURE
        else:
            drivers["queue"] = _sticky(queue_prev, pressure.queue_fill, self._queue_bands, hysteresis)

        if pressure.memory_fraction is not None:
            drivers["memory"] = _sticky(previous_drivers.get("memory", Level.NORMAL),
                                        pressure.memory_fraction, self._memory_bands, hysteresis)

        drivers["breaker_open"] = Level.SPILL if pressure.breaker_open else Level.NORMAL
        drivers["storage_degraded"] = Level.SPILL if pressure.storage_degraded else Level.NORMAL

        if pressure.error_rate is not None:
            drivers["error_rate"] = _sticky(previous_drivers.get("error_rate", Level.NORMAL),
                                            pressure.error_rate, self._error_bands, hysteresis)

        if pressure.latency is not None:
            drivers["latency"] = _sticky(previous_drivers.get("latency", Level.NORMAL),
                                         pressure.latency, self._latency_bands,
                                         float(cfg.latency) * hysteresis)

        level = max(drivers.values(), default=Level.NORMAL)
        self._drivers = drivers
        previous = self._level
        self._level = level
        self._last_transition = (
            Transition(previous, level, _cause(drivers, level)) if level != previous else None
        )
        return level


_CAUSE_ORDER = ("queue_full", "memory", "queue", "storage_degraded", "breaker_open", "error_rate", "latency")


def _cause(drivers: Mapping[str, Level], level: Level) -> str:
    if level == Level.NORMAL:
        return "normal"
    for name in _CAUSE_ORDER:
        if drivers.get(name) == level:
            return name
    return "unknown"  # pragma: no cover - the level is always some driver's


# ---------------------------------------------------------------- shedding


@dataclass(slots=True)
class ShedResult:
    """What a `shed_*` call did. `kept + shed` is the item count of the request before the call."""

    kept: int
    shed: int
    shed_by_reason: dict[DropReason, int] = field(default_factory=dict)
    level: Level = Level.NORMAL
    item_name: str = "items"

    @property
    def changed(self) -> bool:
        """Whether the request was modified (so its original bytes may no longer be forwarded)."""
        return self.shed > 0

    def message(self) -> str:
        """The OTLP partial-success error_message for this result ("" when nothing was shed)."""
        return partial_success_message(self.shed_by_reason, level=self.level, item_name=self.item_name)


def trace_sample_point(key: bytes) -> float:
    """A uniform point in [0, 1) derived from `key` (a trace id), stable across processes."""
    digest = hashlib.blake2b(key, digest_size=8, person=_HASH_PERSON).digest()
    return int.from_bytes(digest, "big") / _TWO_64


def trace_sampled(trace_id: bytes, sample_ratio: float) -> bool:
    """Whether the reduce level keeps a trace (or a record keyed by these bytes) at `sample_ratio`."""
    if sample_ratio >= 1.0:
        return True
    if sample_ratio <= 0.0:
        return False
    return trace_sample_point(trace_id) < sample_ratio


def valid_trace_id(trace_id: bytes) -> bool:
    return len(trace_id) == 16 and trace_id != b"\x00" * 16


def is_warn_or_above(record: LogRecord) -> bool:
    """WARN+ by severity number, or by severity text when the number is unspecified."""
    number = int(record.severity_number)
    if number:
        return number >= SEVERITY_WARN
    text = record.severity_text.strip().upper()
    return bool(text) and text.startswith(_WARN_TEXTS)


class _Sampler:
    """Per-call cache of trace decisions (a request often carries many spans of few traces)."""

    __slots__ = ("_cache", "ratio")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._cache: dict[bytes, bool] = {}

    def __call__(self, key: bytes) -> bool:
        decision = self._cache.get(key)
        if decision is None:
            decision = self._cache[key] = trace_sampled(key, self.ratio)
        return decision


def _compact(container: Any, keep: list[bool]) -> None:
    """Keep the repeated field's elements whose flag is set, in order; the kept ones stay intact."""
    kept = [item for item, flag in zip(container, keep, strict=True) if flag]
    del container[:]
    container.extend(kept)


def _prune(outer: Any, inner_name: str, emptied: set[tuple[int, int]]) -> None:
    """Remove the inner containers this call emptied, then the outer ones left with none."""
    outer_keep: list[bool] = []
    for ri, resource in enumerate(outer):
        inners = getattr(resource, inner_name)
        before = len(inners)
        flags = [(ri, si) not in emptied for si in range(before)]
        if not all(flags):
            _compact(inners, flags)
        outer_keep.append(not (before and not len(inners)))
    if not all(outer_keep):
        _compact(outer, outer_keep)


def shed_traces(request: ExportTraceServiceRequest, level: Level, sample_ratio: float,
                is_error: Callable[[Span], bool]) -> ShedResult:
    """Shed spans in place as `level` orders; error spans are never shed."""
    level = Level(level)
    scopes = [(ri, si, scope) for ri, resource in enumerate(request.resource_spans)
              for si, scope in enumerate(resource.scope_spans)]
    total = sum(len(scope.spans) for _, _, scope in scopes)
    if not level.sheds or total == 0:
        return ShedResult(total, 0, {}, level, "spans")

    errors = [[bool(is_error(span)) for span in scope.spans] for _, _, scope in scopes]
    if level == Level.REDUCE:
        reason = REASON_SAMPLED
        errored_traces = {span.trace_id for (_, _, scope), flags in zip(scopes, errors, strict=True)
                          for span, flag in zip(scope.spans, flags, strict=True)
                          if flag and valid_trace_id(span.trace_id)}
        sampler = _Sampler(sample_ratio)

        def keep_span(span: Span, error: bool) -> bool:
            if error:
                return True
            trace_id = span.trace_id
            if valid_trace_id(trace_id):
                return trace_id in errored_traces or sampler(trace_id)
            return sampler(span.SerializeToString(deterministic=True))
    else:
        reason = REASON_ESSENTIAL

        def keep_span(span: Span, error: bool) -> bool:
            return error

    shed = 0
    emptied: set[tuple[int, int]] = set()
    for (ri, si, scope), flags in zip(scopes, errors, strict=True):
        keep = [keep_span(span, error) for span, error in zip(scope.spans, flags, strict=True)]
        dropped = keep.count(False)
        if dropped:
            shed += dropped
            _compact(scope.spans, keep)
            if not len(scope.spans):
                emptied.add((ri, si))
    if emptied:
        _prune(request.resource_spans, "scope_spans", emptied)
    return ShedResult(total - shed, shed, {reason: shed} if shed else {}, level, "spans")


def shed_logs(request: ExportLogsServiceRequest, level: Level, sample_ratio: float,
              is_error: Callable[[LogRecord], bool]) -> ShedResult:
    """Shed log records in place as `level` orders; WARN+ and error records are never shed."""
    level = Level(level)
    scopes = [(ri, si, scope) for ri, resource in enumerate(request.resource_logs)
              for si, scope in enumerate(resource.scope_logs)]
    total = sum(len(scope.log_records) for _, _, scope in scopes)
    if not level.sheds or total == 0:
        return ShedResult(total, 0, {}, level, "log_records")

    sampler = _Sampler(sample_ratio)
    reason = REASON_SAMPLED if level == Level.REDUCE else REASON_ESSENTIAL

    def keep_record(record: LogRecord) -> bool:
        if is_warn_or_above(record) or is_error(record):
            return True
        if level != Level.REDUCE:
            return False
        return sampler(_log_sample_key(record))

    shed = 0
    emptied: set[tuple[int, int]] = set()
    for ri, si, scope in scopes:
        keep = [keep_record(record) for record in scope.log_records]
        dropped = keep.count(False)
        if dropped:
            shed += dropped
            _compact(scope.log_records, keep)
            if not len(scope.log_records):
                emptied.add((ri, si))
    if emptied:
        _prune(request.resource_logs, "scope_logs", emptied)
    return ShedResult(total - shed, shed, {reason: shed} if shed else {}, level, "log_records")


def _log_sample_key(record: LogRecord) -> bytes:
    if valid_trace_id(record.trace_id):
        return bytes(record.trace_id)  # same decision as the trace's spans
    timestamp = record.time_unix_nano or record.observed_time_unix_nano
    return timestamp.to_bytes(8, "big") + record.body.SerializeToString(deterministic=True)


def shed_metrics(request: ExportMetricsServiceRequest, level: Level) -> ShedResult:
    """Metrics are never shed (level 3 keeps them): counts the data points, changes nothing."""
    points = 0
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
    return ShedResult(points, 0, {}, Level(level), "metric_points")


# ---------------------------------------------------------------- reporting

_REASON_LEVEL: dict[DropReason, Level] = {REASON_SAMPLED: Level.REDUCE, REASON_ESSENTIAL: Level.ESSENTIAL}
_REASON_TEXT: dict[DropReason, str] = {REASON_SAMPLED: "sampled out", REASON_ESSENTIAL: "shed as non-essential"}


def partial_success_message(shed_by_reason: Mapping[DropReason, int], level: Level | None = None,
                            item_name: str = "items") -> str:
    """The OTLP partial-success error_message, e.g.
    "sidecar degraded to level 2 (reduce): 460 spans sampled out". "" when nothing was shed."""
    parts = [(reason, n) for reason, n in shed_by_reason.items() if n > 0]
    if not parts:
        return ""
    if level is None:
        level = max((_REASON_LEVEL.get(reason, Level.NORMAL) for reason, _ in parts), default=Level.NORMAL)
    noun = item_name.replace("_", " ")
    details = ", ".join(f"{n} {noun} {_REASON_TEXT.get(reason, f'dropped ({reason})')}"
                        for reason, n in parts)
    return f"sidecar degraded to level {int(level)} ({Level(level).label}): {details}"
