"""The pure parts of the handoff: the stream entry format, the budget arithmetic, the left-behind verdict."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import INTERNAL_ERROR
from sidecar.fleet.handoff_codec import HEADER, PAYLOAD, HandedOff, Unreadable, decode, encode, room
from sidecar.fleet.leftbehind import LeftBehind, verdict, volume_id
from sidecar.queue.deadletter import DeadLetter

entries = st.builds(QueueEntry, st.sampled_from(list(Signal)), st.binary(max_size=200), st.integers(0, 10_000),
                    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3).map(tuple),
                    st.floats(0, 2e9, allow_nan=False))


@given(entries, st.text(min_size=1, max_size=20))
def test_a_queue_entry_comes_back_as_it_was_acknowledged(entry: QueueEntry, source: str) -> None:
    header, payload = encode(HandedOff(entry, source))
    back = decode({HEADER: header, PAYLOAD: payload})
    assert back == HandedOff(entry, source) and back.size == len(entry.payload)


def test_a_dead_letter_keeps_its_class_message_and_rejected_items() -> None:
    entry = QueueEntry(Signal.LOGS, b"abc", 5, (("tenant", "a"),), 12.5)
    c = INTERNAL_ERROR
    dead = DeadLetter(id=0, entry=entry, category=c.category, severity=c.severity, recoverability=c.recoverability,
                      recovery=c.recovery, error_type=c.error_type, classified_by=c.classified_by,
                      message="upstream said no", dead_at=99.0, rejected_items=2)
    header, payload = encode(HandedOff(entry, "s0", dead))
    assert decode({HEADER: header, PAYLOAD: payload}).dead == dead


@pytest.mark.parametrize("fields", [
    {HEADER: orjson.dumps({"v": 2, "s": "traces"}), PAYLOAD: b""},  # another version's format
    {HEADER: b"not json", PAYLOAD: b""},
    {HEADER: orjson.dumps({"v": 1, "s": "spans"}), PAYLOAD: b""},
    {PAYLOAD: b""},
])
def test_what_this_version_did_not_write_is_refused_not_guessed(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(Unreadable):
        decode(fields)


def test_the_budget_of_an_endpoint_is_what_the_other_endpoints_leave() -> None:
    assert room(1000, 300) == 700 and room(1000, 5000) == 0


def test_a_volume_keeps_its_id_and_a_new_volume_gets_another(tmp_path: Path) -> None:
    first = volume_id(tmp_path / "queue")
    assert volume_id(tmp_path / "queue") == first
    assert volume_id(tmp_path / "other") != first


def test_a_left_behind_record_is_counted_only_when_its_volume_is_known_gone() -> None:
    record = LeftBehind("s0", {"traces": 10}, 1, at=100.0, why="budget_full")
    assert LeftBehind.decode(record.encode()) == record
    # Back on its own volume: replayed, not lost.
    assert verdict(record, "v1", "v1", "s0", now=100.0, timeout=600) == "replayed"
    # The same instance on a new volume: its old volume is gone.
    assert verdict(record, "v1", "v2", "s0", now=100.0, timeout=600) is not None
    assert verdict(record, "v1", "v2", "s0", now=100.0, timeout=600).startswith("lost")  # type: ignore[union-attr]
    # Someone else, before the timeout: wait; after it: lost.
    assert verdict(record, "v1", "v9", "s1", now=699.0, timeout=600) is None
    assert verdict(record, "v1", None, "s1", now=700.0, timeout=600).startswith("lost")  # type: ignore[union-attr]
    # A sidecar without storage with the same name says nothing about the volume.
    assert verdict(record, "v1", None, "s0", now=100.0, timeout=600) is None


def test_status_shows_the_backlog_per_endpoint() -> None:
    from sidecar.fleet.handoff_status import Backlog, backlog_json, backlog_lines

    backlogs = [Backlog("collector:4317", bytes=2048, entries=3, oldest_age=12.25, pending=1),
                Backlog("other:4317", bytes=0, entries=0, oldest_age=0.0, pending=0)]
    lines = backlog_lines(backlogs)
    assert lines[1].split() == ["collector:4317", "3", "2048", "1", "12.2s"]
    assert lines[2].split() == ["other:4317", "0", "0", "0", "-"]
    assert backlog_json(backlogs)["collector:4317"] == {"bytes": 2048, "entries": 3, "oldest_age": 12.25,
                                                        "pending": 1}


def test_claimed_entries_are_merged_as_the_batcher_would_merge_queued_ones() -> None:
    from sidecar.fleet.handoff_codec import batches

    def claim(n: int, signal: Signal = Signal.TRACES, size: int = 10, tenant: str = "a",
              dead: bool = False) -> tuple[bytes, HandedOff]:
        entry = QueueEntry(signal, b"x" * size, 1, (("tenant", tenant),), 0.0)
        letter = None
        if dead:
            c = INTERNAL_ERROR
            letter = DeadLetter(0, entry, c.category, c.severity, c.recoverability, c.recovery, c.error_type,
                                c.classified_by, "no", 0.0)
        return b"%d" % n, HandedOff(entry, "s0", letter)

    claimed = [claim(0), claim(1), claim(2, tenant="b"), claim(3), claim(4, dead=True), claim(5, size=25)]
    ids = [[c[0] for c in group] for group in batches(claimed, max_requests=3, max_bytes=40)]
    # Same metadata together (up to 3 and 40 bytes), another tenant apart, a dead letter alone.
    assert ids == [[b"0", b"1", b"3"], [b"2"], [b"4"], [b"5"]]
    assert [[c[0] for c in g] for g in batches(claimed[:2], max_requests=1, max_bytes=0)] == [[b"0"], [b"1"]]
