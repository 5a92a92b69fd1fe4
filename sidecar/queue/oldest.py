"""The acceptance time of the oldest entry a queue holds, for `sidecar_exporter_queue_oldest_age_seconds`.

Entries do not leave in acceptance order (a requeued split part keeps its original acceptance
time but gets a new position; nacked entries stay), so the oldest is the minimum over what is
held, not the head of the queue. A heap of (accepted_at, key) with lazy deletion: `add` is
O(log n), `discard` O(1), `oldest` amortised O(log n) (stale tops are popped when looked at).
"""

from __future__ import annotations

import heapq


class OldestTracker:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._held: dict[int, float] = {}

    def add(self, key: int, accepted_at: float) -> None:
        self._held[key] = accepted_at
        heapq.heappush(self._heap, (accepted_at, key))

    def discard(self, key: int) -> None:
        self._held.pop(key, None)
        if not self._held:
            self._heap.clear()

    def clear(self) -> None:
        self._held.clear()
        self._heap.clear()

    def oldest(self) -> float | None:
        """The smallest acceptance time held; None when nothing is."""
        heap = self._heap
        while heap:
            accepted_at, key = heap[0]
            if self._held.get(key) == accepted_at:
                return accepted_at
            heapq.heappop(heap)
        return None
