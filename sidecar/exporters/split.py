"""Splitting an Export*ServiceRequest in two, for "payload too large" and `max_request_size_mib`.

A request is a tree: resources -> scopes -> items (spans, log records), and for metrics
resources -> scopes -> metrics -> data points. Items are numbered in document order and the
request is cut at the middle item: the first half gets items [0, n//2), the second the rest.
The containers the cut goes through (at most one resource, one scope and one metric) are
copied onto both halves with everything but their children (resource attributes, schema_url,
scope name and version, metric name, unit, type, temporality...), so each half is a complete,
valid request. Thus several resources split between resources, a single resource with many spans
splits by spans, and a single metric splits by data points. Containers without items (an empty
resource, a metric without data) stay on the side of the cut where they were. Items are never
lost or duplicated: the halves' item counts add up to the request's.

Item counts are those of `sidecar.core.signals.count_items` (spans, metric data points, log records).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import SPECS, Signal, count_items

# The repeated field that holds the children at each level, per signal.
_LEVELS: dict[Signal, tuple[str, ...]] = {
    Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
    Signal.LOGS: ("resource_logs", "scope_logs", "log_records"),
    Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics", "data_points"),
}


def _children(node: Message, field: str) -> Sequence[Any]:
    if field == "data_points":
        kind = node.WhichOneof("data")
        return getattr(node, kind).data_points if kind else ()
    return getattr(node, field)  # type: ignore[no-any-return]


def _count(node: Message, levels: tuple[str, ...]) -> int:
    if len(levels) == 1:
        return len(_children(node, levels[0]))
    return sum(_count(child, levels[1:]) for child in _children(node, levels[0]))


def _shell(node: Message, skip: str) -> Message:
    """A copy of `node` with every field but `skip`."""
    new = type(node)()
    for fd, value in node.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(new, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(new, fd.name).CopyFrom(value)
        else:
            setattr(new, fd.name, value)
    return new


def _rebuild(node: Message, field: str, children: list[Any]) -> Message:
    if field == "data_points":
        kind = node.WhichOneof("data")
        assert kind is not None
        new = _shell(node, kind)
        data = getattr(new, kind)
        data.CopyFrom(_shell(getattr(node, kind), "data_points"))
        data.SetInParent()
        data.data_points.extend(children)
        return new
    new = _shell(node, field)
    getattr(new, field).extend(children)
    return new


def _partition(node: Message, levels: tuple[str, ...], mid: int) -> tuple[Message, Message]:
    """Two copies of `node`: items [0, mid) and items [mid, n)."""
    field = levels[0]
    first: list[Any] = []
    second: list[Any] = []
    offset = 0
    for child in _children(node, field):
        size = 1 if len(levels) == 1 else _count(child, levels[1:])
        if offset >= mid:
            second.append(child)
        elif offset + size <= mid:
            first.append(child)
        else:  # the cut goes through this child (only containers, never a leaf item)
            a, b = _partition(child, levels[1:], mid - offset)
            first.append(a)
            second.append(b)
        offset += size
    return _rebuild(node, field, first), _rebuild(node, field, second)


def split_message(signal: Signal, request: Message) -> tuple[Message, Message] | None:
    """Split a decoded request in two halves by item count; None when it holds fewer than 2 items."""
    levels = _LEVELS[signal]
    total = _count(request, levels)
    if total < 2:
        return None
    return _partition(request, levels, total // 2)


def split_request(signal: Signal, payload: bytes) -> tuple[bytes, bytes] | None:
    """Split a serialized Export*ServiceRequest in two; None when it holds a single item (or none)."""
    request = SPECS[signal].request_type.FromString(payload)
    halves = split_message(signal, request)
    if halves is None:
        return None
    return halves[0].SerializeToString(), halves[1].SerializeToString()


def _to_limit(signal: Signal, request: Message, max_bytes: int, out: list[Message]) -> None:
    if request.ByteSize() <= max_bytes:
        out.append(request)
        return
    halves = split_message(signal, request)
    if halves is None:
        out.append(request)  # a single item over the limit: sent as is, upstream decides
        return
    _to_limit(signal, halves[0], max_bytes, out)
    _to_limit(signal, halves[1], max_bytes, out)


def split_to_limit(signal: Signal, payload: bytes, max_bytes: int) -> list[bytes]:
    """Split until every part is at most `max_bytes` (serialized), in order.

    A single item that is larger than the limit cannot be split and is returned as a part of its
    own, over the limit; the caller sends it and lets upstream decide (413 -> dead letter).
    """
    if len(payload) <= max_bytes:
        return [payload]
    parts: list[Message] = []
    _to_limit(signal, SPECS[signal].request_type.FromString(payload), max_bytes, parts)
    return [part.SerializeToString() for part in parts]


# ---------------------------------------------------------------- queue entries


def _entry_of(entry: QueueEntry, message: Message) -> QueueEntry:
    return dataclasses.replace(
        entry, payload=message.SerializeToString(), items=count_items(entry.signal, message)
    )


def split_entry(entry: QueueEntry) -> tuple[QueueEntry, QueueEntry] | None:
    """`split_request` for a queue entry: two entries with the same signal, metadata and
    acceptance time, each with its own item count. None when the entry holds a single item."""
    request = SPECS[entry.signal].request_type.FromString(entry.payload)
    halves = split_message(entry.signal, request)
    if halves is None:
        return None
    return _entry_of(entry, halves[0]), _entry_of(entry, halves[1])


def split_entry_to_limit(entry: QueueEntry, max_bytes: int) -> list[QueueEntry]:
    """`split_to_limit` for a queue entry; `[entry]` itself when it already fits."""
    if len(entry.payload) <= max_bytes:
        return [entry]
    parts: list[Message] = []
    _to_limit(entry.signal, SPECS[entry.signal].request_type.FromString(entry.payload), max_bytes, parts)
    if len(parts) == 1:
        return [entry]
    return [_entry_of(entry, part) for part in parts]
