"""Enrichment of error spans and log records with their classification (DESIGN.md §3).

`enrich_traces_payload` enriches a serialized traces request on its bytes (see its docstring and
`sidecar.pipeline.wire`); `enrich_logs` mutates a decoded logs request in place. Both only ever append
attributes that are absent (per key): nothing the application set is overwritten or removed, and no id,
timestamp or other field changes. An item that already carries every attribute is left alone, so enrichment
is idempotent, and `stats.enriched == 0` means the request is unchanged: the pipeline then forwards the
original bytes. The in-place model of traces enrichment that the byte-level path must agree with exactly
(`enrich_traces`) lives in tests/fakes/enrich_model.py, where the property tests compare the two.

A classifier that raises is not papered over here: the exception reaches the caller, whose job
is to fail open (pipeline/router.py forwards the request as received and counts it), rather than
writing a made-up class onto the item.

The hot path is a request without errors, and reading one field of one item through the upb bindings costs
about half a microsecond, so the error test works on the serialized bytes first and touches as few items as
possible. For logs: `severity_number` is read for every record (records at ERROR or above are classified and
enriched), and the encoded `exception.type` key is counted over the bytes; only when the ERROR records do not
account for every such key are the other records scanned.

The byte test assumes a canonical encoding (each field once, KeyValue key before value, as every OTLP SDK and
the protobuf runtimes write). `raw`, when given, must be a protobuf serialization of `request` (the receiver's
bytes for OTLP/protobuf); without it the request is serialized here, which is canonical by construction.
"""

from __future__ import annotations

import bisect
import functools
import operator
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import EnrichProcessorConfig
from sidecar.core.taxonomy import Classification
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.evidence import (
    DB_STATUS_KEY,
    HTTP_STATUS_KEYS,
    RPC_STATUS_KEYS,
    SEVERITY_ERROR,
    LogFacts,
    log_facts,
)
from sidecar.pipeline.vocabulary import OTHER
from sidecar.pipeline.wire import (
    SEPARATOR,
    SpanBatch,
    SpliceView,
    detect_counts,
    detect_view,
    error_indexes,
    evidence_keys,
    facts_of_view,
    span_view,
    spans_containing,
    unproven_floor,
)

__all__ = [
    "ATTRIBUTE_NAMES",
    "ERROR_TYPE_KEY",
    "EnrichStats",
    "enrich_logs",
    "enrich_traces_payload",
    "writer_for",
]

ERROR_TYPE_KEY = "error.type"
# Under the configured prefix; `retryable` and `transient` are bools, the rest strings.
ATTRIBUTE_NAMES = ("category", "severity", "recoverability", "retryable", "transient", "recovery", "classified_by")

_STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass(slots=True)
class EnrichStats:
    """What one enrichment pass did. `by_class` counts enriched items by (category, severity, recoverability,
    error_type): the labels of `sidecar_errors_total`.

    `hotspots` is filled only when the caller asks (`collect=True`), for the admin API's error hotspots:
    enriched items counted by ((resource index, scope index), span or log name, class key as in `by_class`),
    so the caller's accounting is per group, not per item.
    """

    enriched: int = 0
    by_class: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    hotspots: Counter[tuple[tuple[int, int], str, tuple[str, str, str, str]]] | None = None
    where: tuple[int, int] = (0, 0)  # (resource, scope) of the item being enriched, when collecting

    @property
    def by_category(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (category, _, _, _), n in self.by_class.items():
            out[category] += n
        return out

    def add(self, classification: Classification) -> None:
        self.enriched += 1
        self.by_class[_class_key(classification)] += 1


def _class_key(c: Classification) -> tuple[str, str, str, str]:
    return (c.category.value, c.severity.value, c.recoverability.value, c.error_type or OTHER)


# ------------------------------------------------------------------ what gets written


@dataclass(frozen=True, slots=True)
class _Plan:
    """The attributes for one classification: (key, serialized `attributes` entry) in write order."""

    fragments: tuple[tuple[str, bytes], ...]
    everything: bytes
    class_key: tuple[str, str, str, str]


class _Writer:
    """Appends classification attributes to spans or log records under one configuration.

    Appending is a MergeFromString of pre-serialized `attributes` entries: protobuf merges repeated
    fields by appending, and one C-level merge costs a fraction of `attributes.extend`. Plans are
    cached by classification identity (the classifier hands out shared instances).
    """

    __slots__ = ("_plans", "for_logs", "keys")

    def __init__(self, prefix: str, set_error_type: bool, for_logs: bool) -> None:
        keys = tuple(prefix + name for name in ATTRIBUTE_NAMES)
        self.keys = (*keys, ERROR_TYPE_KEY) if set_error_type else keys
        self.for_logs = for_logs
        self._plans: dict[int, tuple[Classification, _Plan]] = {}

    def complete(self, existing: set[str] | frozenset[str]) -> bool:
        """Whether an item with these attribute keys already carries every attribute we would add."""
        return existing.issuperset(self.keys)

    def marked(self, batch: SpanBatch) -> set[int]:
        """The spans of `batch` that have some of our keys."""
        out: set[int] = set()
        for key in batch.attribute_keys.intersection(self.keys):
            out.update(batch.having(key))
        return out

    def present(self, attributes: Any) -> frozenset[str]:
        """Which of our keys are among `attributes` (anything that answers `in` by key)."""
        return frozenset(key for key in self.keys if key in attributes)

    def plan(self, c: Classification) -> _Plan:
        hit = self._plans.get(id(c))
        if hit is not None and hit[0] is c:
            return hit[1]
        values: list[str | bool] = [
            c.category.value,
            c.severity.value,
            c.recoverability.value,
            c.recoverability.retryable,
            c.recoverability.transient,
            c.recovery.value,
            c.classified_by,
            c.error_type or OTHER,
        ]
        fragments = []
        for key, value in zip(self.keys, values, strict=False):
            kv = common_pb2.KeyValue(key=key)
            if isinstance(value, bool):
                kv.value.bool_value = value
            else:
                kv.value.string_value = value
            holder = logs_pb2.LogRecord(attributes=[kv]) if self.for_logs else trace_pb2.Span(attributes=[kv])
            fragments.append((key, holder.SerializeToString()))
        plan = _Plan(tuple(fragments), b"".join(fragment for _, fragment in fragments), _class_key(c))
        if len(self._plans) >= 4096:
            self._plans.clear()
        self._plans[id(c)] = (c, plan)  # the strong reference keeps id(c) from being reused
        return plan

    @staticmethod
    def missing(plan: _Plan, existing: set[str] | frozenset[str]) -> bytes:
        """The serialized attributes of `plan` whose keys are not in `existing`."""
        if existing.isdisjoint(key for key, _ in plan.fragments):
            return plan.everything
        return b"".join(fragment for key, fragment in plan.fragments if key not in existing)

    def write(
        self,
        item: trace_pb2.Span | logs_pb2.LogRecord,
        existing: set[str],
        c: Classification,
        stats: EnrichStats,
        name: str = "",
    ) -> None:
        """Append the attributes missing from `item` (whose keys are `existing`); counted in `stats`, and
        in its hotspots as `name` at `stats.where` when collecting."""
        plan = self.plan(c)
        item.MergeFromString(self.missing(plan, existing))
        stats.enriched += 1
        stats.by_class[plan.class_key] += 1
        if stats.hotspots is not None:
            stats.hotspots[(stats.where, name, plan.class_key)] += 1



@functools.lru_cache(maxsize=64)
def writer_for(prefix: str, set_error_type: bool, for_logs: bool) -> _Writer:
    return _Writer(prefix, set_error_type, for_logs)


# ------------------------------------------------------------------ byte-level pre-scan

_STATUS_CODE = b"status_code"
_EXCEPTION_TYPE_KEY = b"\x0a\x0eexception.type"  # KeyValue.key (field 1) == "exception.type"


def _key_prefix(key: str) -> bytes:
    """The encoded KeyValue bytes before "status_code": tag of field 1, length, key head."""
    raw = key.encode()
    return b"\x0a" + bytes([len(raw)]) + raw[: -len(_STATUS_CODE)]


_HTTP_PREFIXES = tuple(_key_prefix(k) for k in HTTP_STATUS_KEYS)
_RPC_PREFIXES = tuple(_key_prefix(k) for k in RPC_STATUS_KEYS)
_DB_PREFIX = _key_prefix(DB_STATUS_KEY)
_WINDOW = max(len(p) for p in (*_HTTP_PREFIXES, *_RPC_PREFIXES, _DB_PREFIX))
_RPC_OK_TAILS = (b"\x12\x00", b"\x12\x02\x18\x00", b"\x12\x04\x0a\x02OK", b"\x12\x03\x0a\x010")


_OK, _HTTP_4XX, _SUSPECT = 0, 1, 2


def _http_tail_class(tail: bytes) -> int:
    """KeyValue.value of an http status: empty or an int < 400 is OK, an int in [400, 500) is 4xx."""
    if tail.startswith(b"\x12\x00"):
        return _OK
    if tail.startswith(b"\x12\x02\x18") and len(tail) >= 4 and tail[3] < 0x80:
        return _OK  # a 1-byte varint: < 128
    if tail.startswith(b"\x12\x03\x18") and len(tail) >= 5 and tail[3] >= 0x80 and tail[4] < 0x80:
        value = (tail[3] & 0x7F) | (tail[4] << 7)
        return _OK if value < 400 else _HTTP_4XX if value < 500 else _SUSPECT
    return _SUSPECT


def _occurrence_class(before: bytes, tail: bytes) -> int:
    if before.endswith(_HTTP_PREFIXES):
        return _http_tail_class(tail)
    if before.endswith(_RPC_PREFIXES):
        return _OK if tail.startswith(_RPC_OK_TAILS) else _SUSPECT
    return _OK if before.endswith(_DB_PREFIX) else _SUSPECT


_BEFORE = operator.itemgetter(slice(-_WINDOW, None))
_TAIL = operator.itemgetter(slice(None, 6))


def _status_code_suspects(raw: bytes) -> tuple[int, int]:
    """Occurrences of "status_code" not proven to be an OK http/rpc status (or a db status code),
    and how many of those are http status ints in [400, 500) (an error on CLIENT spans only)."""
    pieces = raw.split(_STATUS_CODE)
    if len(pieces) == 1:
        return 0, 0
    # (bytes before, bytes after) each occurrence; slicing and pairing run in C, few pairs are distinct.
    occurrences = list(zip(map(_BEFORE, pieces[:-1]), map(_TAIL, pieces[1:]), strict=True))
    classes = {pair: _occurrence_class(*pair) for pair in set(occurrences)}
    if not any(classes.values()):
        return 0, 0
    suspects = suspects_4xx = 0
    for pair, n in Counter(occurrences).items():
        cls = classes[pair]
        if cls:
            suspects += n
            suspects_4xx += n if cls == _HTTP_4XX else 0
    return suspects, suspects_4xx


# The overwhelmingly common status-code attribute: an HTTP 200 (current key, then the deprecated one).
_HTTP_200 = (b"\x0a\x19http.response.status_code\x12\x03\x18\xc8\x01", b"\x0a\x10http.status_code\x12\x03\x18\xc8\x01")


def _serialized(request: ExportTraceServiceRequest | ExportLogsServiceRequest, raw: bytes | None) -> bytes | None:
    if raw is not None:
        return bytes(raw)
    try:
        return request.SerializeToString()
    except Exception:  # pragma: no cover - a decoded request always serializes
        return None


# ------------------------------------------------------------------ traces

_Outcome = tuple[bool, int, Classification | None]  # status ERROR, exception events, class if an error
# At most 1024 keys of up to 16 KiB of evidence each: 16 MiB however hostile the input.
_OUTCOMES_LIMIT = 1024
_OUTCOME_KEY_BYTES = 16 * 1024
_OUTCOMES: weakref.WeakKeyDictionary[Classifier, dict[tuple[Any, ...], _Outcome]] = weakref.WeakKeyDictionary()


def _outcomes(classifier: Classifier) -> dict[tuple[Any, ...], _Outcome]:
    """The outcomes already worked out by `classifier`, by span evidence key (`wire.evidence_keys`).

    Kept per effective classifier: a configuration reload builds a new one and so starts afresh,
    also behind a `ClassifierHandle`.
    """
    owner = classifier.effective
    known = _OUTCOMES.get(owner)
    if known is None:
        known = _OUTCOMES[owner] = {}
    return known


def _span_outcome(view: Any, classifier: Classifier) -> _Outcome:
    facts = facts_of_view(view)
    classification: Classification | None = None
    if facts.is_error:
        classification = classifier.classify_span_facts(facts)
    return facts.status_code == _STATUS_ERROR, facts.exception_events, classification


def _key_bytes(key: tuple[Any, ...]) -> int:
    """The evidence an outcome key holds, in bytes (its parts are bytes or None)."""
    return sum(len(part) for part in key if part is not None)


def _not_http_200(data: bytes, deprecated_key: bool = True) -> int:
    """Occurrences of "status_code" in `data` other than an http status attribute holding 200
    (`http.response.status_code`, and `http.status_code` unless `deprecated_key` is False)."""
    total = data.count(_STATUS_CODE)
    if total == 0:
        return 0
    rest = total - data.count(_HTTP_200[0])
    return rest - data.count(_HTTP_200[1]) if rest and deprecated_key else rest


class _Checker:
    """The spans of one request checked so far, and what enriching them appends, by (scope, index).

    Spans are checked in batches: one `wire.evidence_keys` call reads the evidence of every span of
    the batch, the distinct keys are looked up (or classified, once each) and the outcome is spread
    back over the spans by C-level calls, so a batch of error spans costs a few passes over a list
    rather than a Python function call per span. Counting (enriched spans by class, hotspots by
    span name and class) is per distinct key, not per span.
    """

    __slots__ = ("appended", "checked", "classifier", "deprecated_key", "found", "listed", "outcomes", "scopes",
                 "stats", "writer")

    def __init__(self, scopes: list[tuple[int, int, Any]], classifier: Classifier, writer: _Writer,
                 stats: EnrichStats, deprecated_key: bool) -> None:
        self.scopes = scopes
        self.classifier = classifier
        self.outcomes = _outcomes(classifier)
        self.writer = writer
        self.stats = stats
        self.deprecated_key = deprecated_key
        self.listed: dict[int, list[bytes]] = {}
        self.checked: list[set[int]] = [set() for _ in scopes]
        self.appended: list[dict[int, bytes]] = [{} for _ in scopes]  # the new bytes of each enriched span
        # among the checked spans: status ERROR, exception events, unproven status codes (a floor, exact after
        # `recount_unproven`)
        self.found = [0, 0, 0]

    def spans(self, position: int) -> list[bytes]:
        """Every span of a scope, as bytes (one C-level copy, made once)."""
        known = self.listed.get(position)
        if known is None:
            known = self.listed[position] = list(self.scopes[position][2].spans)
        return known

    def check(self, position: int, indexes: Iterable[int]) -> None:
        done = self.checked[position]
        todo = [index for index in indexes if index not in done]
        if not todo:
            return
        done.update(todo)
        data = self.pick(position, todo)
        batch = evidence_keys(data)
        # spans per distinct key, by the key's first span (in an error storm often one key)
        counts: Mapping[int, int] = Counter(batch.firsts) if len(batch.distinct) > 1 else {0: len(todo)}
        found = self.found
        classes: dict[int, Classification] = {}  # first span of a key -> its class, for the error spans
        for key, at in batch.distinct.items():
            outcome = self.outcomes.get(key)
            if outcome is None:
                outcome = _span_outcome(span_view(data[at]), self.classifier)
                if _key_bytes(key) <= _OUTCOME_KEY_BYTES:  # a key holds parts of the span: bound what is kept
                    if len(self.outcomes) >= _OUTCOMES_LIMIT:
                        self.outcomes.clear()
                    self.outcomes[key] = outcome
            status_error, exception_events, classification = outcome
            n = counts[at]
            found[0] += status_error * n
            found[1] += exception_events * n
            # A floor of the unproven status codes, from the key: counting them on the spans' bytes is left
            # to `recount_unproven`, only when the floors do not account for the request's count.
            found[2] += unproven_floor(key, self.deprecated_key) * n
            if classification is not None:
                classes[at] = classification
        if classes:
            self._enrich(position, todo, data, batch, classes, counts)

    def pick(self, position: int, indexes: list[int]) -> list[bytes]:
        """The bytes of some spans of a scope: from the list of all of them when many are wanted (or it
        exists), else one by one."""
        every = self.listed.get(position)
        if every is None:
            spans = self.scopes[position][2].spans
            if len(indexes) * 4 < len(spans):
                return list(map(spans.__getitem__, indexes))
            every = self.spans(position)
        return list(map(every.__getitem__, indexes))

    def _enrich(self, position: int, todo: list[int], data: list[bytes], batch: SpanBatch,
                classes: dict[int, Classification], counts: Mapping[int, int]) -> None:
        writer, stats = self.writer, self.stats
        plans = {at: writer.plan(c) for at, c in classes.items()}
        added: list[bytes | None] = list(map({at: plan.everything for at, plan in plans.items()}.get, batch.firsts))
        # An error span that has some of our keys already gets only the missing attributes (nothing when it
        # has them all); every other one gets its class's whole plan. The batch lists its attribute keys,
        # so spans without any of ours are ruled out at once.
        for at in writer.marked(batch):
            if added[at] is not None:
                present = writer.present(batch.attributes[at])
                first = batch.firsts[at]
                added[at] = None if writer.complete(present) else writer.missing(plans[first], present)
        enriched = list(map(operator.is_not, added, repeat(None)))
        new_bytes = map(operator.add, compress(data, enriched), compress(added, enriched))
        self.appended[position].update(zip(compress(todo, enriched), new_bytes, strict=True))
        every = all(enriched)  # the common case: counts per key are those of `check`
        for first, n in (counts if every else Counter(compress(batch.firsts, enriched))).items():
            stats.enriched += n
            stats.by_class[plans[first].class_key] += n
        if stats.hotspots is not None:
            where = self.scopes[position][:2]
            names = batch.names()
            class_keys = {plan.class_key for plan in plans.values()}
            if len(class_keys) == 1:  # one class: count by name alone (no pair per span)
                class_key = class_keys.pop()
                for name, n in Counter(names if every else compress(names, enriched)).items():
                    stats.hotspots[(where, name, class_key)] += n
                return
            for (name, first), n in Counter(compress(zip(names, batch.firsts, strict=True), enriched)).items():
                stats.hotspots[(where, name, plans[first].class_key)] += n

    def recount_unproven(self) -> None:
        """`found[2]` again, after `deprecated_key` changed."""
        self.found[2] = sum(_not_http_200(SEPARATOR.join([self.spans(position)[index] for index in done]),
                                          self.deprecated_key)
                            for position, done in enumerate(self.checked) if done)


def enrich_traces_payload(
    raw: bytes,
    classifier: Classifier,
    config: EnrichProcessorConfig,
    *,
    collect: bool = False,
) -> tuple[EnrichStats, bytes | None]:
    """Enrich the error spans of a serialized traces request: (stats, the enriched request's bytes or None).

    None means nothing was enriched: `raw` is to be forwarded as is. Otherwise the result parses to
    exactly what the in-place model (`enrich_traces` in tests/fakes/enrich_model.py) leaves in a request
    decoded from `raw` (the same attributes appended to the same spans), but only the error spans are
    decoded (see `sidecar.pipeline.wire`) and the enrichment is appended to their bytes instead of
    serializing the request again. With `collect`, `stats.hotspots` counts the enriched spans by
    (resource and scope index, span name, class).

    Which spans are checked: `detect_counts` gives the number of spans with status ERROR (exact)
    and of exception events, and two or three `count`s the number of status-code attributes that
    are not an HTTP 200; when all are zero no span can be an error. Otherwise the spans with
    status ERROR (`error_indexes`) are checked, and the others only as far as these do not account
    for every count: spans with status ERROR (by the exact, slower view), with "exception" in
    their bytes, or with a status-code attribute that the byte scan cannot prove OK.

    Checked spans are read in batches only as far as their evidence keys (`wire.evidence_keys`); the
    outcome of classifying an evidence is remembered per classifier, so the error spans of a
    service, which repeat a few kinds of failure, cost a share of a batch parse and a few list
    passes each (see `_Checker`).
    """
    stats = EnrichStats(hotspots=Counter() if collect else None)
    errors, exceptions, detected = detect_counts(raw)
    # Status codes that are not an HTTP 200: first by the current key alone (one scan less), both keys
    # when that is not enough to decide.
    deprecated_key = False
    unproven = _not_http_200(raw, deprecated_key)
    if unproven and not (errors or exceptions):
        deprecated_key = True
        unproven = _not_http_200(raw, deprecated_key)
    if not (errors or exceptions or unproven):
        return stats, None
    writer = writer_for(config.attribute_prefix, config.set_error_type, False)
    view = SpliceView()
    view.ParseFromString(raw)
    scopes = [(ri, si, scope) for ri, resource in enumerate(view.resource_spans)
              for si, scope in enumerate(resource.scope_spans)]
    checker = _Checker(scopes, classifier, writer, stats, deprecated_key)
    found = checker.found
    if errors:
        indexes = error_indexes(detected)
        if len(indexes) == len(scopes):
            for position, in_scope in enumerate(indexes):
                count = len(scopes[position][2].spans)
                checker.check(position, [index for index in in_scope if index < count])
        if found[0] != errors:  # odd status codes: ask the exact view
            position = 0
            for resource in detect_view(raw).resource_spans:
                for scope in resource.scope_spans:
                    checker.check(position, [i for i, span in enumerate(scope.spans)
                                             if span.status.code == _STATUS_ERROR])
                    position += 1
    if found[1] < exceptions:
        for position in range(len(scopes)):
            checker.check(position, spans_containing(checker.spans(position), b"exception"))
    if found[2] != unproven:  # so far a floor (see `_Checker.check`): count on the checked spans' bytes
        checker.recount_unproven()
    if found[2] != unproven and not checker.deprecated_key:  # count http.status_code 200s as proven too
        checker.deprecated_key = True
        unproven = _not_http_200(raw, True)
        checker.recount_unproven()
    if found[2] != unproven:  # some status code outside the checked spans is not an HTTP 200
        for position in range(len(scopes)):
            every = checker.spans(position)
            checker.check(position, [i for i in spans_containing(every, _STATUS_CODE)
                                     if _status_code_suspects(every[i])[0]])
    if not any(checker.appended):
        return stats, None
    for position, enriched in enumerate(checker.appended):
        if enriched:  # target[index] = data for each, the loop run in C
            deque(map(scopes[position][2].spans.__setitem__, enriched.keys(), enriched.values()), maxlen=0)
    return stats, view.SerializeToString()


# ------------------------------------------------------------------ logs


def _enrich_record(
    record: logs_pb2.LogRecord,
    facts: LogFacts,
    classifier: Classifier,
    writer: _Writer,
    stats: EnrichStats,
    scope_name: str,
) -> None:
    if writer.complete(facts.keys):
        return
    classification = classifier.classify_log_facts(facts, record)
    # A log record's hotspot name: its event name, else its scope's name.
    name = (record.event_name or scope_name or _LOG_NAME) if stats.hotspots is not None else ""
    writer.write(record, facts.keys, classification, stats, name)


_LOG_NAME = "(log record)"


def enrich_logs(
    request: ExportLogsServiceRequest,
    classifier: Classifier,
    config: EnrichProcessorConfig,
    *,
    raw: bytes | None = None,
    collect: bool = False,
) -> EnrichStats:
    """Add classification attributes to every error log record of `request`, in place (`collect`: as traces)."""
    stats = EnrichStats(hotspots=Counter() if collect else None)
    writer = writer_for(config.attribute_prefix, config.set_error_type, True)
    data = _serialized(request, raw)
    exception_types = data.count(_EXCEPTION_TYPE_KEY) if data is not None else -1
    found = 0
    rest: list[logs_pb2.LogRecord] = []
    starts: list[int] = []
    places: list[tuple[tuple[int, int], str]] = []
    scope_name = ""
    for ri, resource_logs in enumerate(request.resource_logs):
        for si, scope_logs in enumerate(resource_logs.scope_logs):
            if collect:
                stats.where = (ri, si)
                scope_name = scope_logs.scope.name
                starts.append(len(rest))
                places.append((stats.where, scope_name))
            for record in scope_logs.log_records:
                if record.severity_number >= SEVERITY_ERROR:
                    facts = log_facts(record)
                    found += facts.has_exception_type
                    _enrich_record(record, facts, classifier, writer, stats, scope_name)
                elif exception_types != 0:
                    rest.append(record)
    if rest and found != exception_types:
        for index, record in enumerate(rest):
            facts = log_facts(record)
            if facts.is_error:
                if collect:
                    stats.where, scope_name = places[bisect.bisect_right(starts, index) - 1]
                _enrich_record(record, facts, classifier, writer, stats, scope_name)
    return stats
