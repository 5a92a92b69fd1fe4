"""Backoff policy (DESIGN.md §4): exponential with jitter, server hints as a floor, adaptive base.

Pure policy: no sleeping here, randomness comes from an injected `random.Random` and time from
an injected clock, so every delay is reproducible in tests.

Delay of retry number `n` (0 for the first retry), with `base` = `initial_interval` (or the
endpoint's adaptive base) and `cap` = `max_interval`::

    d = min(cap, base * multiplier ** n)
    full          uniform(0, d)                                   (default, AWS "full jitter")
    equal         d * (1 - rf) + uniform(0, d * rf)               rf = randomization_factor
    decorrelated  min(cap, uniform(base, max(base, 3 * prev)))    (AWS "decorrelated jitter")

`randomization_factor` (the Collector's knob, default 0.5) only shapes `equal`: it is the
width of the random band below `d`. With the default 0.5 this is the classic equal jitter
d/2 + uniform(0, d/2); 0 disables jitter, 1 is full jitter. Unlike the Collector's
`d * (1 +- rf)`, the band never goes above `d`, so `max_interval` is a hard bound on the
backoff. `full` and `decorrelated` ignore the factor.

A server hint (RetryInfo, Retry-After) is a floor: the wait is `max(jittered, hint)`, even when
the hint is above `max_interval` (the server knows best when it can take traffic again).

`max_elapsed_time` (0 = unlimited): `next_delay` returns None when the wait would end past
`max_elapsed_time` after the first attempt, i.e. the caller must give up.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from sidecar.config.schema import RetryConfig
from sidecar.core.clock import Clock
from sidecar.exporters.budget import WindowedCounts

JitterMode = Literal["full", "equal", "decorrelated"]
JITTER_MODES: tuple[JitterMode, ...] = ("full", "equal", "decorrelated")


class Backoff:
    """The delay policy of one exporter. Stateless apart from its random generator."""

    def __init__(
        self,
        *,
        initial_interval: float = 5.0,
        max_interval: float = 30.0,
        multiplier: float = 1.5,
        jitter: JitterMode = "full",
        randomization_factor: float = 0.5,
        max_elapsed_time: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial_interval < 0 or max_interval < 0:
            raise ValueError("intervals must be >= 0")
        if multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= randomization_factor <= 1:
            raise ValueError("randomization_factor must be within [0, 1]")
        if jitter not in JITTER_MODES:
            raise ValueError(f"unknown jitter mode {jitter!r}")
        self.initial_interval = float(initial_interval)
        self.max_interval = float(max_interval)
        self.multiplier = float(multiplier)
        self.jitter: JitterMode = jitter
        self.randomization_factor = float(randomization_factor)
        self.max_elapsed_time = float(max_elapsed_time)
        self._rng = rng or random.Random()

    @classmethod
    def from_config(cls, config: RetryConfig, rng: random.Random | None = None) -> Backoff:
        return cls(
            initial_interval=config.initial_interval,
            max_interval=config.max_interval,
            multiplier=config.multiplier,
            jitter=config.jitter,
            randomization_factor=config.randomization_factor,
            max_elapsed_time=config.max_elapsed_time,
            rng=rng,
        )

    def ceiling(self, attempt: int, base: float | None = None) -> float:
        """The un-jittered exponential delay `d` of retry number `attempt` (0-based), capped."""
        b = self.initial_interval if base is None else base
        cap = self.max_interval
        if b <= 0:
            return 0.0
        try:
            raw = b * self.multiplier ** max(0, attempt)
        except OverflowError:
            raw = math.inf
        return min(cap, raw)

    def delay(self, attempt: int, *, prev: float | None = None, base: float | None = None) -> float:
        """The jittered delay, without hint or elapsed-time checks; always within [0, max_interval]."""
        cap = self.max_interval
        b = min(cap, self.initial_interval if base is None else base)
        if self.jitter == "decorrelated":
            previous = b if prev is None else max(b, prev)
            high = min(cap, max(b, 3.0 * previous))
            return min(cap, self._rng.uniform(b, high))
        d = self.ceiling(attempt, b)
        if self.jitter == "full":
            return min(d, self._rng.uniform(0.0, d))
        band = d * self.randomization_factor
        return min(d, max(0.0, d - band + self._rng.uniform(0.0, band)))

    def next_delay(
        self,
        attempt: int,
        elapsed: float,
        *,
        hint: float | None = None,
        prev: float | None = None,
        base: float | None = None,
    ) -> float | None:
        """How long to wait before retry number `attempt`, or None when it is time to give up.

        `elapsed` is the time since the first attempt; `hint` the server's throttle hint
        (a floor); `prev` the previous delay (decorrelated jitter); `base` the adaptive base.
        """
        wait = self.delay(attempt, prev=prev, base=base)
        if hint is not None and hint > wait:
            wait = float(hint)
        if self.max_elapsed_time > 0 and elapsed + wait > self.max_elapsed_time:
            return None
        return wait


class AdaptiveBase:
    """Per-endpoint base delay that follows the endpoint's recent success rate (DESIGN.md §4).

    Outcomes are recorded over a sliding `window`. When at least `min_samples` outcomes are in
    the window, the base is adjusted at most once every `adjust_every` seconds: success rate
    above `high` (0.8) shrinks it x0.8, below `low` (0.3) grows it x1.5; it always stays within
    [initial_interval, max_interval]. It starts at `initial_interval`.
    """

    def __init__(
        self,
        initial_interval: float,
        max_interval: float,
        clock: Clock,
        *,
        window: float = 60.0,
        min_samples: int = 5,
        adjust_every: float | None = None,
        high: float = 0.8,
        low: float = 0.3,
        shrink: float = 0.8,
        grow: float = 1.5,
    ) -> None:
        self.initial_interval = float(initial_interval)
        self.max_interval = max(float(max_interval), self.initial_interval)
        self._clock = clock
        self._outcomes = WindowedCounts(clock, window, width=2)  # (successes, total)
        self.min_samples = min_samples
        self.adjust_every = window / 6.0 if adjust_every is None else adjust_every
        self._high, self._low, self._shrink, self._grow = high, low, shrink, grow
        self._base = self.initial_interval
        self._adjusted_at: float | None = None

    @property
    def base(self) -> float:
        return self._base

    def reconfigure(self, initial_interval: float, max_interval: float) -> None:
        """New bounds in place (a SIGHUP reload); the learnt base is kept within them."""
        self.initial_interval = float(initial_interval)
        self.max_interval = max(float(max_interval), self.initial_interval)
        self._base = min(self.max_interval, max(self.initial_interval, self._base))

    @property
    def success_rate(self) -> float | None:
        successes, total = self._outcomes.totals()
        return successes / total if total > 0 else None

    def record(self, success: bool) -> None:
        self._outcomes.add(1.0 if success else 0.0, 1.0)
        now = self._clock.monotonic()
        if self._adjusted_at is not None and now - self._adjusted_at < self.adjust_every:
            return
        successes, total = self._outcomes.totals()
        if total < self.min_samples:
            return
        rate = successes / total
        if rate > self._high:
            new = self._base * self._shrink
        elif rate < self._low:
            new = self._base * self._grow
        else:
            return
        self._base = min(self.max_interval, max(self.initial_interval, new))
        self._adjusted_at = now
