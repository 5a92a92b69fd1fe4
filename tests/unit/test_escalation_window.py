"""Escalation over a sliding window per class: recurring export errors are reported as worsening."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.pipeline.escalation import ESCALATE_AT, ESCALATE_TWICE_AT, Escalation

UNAVAILABLE = Classification(Category.TRANSPORT, Severity.LOW, Recoverability.RETRYABLE,
                             Recovery.RETRY_WITH_BACKOFF, "UNAVAILABLE")
THROTTLED = Classification(Category.RESOURCE_EXHAUSTED, Severity.MEDIUM, Recoverability.TEMPORARY,
                           Recovery.RETRY_WITH_BACKOFF, "http_429")
BAD_DATA = Classification(Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT, Recovery.DROP,
                          "INVALID_ARGUMENT")


def test_a_class_that_keeps_recurring_is_raised_one_step_then_two() -> None:
    escalation = Escalation(window=60.0)
    seen = [escalation.observe(UNAVAILABLE, now=float(i) / 10).severity for i in range(ESCALATE_TWICE_AT)]
    assert seen[: ESCALATE_AT - 1] == [Severity.LOW] * (ESCALATE_AT - 1)
    assert seen[ESCALATE_AT - 1] is Severity.MEDIUM and seen[-2] is Severity.MEDIUM
    assert seen[-1] is Severity.HIGH
    (worse,) = escalation.worsening(now=10.0)
    assert (worse.category, worse.error_type, worse.base_severity, worse.severity, worse.occurrences) == (
        "transport", "UNAVAILABLE", "low", "high", ESCALATE_TWICE_AT)


def test_the_window_slides_and_classes_are_counted_apart() -> None:
    escalation = Escalation(window=60.0)
    for i in range(ESCALATE_AT):
        escalation.observe(UNAVAILABLE, now=float(i))
    assert escalation.observe(THROTTLED, now=10.0).severity is Severity.MEDIUM  # its own count: 1
    assert escalation.observe(UNAVAILABLE, now=61.5).severity is Severity.LOW  # the first two went out of the window
    assert [w.error_type for w in escalation.worsening(now=61.5)] == []
    assert escalation.worsening(now=500.0) == []


def test_permanent_errors_and_the_classification_itself_are_left_alone() -> None:
    escalation = Escalation()
    for i in range(ESCALATE_TWICE_AT):
        assert escalation.observe(BAD_DATA, now=float(i) / 100) is BAD_DATA
    raised = escalation.observe(UNAVAILABLE, now=0.0)
    assert raised is UNAVAILABLE  # one occurrence: the very object back


@given(st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), max_size=300))
def test_severity_follows_the_count_within_the_window(times: list[float]) -> None:
    escalation = Escalation(window=60.0)
    ordered = sorted(times)
    for i, now in enumerate(ordered):
        got = escalation.observe(UNAVAILABLE, now)
        recent = sum(1 for t in ordered[: i + 1] if now - t <= 60.0)
        expected = (Severity.HIGH if recent >= ESCALATE_TWICE_AT else
                    Severity.MEDIUM if recent >= ESCALATE_AT else Severity.LOW)
        assert got.severity is expected
        assert (got.category, got.recoverability, got.error_type) == ("transport", "retryable", "UNAVAILABLE")
