"""Severity escalation of errors that keep recurring (DESIGN.md §3)."""

from __future__ import annotations

import dataclasses

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

