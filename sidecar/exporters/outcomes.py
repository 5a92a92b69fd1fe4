"""What the degradation ladder's error-rate and latency triggers read: an exporter's recent export
outcomes (DESIGN.md §5). Pure: time is passed in.

The latency is a high percentile (p99 by default) of the successful sends in the window, not the
median: a Collector that answers most requests quickly and one in fifty after 10 s is a slow
Collector for the requests that wait, and the median would never show it.
"""

from __future__ import annotations

import math
from collections import deque

LATENCY_PERCENTILE = 0.99


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank q-th percentile of an ascending, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class OutcomeWindow:
    """Failed / total sends and the `q` latency percentile of successes over the last `window` seconds.

    `stats` runs for every accepted request, so it is O(1) amortized: the failure count is kept as
    outcomes come and go, and the percentile (a sort of the window) is recomputed at most every
    `refresh` seconds; the latency trigger is a slow signal (seconds).
    """

    def __init__(self, window: float = 60.0, refresh: float = 1.0, q: float = LATENCY_PERCENTILE) -> None:
        self.window = window
        self.refresh = refresh
        self.q = q
        self._outcomes: deque[tuple[float, bool, float]] = deque()  # (when, ok, latency)
        self._failures = 0
        self._latency: tuple[float, float | None] = (float("-inf"), None)  # (computed at, value)

    def record(self, now: float, ok: bool, latency: float) -> None:
        self._outcomes.append((now, ok, latency))
        if not ok:
            self._failures += 1

    def stats(self, now: float) -> tuple[float | None, float | None]:
        """(error rate, latency percentile of successes); None for what there is no data for."""
        outcomes = self._outcomes
        while outcomes and now - outcomes[0][0] > self.window:
            if not outcomes.popleft()[1]:
                self._failures -= 1
        if not outcomes:
            return None, None
        computed_at, latency = self._latency
        if now - computed_at >= self.refresh:
            latencies = sorted(value for _, ok, value in outcomes if ok)
            latency = percentile(latencies, self.q) if latencies else None
            self._latency = (now, latency)
        return self._failures / len(outcomes), latency
