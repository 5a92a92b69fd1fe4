"""Properties of partial-success dead letters (issue 16), on the in-memory store.

* Eviction: whatever mix of whole and partial dead letters and whatever bound, the items reported
  evicted are exactly what the evicted dead letters stood for (a partial success's rejected items,
  else the entry's), and what is left plus what was evicted is everything added.
* Replay: every dead letter ends up replayed, skipped (a partial success, not included) or remaining
  (the queue was full); the queue receives the replayable ones oldest first; the store keeps the rest
  in their order.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.queue.deadletter import MemoryDeadLetters, replay_dead_letters
from sidecar.queue.memory import MemoryQueue

PARTIAL = Classification(Category.PROCESSING, Severity.MEDIUM, Recoverability.PERMANENT, Recovery.DROP,
                         "partial_success", "default:partial_success")
BAD_DATA = Classification(Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT, Recovery.DROP,
                          "INVALID_ARGUMENT", "default")

# (items, rejected): rejected 0 is a whole failed request, else a partial success.
letters = st.lists(st.integers(1, 20).flatmap(lambda items: st.tuples(st.just(items), st.integers(0, items))),
                   max_size=30)


def entry(n: int, items: int) -> QueueEntry:
    return QueueEntry(Signal.TRACES, n.to_bytes(4, "big") + b"p" * 12, items, (), 1000.0 + n)


def stands_for(items: int, rejected: int) -> int:
    return rejected if rejected else items


@settings(max_examples=200, deadline=None)
@given(letters, st.integers(1, 10))
def test_eviction_counts_what_each_dead_letter_stands_for(added: list[tuple[int, int]], bound: int) -> None:
    async def run() -> None:
        store = MemoryDeadLetters(bound)
        evicted_items = 0
        for n, (items, rejected) in enumerate(added):
            cls = PARTIAL if rejected else BAD_DATA
            for ev in await store.add(entry(n, items), cls, "x", dead_at=float(n), rejected_items=rejected):
                evicted_items += ev.items
        kept = await store.list(limit=len(added) + 1)
        assert store.evicted_items == evicted_items
        assert evicted_items + sum(dl.items for dl in kept) == sum(stands_for(*a) for a in added)
        assert [dl.rejected_items for dl in kept] == [r for _, r in added[len(added) - len(kept):]]

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(letters, st.integers(1, 12), st.booleans(), st.integers(1, 5))
def test_replay_replays_skips_or_leaves_each_dead_letter(added: list[tuple[int, int]], capacity: int,
                                                         include_partial: bool, batch: int) -> None:
    async def run() -> None:
        store = MemoryDeadLetters(1000)
        for n, (items, rejected) in enumerate(added):
            await store.add(entry(n, items), PARTIAL if rejected else BAD_DATA, "x", rejected_items=rejected)
        queue = MemoryQueue(capacity)
        result = await replay_dead_letters(store, queue, batch=batch, include_partial=include_partial)

        replayable = [n for n, (_, rejected) in enumerate(added) if include_partial or not rejected]
        skipped = [n for n, (_, rejected) in enumerate(added) if rejected and not include_partial]
        replayed = replayable[:capacity]
        assert [int.from_bytes(e.payload[:4], "big") for e in queue.drain_nowait()] == replayed
        assert (result.replayed, result.remaining, result.skipped_partial) == (
            len(replayed), len(replayable) - len(replayed), len(skipped))
        assert result.items == sum(added[n][0] for n in replayed)
        assert result.skipped_partial_items == sum(added[n][1] for n in skipped)
        left = [int.from_bytes(dl.entry.payload[:4], "big") for dl in await store.list(limit=1000)]
        assert left == sorted(set(range(len(added))) - set(replayed))

    asyncio.run(run())
