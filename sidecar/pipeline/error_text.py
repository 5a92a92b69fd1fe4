"""Recognising an error from an exception type and message, across languages and libraries: the type tables,
the message table (most specific first), and gRPC codes or HTTP statuses quoted in messages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from sidecar.pipeline.vocabulary import (
    T_CONNECTION_ERROR,
    T_CONNECTION_REFUSED,
    T_CONNECTION_RESET,
    T_DEADLOCK,
    T_DISK_FULL,
    T_DNS,
    T_INVALID_INPUT,
    T_LOCK_CONFLICT,
    T_OUT_OF_MEMORY,
    T_PERMISSION_DENIED,
    T_POOL_EXHAUSTED,
    T_RATE_LIMITED,
    T_SERIALIZATION_FAILURE,
    T_TIMEOUT,
    T_TLS,
    T_TOO_MANY_FILES,
    T_UNAUTHENTICATED,
    Template,
    grpc_code_name,
    grpc_template,
    http_app_template,
)


def _names(templates: dict[Template, Iterable[str]]) -> dict[str, Template]:
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

# Message patterns, most specific first; searched in "<type name> <message>".
_TEXT_TABLE: tuple[tuple[re.Pattern[str], Template], ...] = (
    (re.compile(r"out of memory|outofmemory|memoryerror|cannot allocate memory|\benomem\b|insufficient memory|"
                r"oom[- ]?kill", re.IGNORECASE), T_OUT_OF_MEMORY),
    (re.compile(r"no space left on device|\benospc\b|disk (?:is )?full", re.IGNORECASE), T_DISK_FULL),
    (re.compile(r"too many open files|\bemfile\b", re.IGNORECASE), T_TOO_MANY_FILES),
    (re.compile(r"too many (?:connections|clients)|pool (?:is )?exhausted|queuepool limit|"
                r"remaining connection slots are reserved|"
                r"timeout (?:while )?(?:waiting|acquiring) (?:for )?(?:a )?connection|"
                r"unable to acquire (?:jdbc )?connection", re.IGNORECASE), T_POOL_EXHAUSTED),
    (re.compile(r"deadlock|\b40p01\b|(?:error|errno|code|\()\s*:?\s*1213\b", re.IGNORECASE), T_DEADLOCK),
    (re.compile(r"could not serialize access|serialization failure|sqlstate\W{0,3}40001", re.IGNORECASE),
     T_SERIALIZATION_FAILURE),
    (re.compile(r"lock wait timeout|could not obtain lock|lock (?:request )?time ?out|optimistic ?lock|"
                r"row was updated or deleted by another transaction|lock_not_available|\b55p03\b", re.IGNORECASE),
     T_LOCK_CONFLICT),
    # A TLS handshake that times out is a slow network, not a certificate problem.
    (re.compile(r"handshake (?:operation )?(?:timed out|time ?out)", re.IGNORECASE), T_TIMEOUT),
    (re.compile(r"name or service not known|nodename nor servname|no such host|\benotfound\b|\beai_again\b|"
                r"getaddrinfo|name resolution|could not resolve|failed to resolve|unknownhost|"
                r"no address associated with hostname|\bdns\b", re.IGNORECASE), T_DNS),
    (re.compile(r"certificate verify failed|certificate_verify_failed|certificate has expired|"
                r"self[- ]signed certificate|unable to (?:get local issuer|verify the first) certificate|"
                r"x509:|\bssl\b|_ssl\.c|\btls\b|handshake (?:failure|failed)|remote certificate is invalid|"
                r"pkix path", re.IGNORECASE), T_TLS),
    (re.compile(r"connection refused|econnrefused|actively refused|connect call failed|errno 111\b|"
                r"connectionrefused|refused to connect|no connection could be made", re.IGNORECASE),
     T_CONNECTION_REFUSED),
    (re.compile(r"connection reset|econnreset|reset by peer|broken pipe|\bepipe\b|connection aborted|"
                r"econnaborted|socket hang up|server disconnected|remote end closed connection|"
                r"connection closed by (?:remote|peer|foreign)|closed the connection unexpectedly|"
                r"connection (?:was )?closed unexpectedly|unexpected eof|\bgoaway\b|rst_stream", re.IGNORECASE),
     T_CONNECTION_RESET),
    (re.compile(r"timed ?out|timeout|\btime out\b|deadline[ _]?exceeded|\betimedout\b|esockettimedout|took too long|"
                r"time limit exceeded|taskcanceled", re.IGNORECASE), T_TIMEOUT),
    (re.compile(r"rate ?limit|too many requests|throttl|quota exceeded|resource has been exhausted", re.IGNORECASE),
     T_RATE_LIMITED),
    (re.compile(r"unauthori[sz]ed|unauthenticated|authentication (?:failed|required)|not authenticated|"
                r"invalid (?:credentials|token|api key|password)|login failed|token (?:has )?expired|"
                r"status(?: code)?\W{0,3}401\b", re.IGNORECASE), T_UNAUTHENTICATED),
    (re.compile(r"permission denied|access denied|access is denied|forbidden|not authorized|"
                r"insufficient (?:privilege|permission)|\beacces\b|\beperm\b|operation not permitted|"
                r"status(?: code)?\W{0,3}403\b", re.IGNORECASE), T_PERMISSION_DENIED),
    (re.compile(r"jsondecodeerror|cannot unmarshal|unexpected token|in json at position|invalid json|"
                r"malformed|parse error|failed to parse|could not parse|cannot parse|unable to parse|"
                r"invalid syntax|invalid literal|invalid input|invalid character|validation (?:error|failed)|"
                r"(?:cannot|failed to) deserializ|numberformatexception|illegalargumentexception|"
                r"invalid[ _]argument|expecting value|unexpected end of json", re.IGNORECASE), T_INVALID_INPUT),
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
    re.IGNORECASE,
)
_TYPE_SPLIT = re.compile(r"[.:/$*\\\s]+")

def _simple_type_name(exception_type: str) -> str:
    parts = [p for p in _TYPE_SPLIT.split(exception_type) if p]
    return parts[-1] if parts else ""


def _grpc_code_in(simple: str, exception_type: str, message: str) -> str | None:
    m = _GRPC_IN_MESSAGE.search(message)
    if m:
        code = grpc_code_name(next(g for g in m.groups() if g))
        if code is not None and code != "OK":
            return code
    if simple in _RPC_TYPES or "grpc" in exception_type.lower():
        m = _GRPC_BARE.match(message)
        if m:
            code = grpc_code_name(m.group(1))
            if code is not None and code != "OK":
                return code
    return None


@functools.lru_cache(maxsize=2048)
def exception_evidence(exception_type: str, message: str) -> tuple[Template | None, str | None]:
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
        return grpc_template(code, message, False, False, app=True), code
    m = _HTTP_IN_MESSAGE.search(message)
    if m:
        status = int(next(g for g in m.groups() if g))
        if status >= 400:
            return http_app_template(status), None
    text = f"{simple} {message}" if simple else message
    for pattern, template in _TEXT_TABLE:
        if pattern.search(text):
            return template, None
    return _GENERIC_TYPES.get(simple), None
