"""The classification vocabulary as data (DESIGN.md §3): gRPC code names, the class templates, and the tables
that map an export's gRPC code, HTTP status or client-side error, and a span's db status code, to a template.

A template is (category, recoverability, recovery, error_type); the severity follows from recoverability.
"""

from __future__ import annotations

import re

from sidecar.core.taxonomy import INTERNAL_ERROR, Category, Recoverability, Recovery

GRPC_CODE_NAMES: tuple[str, ...] = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
GRPC_CODES = frozenset(GRPC_CODE_NAMES)

MAX_MATCH_CHARS = 4096  # messages are matched on their first 4 KiB
MAX_ERROR_TYPE_CHARS = 64
OTHER = "_OTHER"  # semantic-convention fallback for error.type

ESCALATE_AT = 10
ESCALATE_TWICE_AT = 100

# A class without severity and provenance: (category, recoverability, recovery, error_type).
Template = tuple[Category, Recoverability, Recovery, str]

TRANSPORT_RETRY = (Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)
TIMEOUT_RETRY = (Category.TIMEOUT, Recoverability.RETRYABLE, Recovery.INCREASE_TIMEOUT)
EXPORT_RETRY = (Category.EXPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)
THROTTLED = (Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.RETRY_WITH_BACKOFF)
T_TOO_LARGE: Template = (
    Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.SPLIT_AND_RETRY, "payload_too_large",
)
BAD_DATA = (Category.SERIALIZATION, Recoverability.PERMANENT, Recovery.DROP)
CONFIG_FATAL = (Category.CONFIGURATION, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)
VERSION_FATAL = (Category.VERSION_MISMATCH, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)
EXPORT_PERMANENT = (Category.EXPORT, Recoverability.PERMANENT, Recovery.DROP)
APP_PERMANENT = (Category.PROCESSING, Recoverability.PERMANENT, Recovery.MANUAL_INTERVENTION)

# Named classes for what applications and transports report.
T_CONNECTION_REFUSED: Template = (*TRANSPORT_RETRY, "connection_refused")
T_CONNECTION_RESET: Template = (*TRANSPORT_RETRY, "connection_reset")
T_CONNECTION_ERROR: Template = (*TRANSPORT_RETRY, "connection_error")
T_TIMEOUT: Template = (*TIMEOUT_RETRY, "timeout")
T_DNS: Template = (Category.TRANSPORT, Recoverability.TEMPORARY, Recovery.RETRY_WITH_BACKOFF, "dns")
T_TLS: Template = (*CONFIG_FATAL, "tls_handshake")
T_UNAUTHENTICATED: Template = (*CONFIG_FATAL, "unauthenticated")
T_PERMISSION_DENIED: Template = (*CONFIG_FATAL, "permission_denied")
T_OUT_OF_MEMORY: Template = (
    Category.RESOURCE_EXHAUSTED, Recoverability.FATAL, Recovery.SCALE_RESOURCES, "out_of_memory",
)
T_DISK_FULL: Template = (Category.RESOURCE_EXHAUSTED, Recoverability.FATAL, Recovery.SCALE_RESOURCES, "disk_full")
T_TOO_MANY_FILES: Template = (
    Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.SCALE_RESOURCES, "too_many_open_files",
)
T_POOL_EXHAUSTED: Template = (
    Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.SCALE_RESOURCES, "pool_exhausted",
)
T_RATE_LIMITED: Template = (*THROTTLED, "rate_limited")
T_DEADLOCK: Template = (Category.CONCURRENCY, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF, "deadlock")
T_SERIALIZATION_FAILURE: Template = (
    Category.CONCURRENCY, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF, "serialization_failure",
)
T_LOCK_CONFLICT: Template = (
    Category.CONCURRENCY, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF, "lock_conflict",
)
T_INVALID_INPUT: Template = (*BAD_DATA, "invalid_input")
T_OTHER: Template = (*APP_PERMANENT, OTHER)
T_PARTIAL_SUCCESS: Template = (Category.PROCESSING, Recoverability.PERMANENT, Recovery.DROP, "partial_success")
T_INTERNAL: Template = (
    INTERNAL_ERROR.category, INTERNAL_ERROR.recoverability, INTERNAL_ERROR.recovery, INTERNAL_ERROR.error_type,
)

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def grpc_code_name(raw: str) -> str | None:
    """A gRPC code name from UNAVAILABLE / Unavailable / unavailable / deadline_exceeded / DeadlineExceeded / 14."""
    s = raw.strip()
    if not s:
        return None
    up = s.upper()
    if up in GRPC_CODES:
        return up
    if s.isascii() and s.isdigit():
        n = int(s) if len(s) <= 3 else len(GRPC_CODE_NAMES)
        return GRPC_CODE_NAMES[n] if n < len(GRPC_CODE_NAMES) else None
    snake = _CAMEL.sub("_", s).upper()
    return snake if snake in GRPC_CODES else None



_TOO_LARGE_RE = re.compile(
    r"larger than (?:the )?max|exceeds? (?:the )?max(?:imum)?\b|too large|too big|"
    r"message size \S* ?exceeds",
    re.IGNORECASE,
)


def is_message_too_large(message: str) -> bool:
    """True for size-limit messages from grpc-go, grpc-core, grpc-java, grpc-dotnet, the Collector.

    e.g. "grpc: received message larger than max (5000000 vs. 4194304)",
    "Received message larger than max", "gRPC message exceeds maximum size 4194304",
    "Received message exceeds the maximum configured message size.", "request body too large".
    """
    if not message:
        return False
    return _TOO_LARGE_RE.search(message[:MAX_MATCH_CHARS]) is not None



_GRPC_EXPORT: dict[str, Template] = {
    "UNAVAILABLE": (*TRANSPORT_RETRY, "UNAVAILABLE"),
    "DEADLINE_EXCEEDED": (*TIMEOUT_RETRY, "DEADLINE_EXCEEDED"),
    "CANCELLED": (*EXPORT_RETRY, "CANCELLED"),
    "ABORTED": (*EXPORT_RETRY, "ABORTED"),
    "OUT_OF_RANGE": (*EXPORT_RETRY, "OUT_OF_RANGE"),
    "DATA_LOSS": (*EXPORT_RETRY, "DATA_LOSS"),
    "INVALID_ARGUMENT": (*BAD_DATA, "INVALID_ARGUMENT"),
    "UNAUTHENTICATED": (*CONFIG_FATAL, "UNAUTHENTICATED"),
    "PERMISSION_DENIED": (*CONFIG_FATAL, "PERMISSION_DENIED"),
    "UNIMPLEMENTED": (*VERSION_FATAL, "UNIMPLEMENTED"),
}
_RESOURCE_EXHAUSTED_RETRY: Template = (*THROTTLED, "RESOURCE_EXHAUSTED")
_RESOURCE_EXHAUSTED_STRICT: Template = (
    Category.RESOURCE_EXHAUSTED, Recoverability.PERMANENT, Recovery.DROP, "RESOURCE_EXHAUSTED",
)


def grpc_template(code: str, message: str, has_retry_info: bool, strict: bool, app: bool) -> Template:
    """The export table's row for a gRPC code. `app`: for an application's span/log, not an export."""
    if code == "RESOURCE_EXHAUSTED":
        if is_message_too_large(message):
            return T_TOO_LARGE
        if has_retry_info or not strict:
            # With RetryInfo the spec retries; without it a Collector memory limiter sent it:
            # retry within the budget unless strict_otlp restores the spec's drop.
            return _RESOURCE_EXHAUSTED_RETRY
        return _RESOURCE_EXHAUSTED_STRICT
    row = _GRPC_EXPORT.get(code)
    if row is not None:
        return row
    # Not retryable per the OTLP spec (UNKNOWN, INTERNAL, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION...).
    name = code if code in GRPC_CODES else OTHER
    return (*APP_PERMANENT, name) if app else (*EXPORT_PERMANENT, name)


def http_export_template(status: int) -> Template:
    """OTLP/HTTP: only 429, 502, 503, 504 are retryable; every other status is not."""
    name = f"http_{status}"
    if status in (502, 503, 504):
        return (*TRANSPORT_RETRY, name)
    if status == 429:
        return (*THROTTLED, name)
    if status == 413:
        return T_TOO_LARGE
    if status in (400, 415):
        return (*BAD_DATA, name)
    if status in (401, 403):
        return (*CONFIG_FATAL, name)
    if status in (404, 405, 501, 505):
        return (*VERSION_FATAL, name)
    if 300 <= status < 400:
        return (Category.CONFIGURATION, Recoverability.FATAL, Recovery.VALIDATE_CONFIG, name)
    return (*EXPORT_PERMANENT, name)


def http_app_template(status: int) -> Template:
    """An HTTP status seen on an application's span (or in an exception message)."""
    name = f"http_{status}"
    if status in (502, 503):
        return (*TRANSPORT_RETRY, name)
    if status in (504, 408):
        return (*TIMEOUT_RETRY, name)
    if status == 429:
        return (*THROTTLED, name)
    if status == 413:
        return T_TOO_LARGE
    if status in (400, 415):
        return (*BAD_DATA, name)
    if status in (401, 403):
        return (*CONFIG_FATAL, name)
    if status in (405, 501):
        return (*VERSION_FATAL, name)
    return (*APP_PERMANENT, name)


CLIENT_ERRORS: dict[str, Template] = {
    "connection_refused": T_CONNECTION_REFUSED,
    "connection_reset": T_CONNECTION_RESET,
    "dns": T_DNS,
    "tls_handshake": T_TLS,
    "timeout": T_TIMEOUT,
    "internal": T_INTERNAL,
}
CLIENT_ERROR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def db_template(code: str) -> Template | None:
    """db.response.status_code: SQLSTATE (PostgreSQL, ...) and a few vendor codes (MySQL, SQL Server)."""
    code = code.strip().upper()
    if code in ("40P01", "1213"):
        return T_DEADLOCK
    if code == "40001":
        return T_SERIALIZATION_FAILURE
    if code in ("55P03", "1205"):  # lock not available; MySQL lock wait timeout / SQL Server deadlock victim
        return T_LOCK_CONFLICT
    if code in ("1045", "18456") or (len(code) == 5 and code.startswith("28")):
        return T_UNAUTHENTICATED
    if code == "42501":
        return T_PERMISSION_DENIED
    if code in ("53300", "1040"):
        return T_POOL_EXHAUSTED
    if code == "53200":
        return T_OUT_OF_MEMORY
    if code == "53100":
        return T_DISK_FULL
    if code == "57014":
        return T_TIMEOUT
    if len(code) == 5 and code.startswith("08"):
        return T_CONNECTION_ERROR
    if len(code) == 5 and code.startswith("22"):
        return T_INVALID_INPUT
    return None


def truncate(s: str) -> str:
    return s if len(s) <= MAX_MATCH_CHARS else s[:MAX_MATCH_CHARS]


def error_type_from_exception(exception_type: str) -> str:
    t = exception_type.strip()
    return t[:MAX_ERROR_TYPE_CHARS] if t else OTHER
