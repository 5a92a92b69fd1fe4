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
