"""The error taxonomy of DESIGN.md §3: its vocabulary is fixed, keep the names."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Category(enum.StrEnum):
    TRANSPORT = "transport"
    SERIALIZATION = "serialization"
    CONFIGURATION = "configuration"
    PROCESSING = "processing"
    EXPORT = "export"
    TIMEOUT = "timeout"
    CONCURRENCY = "concurrency"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    VERSION_MISMATCH = "version_mismatch"
    INTERNAL = "internal"


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Recoverability(enum.StrEnum):
    RETRYABLE = "retryable"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    FATAL = "fatal"

    @property
    def retryable(self) -> bool:
        """Whether a sender should try again (retryable and temporary both are)."""
        return self in (Recoverability.RETRYABLE, Recoverability.TEMPORARY)

    @property
    def transient(self) -> bool:
        return self in (Recoverability.RETRYABLE, Recoverability.TEMPORARY)


class Recovery(enum.StrEnum):
    RETRY_WITH_BACKOFF = "retry_with_backoff"
    INCREASE_TIMEOUT = "increase_timeout"
    VALIDATE_CONFIG = "validate_config"
    SCALE_RESOURCES = "scale_resources"
    MANUAL_INTERVENTION = "manual_intervention"
    SPLIT_AND_RETRY = "split_and_retry"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Classification:
    """One classified error. `error_type` is low-cardinality (a code or a short name, never a message)."""

    category: Category
    severity: Severity
    recoverability: Recoverability
    recovery: Recovery
    error_type: str
    classified_by: str = "default"
    retry_after: float | None = None  # the server's throttle hint in seconds, a floor for the backoff

    @property
    def retryable(self) -> bool:
        return self.recoverability.retryable


# Severity is derived from recoverability (DESIGN.md §3): a single retryable error is routine (low),
# one that needs waiting for the other side (temporary) deserves attention (medium), data that
# can never be delivered is lost (high), and an error that stops delivery until someone acts is
# critical. `sidecar.pipeline.escalation.escalate` raises it for retryable/temporary errors that recur.
SEVERITY_BY_RECOVERABILITY: dict[Recoverability, Severity] = {
    Recoverability.RETRYABLE: Severity.LOW,
    Recoverability.TEMPORARY: Severity.MEDIUM,
    Recoverability.PERMANENT: Severity.HIGH,
    Recoverability.FATAL: Severity.CRITICAL,
}

SEVERITY_ORDER: tuple[Severity, ...] = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)


def default_severity(recoverability: Recoverability) -> Severity:
    """The severity of one occurrence of an error of this recoverability."""
    return SEVERITY_BY_RECOVERABILITY[recoverability]


# The sidecar's own failure (a bug, not the upstream's answer): never retried, needs a person. The one
# definition of this class; the classifier's "internal" client error uses the same fields.
INTERNAL_ERROR = Classification(
    category=Category.INTERNAL,
    severity=default_severity(Recoverability.FATAL),
    recoverability=Recoverability.FATAL,
    recovery=Recovery.MANUAL_INTERVENTION,
    error_type="internal",
    classified_by="sidecar",
)
