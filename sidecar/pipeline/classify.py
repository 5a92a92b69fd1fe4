"""Error classification (DESIGN.md §3): export failures, partial successes, error spans and logs.

Pure functions: no I/O, no clocks (the wall time for an HTTP-date Retry-After is passed in).

Decisions where the design is silent (each is also noted where it is implemented):

* Severity comes from recoverability (`taxonomy.SEVERITY_BY_RECOVERABILITY`): retryable → low,
  temporary → medium, permanent → high, fatal → critical. `escalate` raises retryable/temporary
  errors that recur: +1 step at >= 10 recent occurrences, +2 at >= 100, capped at critical.
* Export failures: a client-side error wins over a gRPC code, which wins over an HTTP status.
  gRPC codes the table does not list (UNKNOWN, INTERNAL, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION, OK) are not retryable per the OTLP spec: export / permanent / drop.
  HTTP statuses the table does not list follow OTLP/HTTP (only 429, 502, 503, 504 are retryable):
  other 4xx and 5xx → export / permanent / drop, except 501 and 505 (the server does not speak
  this protocol) → version_mismatch / fatal; a 3xx (a redirect: the endpoint URL is wrong) →
  configuration / fatal / validate_config. A failure with no code at all → export / retryable
  (error_type `_OTHER`): an unexplained failure is retried within the budget rather than dropped.
* `retry_after` is carried on every retryable/temporary export classification that has a hint
  (503 + Retry-After too, DESIGN §4), and cleared when a rule makes the class permanent/fatal.
* A rule that sets `recoverability` but not `severity` re-derives the severity from it.
* Spans: a recognised exception is the most specific evidence, then the rpc status code, then
  the db status code (SQLSTATE / vendor code), then the HTTP status, then an unrecognised
  exception (error_type = its type name, truncated to 64 characters), then the status message
  through the message table, then `processing / permanent / manual_intervention` with error_type
  `_OTHER` (the semantic-convention fallback). For application spans, gRPC codes the export
  table does not list and HTTP statuses it does not list map to processing / permanent /
  manual_intervention (nothing of the application's is to be dropped), and HTTP 404 is
  processing / permanent (a missing resource, not a version mismatch); 405 and 501 are
  version_mismatch, 408 and 504 timeout. Out of memory → resource_exhausted / fatal /
  scale_resources.
* Messages are matched (by the tables and by rule regexes) on their first 4096 characters.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC

from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import ClassifyProcessorConfig, ClassifyRule, RuleSet
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import (
    SEVERITY_ORDER,
    Category,
    Classification,
    Recoverability,
    Recovery,
    default_severity,
)

__all__ = [
    "GRPC_CODE_NAMES",
    "Classifier",
    "LogFacts",
    "SpanFacts",
    "escalate",
    "is_message_too_large",
    "log_facts",
    "parse_retry_after",
    "retry_info_from_status_details",
    "span_attributes_may_error",
    "span_facts",
]

# ------------------------------------------------------------------ vocabulary

# grpc.StatusCode names by numeric value (google.rpc.Code).
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
_GRPC_CODES = frozenset(GRPC_CODE_NAMES)

MAX_MATCH_CHARS = 4096  # messages are matched on their first 4 KiB
MAX_ERROR_TYPE_CHARS = 64
OTHER = "_OTHER"  # semantic-convention fallback for error.type

ESCALATE_AT = 10
ESCALATE_TWICE_AT = 100

C = Category
R = Recoverability
S = Recovery

# A class without severity and provenance: (category, recoverability, recovery, error_type).
_Template = tuple[Category, Recoverability, Recovery, str]

_TRANSPORT_RETRY = (C.TRANSPORT, R.RETRYABLE, S.RETRY_WITH_BACKOFF)
_TIMEOUT = (C.TIMEOUT, R.RETRYABLE, S.INCREASE_TIMEOUT)
_EXPORT_RETRY = (C.EXPORT, R.RETRYABLE, S.RETRY_WITH_BACKOFF)
_THROTTLED = (C.RESOURCE_EXHAUSTED, R.TEMPORARY, S.RETRY_WITH_BACKOFF)
_TOO_LARGE: _Template = (C.RESOURCE_EXHAUSTED, R.TEMPORARY, S.SPLIT_AND_RETRY, "payload_too_large")
_BAD_DATA = (C.SERIALIZATION, R.PERMANENT, S.DROP)
_CONFIG = (C.CONFIGURATION, R.FATAL, S.MANUAL_INTERVENTION)
_VERSION = (C.VERSION_MISMATCH, R.FATAL, S.MANUAL_INTERVENTION)
_EXPORT_PERMANENT = (C.EXPORT, R.PERMANENT, S.DROP)
_APP_PERMANENT = (C.PROCESSING, R.PERMANENT, S.MANUAL_INTERVENTION)

# Named classes for what applications and transports report.
T_CONNECTION_REFUSED: _Template = (*_TRANSPORT_RETRY, "connection_refused")
T_CONNECTION_RESET: _Template = (*_TRANSPORT_RETRY, "connection_reset")
T_CONNECTION_ERROR: _Template = (*_TRANSPORT_RETRY, "connection_error")
T_TIMEOUT: _Template = (*_TIMEOUT, "timeout")
T_DNS: _Template = (C.TRANSPORT, R.TEMPORARY, S.RETRY_WITH_BACKOFF, "dns")
T_TLS: _Template = (*_CONFIG, "tls_handshake")
T_UNAUTHENTICATED: _Template = (*_CONFIG, "unauthenticated")
T_PERMISSION_DENIED: _Template = (*_CONFIG, "permission_denied")
T_OUT_OF_MEMORY: _Template = (C.RESOURCE_EXHAUSTED, R.FATAL, S.SCALE_RESOURCES, "out_of_memory")
T_DISK_FULL: _Template = (C.RESOURCE_EXHAUSTED, R.FATAL, S.SCALE_RESOURCES, "disk_full")
T_TOO_MANY_FILES: _Template = (C.RESOURCE_EXHAUSTED, R.TEMPORARY, S.SCALE_RESOURCES, "too_many_open_files")
T_POOL_EXHAUSTED: _Template = (C.RESOURCE_EXHAUSTED, R.TEMPORARY, S.SCALE_RESOURCES, "pool_exhausted")
T_RATE_LIMITED: _Template = (*_THROTTLED, "rate_limited")
T_DEADLOCK: _Template = (C.CONCURRENCY, R.RETRYABLE, S.RETRY_WITH_BACKOFF, "deadlock")
T_SERIALIZATION_FAILURE: _Template = (C.CONCURRENCY, R.RETRYABLE, S.RETRY_WITH_BACKOFF, "serialization_failure")
T_LOCK_CONFLICT: _Template = (C.CONCURRENCY, R.RETRYABLE, S.RETRY_WITH_BACKOFF, "lock_conflict")
T_INVALID_INPUT: _Template = (*_BAD_DATA, "invalid_input")
T_OTHER: _Template = (*_APP_PERMANENT, OTHER)
T_PARTIAL_SUCCESS: _Template = (C.PROCESSING, R.PERMANENT, S.DROP, "partial_success")
T_INTERNAL: _Template = (C.INTERNAL, R.FATAL, S.MANUAL_INTERVENTION, "internal")

# ------------------------------------------------------------------ parsing what transports see

_RETRY_INFO_SUFFIX = "google.rpc.RetryInfo"


def retry_info_from_status_details(details: bytes | None) -> float | None:
    """The RetryInfo delay (seconds, >= 0) in a `grpc-status-details-bin` value, or None.

    Never raises: garbage, a Status without RetryInfo, or an undecodable RetryInfo give None.
    A RetryInfo without a delay gives 0.0 (retry, no particular wait).
    """
    if not details or not isinstance(details, bytes | bytearray | memoryview):
        return None
    try:
        status = status_pb2.Status.FromString(bytes(details))
        for any_detail in status.details:
            if not any_detail.type_url.endswith(_RETRY_INFO_SUFFIX):
                continue
            info = error_details_pb2.RetryInfo.FromString(any_detail.value)
            if not info.HasField("retry_delay"):
                return 0.0
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(0.0, float(delay)) if math.isfinite(delay) else None
    except Exception:
        return None
    return None


_DELTA_SECONDS = re.compile(r"\s*(\d{1,15}(?:\.\d{1,9})?)\s*")


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """HTTP Retry-After as delta-seconds or an HTTP-date, in seconds from `now_wall`, clamped to >= 0.

    None for a missing or unparseable value. A decimal delta ("1.5") is accepted leniently;
    a negative one is garbage. An HTTP-date without a zone is taken as UTC.
    """
    if value is None or not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > 100:
        return None
    m = _DELTA_SECONDS.fullmatch(value)
    if m:
        return float(m.group(1))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - now_wall
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


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


# ------------------------------------------------------------------ the export tables

_GRPC_EXPORT: dict[str, _Template] = {
    "UNAVAILABLE": (*_TRANSPORT_RETRY, "UNAVAILABLE"),
    "DEADLINE_EXCEEDED": (*_TIMEOUT, "DEADLINE_EXCEEDED"),
    "CANCELLED": (*_EXPORT_RETRY, "CANCELLED"),
    "ABORTED": (*_EXPORT_RETRY, "ABORTED"),
    "OUT_OF_RANGE": (*_EXPORT_RETRY, "OUT_OF_RANGE"),
    "DATA_LOSS": (*_EXPORT_RETRY, "DATA_LOSS"),
    "INVALID_ARGUMENT": (*_BAD_DATA, "INVALID_ARGUMENT"),
    "UNAUTHENTICATED": (*_CONFIG, "UNAUTHENTICATED"),
    "PERMISSION_DENIED": (*_CONFIG, "PERMISSION_DENIED"),
    "UNIMPLEMENTED": (*_VERSION, "UNIMPLEMENTED"),
}
_RESOURCE_EXHAUSTED_RETRY: _Template = (*_THROTTLED, "RESOURCE_EXHAUSTED")
_RESOURCE_EXHAUSTED_STRICT: _Template = (C.RESOURCE_EXHAUSTED, R.PERMANENT, S.DROP, "RESOURCE_EXHAUSTED")


def _grpc_template(code: str, message: str, has_retry_info: bool, strict: bool, app: bool) -> _Template:
    """The export table's row for a gRPC code. `app`: for an application's span/log, not an export."""
    if code == "RESOURCE_EXHAUSTED":
        if is_message_too_large(message):
            return _TOO_LARGE
        if has_retry_info or not strict:
            # With RetryInfo the spec retries; without it a Collector memory limiter sent it:
            # retry within the budget unless strict_otlp restores the spec's drop.
            return _RESOURCE_EXHAUSTED_RETRY
        return _RESOURCE_EXHAUSTED_STRICT
    row = _GRPC_EXPORT.get(code)
    if row is not None:
        return row
    # Not retryable per the OTLP spec (UNKNOWN, INTERNAL, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION...).
    name = code if code in _GRPC_CODES else OTHER
    return (*_APP_PERMANENT, name) if app else (*_EXPORT_PERMANENT, name)


def _http_export_template(status: int) -> _Template:
    """OTLP/HTTP: only 429, 502, 503, 504 are retryable; every other status is not."""
    name = f"http_{status}"
    if status in (502, 503, 504):
        return (*_TRANSPORT_RETRY, name)
    if status == 429:
        return (*_THROTTLED, name)
    if status == 413:
        return _TOO_LARGE
    if status in (400, 415):
        return (*_BAD_DATA, name)
    if status in (401, 403):
        return (*_CONFIG, name)
    if status in (404, 405, 501, 505):
        return (*_VERSION, name)
    if 300 <= status < 400:
        return (C.CONFIGURATION, R.FATAL, S.VALIDATE_CONFIG, name)
    return (*_EXPORT_PERMANENT, name)


def _http_app_template(status: int) -> _Template:
    """An HTTP status seen on an application's span (or in an exception message)."""
    name = f"http_{status}"
    if status in (502, 503):
        return (*_TRANSPORT_RETRY, name)
    if status in (504, 408):
        return (*_TIMEOUT, name)
    if status == 429:
        return (*_THROTTLED, name)
    if status == 413:
        return _TOO_LARGE
    if status in (400, 415):
        return (*_BAD_DATA, name)
    if status in (401, 403):
        return (*_CONFIG, name)
    if status in (405, 501):
        return (*_VERSION, name)
    return (*_APP_PERMANENT, name)


_CLIENT_ERRORS: dict[str, _Template] = {
    "connection_refused": T_CONNECTION_REFUSED,
    "connection_reset": T_CONNECTION_RESET,
    "dns": T_DNS,
    "tls_handshake": T_TLS,
    "timeout": T_TIMEOUT,
    "internal": T_INTERNAL,
}
_CLIENT_ERROR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _db_template(code: str) -> _Template | None:
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


# ------------------------------------------------------------------ exceptions and messages


def _names(templates: dict[_Template, Iterable[str]]) -> dict[str, _Template]:
    return {name: template for template, names in templates.items() for name in names}


# Exception types (last component of the type name) that say it all, across languages.
_SPECIFIC_TYPES = _names({
    T_CONNECTION_REFUSED: ("ConnectionRefusedError", "ConnectException", "ECONNREFUSED", "ConnectionRefused",
                           "ConnectionRefusedException"),
    T_CONNECTION_RESET: ("ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "ECONNRESET",
                         "EPIPE", "ECONNABORTED", "RemoteDisconnected", "ServerDisconnectedError",
                         "ClosedChannelException", "ConnectionResetException"),
    T_TIMEOUT: ("TimeoutError", "timeout", "SocketTimeoutException", "TimeoutException", "TaskCanceledException",
                "ReadTimeout", "ConnectTimeout", "WriteTimeout", "ReadTimeoutError", "ConnectTimeoutError",
                "ConnectTimeoutException", "HttpTimeoutException", "TimeoutCancellationException",
                "DeadlineExceeded", "deadlineExceededError", "ETIMEDOUT", "ESOCKETTIMEDOUT",
                "ReadTimeoutException", "WriteTimeoutException", "TimeoutExpired", "ServerTimeoutError",
                "QueryCanceled", "OpenTimeout", "InterruptedByTimeoutException", "RequestTimeoutException",
                "QueryTimeoutException"),
    T_OUT_OF_MEMORY: ("MemoryError", "OutOfMemoryError", "OutOfMemoryException", "InsufficientMemoryException",
                      "ENOMEM"),
    T_DISK_FULL: ("ENOSPC", "DiskFull"),
    T_TOO_MANY_FILES: ("EMFILE",),
    T_POOL_EXHAUSTED: ("PoolTimeout", "TooManyConnections", "PoolExhaustedException"),
    T_DEADLOCK: ("DeadlockDetected", "DeadlockLoserDataAccessException", "Deadlocked", "DeadlockException"),
    T_SERIALIZATION_FAILURE: ("SerializationFailure",),
    T_LOCK_CONFLICT: ("CannotAcquireLockException", "PessimisticLockingFailureException",
                      "OptimisticLockException", "ObjectOptimisticLockingFailureException",
                      "OptimisticLockingFailureException", "StaleObjectStateException",
                      "DbUpdateConcurrencyException", "LockNotAvailable", "LockTimeoutException", "StaleObjectError",
                      "LockWaitTimeout", "ConcurrencyFailureException"),
    T_TLS: ("SSLError", "SSLCertVerificationError", "SSLHandshakeException", "SSLException",
            "SSLPeerUnverifiedException", "CertificateException", "CertificateVerificationError",
            "UnknownAuthorityError", "CertificateInvalidError", "HostnameError", "CertificateError"),
    T_DNS: ("gaierror", "herror", "UnknownHostException", "DNSError", "ENOTFOUND", "EAI_AGAIN",
            "NameResolutionError"),
    T_UNAUTHENTICATED: ("Unauthenticated", "NotAuthenticated", "AuthenticationFailed", "InvalidPasswordError",
                        "InvalidAuthorizationSpecification", "InvalidCredentialsError", "ExpiredSignatureError",
                        "InvalidTokenError", "UnauthorizedException", "AuthenticationFailedException",
                        "BadCredentialsException"),
    T_PERMISSION_DENIED: ("PermissionError", "PermissionDenied", "AccessDeniedException", "AccessDenied",
                          "UnauthorizedAccessException", "SecurityException", "Forbidden", "ForbiddenException",
                          "InsufficientPrivilege", "EACCES", "EPERM", "AccessDeniedError"),
    T_INVALID_INPUT: ("JSONDecodeError", "UnicodeDecodeError", "UnicodeEncodeError", "NumberFormatException",
                      "JsonParseException", "JsonMappingException", "MismatchedInputException",
                      "InvalidFormatException", "JsonException", "JsonReaderException",
                      "JsonSerializationException", "UnmarshalTypeError", "InvalidProtocolBufferException",
                      "DateTimeParseException", "NumError", "ValidationError", "InvalidTextRepresentation"),
    T_RATE_LIMITED: ("RateLimitError", "TooManyRequests", "ThrottlingException", "RateLimitExceeded",
                     "TooManyRequestsException"),
})

# Types that are a fair default when the message says nothing more specific.
_GENERIC_TYPES = _names({
    T_CONNECTION_ERROR: ("ConnectionError", "OpError", "SocketException", "ClientConnectorError",
                         "ClientConnectionError", "ClientOSError", "NewConnectionError", "ConnectError",
                         "MaxRetryError", "ConnectionFailed", "NoRouteToHostException",
                         "ConnectionClosedException", "CommunicationsException"),
    T_INVALID_INPUT: ("ValueError", "IllegalArgumentException", "ArgumentException", "ArgumentNullException",
                      "ArgumentOutOfRangeException", "SyntaxError", "FormatException", "ParseException",
                      "DecodeError", "InvalidArgumentException"),
    T_UNAUTHENTICATED: ("AuthenticationException", "AuthenticationError"),
    T_SERIALIZATION_FAILURE: ("TransactionRollbackError", "MySQLTransactionRollbackException"),
})

_RPC_TYPES = frozenset({
    "StatusRuntimeException", "StatusException", "RpcError", "_InactiveRpcError", "AioRpcError", "RpcException",
    "_MultiThreadedRendezvous", "_Rendezvous", "ServiceError", "GrpcError",
})

_I = re.IGNORECASE
# Message patterns, most specific first; searched in "<type name> <message>".
_TEXT_TABLE: tuple[tuple[re.Pattern[str], _Template], ...] = (
    (re.compile(r"out of memory|outofmemory|memoryerror|cannot allocate memory|\benomem\b|insufficient memory|"
                r"oom[- ]?kill", _I), T_OUT_OF_MEMORY),
    (re.compile(r"no space left on device|\benospc\b|disk (?:is )?full", _I), T_DISK_FULL),
    (re.compile(r"too many open files|\bemfile\b", _I), T_TOO_MANY_FILES),
    (re.compile(r"too many (?:connections|clients)|pool (?:is )?exhausted|queuepool limit|"
                r"remaining connection slots are reserved|"
                r"timeout (?:while )?(?:waiting|acquiring) (?:for )?(?:a )?connection|"
                r"unable to acquire (?:jdbc )?connection", _I), T_POOL_EXHAUSTED),
    (re.compile(r"deadlock|\b40p01\b|(?:error|errno|code|\()\s*:?\s*1213\b", _I), T_DEADLOCK),
    (re.compile(r"could not serialize access|serialization failure|sqlstate\W{0,3}40001", _I),
     T_SERIALIZATION_FAILURE),
    (re.compile(r"lock wait timeout|could not obtain lock|lock (?:request )?time ?out|optimistic ?lock|"
                r"row was updated or deleted by another transaction|lock_not_available|\b55p03\b", _I),
     T_LOCK_CONFLICT),
    # A TLS handshake that times out is a slow network, not a certificate problem.
    (re.compile(r"handshake (?:operation )?(?:timed out|time ?out)", _I), T_TIMEOUT),
    (re.compile(r"name or service not known|nodename nor servname|no such host|\benotfound\b|\beai_again\b|"
                r"getaddrinfo|name resolution|could not resolve|failed to resolve|unknownhost|"
                r"no address associated with hostname|\bdns\b", _I), T_DNS),
    (re.compile(r"certificate verify failed|certificate_verify_failed|certificate has expired|"
                r"self[- ]signed certificate|unable to (?:get local issuer|verify the first) certificate|"
                r"x509:|\bssl\b|_ssl\.c|\btls\b|handshake (?:failure|failed)|remote certificate is invalid|"
                r"pkix path", _I), T_TLS),
    (re.compile(r"connection refused|econnrefused|actively refused|connect call failed|errno 111\b|"
                r"connectionrefused|refused to connect|no connection could be made", _I), T_CONNECTION_REFUSED),
    (re.compile(r"connection reset|econnreset|reset by peer|broken pipe|\bepipe\b|connection aborted|"
                r"econnaborted|socket hang up|server disconnected|remote end closed connection|"
                r"connection closed by (?:remote|peer|foreign)|closed the connection unexpectedly|"
                r"connection (?:was )?closed unexpectedly|unexpected eof|\bgoaway\b|rst_stream", _I),
     T_CONNECTION_RESET),
    (re.compile(r"timed ?out|timeout|\btime out\b|deadline[ _]?exceeded|\betimedout\b|esockettimedout|took too long|"
                r"time limit exceeded|taskcanceled", _I), T_TIMEOUT),
    (re.compile(r"rate ?limit|too many requests|throttl|quota exceeded|resource has been exhausted", _I),
     T_RATE_LIMITED),
    (re.compile(r"unauthori[sz]ed|unauthenticated|authentication (?:failed|required)|not authenticated|"
                r"invalid (?:credentials|token|api key|password)|login failed|token (?:has )?expired|"
                r"status(?: code)?\W{0,3}401\b", _I), T_UNAUTHENTICATED),
    (re.compile(r"permission denied|access denied|access is denied|forbidden|not authorized|"
                r"insufficient (?:privilege|permission)|\beacces\b|\beperm\b|operation not permitted|"
                r"status(?: code)?\W{0,3}403\b", _I), T_PERMISSION_DENIED),
    (re.compile(r"jsondecodeerror|cannot unmarshal|unexpected token|in json at position|invalid json|"
                r"malformed|parse error|failed to parse|could not parse|cannot parse|unable to parse|"
                r"invalid syntax|invalid literal|invalid input|invalid character|validation (?:error|failed)|"
                r"(?:cannot|failed to) deserializ|numberformatexception|illegalargumentexception|"
                r"invalid[ _]argument|expecting value|unexpected end of json", _I), T_INVALID_INPUT),
)

_GRPC_IN_MESSAGE = re.compile(
    r"(?<![A-Za-z])StatusCode[.=]\"?([A-Za-z_]+)|rpc error: code = ([A-Za-z_]+)|Status\{code=([A-Z_]+)|"
    r"^\s*\d{1,2} ([A-Z_]{2,}):"
)
_GRPC_BARE = re.compile(r"\s*([A-Z_]{2,})(?::|$)")
_HTTP_IN_MESSAGE = re.compile(
    r"(?:status(?: code)?|http(?:/\d(?:\.\d)?)?(?: error)?)\W{0,3}([1-5]\d\d)\b|"
    r"\b([45]\d\d) (?:client|server) error|"
    r"\b([45]\d\d) \((?:[A-Za-z]+ ?)+\)",
    _I,
)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_TYPE_SPLIT = re.compile(r"[.:/$*\\\s]+")


def _grpc_code_name(raw: str) -> str | None:
    """A gRPC code name from UNAVAILABLE / Unavailable / unavailable / deadline_exceeded / DeadlineExceeded / 14."""
    s = raw.strip()
    if not s:
        return None
    up = s.upper()
    if up in _GRPC_CODES:
        return up
    if s.isascii() and s.isdigit():
        n = int(s) if len(s) <= 3 else len(GRPC_CODE_NAMES)
        return GRPC_CODE_NAMES[n] if n < len(GRPC_CODE_NAMES) else None
    snake = _CAMEL.sub("_", s).upper()
    return snake if snake in _GRPC_CODES else None


def _simple_type_name(exception_type: str) -> str:
    parts = [p for p in _TYPE_SPLIT.split(exception_type) if p]
    return parts[-1] if parts else ""


def _grpc_code_in(simple: str, exception_type: str, message: str) -> str | None:
    m = _GRPC_IN_MESSAGE.search(message)
    if m:
        code = _grpc_code_name(next(g for g in m.groups() if g))
        if code is not None and code != "OK":
            return code
    if simple in _RPC_TYPES or "grpc" in exception_type.lower():
        m = _GRPC_BARE.match(message)
        if m:
            code = _grpc_code_name(m.group(1))
            if code is not None and code != "OK":
                return code
    return None


@functools.lru_cache(maxsize=2048)
def _exception_evidence(exception_type: str, message: str) -> tuple[_Template | None, str | None]:
    """(class, grpc code) for an exception type and message; class None when nothing is recognised.

    Order: an unambiguous exception type, a gRPC status in the type/message, an HTTP status in the
    message, the message table, then a generic exception type's default.
    """
    simple = _simple_type_name(exception_type)
    specific = _SPECIFIC_TYPES.get(simple)
    if specific is not None:
        return specific, None
    code = _grpc_code_in(simple, exception_type, message)
    if code is not None:
        return _grpc_template(code, message, False, False, app=True), code
    m = _HTTP_IN_MESSAGE.search(message)
    if m:
        status = int(next(g for g in m.groups() if g))
        if status >= 400:
            return _http_app_template(status), None
    text = f"{simple} {message}" if simple else message
    for pattern, template in _TEXT_TABLE:
        if pattern.search(text):
            return template, None
    return _GENERIC_TYPES.get(simple), None


def _truncate(s: str) -> str:
    return s if len(s) <= MAX_MATCH_CHARS else s[:MAX_MATCH_CHARS]


def _error_type_from_exception(exception_type: str) -> str:
    t = exception_type.strip()
    return t[:MAX_ERROR_TYPE_CHARS] if t else OTHER


# ------------------------------------------------------------------ rules


@dataclass(frozen=True, slots=True)
class _Evidence:
    """What a rule can match on."""

    grpc_code: str | None = None
    http_status: int | None = None
    messages: tuple[str, ...] = ()
    has_retry_info: bool = False
    exception_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Rule:
    id: str
    grpc_code: str | None
    http_status: frozenset[int] | None
    message: re.Pattern[str] | None
    has_retry_info: bool | None
    exception_type: re.Pattern[str] | None
    error_type: str | None
    set: RuleSet

    @classmethod
    def compile(cls, rule: ClassifyRule) -> _Rule:
        m = rule.match
        return cls(
            id=rule.id,
            grpc_code=m.grpc_code,
            http_status=frozenset(m.http_status) if m.http_status is not None else None,
            message=re.compile(m.message) if m.message is not None else None,
            has_retry_info=m.has_retry_info,
            exception_type=re.compile(m.exception_type) if m.exception_type is not None else None,
            error_type=m.error_type,
            set=rule.set,
        )

    def matches(self, ev: _Evidence, default: Classification) -> bool:
        if self.grpc_code is not None and ev.grpc_code != self.grpc_code:
            return False
        if self.http_status is not None and ev.http_status not in self.http_status:
            return False
        if self.has_retry_info is not None and ev.has_retry_info != self.has_retry_info:
            return False
        if self.error_type is not None and default.error_type != self.error_type:
            return False
        if self.message is not None:
            rx = self.message
            if not any(rx.search(_truncate(msg)) for msg in ev.messages):
                return False
        if self.exception_type is not None:
            rx = self.exception_type
            if not any(rx.search(t) for t in ev.exception_types):
                return False
        return True

    def apply(self, default: Classification) -> Classification:
        s = self.set
        recoverability = s.recoverability if s.recoverability is not None else default.recoverability
        if s.severity is not None:
            severity = s.severity
        elif s.recoverability is not None:
            severity = default_severity(recoverability)
        else:
            severity = default.severity
        return Classification(
            category=s.category if s.category is not None else default.category,
            severity=severity,
            recoverability=recoverability,
            recovery=s.recovery if s.recovery is not None else default.recovery,
            error_type=s.error_type if s.error_type is not None else default.error_type,
            classified_by=self.id,
            retry_after=default.retry_after if recoverability.transient else None,
        )


# ------------------------------------------------------------------ escalation


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


# ------------------------------------------------------------------ span and log evidence

HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")  # current, deprecated
RPC_STATUS_KEYS = ("rpc.response.status_code", "rpc.grpc.status_code")  # current, deprecated
DB_STATUS_KEY = "db.response.status_code"
STATUS_CODE_KEYS = frozenset((*HTTP_STATUS_KEYS, *RPC_STATUS_KEYS))

_STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
_KIND_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
_KIND_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
SEVERITY_ERROR = 17  # SEVERITY_NUMBER_ERROR


def _http_value(value: common_pb2.AnyValue) -> int | None:
    """An HTTP status from an int (or, leniently, a digit string) AnyValue."""
    which = value.WhichOneof("value")
    if which == "int_value":
        return int(value.int_value)
    if which == "string_value":
        s = value.string_value.strip()
        if 0 < len(s) <= 3 and s.isascii() and s.isdigit():
            return int(s)
    return None


def _http_clearly_ok(value: common_pb2.AnyValue) -> bool:
    """No value, or an int in [0, 400): OK for every span kind. Mirrors enrich's byte-level pre-scan."""
    which = value.WhichOneof("value")
    if which is None:
        return True
    return which == "int_value" and 0 <= value.int_value < 400


def _http_4xx(value: common_pb2.AnyValue) -> bool:
    """An int in [400, 500): an error on CLIENT spans only. Mirrors enrich's byte-level pre-scan."""
    return value.WhichOneof("value") == "int_value" and 400 <= value.int_value < 500


def _rpc_value(value: common_pb2.AnyValue) -> tuple[str | None, bool]:
    """(code, is_error) of an rpc status code AnyValue: int 0 or string "OK"/"0" is OK."""
    which = value.WhichOneof("value")
    if which == "int_value":
        n = int(value.int_value)
        if n == 0:
            return "OK", False
        return (GRPC_CODE_NAMES[n] if 0 < n < len(GRPC_CODE_NAMES) else str(n)), True
    if which == "string_value":
        s = value.string_value.strip()
        if not s or s.upper() in ("OK", "0"):
            return ("OK" if s else None), False
        return (_grpc_code_name(s) or s[:MAX_ERROR_TYPE_CHARS]), True
    return None, False


def _rpc_clearly_ok(value: common_pb2.AnyValue) -> bool:
    """No value, int 0, or exactly "OK" / "0". Mirrors enrich's byte-level pre-scan."""
    which = value.WhichOneof("value")
    if which is None:
        return True
    if which == "int_value":
        return value.int_value == 0
    return which == "string_value" and value.string_value in ("OK", "0")


def _string_of(value: common_pb2.AnyValue) -> str | None:
    if value.WhichOneof("value") == "string_value":
        return value.string_value
    return None


@dataclass(slots=True)
class SpanFacts:
    """What one scan of a span's attributes and events found. Internal to classify/enrich."""

    keys: set[str]
    kind: int
    status_code: int
    status_message: str = ""
    http_status: int | None = None
    rpc_code: str | None = None
    rpc_error: bool = False
    db_code: str | None = None
    exceptions: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    exception_events: int = 0
    suspects: int = 0  # status-code attributes that are not clearly OK (see enrich's pre-scan)
    suspects_4xx: int = 0  # of which http status code ints in [400, 500)

    @property
    def is_error(self) -> bool:
        if self.status_code == _STATUS_ERROR or self.exception_events or self.rpc_error:
            return True
        if self.http_status is not None:
            threshold = 400 if self.kind == _KIND_CLIENT else 500
            return self.http_status >= threshold
        return False


def span_facts(span: trace_pb2.Span) -> SpanFacts:
    """Scan a span once: attribute keys, status-code attributes, exception events.

    Every attribute/event read through upb creates a wrapper, so keys are listed in one C-level
    pass and only the few interesting attributes are looked at again.
    """
    attributes = span.attributes
    key_list = list(map(_KEY, attributes))
    keys = set(key_list)
    facts = SpanFacts(keys=keys, kind=span.kind, status_code=span.status.code)
    http_old: int | None = None
    rpc_old: tuple[str | None, bool] = (None, False)
    rpc_new: tuple[str | None, bool] | None = None
    exc_type = exc_msg = ""
    if not keys.isdisjoint(_SPAN_INTERESTING):
        for index, key in enumerate(key_list):
            if key not in _SPAN_INTERESTING:
                continue
            value = attributes[index].value
            if key == "http.response.status_code" or key == "http.status_code":
                if key == "http.status_code":
                    http_old = _http_value(value)
                else:
                    facts.http_status = _http_value(value)
                if not _http_clearly_ok(value):
                    facts.suspects += 1
                    facts.suspects_4xx += _http_4xx(value)
            elif key == "rpc.response.status_code":
                rpc_new = _rpc_value(value)
                facts.suspects += not _rpc_clearly_ok(value)
            elif key == "rpc.grpc.status_code":
                rpc_old = _rpc_value(value)
                facts.suspects += not _rpc_clearly_ok(value)
            elif key == DB_STATUS_KEY:
                which = value.WhichOneof("value")
                if which == "string_value":
                    facts.db_code = value.string_value
                elif which == "int_value":
                    facts.db_code = str(value.int_value)
            elif key == "exception.type":
                exc_type = _string_of(value) or ""
            elif key == "exception.message":
                exc_msg = _string_of(value) or ""
    if facts.http_status is None:
        facts.http_status = http_old
    # Prefer the current attribute; the deprecated one counts when the current one is absent or OK.
    if rpc_new is not None and (rpc_new[1] or not rpc_old[1]) and rpc_new[0] is not None:
        facts.rpc_code, facts.rpc_error = rpc_new
    else:
        facts.rpc_code, facts.rpc_error = rpc_old
    events = span.events
    if events:
        for event in events:
            if event.name != "exception":
                continue
            facts.exception_events += 1
            e_type = e_msg = ""
            event_attributes = event.attributes
            for index, key in enumerate(map(_KEY, event_attributes)):
                if key == "exception.type":
                    e_type = _string_of(event_attributes[index].value) or ""
                elif key == "exception.message":
                    e_msg = _string_of(event_attributes[index].value) or ""
            facts.exceptions.append((e_type, _truncate(e_msg)))
    if exc_type or exc_msg:  # exception attributes on the span itself (older instrumentations)
        facts.exceptions.append((exc_type, _truncate(exc_msg)))
    if facts.status_code == _STATUS_ERROR or facts.exceptions or facts.db_code is not None:
        facts.status_message = _truncate(span.status.message)
    return facts


_KEY = operator.attrgetter("key")


def span_attributes_may_error(span: trace_pb2.Span) -> bool:
    """A cheap pre-filter: could the span's http/rpc status attributes make it an error span?

    True whenever `span_facts(span).is_error` would be True because of those attributes (it may
    also be True when the preferred attribute overrides a deprecated one that looks like an error).
    """
    attributes = span.attributes
    key_list = list(map(_KEY, attributes))
    if STATUS_CODE_KEYS.isdisjoint(key_list):
        return False
    threshold = 400 if span.kind == _KIND_CLIENT else 500
    for index, key in enumerate(key_list):
        if key in STATUS_CODE_KEYS:
            value = attributes[index].value
            if key.startswith("http"):
                status = _http_value(value)
                if status is not None and status >= threshold:
                    return True
            elif _rpc_value(value)[1]:
                return True
    return False
_SPAN_INTERESTING = frozenset((*STATUS_CODE_KEYS, DB_STATUS_KEY, "exception.type", "exception.message"))


@dataclass(slots=True)
class LogFacts:
    keys: set[str]
    severity_number: int
    has_exception_type: bool = False
    exception_type: str = ""
    exception_message: str = ""
    body: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity_number >= SEVERITY_ERROR or self.has_exception_type


def log_facts(record: logs_pb2.LogRecord) -> LogFacts:
    attributes = record.attributes
    key_list = list(map(_KEY, attributes))
    keys = set(key_list)
    facts = LogFacts(keys=keys, severity_number=record.severity_number)
    if "exception.type" in keys or "exception.message" in keys:
        for index, key in enumerate(key_list):
            if key == "exception.type":
                facts.has_exception_type = True
                facts.exception_type = _string_of(attributes[index].value) or ""
            elif key == "exception.message":
                facts.exception_message = _truncate(_string_of(attributes[index].value) or "")
    return facts


# ------------------------------------------------------------------ the classifier


class Classifier:
    """Classifies export failures, partial successes, error spans and error log records.

    Built once from `processors.classify`; rule regexes are compiled here. Thread-safe and pure.
    """

    def __init__(self, config: ClassifyProcessorConfig | None = None) -> None:
        config = config or ClassifyProcessorConfig()
        self.strict_otlp = config.strict_otlp
        self._rules: tuple[_Rule, ...] = tuple(_Rule.compile(rule) for rule in config.rules)
        self._made: dict[tuple[_Template, str], Classification] = {}
        self._ruled: dict[tuple[int, int], tuple[Classification, Classification]] = {}

    @property
    def effective(self) -> Classifier:
        """The classifier that decides: itself (a reloadable handle answers the one it delegates to now)."""
        return self

    # -------------------------------------------------------------- building blocks

    def _make(self, template: _Template, by: str, retry_after: float | None = None) -> Classification:
        if retry_after is None:
            made = self._made.get((template, by))
            if made is None:
                category, recoverability, recovery, error_type = template
                made = Classification(category, default_severity(recoverability), recoverability, recovery,
                                      error_type, by)
                if len(self._made) < 4096:
                    self._made[(template, by)] = made
            return made
        category, recoverability, recovery, error_type = template
        return Classification(category, default_severity(recoverability), recoverability, recovery, error_type,
                              by, retry_after if recoverability.transient else None)

    def _apply_rules(self, default: Classification, evidence: _Evidence) -> Classification:
        for index, rule in enumerate(self._rules):
            if rule.matches(evidence, default):
                # A rule's result depends on the rule and the default only: share the instance.
                key = (index, id(default))
                hit = self._ruled.get(key)
                if hit is not None and hit[0] is default:
                    return hit[1]
                result = rule.apply(default)
                if len(self._ruled) >= 4096:
                    self._ruled.clear()
                self._ruled[key] = (default, result)  # keeps `default` alive, so its id stays unique
                return result
        return default

    # -------------------------------------------------------------- export failures

    def classify_export(self, failure: ExportFailure) -> Classification:
        """DESIGN.md §3's export table, then the configured rules (first match wins)."""
        message = failure.message or ""
        grpc_code = _grpc_code_name(failure.grpc_code) if failure.grpc_code else None
        template: _Template
        if failure.client_error:
            by = "default:client_error"
            template = _CLIENT_ERRORS.get(failure.client_error) or (
                *_TRANSPORT_RETRY,
                failure.client_error if _CLIENT_ERROR_NAME.fullmatch(failure.client_error) else OTHER,
            )
        elif failure.grpc_code:
            by = "default:grpc_code"
            if grpc_code is None:  # not a gRPC status name: not retryable, like UNKNOWN
                template = (*_EXPORT_PERMANENT, OTHER)
            else:
                template = _grpc_template(grpc_code, message, failure.has_retry_info, self.strict_otlp, app=False)
        elif failure.http_status is not None:
            by = "default:http_status"
            template = _http_export_template(failure.http_status)
        elif is_message_too_large(message):
            by = "default:message"
            template = _TOO_LARGE
        else:
            # Nothing observed: retry within the budget rather than drop what may be fine data.
            by = "default:unknown"
            template = (*_EXPORT_RETRY, OTHER)
        retry_after = failure.retry_after
        if retry_after is not None:
            retry_after = max(0.0, retry_after) if math.isfinite(retry_after) else None
        default = self._make(template, by, retry_after)
        if not self._rules:
            return default
        evidence = _Evidence(
            grpc_code=grpc_code,
            http_status=failure.http_status,
            messages=(message,),
            has_retry_info=failure.has_retry_info,
        )
        return self._apply_rules(default, evidence)

    def classify_partial_success(self, rejected: int, message: str) -> Classification:
        """Upstream accepted the request but rejected part of it: count it, never retry."""
        default = self._make(T_PARTIAL_SUCCESS, "default:partial_success")
        if not self._rules:
            return default
        return self._apply_rules(default, _Evidence(messages=(message or "",)))

    # -------------------------------------------------------------- spans

    def classify_span(self, span: trace_pb2.Span) -> Classification | None:
        """The class of an error span, None when the span is not an error (DESIGN §3)."""
        facts = span_facts(span)
        if not facts.is_error:
            return None
        return self.classify_span_facts(facts)

    def classify_span_facts(self, facts: SpanFacts) -> Classification:
        template: _Template | None = None
        by = ""
        grpc_from_exception: str | None = None
        for exc_type, exc_msg in facts.exceptions:
            found, code = _exception_evidence(exc_type, exc_msg)
            if found is not None:
                if code is not None and code == "RESOURCE_EXHAUSTED":
                    found = _grpc_template(code, exc_msg, False, self.strict_otlp, app=True)
                template, by, grpc_from_exception = found, "default:exception", code
                break
        grpc_code = None
        if facts.rpc_code is not None and facts.rpc_code in _GRPC_CODES:
            grpc_code = facts.rpc_code
        if template is None and facts.rpc_error and facts.rpc_code is not None:
            by = "default:rpc_status_code"
            if grpc_code is not None:
                template = _grpc_template(grpc_code, facts.status_message, False, self.strict_otlp, app=True)
            else:
                template = (*_APP_PERMANENT, facts.rpc_code[:MAX_ERROR_TYPE_CHARS])
        if template is None and facts.db_code is not None:
            template = _db_template(facts.db_code)
            by = "default:db_status_code"
        if template is None and facts.http_status is not None and facts.http_status >= 400:
            template, by = _http_app_template(facts.http_status), "default:http_status"
        if template is None and facts.exceptions:
            template = (*_APP_PERMANENT, _error_type_from_exception(facts.exceptions[-1][0]))
            by = "default:exception"
        if template is None and facts.status_message:
            found, code = _exception_evidence("", facts.status_message)
            if found is not None:
                template, by, grpc_from_exception = found, "default:status_message", code
        if template is None:
            template, by = T_OTHER, "default:status"
        default = self._make(template, by)
        if not self._rules:
            return default
        messages = tuple(msg for _, msg in facts.exceptions)
        if facts.status_message:
            messages += (facts.status_message,)
        evidence = _Evidence(
            grpc_code=grpc_code or grpc_from_exception,
            http_status=facts.http_status,
            messages=messages,
            exception_types=tuple(t for t, _ in facts.exceptions if t),
        )
        return self._apply_rules(default, evidence)

    # -------------------------------------------------------------- logs

    def classify_log(self, record: logs_pb2.LogRecord) -> Classification | None:
        """The class of an error log record (severity >= ERROR or exception.type), else None."""
        facts = log_facts(record)
        if not facts.is_error:
            return None
        return self.classify_log_facts(facts, record)

    def classify_log_facts(self, facts: LogFacts, record: logs_pb2.LogRecord) -> Classification:
        template: _Template | None = None
        by = ""
        grpc_code: str | None = None
        body: str | None = None
        if record.HasField("body") and record.body.WhichOneof("value") == "string_value":
            body = _truncate(record.body.string_value)
        if facts.exception_type or facts.exception_message:
            template, grpc_code = _exception_evidence(facts.exception_type, facts.exception_message)
            by = "default:exception"
        if template is None and body:
            template, grpc_code = _exception_evidence("", body)
            by = "default:log_body"
        if template is None and facts.exception_type:
            template, by = (*_APP_PERMANENT, _error_type_from_exception(facts.exception_type)), "default:exception"
        if template is None:
            template, by = T_OTHER, "default:log"
        if grpc_code == "RESOURCE_EXHAUSTED":
            template = _grpc_template(grpc_code, facts.exception_message or body or "", False, self.strict_otlp,
                                      app=True)
        default = self._make(template, by)
        if not self._rules:
            return default
        messages: tuple[str, ...] = tuple(m for m in (facts.exception_message, body) if m)
        evidence = _Evidence(
            grpc_code=grpc_code,
            messages=messages,
            exception_types=(facts.exception_type,) if facts.exception_type else (),
        )
        return self._apply_rules(default, evidence)
