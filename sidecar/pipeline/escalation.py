"""Severity escalation of errors that keep recurring (DESIGN.md §3)."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

from sidecar.core.taxonomy import SEVERITY_ORDER, Classification

ESCALATE_AT = 10
ESCALATE_TWICE_AT = 100


def escalate(classification: Classification, recent_occurrences: int) -> Classification:
    """Raise the severity of a retryable/temporary error that keeps recurring.

    One step at >= 10 occurrences in the caller's window, two at >= 100, capped at critical.
    Permanent and fatal errors are returned unchanged (their severity is already high/critical).
    """
    if not classification.recoverability.transient:
        return classification
    steps = 2 if recent_occurrences >= ESCALATE_TWICE_AT else 1 if recent_occurrences >= ESCALATE_AT else 0
    if steps == 0:
        return classification
    index = min(SEVERITY_ORDER.index(classification.severity) + steps, len(SEVERITY_ORDER) - 1)
    severity = SEVERITY_ORDER[index]
    if severity == classification.severity:
        return classification
    return dataclasses.replace(classification, severity=severity)



ESCALATION_WINDOW = 60.0  # seconds: "keeps recurring" means within the last minute


@dataclass(frozen=True, slots=True)
class Worsening:
    """A class whose recent recurrence raised its severity above the base one, for `status`."""

    category: str
    error_type: str
    base_severity: str
    severity: str
    occurrences: int  # in the last `window` seconds (counted up to ESCALATE_TWICE_AT)


class Escalation:
    """Severity escalation of the export errors of one exporter, over a sliding window per class.

    `observe` is called once per failed attempt with the deterministic classification and returns
    the one to report (metrics, events, `status`): raised one step at ESCALATE_AT occurrences of
    the same (category, error_type) within `window`, two at ESCALATE_TWICE_AT. Decisions (retry,
    breaker, dead letter) keep using the base classification, and so do span and log attributes,
    which must stay deterministic. Pure: time is passed in. Memory is bounded by the number of
    classes times ESCALATE_TWICE_AT timestamps (past that, the count is known to be enough).
    """

    def __init__(self, window: float = ESCALATION_WINDOW) -> None:
        self.window = window
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._last: dict[tuple[str, str], Classification] = {}

    def observe(self, classification: Classification, now: float) -> Classification:
        if not classification.recoverability.transient:
            return classification  # permanent and fatal errors are already high / critical
        key = (classification.category.value, classification.error_type)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = deque(maxlen=ESCALATE_TWICE_AT)
        self._expire(seen, now)
        seen.append(now)
        self._last[key] = classification
        return escalate(classification, len(seen))

    def worsening(self, now: float) -> list[Worsening]:
        """The classes escalated now, most frequent first."""
        out = []
        for key, seen in list(self._seen.items()):
            self._expire(seen, now)
            if not seen:
                del self._seen[key]
                self._last.pop(key, None)
                continue
            base = self._last[key]
            current = escalate(base, len(seen))
            if current.severity is not base.severity:
                out.append(Worsening(key[0], key[1], base.severity.value, current.severity.value, len(seen)))
        return sorted(out, key=lambda w: (-w.occurrences, w.category, w.error_type))

    def _expire(self, seen: deque[float], now: float) -> None:
        while seen and now - seen[0] > self.window:
            seen.popleft()
