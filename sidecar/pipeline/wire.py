"""Partial views of an OTLP trace request's wire format, for enrichment without walking every span.

Reading one field of one span through the upb bindings costs about half a microsecond, so a
Python loop over the 512 spans of a typical request costs more than parsing it. The views below
are protobuf message types that declare only some fields of the real ones, in a private
descriptor pool, so upb does the walking in C:

* `detect_counts(raw)`: the request parsed as spans that have only `status.code` and their
  events' names; unknown fields discarded and the rest serialized again, that is a few bytes per
  span and nothing the application wrote except event names. Counting two byte patterns in it
  gives exactly how many spans have status ERROR and (at least) how many events are named
  "exception"; the serialization itself is returned for the next step.
* `error_indexes(compact)`: that serialization (a request with the same resources, scopes and
  spans) parsed again with the status code only and serialized per scope: each span is then a
  handful of bytes starting with the only 0x12 among them, so splitting at 0x12 and comparing the
  pieces gives the index of every span with status ERROR, in C.
* `SpliceView`: the request with every span kept as opaque bytes (`repeated bytes spans`), so a
  span can be read and replaced as the bytes received, and serializing the view writes the
  request again with only the container lengths recomputed: appending the enrichment attributes
  to a span's bytes is what protobuf's merge would do (repeated fields are appended), without
  serializing the whole request again. Container fields are all declared (proto2, explicit
  presence), so they are written back in field order exactly as received.
* `evidence_keys(spans)`: many spans' classification evidence at once, as hashable keys, with the
  spans parsed as one message by two views (kind, status and events, re-encoded without
  timestamps; name and attributes as a map of encoded values) and every per-span step a C-level
  call, so spans that carry the same evidence (most error spans of a service repeat a few) are
  classified once and cost a share of two parses each.
* `span_view(data)`: one span with its attributes as a map (the wire format of `repeated
  KeyValue` is that of a `map<string, AnyValue>`), so the few status and exception attributes are
  found by key in C instead of by walking every attribute. `facts_of_view` builds the same
  `SpanFacts` as `classify.span_facts`, except that an attribute key repeated in one span counts
  once (the last value wins in both).

The views accept any valid encoding (fields in any order, unknown fields): the receiver has
already parsed the request with the real types, so everything here is input the real types accept.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.pipeline.evidence import (
    DB_STATUS_KEY,
    SpanFacts,
    http_4xx,
    http_clearly_ok,
    http_value,
    rpc_clearly_ok,
    rpc_value,
)
from sidecar.pipeline.vocabulary import truncate

__all__ = [
    "D_ERROR",
    "D_EXCEPTION",
    "SEPARATOR",
    "SpanBatch",
    "SpliceView",
    "detect_counts",
    "error_indexes",
    "evidence_keys",
    "facts_of_view",
    "span_view",
    "spans_containing",
    "unproven_floor",
]

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "sidecar.wire"


def _build() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(name="sidecar/wire_views.proto", package=_PACKAGE, syntax="proto2")

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]],
                parent: descriptor_pb2.DescriptorProto | None = None) -> descriptor_pb2.DescriptorProto:
        msg = parent.nested_type.add(name=name) if parent is not None else file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)  # type: ignore[arg-type]
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
        return msg

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

    def attribute_map(msg: descriptor_pb2.DescriptorProto, owner: str, number: int) -> None:
        entry = message("AttributesEntry", [("key", 1, _F.TYPE_STRING, opt, None),
                                            ("value", 2, _F.TYPE_MESSAGE, opt, "Any")], msg)
        entry.options.map_entry = True
        msg.field.add(name="attributes", number=number, type=_F.TYPE_MESSAGE, label=rep,
                      type_name=f".{_PACKAGE}.{owner}.AttributesEntry")

    # detection: status code and event names only
    message("DStatus", [("code", 3, _F.TYPE_INT32, opt, None)])
    message("DEvent", [("name", 2, _F.TYPE_BYTES, opt, None)])
    message("DSpan", [("events", 11, _F.TYPE_MESSAGE, rep, "DEvent"), ("status", 15, _F.TYPE_MESSAGE, opt, "DStatus")])
    message("DScope", [("spans", 2, _F.TYPE_MESSAGE, rep, "DSpan")])
    message("DResource", [("scope_spans", 2, _F.TYPE_MESSAGE, rep, "DScope")])
    message("DRequest", [("resource_spans", 1, _F.TYPE_MESSAGE, rep, "DResource")])
    # error indexes: status code only
    message("ESpan", [("status", 15, _F.TYPE_MESSAGE, opt, "DStatus")])
    message("EScope", [("spans", 2, _F.TYPE_MESSAGE, rep, "ESpan")])
    message("EResource", [("scope_spans", 2, _F.TYPE_MESSAGE, rep, "EScope")])
    message("ERequest", [("resource_spans", 1, _F.TYPE_MESSAGE, rep, "EResource")])
    # splicing: every container field declared, spans as opaque bytes
    message("SScope", [("scope", 1, _F.TYPE_BYTES, opt, None), ("spans", 2, _F.TYPE_BYTES, rep, None),
                       ("schema_url", 3, _F.TYPE_BYTES, opt, None)])
    message("SResource", [("resource", 1, _F.TYPE_BYTES, opt, None),
                          ("scope_spans", 2, _F.TYPE_MESSAGE, rep, "SScope"),
                          ("schema_url", 3, _F.TYPE_BYTES, opt, None)])
    message("SRequest", [("resource_spans", 1, _F.TYPE_MESSAGE, rep, "SResource")])
    # facts: one span, attributes by key
    any_value = message("Any", [("string_value", 1, _F.TYPE_STRING, opt, None),
                                ("bool_value", 2, _F.TYPE_BOOL, opt, None),
                                ("int_value", 3, _F.TYPE_INT64, opt, None),
                                ("double_value", 4, _F.TYPE_DOUBLE, opt, None),
                                ("array_value", 5, _F.TYPE_BYTES, opt, None),
                                ("kvlist_value", 6, _F.TYPE_BYTES, opt, None),
                                ("bytes_value", 7, _F.TYPE_BYTES, opt, None)])
    any_value.oneof_decl.add(name="value")
    for field in any_value.field:
        field.oneof_index = 0
    message("FStatus", [("message", 2, _F.TYPE_STRING, opt, None), ("code", 3, _F.TYPE_INT32, opt, None)])
    event = message("FEvent", [("name", 2, _F.TYPE_STRING, opt, None)])
    attribute_map(event, "FEvent", 3)
    span = message("FSpan", [("name", 5, _F.TYPE_STRING, opt, None), ("kind", 6, _F.TYPE_INT32, opt, None),
                             ("events", 11, _F.TYPE_MESSAGE, rep, "FEvent"),
                             ("status", 15, _F.TYPE_MESSAGE, opt, "FStatus")])
    attribute_map(span, "FSpan", 9)
    def opaque_map(msg: descriptor_pb2.DescriptorProto, owner: str, number: int) -> None:
        entry = message("AttributesEntry", [("key", 1, _F.TYPE_STRING, opt, None),
                                            ("value", 2, _F.TYPE_BYTES, opt, None)], msg)
        entry.options.map_entry = True
        msg.field.add(name="attributes", number=number, type=_F.TYPE_MESSAGE, label=rep,
                      type_name=f".{_PACKAGE}.{owner}.AttributesEntry")

    # evidence of many spans at once: the spans as one message, read twice by the views below
    message("Blob", [("spans", 1, _F.TYPE_BYTES, rep, None)])
    message("SStatus", [("message", 2, _F.TYPE_BYTES, opt, None), ("code", 3, _F.TYPE_INT32, opt, None)])
    message("SEvent", [("name", 2, _F.TYPE_BYTES, opt, None), ("attributes", 3, _F.TYPE_BYTES, rep, None)])
    message("SSpan", [("kind", 6, _F.TYPE_INT32, opt, None), ("events", 11, _F.TYPE_MESSAGE, rep, "SEvent"),
                      ("status", 15, _F.TYPE_MESSAGE, opt, "SStatus")])
    message("SBatch", [("spans", 1, _F.TYPE_MESSAGE, rep, "SSpan")])
    named = message("ASpan", [("name", 5, _F.TYPE_STRING, opt, None)])
    opaque_map(named, "ASpan", 9)
    message("ABatch", [("spans", 1, _F.TYPE_MESSAGE, rep, "ASpan")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


_POOL = _build()


def _cls(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


_DRequest = _cls("DRequest")
_ERequest = _cls("ERequest")
SpliceView: Any = _cls("SRequest")
_FSpan = _cls("FSpan")
_Blob = _cls("Blob")
_SBatch = _cls("SBatch")
_ABatch = _cls("ABatch")

D_ERROR = b"\x7a\x02\x18\x02"  # DSpan.status (15) holding only code (3) == STATUS_CODE_ERROR (2)
D_EXCEPTION = b"\x5a\x0b\x12\x09exception"  # DSpan.events (11) holding only name (2) == "exception"


def detect_counts(raw: bytes) -> tuple[int, int, bytes]:
    """(spans with status ERROR, events named "exception" or more, the detection view's encoding) of a
    serialized trace request.

    The first count is exact. The second is exact unless an event name contains the encoded
    pattern itself; it is never too low. The encoding (a few bytes per span) is itself a request
    with the same resources, scopes and spans, for `error_indexes`.
    """
    view = _DRequest()
    view.ParseFromString(raw)
    view.DiscardUnknownFields()
    compact = view.SerializeToString()
    return compact.count(D_ERROR), compact.count(D_EXCEPTION), compact


def detect_view(raw: bytes) -> Any:
    """The detection view itself, for the exact (slower) per-span fallback."""
    view = _DRequest()
    view.ParseFromString(raw)
    return view


_E_SPAN = b"\x12"  # EScope.spans (2): every span of the status-only view starts with it
_E_ERROR_BODY = b"\x04\x7a\x02\x18\x02"  # what follows it in a span whose status code is ERROR


def error_indexes(raw: bytes) -> list[list[int]]:
    """Per (resource, scope) in order: the indexes of the spans whose status is ERROR.

    `raw` is the request, or (much cheaper to parse) the encoding `detect_counts` returns for it.
    It is parsed as spans holding only `status.code` and each scope serialized again:
    a few bytes per span, in which a span starts with the only 0x12 byte of its encoding (unless
    its code is the out-of-range value 18). The index of a span with code ERROR is then the
    number of 0x12 bytes before it: splitting at them and comparing the pieces runs in C. With odd
    codes the indexes may be wrong; the caller checks the spans it gets against the exact count of
    `detect_counts`.
    """
    view = _ERequest()
    view.ParseFromString(raw)
    view.DiscardUnknownFields()
    out: list[list[int]] = []
    for resource in view.resource_spans:
        for scope in resource.scope_spans:
            pieces = scope.SerializeToString().split(_E_SPAN)[1:]  # one per span (see above)
            out.append(list(compress(range(len(pieces)), map(_E_ERROR_BODY.__eq__, pieces))))
    return out


def spans_containing(spans: list[bytes], needle: bytes) -> Iterator[int]:
    """Indexes of spans whose bytes contain `needle` (C-level iteration)."""
    return compress(range(len(spans)), map(operator.contains, spans, [needle] * len(spans)))


def span_view(data: bytes) -> Any:
    view = _FSpan()
    view.ParseFromString(data)
    return view


_HTTP_NEW, _HTTP_OLD = "http.response.status_code", "http.status_code"
_RPC_NEW, _RPC_OLD = "rpc.response.status_code", "rpc.grpc.status_code"
_INTERESTING = frozenset((_HTTP_NEW, _HTTP_OLD, _RPC_NEW, _RPC_OLD, DB_STATUS_KEY, "exception.type",
                          "exception.message"))
_STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


def _text(value: Any) -> str:
    """`evidence.string_of` of a view's value (None: the attribute is absent)."""
    if value is None or value.WhichOneof("value") != "string_value":
        return ""
    return value.string_value  # type: ignore[no-any-return]


_EVIDENCE_KEYS = (_HTTP_NEW, _HTTP_OLD, _RPC_NEW, _RPC_OLD, DB_STATUS_KEY, "exception.type", "exception.message")


_NAME_ATTRIBUTES = operator.attrgetter("name", "attributes")
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_GETS = tuple(operator.methodcaller("get", key) for key in _EVIDENCE_KEYS)
# Joins byte strings for counting: no pattern counted over them contains this byte, so no occurrence can
# straddle two of them and a count over the join is the sum of the counts over each.
SEPARATOR = b"\xff"


@dataclass(slots=True)
class SpanBatch:
    """The classification evidence of a batch of spans (`evidence_keys`), by span in the batch's order."""

    keys: list[tuple[Any, ...]]  # each span's evidence key
    firsts: list[int]  # each span's first span with an equal key (its own index when it is the first)
    distinct: dict[tuple[Any, ...], int]  # each distinct key -> its first span
    attribute_keys: set[str]  # every attribute key of every span of the batch
    attributes: list[Any]  # each span's attributes: a map of encoded values by key
    named: list[tuple[str, Any]]  # each span's (name, attributes)

    def names(self) -> list[str]:
        """The spans' names."""
        return list(map(_FIRST, self.named))

    def having(self, key: str) -> Iterator[int]:
        """The spans that have an attribute `key`."""
        return compress(range(len(self.attributes)), map(operator.contains, self.attributes, repeat(key)))


def evidence_keys(spans: list[bytes]) -> SpanBatch:
    """The classification evidence of many spans at once, every per-span step a C-level call.

    A key is made of the span's kind, status and events as re-encoded by a view that keeps only
    them (so event timestamps, ids and everything else drop out), and the encoded values of its
    status-code and exception attributes (`_EVIDENCE_KEYS`, None when absent). Everything
    `facts_of_view` reads is in it, except the attribute keys other than those (which only say
    whether the enrichment is already there); it also holds an exception event's other attributes
    (a stack trace), so it may be finer than needed but never coarser: spans with equal keys have
    equal facts, so they classify alike, and most error spans of a service repeat a handful of keys.

    Parsing the spans as one message costs a fraction of parsing each on its own. The attribute
    keys of the whole batch are listed once, and an evidence attribute is looked up in every span
    only when some span has it. Each key is hashed and compared once per span, in C.
    """
    blob = _Blob(spans=spans).SerializeToString()
    stripped = _SBatch()
    stripped.ParseFromString(blob)
    stripped.DiscardUnknownFields()
    compact = _Blob()
    compact.ParseFromString(stripped.SerializeToString())
    view = _ABatch()
    view.ParseFromString(blob)
    named = list(map(_NAME_ATTRIBUTES, view.spans))  # one pass over the spans for both
    attributes = list(map(_SECOND, named))
    attribute_keys: set[str] = set().union(*attributes)
    columns: list[Iterable[Any]] = [compact.spans]
    columns += [map(get, attributes) if key in attribute_keys else repeat(None)
                for key, get in zip(_EVIDENCE_KEYS, _GETS, strict=True)]
    keys = list(zip(*columns, strict=False))  # the `repeat`s are endless: the spans set the length
    distinct: dict[tuple[Any, ...], int] = {}
    firsts = list(map(distinct.setdefault, keys, range(len(keys))))
    return SpanBatch(keys, firsts, distinct, attribute_keys, attributes, named)


# The key parts (after the first) that hold a status-code attribute's value: all of them have "status_code"
# in their key. An HTTP status of 200 is encoded as below (AnyValue.int_value, a two-byte varint).
_STATUS_CODE_PARTS = range(1, 6)
_HTTP_200_VALUE = b"\x18\xc8\x01"
assert all("status_code" in _EVIDENCE_KEYS[part - 1] for part in _STATUS_CODE_PARTS)


def unproven_floor(key: tuple[Any, ...], deprecated_key: bool) -> int:
    """How many "status_code" occurrences that are not an HTTP 200 a span with this evidence key has at
    least, as the byte count `enrich._not_http_200(span, deprecated_key)` counts them.

    Each status-code attribute of the key is one occurrence of "status_code" in the span's bytes (its
    key), and that occurrence is an HTTP 200 for the byte count only when the value is exactly the
    encoded int 200 under `http.response.status_code` (and `http.status_code` with `deprecated_key`).
    The span may have more occurrences (in event attributes, string values, other attribute keys, a
    repeated key), never fewer, provided each KeyValue has one value field, as every protobuf runtime
    writes it. So a request whose checked spans' floors add up to its byte count needs no other count.
    """
    floor = 0
    for part in _STATUS_CODE_PARTS:
        value = key[part]
        if value is not None and not (value == _HTTP_200_VALUE and (part == 1 or (part == 2 and deprecated_key))):
            floor += 1
    return floor


def facts_of_view(view: Any) -> SpanFacts:
    """`classify.span_facts` on a `span_view` (see the module docstring for the one difference)."""
    attributes = view.attributes
    keys = set(attributes)
    status = view.status
    facts = SpanFacts(keys=keys, kind=view.kind, status_code=status.code)
    http_old: int | None = None
    rpc_old: tuple[str | None, bool] = (None, False)
    rpc_new: tuple[str | None, bool] | None = None
    exc_type = exc_msg = ""
    for key in keys & _INTERESTING:  # the attributes are independent of each other: any order
        value = attributes[key]
        if key == _HTTP_NEW or key == _HTTP_OLD:
            if key == _HTTP_OLD:
                http_old = http_value(value)
            else:
                facts.http_status = http_value(value)
            if not http_clearly_ok(value):
                facts.suspects += 1
                facts.suspects_4xx += http_4xx(value)
        elif key == _RPC_NEW:
            rpc_new = rpc_value(value)
            facts.suspects += not rpc_clearly_ok(value)
        elif key == _RPC_OLD:
            rpc_old = rpc_value(value)
            facts.suspects += not rpc_clearly_ok(value)
        elif key == DB_STATUS_KEY:
            which = value.WhichOneof("value")
            if which == "string_value":
                facts.db_code = value.string_value
            elif which == "int_value":
                facts.db_code = str(value.int_value)
        elif key == "exception.type":
            exc_type = _text(value)
        else:  # exception.message
            exc_msg = _text(value)
    if facts.http_status is None:
        facts.http_status = http_old
    if rpc_new is not None and (rpc_new[1] or not rpc_old[1]) and rpc_new[0] is not None:
        facts.rpc_code, facts.rpc_error = rpc_new
    else:
        facts.rpc_code, facts.rpc_error = rpc_old
    for event in view.events:
        if event.name != "exception":
            continue
        facts.exception_events += 1
        event_attributes = event.attributes
        facts.exceptions.append((_text(event_attributes.get("exception.type")),
                                 truncate(_text(event_attributes.get("exception.message")))))
    if exc_type or exc_msg:
        facts.exceptions.append((exc_type, truncate(exc_msg)))
    if facts.status_code == _STATUS_ERROR or facts.exceptions or facts.db_code is not None:
        facts.status_message = truncate(status.message)
    return facts
