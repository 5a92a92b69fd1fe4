"""Is this error rate unusual? An EWMA baseline and a deviation score per series (DESIGN.md §7). Pure.

Each `update(value)` takes one interval's rate (errors per minute over the last interval) and
returns the score of that value against the baseline *before* it: how many standard deviations
above the EWMA mean it is, `max(0, (value - mean) / max(std, min_std))`. Only rises score: fewer
errors than usual is not an incident. Then the value joins the baseline:

    mean' = mean + a * (value - mean)
    var'  = (1 - a) * (var + a * (value - mean)^2)

(the exponentially weighted mean and variance, Finch 2009). `a` is `alpha`, except for the first
`warmup` values, which use 1/n: the baseline starts as the plain mean and variance of what was
seen, instead of being dragged from the first value, and no alarm is raised before it has
`warmup` values. `min_std` (errors per minute) floors the deviation: a category that has been
perfectly quiet (variance 0) scores a burst against `min_std`, not against zero.

Because the baseline keeps learning, a sustained new level becomes normal: its score decays
back under `clear` after a few intervals (the step inflates the variance, and the mean follows).

Alarm with hysteresis: raised when the score reaches `threshold`, cleared only when it falls
below `clear` (< threshold), so a score hovering around the threshold does not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    alpha: float = 0.05
    threshold: float = 4.0
    clear: float = 2.0
    warmup: int = 30
    min_std: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if not 0 <= self.clear < self.threshold:
            raise ValueError("0 <= clear < threshold is required")
        if self.warmup < 1 or self.min_std <= 0:
            raise ValueError("warmup >= 1 and min_std > 0 are required")


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    active: bool  # the alarm is raised after this value
    changed: bool  # it was raised or cleared by this value


class EwmaDetector:
    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self.mean = 0.0
        self.var = 0.0
        self.seen = 0
        self.score = 0.0
        self.active = False

    @property
    def std(self) -> float:
        return math.sqrt(max(0.0, self.var))

    def update(self, value: float) -> Verdict:
        s = self.settings
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a rate must be finite and >= 0, got {value}")
        if self.seen:
            score = max(0.0, (value - self.mean) / max(self.std, s.min_std))
        else:
            score = 0.0
        self.seen += 1
        weight = max(s.alpha, 1.0 / self.seen) if self.seen <= s.warmup else s.alpha
        delta = value - self.mean
        self.mean += weight * delta
        self.var = (1.0 - weight) * (self.var + weight * delta * delta)
        self.score = score
        was = self.active
        if self.seen <= s.warmup:
            self.active = False
        elif not was and score >= s.threshold:
            self.active = True
        elif was and score < s.clear:
            self.active = False
        return Verdict(score, self.active, self.active != was)
