"""How a handed-off entry is written in a Redis stream, and the budget arithmetic: pure, no I/O.

A stream entry has two fields: `h`, a small JSON header (what the queue entry or dead letter carries
besides its payload, and who handed it off), and `p`, the payload bytes as they were queued (already
enriched). The payload is never decoded here: a claimer sends exactly what the departed sidecar
acknowledged, as a replay after restart would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Recoverability, Recovery, Severity
from sidecar.queue.deadletter import DeadLetter

GROUP = "deliver"  # the consumer group of every handoff stream
HEADER = b"h"
PAYLOAD = b"p"
FORMAT = 1  # the header's version: a claimer refuses (and leaves in place) a header it cannot read


class Unreadable(ValueError):
    """A stream entry this version cannot read (another version's format, or damaged)."""


@dataclass(frozen=True, slots=True)
class HandedOff:
    """One entry of a handoff stream: a queue entry, or a dead letter (`dead` set) to keep, not to send."""

    entry: QueueEntry
    source: str  # the instance that handed it off
    dead: DeadLetter | None = None

    @property
    def size(self) -> int:
        """What it counts against the fleet-wide byte budget: its payload."""
        return len(self.entry.payload)


def encode(item: HandedOff) -> tuple[bytes, bytes]:
    """The stream fields (header, payload) of one handed-off entry."""
    entry, dead = item.entry, item.dead
    header: dict[str, object] = {
        "v": FORMAT, "s": entry.signal.value, "n": entry.items, "m": [list(pair) for pair in entry.metadata],
        "a": entry.accepted_at, "f": item.source}
    if dead is not None:
        header["d"] = {"c": dead.category.value, "sv": dead.severity.value, "r": dead.recoverability.value,
                       "rc": dead.recovery.value, "e": dead.error_type, "by": dead.classified_by,
                       "x": dead.message, "t": dead.dead_at, "ri": dead.rejected_items}
    return orjson.dumps(header), entry.payload


def decode(fields: Mapping[bytes, bytes]) -> HandedOff:
    """The entry a stream entry holds; raises Unreadable for anything this version did not write."""
    try:
        header = orjson.loads(fields[HEADER])
        payload = fields[PAYLOAD]
        if header.get("v") != FORMAT:
            raise Unreadable(f"handoff format {header.get('v')!r}, this version reads {FORMAT}")
        entry = QueueEntry(Signal(header["s"]), bytes(payload), int(header["n"]),
                           tuple((str(k), str(v)) for k, v in header["m"]), float(header["a"]))
        dead = None
        if "d" in header:
            d = header["d"]
            dead = DeadLetter(id=0, entry=entry, category=Category(d["c"]), severity=Severity(d["sv"]),
                              recoverability=Recoverability(d["r"]), recovery=Recovery(d["rc"]),
                              error_type=str(d["e"]), classified_by=str(d["by"]), message=str(d["x"]),
                              dead_at=float(d["t"]), rejected_items=int(d["ri"]))
        return HandedOff(entry, str(header["f"]), dead)
    except Unreadable:
        raise
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise Unreadable(f"unreadable handoff entry: {type(exc).__name__}: {exc}") from None


def room(max_bytes: int, held_by_others: int) -> int:
    """Bytes one endpoint's stream may hold: the fleet-wide budget less what the other endpoints hold."""
    return max(0, max_bytes - held_by_others)



Claimed = tuple[bytes, HandedOff]  # (stream entry id, what it holds)


def batches(claimed: list[Claimed], max_requests: int, max_bytes: int) -> list[list[Claimed]]:
    """Claimed entries grouped as the exporter's batcher merges queued ones: same signal and metadata, at
    most `max_requests` entries and `max_bytes` of payload a group, in order; a dead letter alone."""
    groups: list[list[Claimed]] = []
    filling: dict[tuple[object, ...], tuple[list[Claimed], int]] = {}
    for claim in claimed:
        item = claim[1]
        if item.dead is not None or max_requests <= 1:
            groups.append([claim])
            continue
        key = (item.entry.signal, item.entry.metadata)
        group, size = filling.get(key, ([], 0))
        if not group or len(group) >= max_requests or size + item.size > max_bytes:
            group, size = [], 0
            groups.append(group)
        group.append(claim)
        filling[key] = (group, size + item.size)
    return groups
