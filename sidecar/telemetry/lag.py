"""Foresight for one sending queue (DESIGN.md §7): when will it be full? Pure, time passed in.

`FillPredictor` keeps the queue size sampled over the last `window` seconds (one minute by
default) and fits a least-squares line through the samples: its slope is the net fill rate
(puts minus acks, in the sizer's unit per second). Time to full is the room left divided by
that rate; +Inf while the queue is not growing (rate <= 0, or the size now is not above what it
was `recent` seconds ago: a queue that filled for most of the minute and drains now is not
about to be full) or there is not yet enough history to say (fewer than `min_samples` samples
or less than `min_span` seconds between the first and the last), and 0 once the queue is full.

A least-squares slope rather than (last - first) / span: SDK exporters put whole batches, so
the size is a staircase, and the fit over every sample is far less sensitive to where in a step
the window happens to start or end.

`History` keeps a downsampled series (for the `status` sparklines): one value per `step`
seconds, the last `length` of them, the latest sample of each step winning.
"""

from __future__ import annotations

import math
from collections import deque

DEFAULT_WINDOW = 60.0


class FillPredictor:
    def __init__(self, window: float = DEFAULT_WINDOW, min_samples: int = 3, min_span: float = 2.0,
                 recent: float = 10.0) -> None:
        if window <= 0 or min_samples < 2 or min_span < 0 or not 0 < recent <= window:
            raise ValueError("window > 0, min_samples >= 2, min_span >= 0 and 0 < recent <= window are required")
        self.window = window
        self.recent = recent
        self.min_samples = min_samples
        self.min_span = min_span
        self._samples: deque[tuple[float, float]] = deque()

    def observe(self, now: float, size: float) -> None:
        """One sample of the queue size at `now` (times must not go backwards)."""
        if self._samples and now < self._samples[-1][0]:
            raise ValueError("samples must be observed in time order")
        self._samples.append((now, float(size)))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()

    def reset(self) -> None:
        self._samples.clear()

    @property
    def samples(self) -> int:
        return len(self._samples)

    def net_rate(self) -> float | None:
        """Units per second over the window (least-squares slope); None without enough history."""
        samples = self._samples
        if len(samples) < self.min_samples or samples[-1][0] - samples[0][0] < self.min_span:
            return None
        n = len(samples)
        t0 = samples[0][0]  # centred on the first time: keeps the sums small and the fit exact enough
        mean_t = sum(t - t0 for t, _ in samples) / n
        mean_s = sum(s for _, s in samples) / n
        covariance = sum((t - t0 - mean_t) * (s - mean_s) for t, s in samples)
        variance = sum((t - t0 - mean_t) ** 2 for t, _ in samples)
        if variance <= 0:
            return None
        return covariance / variance

    def time_to_full(self, size: float, capacity: float) -> float:
        """Seconds until `size` reaches `capacity` at the current net fill rate; +Inf when not growing."""
        if capacity > 0 and size >= capacity:
            return 0.0
        rate = self.net_rate()
        if rate is None or rate <= 0 or capacity <= 0 or not self._growing_recently():
            return math.inf
        return (capacity - size) / rate

    def _growing_recently(self) -> bool:
        """The last sample is above the one from about `recent` seconds before it."""
        last_time, last_size = self._samples[-1]
        before = self._samples[0][1]
        for t, s in self._samples:
            if t > last_time - self.recent:
                break
            before = s
        return last_size > before


class History:
    """The last `length` values at one per `step` seconds (the latest value within a step wins)."""

    def __init__(self, step: float = 10.0, length: int = 60) -> None:
        if step <= 0 or length < 1:
            raise ValueError("step > 0 and length >= 1 are required")
        self.step = step
        self._values: deque[tuple[int, float]] = deque(maxlen=length)

    def observe(self, now: float, value: float) -> None:
        slot = math.floor(now / self.step)
        if self._values and self._values[-1][0] == slot:
            self._values[-1] = (slot, value)
        elif not self._values or slot > self._values[-1][0]:
            self._values.append((slot, value))

    def values(self) -> list[float]:
        return [value for _, value in self._values]
