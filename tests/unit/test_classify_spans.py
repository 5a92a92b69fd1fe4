"""Span and log classification (DESIGN.md §3 "Span and log enrichment")."""

from __future__ import annotations

import pytest
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import ClassifyProcessorConfig, ClassifyRule, RuleMatch, RuleSet
from sidecar.core.taxonomy import Category, Recoverability, Recovery, Severity
from sidecar.pipeline.classify import Classifier

Kind = trace_pb2.Span
SERVER, CLIENT, INTERNAL = Kind.SPAN_KIND_SERVER, Kind.SPAN_KIND_CLIENT, Kind.SPAN_KIND_INTERNAL
Status = trace_pb2.Status
ERROR, OK, UNSET = Status.STATUS_CODE_ERROR, Status.STATUS_CODE_OK, Status.STATUS_CODE_UNSET

AttrValue = str | int | bool | float


def set_attr(attrs: object, key: str, value: AttrValue) -> None:
    kv = attrs.add(key=key)  # type: ignore[attr-defined]
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = value


def span(
    *,
    kind: int = INTERNAL,
    status: int = UNSET,
    status_message: str = "",
    attrs: dict[str, AttrValue] | None = None,
    exceptions: list[tuple[str, str]] | None = None,
    events: list[str] | None = None,
) -> trace_pb2.Span:
    s = trace_pb2.Span(name="op", kind=kind, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)  # type: ignore[arg-type]
    if status or status_message:
        s.status.code = status  # type: ignore[assignment]
        s.status.message = status_message
    for key, value in (attrs or {}).items():
        set_attr(s.attributes, key, value)
    for name in events or []:
        s.events.add(name=name)
    for exc_type, exc_message in exceptions or []:
        event = s.events.add(name="exception", time_unix_nano=5)
        if exc_type:
            set_attr(event.attributes, "exception.type", exc_type)
        if exc_message:
            set_attr(event.attributes, "exception.message", exc_message)
        set_attr(event.attributes, "exception.stacktrace", "Traceback...\n" * 50)
    return s


def classify(s: trace_pb2.Span, classifier: Classifier | None = None):  # type: ignore[no-untyped-def]
    return (classifier or Classifier()).classify_span(s)


# ----------------------------------------------------------------------------- what is an error span


def test_not_an_error_span() -> None:
    assert classify(span()) is None
    assert classify(span(status=OK)) is None
    assert classify(span(attrs={"http.response.status_code": 200}, kind=SERVER)) is None
    assert classify(span(events=["message", "retry"])) is None


def test_status_error_alone() -> None:
    c = classify(span(status=ERROR))
    assert c is not None
    assert (c.category, c.recoverability, c.recovery, c.error_type, c.classified_by) == (
        Category.PROCESSING,
        Recoverability.PERMANENT,
        Recovery.MANUAL_INTERVENTION,
        "_OTHER",
        "default:status",
    )
    assert c.severity is Severity.HIGH


def test_status_message_goes_through_the_message_table() -> None:
    c = classify(span(status=ERROR, status_message="dial tcp 10.0.0.7:5432: connect: connection refused"))
    assert c is not None
    assert (c.error_type, c.classified_by) == ("connection_refused", "default:status_message")


def test_exception_event_without_error_status_is_an_error() -> None:
    c = classify(span(exceptions=[("ConnectionRefusedError", "[Errno 111] Connection refused")]))
    assert c is not None
    assert (c.category, c.recoverability, c.recovery, c.error_type, c.classified_by) == (
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "connection_refused",
        "default:exception",
    )


@pytest.mark.parametrize(
    ("kind", "key", "value", "error_type"),
    [
        (SERVER, "http.response.status_code", 503, "http_503"),
        (SERVER, "http.response.status_code", 500, "http_500"),
        (SERVER, "http.response.status_code", 404, None),
        (SERVER, "http.response.status_code", 499, None),
        (CLIENT, "http.response.status_code", 404, "http_404"),
        (CLIENT, "http.response.status_code", 400, "http_400"),
        (CLIENT, "http.response.status_code", 399, None),
        (INTERNAL, "http.response.status_code", 404, None),
        (INTERNAL, "http.response.status_code", 502, "http_502"),
        (Kind.SPAN_KIND_PRODUCER, "http.response.status_code", 503, "http_503"),
        (SERVER, "http.status_code", 502, "http_502"),  # deprecated attribute
        (CLIENT, "http.status_code", 401, "http_401"),
        (SERVER, "http.response.status_code", "503", "http_503"),  # leniently, a string
        (SERVER, "http.response.status_code", "abc", None),
        (SERVER, "http.response.status_code", 503.0, None),  # not an int: ignored
    ],
)
def test_http_status(kind: int, key: str, value: AttrValue, error_type: str | None) -> None:
    c = classify(span(kind=kind, attrs={key: value}))
    if error_type is None:
        assert c is None
    else:
        assert c is not None
        assert (c.error_type, c.classified_by) == (error_type, "default:http_status")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (503, (Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)),
        (502, (Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)),
        (504, (Category.TIMEOUT, Recoverability.RETRYABLE, Recovery.INCREASE_TIMEOUT)),
        (408, (Category.TIMEOUT, Recoverability.RETRYABLE, Recovery.INCREASE_TIMEOUT)),
        (429, (Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.RETRY_WITH_BACKOFF)),
        (413, (Category.RESOURCE_EXHAUSTED, Recoverability.TEMPORARY, Recovery.SPLIT_AND_RETRY)),
        (400, (Category.SERIALIZATION, Recoverability.PERMANENT, Recovery.DROP)),
        (415, (Category.SERIALIZATION, Recoverability.PERMANENT, Recovery.DROP)),
        (401, (Category.CONFIGURATION, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)),
        (403, (Category.CONFIGURATION, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)),
        (405, (Category.VERSION_MISMATCH, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)),
        (501, (Category.VERSION_MISMATCH, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)),
        (404, (Category.PROCESSING, Recoverability.PERMANENT, Recovery.MANUAL_INTERVENTION)),
        (409, (Category.PROCESSING, Recoverability.PERMANENT, Recovery.MANUAL_INTERVENTION)),
        (500, (Category.PROCESSING, Recoverability.PERMANENT, Recovery.MANUAL_INTERVENTION)),
    ],
)
def test_http_status_classes_on_client_spans(status: int, expected: tuple[object, ...]) -> None:
    c = classify(span(kind=CLIENT, attrs={"http.response.status_code": status}))
    assert c is not None
    assert (c.category, c.recoverability, c.recovery) == expected


@pytest.mark.parametrize(
    ("key", "value", "error_type", "category"),
    [
        ("rpc.grpc.status_code", 14, "UNAVAILABLE", Category.TRANSPORT),
        ("rpc.grpc.status_code", 4, "DEADLINE_EXCEEDED", Category.TIMEOUT),
        ("rpc.grpc.status_code", 3, "INVALID_ARGUMENT", Category.SERIALIZATION),
        ("rpc.grpc.status_code", 5, "NOT_FOUND", Category.PROCESSING),
        ("rpc.grpc.status_code", "14", "UNAVAILABLE", Category.TRANSPORT),
        ("rpc.grpc.status_code", 0, None, None),
        ("rpc.grpc.status_code", "0", None, None),
        ("rpc.response.status_code", "UNAVAILABLE", "UNAVAILABLE", Category.TRANSPORT),
        ("rpc.response.status_code", "unavailable", "UNAVAILABLE", Category.TRANSPORT),  # connect-rpc style
        ("rpc.response.status_code", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", Category.RESOURCE_EXHAUSTED),
        ("rpc.response.status_code", "UNIMPLEMENTED", "UNIMPLEMENTED", Category.VERSION_MISMATCH),
        ("rpc.response.status_code", "OK", None, None),
        ("rpc.response.status_code", "", None, None),
        ("rpc.response.status_code", 16, "UNAUTHENTICATED", Category.CONFIGURATION),
        ("rpc.response.status_code", "-32603", "-32603", Category.PROCESSING),  # JSON-RPC
        ("rpc.grpc.status_code", 99, "99", Category.PROCESSING),
    ],
)
def test_rpc_status(key: str, value: AttrValue, error_type: str | None, category: Category | None) -> None:
    c = classify(span(kind=CLIENT, attrs={key: value}))
    if error_type is None:
        assert c is None
    else:
        assert c is not None
        assert (c.error_type, c.category, c.classified_by) == (error_type, category, "default:rpc_status_code")


def test_current_rpc_attribute_preferred_but_deprecated_error_counts() -> None:
    both = span(kind=CLIENT, attrs={"rpc.response.status_code": "DEADLINE_EXCEEDED", "rpc.grpc.status_code": 14})
    c = classify(both)
    assert c is not None and c.error_type == "DEADLINE_EXCEEDED"
    c = classify(span(kind=CLIENT, attrs={"rpc.response.status_code": "OK", "rpc.grpc.status_code": 14}))
    assert c is not None and c.error_type == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("40P01", "deadlock"),
        ("40001", "serialization_failure"),
        ("1213", "deadlock"),
        ("08006", "connection_error"),
        ("28P01", "unauthenticated"),
        ("57014", "timeout"),
        ("53300", "pool_exhausted"),
        ("23505", "_OTHER"),  # not in the table: the status fallback
    ],
)
def test_db_status_code_on_error_span(code: str, error_type: str) -> None:
    c = classify(span(kind=CLIENT, status=ERROR, attrs={"db.response.status_code": code}))
    assert c is not None and c.error_type == error_type


def test_db_status_code_without_error_status_is_not_an_error() -> None:
    assert classify(span(kind=CLIENT, attrs={"db.response.status_code": "40P01"})) is None


# ----------------------------------------------------------------------------- exceptions across languages

EXCEPTIONS = [
    # Python
    ("ConnectionRefusedError", "[Errno 111] Connection refused", "connection_refused"),
    ("builtins.ConnectionResetError", "[Errno 104] Connection reset by peer", "connection_reset"),
    ("BrokenPipeError", "[Errno 32] Broken pipe", "connection_reset"),
    ("TimeoutError", "", "timeout"),
    ("asyncio.exceptions.TimeoutError", "", "timeout"),
    ("socket.timeout", "timed out", "timeout"),
    ("MemoryError", "", "out_of_memory"),
    ("PermissionError", "[Errno 13] Permission denied: '/data'", "permission_denied"),
    ("socket.gaierror", "[Errno -2] Name or service not known", "dns"),
    ("json.decoder.JSONDecodeError", "Expecting value: line 1 column 1 (char 0)", "invalid_input"),
    ("ValueError", "invalid literal for int() with base 10: 'x'", "invalid_input"),
    ("psycopg2.errors.DeadlockDetected", "deadlock detected", "deadlock"),
    ("psycopg2.errors.SerializationFailure", "could not serialize access", "serialization_failure"),
    ("psycopg2.OperationalError", "could not connect to server: Connection refused", "connection_refused"),
    (
        "requests.exceptions.ConnectionError",
        "HTTPSConnectionPool(host='api', port=443): Max retries exceeded (Caused by NameResolutionError(\"Failed to "
        "resolve 'api' ([Errno -3] Temporary failure in name resolution)\"))",
        "dns",
    ),
    (
        "requests.exceptions.ConnectionError",
        "('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))",
        "connection_reset",
    ),
    ("requests.exceptions.ConnectionError", "something else", "connection_error"),
    ("requests.exceptions.HTTPError", "503 Server Error: Service Unavailable for url: http://x", "http_503"),
    ("OSError", "[Errno 28] No space left on device", "disk_full"),
    ("OSError", "[Errno 24] Too many open files", "too_many_open_files"),
    (
        "sqlalchemy.exc.OperationalError",
        "(MySQLdb.OperationalError) (1213, 'Deadlock found when trying to get lock; try restarting transaction')",
        "deadlock",
    ),
    (
        "grpc._channel._InactiveRpcError",
        "<_InactiveRpcError of RPC that terminated with:\n\tstatus = "
        'StatusCode.UNAVAILABLE\n\tdetails = "failed to connect to all addresses"',
        "UNAVAILABLE",
    ),
    ("grpc.RpcError", "status = StatusCode.DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
    # Java
    ("java.net.ConnectException", "Connection refused", "connection_refused"),
    ("java.net.SocketTimeoutException", "Read timed out", "timeout"),
    ("java.util.concurrent.TimeoutException", "", "timeout"),
    ("java.lang.OutOfMemoryError", "Java heap space", "out_of_memory"),
    ("io.grpc.StatusRuntimeException", "UNAVAILABLE: io exception", "UNAVAILABLE"),
    (
        "io.grpc.StatusRuntimeException",
        "RESOURCE_EXHAUSTED: gRPC message exceeds maximum size 4194304: 5000000",
        "payload_too_large",
    ),
    ("io.grpc.StatusRuntimeException", "PERMISSION_DENIED: denied", "PERMISSION_DENIED"),
    ("java.net.UnknownHostException", "collector: Name or service not known", "dns"),
    ("org.postgresql.util.PSQLException", "ERROR: deadlock detected\n  Detail: Process 1 waits", "deadlock"),
    (
        "com.mysql.cj.jdbc.exceptions.MySQLTransactionRollbackException",
        "Deadlock found when trying to get lock; try restarting transaction",
        "deadlock",
    ),
    (
        "com.mysql.cj.jdbc.exceptions.MySQLTransactionRollbackException",
        "Lock wait timeout exceeded; try restarting transaction",
        "lock_conflict",
    ),
    ("java.lang.NumberFormatException", 'For input string: "abc"', "invalid_input"),
    ("java.lang.IllegalArgumentException", "bad value", "invalid_input"),
    ("javax.net.ssl.SSLHandshakeException", "PKIX path building failed", "tls_handshake"),
    ("org.springframework.security.access.AccessDeniedException", "Access is denied", "permission_denied"),
    ("org.springframework.dao.QueryTimeoutException", "query timed out", "timeout"),
    ("java.lang.NullPointerException", 'Cannot invoke "String.length()"', "java.lang.NullPointerException"),
    # Go
    ("*net.OpError", "dial tcp 10.0.0.1:5432: connect: connection refused", "connection_refused"),
    ("*url.Error", 'Get "http://api/": context deadline exceeded', "timeout"),
    ("*net.DNSError", "lookup api on 10.96.0.10:53: no such host", "dns"),
    ("*status.Error", "rpc error: code = Unavailable desc = connection error", "UNAVAILABLE"),
    ("*status.Error", "rpc error: code = DeadlineExceeded desc = context deadline exceeded", "DEADLINE_EXCEEDED"),
    ("*errors.errorString", "read tcp 10.0.0.2:5000->10.0.0.3:80: read: connection reset by peer", "connection_reset"),
    ("*json.UnmarshalTypeError", "json: cannot unmarshal string into Go value of type int", "invalid_input"),
    ("*pq.Error", "pq: deadlock detected", "deadlock"),
    ("*errors.errorString", "x509: certificate signed by unknown authority", "tls_handshake"),
    ("*errors.errorString", "runtime: out of memory", "out_of_memory"),
    # Node.js
    ("Error", "connect ECONNREFUSED 127.0.0.1:6379", "connection_refused"),
    ("Error", "read ECONNRESET", "connection_reset"),
    ("Error", "socket hang up", "connection_reset"),
    ("Error", "getaddrinfo ENOTFOUND api.example.com", "dns"),
    ("Error", "getaddrinfo EAI_AGAIN api.example.com", "dns"),
    ("Error", "connect ETIMEDOUT 10.0.0.1:443", "timeout"),
    ("Error", "14 UNAVAILABLE: No connection established", "UNAVAILABLE"),
    ("SyntaxError", "Unexpected token < in JSON at position 0", "invalid_input"),
    ("Error", "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory", "out_of_memory"),
    ("AxiosError", "Request failed with status code 503", "http_503"),
    ("AxiosError", "Request failed with status code 401", "http_401"),
    # .NET
    (
        "System.Net.Sockets.SocketException",
        "No connection could be made because the target machine actively refused it.",
        "connection_refused",
    ),
    ("System.Net.Sockets.SocketException", "Connection refused (127.0.0.1:80)", "connection_refused"),
    (
        "System.Threading.Tasks.TaskCanceledException",
        "The request was canceled due to the configured HttpClient.Timeout of 100 seconds elapsing.",
        "timeout",
    ),
    ("System.TimeoutException", "The operation has timed out.", "timeout"),
    ("System.OutOfMemoryException", "Insufficient memory to continue the execution of the program.", "out_of_memory"),
    ("System.UnauthorizedAccessException", "Access to the path '/x' is denied.", "permission_denied"),
    (
        "Grpc.Core.RpcException",
        'Status(StatusCode="Unavailable", Detail="Error connecting to subchannel.")',
        "UNAVAILABLE",
    ),
    ("Acme.ApiException", "HttpStatusCode.NotFound", "Acme.ApiException"),  # not a gRPC status
    (
        "Microsoft.Data.SqlClient.SqlException",
        "Transaction (Process ID 52) was deadlocked on lock resources with "
        "another process and has been chosen as the deadlock victim. Rerun the transaction.",
        "deadlock",
    ),
    (
        "System.Net.Http.HttpRequestException",
        "Response status code does not indicate success: 503 (Service Unavailable).",
        "http_503",
    ),
    (
        "System.Security.Authentication.AuthenticationException",
        "The remote certificate is invalid according to the validation procedure.",
        "tls_handshake",
    ),
    ("System.Security.Authentication.AuthenticationException", "Authentication failed", "unauthenticated"),
    ("System.FormatException", "Input string was not in a correct format.", "invalid_input"),
    # Ruby
    ("Errno::ECONNREFUSED", "Failed to open TCP connection", "connection_refused"),
    ("Net::ReadTimeout", "Net::ReadTimeout", "timeout"),
    ("ActiveRecord::Deadlocked", "PG::TRDeadlockDetected", "deadlock"),
    # a handshake that times out is a timeout; "time out" needs to be words
    ("*url.Error", 'Get "https://api/": net/http: TLS handshake timeout', "timeout"),
    ("ssl.SSLError", "_ssl.c:1123: The handshake operation timed out", "tls_handshake"),  # type says SSL
    ("OSError", "_ssl.c:1123: The handshake operation timed out", "timeout"),
    ("Exception", "runtime output truncated", "Exception"),
    ("Exception", "certificate verify failed: unable to get local issuer certificate", "tls_handshake"),
    # throttling and auth by message
    ("Exception", "Rate limit exceeded, retry later", "rate_limited"),
    ("Exception", "401 Unauthorized", "unauthenticated"),
    ("Exception", 'password authentication failed for user "app"', "unauthenticated"),
    ("Exception", "QueuePool limit of size 5 overflow 10 reached", "pool_exhausted"),
]


@pytest.mark.parametrize(
    ("exc_type", "message", "error_type"), EXCEPTIONS, ids=[f"{i}-{t}" for i, (t, _, _) in enumerate(EXCEPTIONS)]
)
def test_exception_types_across_languages(exc_type: str, message: str, error_type: str) -> None:
    c = classify(span(status=ERROR, exceptions=[(exc_type, message)]))
    assert c is not None
    assert c.error_type == error_type
    assert c.classified_by == "default:exception"


@pytest.mark.parametrize(
    ("exc_type", "expected"),
    [
        ("ConnectionRefusedError", (Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)),
        ("ConnectionResetError", (Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)),
        ("TimeoutError", (Category.TIMEOUT, Recoverability.RETRYABLE, Recovery.INCREASE_TIMEOUT)),
        ("MemoryError", (Category.RESOURCE_EXHAUSTED, Recoverability.FATAL, Recovery.SCALE_RESOURCES)),
        ("DeadlockDetected", (Category.CONCURRENCY, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF)),
        ("PermissionError", (Category.CONFIGURATION, Recoverability.FATAL, Recovery.MANUAL_INTERVENTION)),
        ("UnknownHostException", (Category.TRANSPORT, Recoverability.TEMPORARY, Recovery.RETRY_WITH_BACKOFF)),
        ("JSONDecodeError", (Category.SERIALIZATION, Recoverability.PERMANENT, Recovery.DROP)),
        ("SomethingWeird", (Category.PROCESSING, Recoverability.PERMANENT, Recovery.MANUAL_INTERVENTION)),
    ],
)
def test_exception_classes(exc_type: str, expected: tuple[object, ...]) -> None:
    c = classify(span(status=ERROR, exceptions=[(exc_type, "")]))
    assert c is not None
    assert (c.category, c.recoverability, c.recovery) == expected


def test_unrecognised_exception_type_is_truncated() -> None:
    long_type = "com.example." + "VeryLong" * 20 + "Exception"
    c = classify(span(status=ERROR, exceptions=[(long_type, "boom")]))
    assert c is not None
    assert c.error_type == long_type[:64]


def test_exception_event_without_type_or_message() -> None:
    c = classify(span(exceptions=[("", "")]))
    assert c is not None and c.error_type == "_OTHER"


def test_recognised_exception_beats_status_codes() -> None:
    s = span(
        kind=SERVER, status=ERROR, attrs={"http.response.status_code": 500}, exceptions=[("ConnectionRefusedError", "")]
    )
    c = classify(s)
    assert c is not None and c.error_type == "connection_refused"


def test_status_code_beats_unrecognised_exception() -> None:
    s = span(
        kind=CLIENT,
        status=ERROR,
        attrs={"http.response.status_code": 503},
        exceptions=[("com.acme.ClientError", "boom")],
    )
    c = classify(s)
    assert c is not None and (c.error_type, c.classified_by) == ("http_503", "default:http_status")


def test_first_recognised_exception_event_wins() -> None:
    s = span(status=ERROR, exceptions=[("Weird", "x"), ("TimeoutError", ""), ("MemoryError", "")])
    c = classify(s)
    assert c is not None and c.error_type == "timeout"


def test_exception_attributes_on_the_span_itself() -> None:
    s = span(status=ERROR, attrs={"exception.type": "java.net.ConnectException", "exception.message": "refused"})
    c = classify(s)
    assert c is not None and c.error_type == "connection_refused"


def test_strict_otlp_applies_to_rpc_errors_in_spans() -> None:
    s = span(status=ERROR, exceptions=[("io.grpc.StatusRuntimeException", "RESOURCE_EXHAUSTED: memory")])
    lenient = classify(s)
    strict = classify(s, Classifier(ClassifyProcessorConfig(strict_otlp=True)))
    assert lenient is not None and lenient.recoverability is Recoverability.TEMPORARY
    assert strict is not None and strict.recoverability is Recoverability.PERMANENT


def test_weird_attribute_values_do_not_break_classification() -> None:
    s = span(status=ERROR)
    s.attributes.add(key="http.response.status_code").value.array_value.values.add().int_value = 500
    s.attributes.add(key="rpc.grpc.status_code").value.kvlist_value.values.add(key="x")
    s.attributes.add(key="rpc.response.status_code").value.bytes_value = b"\xff"
    s.attributes.add(key="").value.string_value = "x" * 100_000
    s.attributes.add(key="exception.type").value.int_value = 3
    s.attributes.add(key="http.status_code").value.string_value = "²³"
    s.attributes.add(key="rpc.grpc.status_code").value.string_value = "9" * 5000
    event = s.events.add(name="exception")
    event.attributes.add(key="exception.message").value.double_value = 1.5
    c = classify(s)
    assert c is not None


# ----------------------------------------------------------------------------- rules on spans


def rules(*items: ClassifyRule) -> Classifier:
    return Classifier(ClassifyProcessorConfig(rules=list(items)))


def test_rule_on_exception_type() -> None:
    c = rules(
        ClassifyRule(
            id="npe",
            match=RuleMatch(exception_type=r"NullPointerException$"),
            set=RuleSet(category=Category.INTERNAL, severity=Severity.CRITICAL),
        )
    )
    got = classify(span(status=ERROR, exceptions=[("java.lang.NullPointerException", "")]), c)
    assert got is not None
    assert (got.classified_by, got.category, got.severity, got.recoverability) == (
        "npe",
        Category.INTERNAL,
        Severity.CRITICAL,
        Recoverability.PERMANENT,
    )
    other = classify(span(status=ERROR, exceptions=[("java.lang.IllegalStateException", "")]), c)
    assert other is not None and other.classified_by == "default:exception"


def test_rule_on_exception_message_and_status_message() -> None:
    c = rules(
        ClassifyRule(
            id="maint", match=RuleMatch(message="maintenance"), set=RuleSet(recoverability=Recoverability.TEMPORARY)
        )
    )
    got = classify(span(status=ERROR, exceptions=[("X", "down for maintenance")]), c)
    assert got is not None and got.classified_by == "maint"
    got = classify(span(status=ERROR, status_message="maintenance window"), c)
    assert got is not None and (got.classified_by, got.severity) == ("maint", Severity.MEDIUM)


def test_rule_on_http_status_and_grpc_code() -> None:
    c = rules(
        ClassifyRule(id="h404", match=RuleMatch(http_status=[404]), set=RuleSet(severity=Severity.LOW)),
        ClassifyRule(id="g5", match=RuleMatch(grpc_code="NOT_FOUND"), set=RuleSet(severity=Severity.LOW)),
        ClassifyRule(
            id="g14exc",
            match=RuleMatch(grpc_code="UNAVAILABLE", exception_type="Rpc"),
            set=RuleSet(severity=Severity.CRITICAL),
        ),
    )
    got = classify(span(kind=CLIENT, attrs={"http.response.status_code": 404}), c)
    assert got is not None and got.classified_by == "h404"
    got = classify(span(kind=CLIENT, attrs={"rpc.grpc.status_code": 5}), c)
    assert got is not None and got.classified_by == "g5"
    got = classify(span(status=ERROR, exceptions=[("grpc.RpcError", "StatusCode.UNAVAILABLE")]), c)
    assert got is not None and got.classified_by == "g14exc"


def test_rule_on_error_type_for_spans() -> None:
    c = rules(
        ClassifyRule(
            id="oom-page",
            match=RuleMatch(error_type="out_of_memory"),
            set=RuleSet(severity=Severity.CRITICAL, recovery=Recovery.SCALE_RESOURCES),
        )
    )
    got = classify(span(status=ERROR, exceptions=[("MemoryError", "")]), c)
    assert got is not None and got.classified_by == "oom-page"


# ----------------------------------------------------------------------------- logs


def record(
    severity: int = 9,
    body: str | None = None,
    attrs: dict[str, AttrValue] | None = None,
) -> logs_pb2.LogRecord:
    r = logs_pb2.LogRecord(severity_number=severity, time_unix_nano=1)  # type: ignore[arg-type]
    if body is not None:
        r.body.string_value = body
    for key, value in (attrs or {}).items():
        set_attr(r.attributes, key, value)
    return r


def test_log_not_an_error() -> None:
    assert Classifier().classify_log(record(9, "all good")) is None
    assert Classifier().classify_log(record(13, "warning: connection refused")) is None
    assert Classifier().classify_log(record(16)) is None


def test_log_severity_error_with_body() -> None:
    c = Classifier().classify_log(record(17, "dial tcp: connection refused"))
    assert c is not None
    assert (c.error_type, c.classified_by, c.category) == ("connection_refused", "default:log_body", Category.TRANSPORT)


def test_log_exception_type_makes_an_error_at_any_severity() -> None:
    c = Classifier().classify_log(record(9, "x", {"exception.type": "TimeoutError"}))
    assert c is not None and (c.error_type, c.classified_by) == ("timeout", "default:exception")


def test_log_exception_beats_body() -> None:
    c = Classifier().classify_log(
        record(
            21,
            "connection refused",
            {"exception.type": "java.lang.OutOfMemoryError", "exception.message": "Java heap space"},
        )
    )
    assert c is not None and c.error_type == "out_of_memory"


def test_log_unrecognised_exception_after_body() -> None:
    c = Classifier().classify_log(record(17, "request timed out", {"exception.type": "KeyError"}))
    assert c is not None and c.error_type == "timeout"
    c = Classifier().classify_log(record(17, "boom", {"exception.type": "KeyError"}))
    assert c is not None and (c.error_type, c.classified_by) == ("KeyError", "default:exception")


def test_log_fallback() -> None:
    r = record(17)
    r.body.kvlist_value.values.add(key="event").value.string_value = "failed"
    c = Classifier().classify_log(r)
    assert c is not None
    assert (c.category, c.recoverability, c.error_type, c.classified_by) == (
        Category.PROCESSING,
        Recoverability.PERMANENT,
        "_OTHER",
        "default:log",
    )


def test_log_grpc_code_in_body() -> None:
    c = Classifier().classify_log(record(17, "export failed: rpc error: code = Unavailable desc = x"))
    assert c is not None and c.error_type == "UNAVAILABLE"


def test_log_rules() -> None:
    c = rules(
        ClassifyRule(
            id="kafka",
            match=RuleMatch(exception_type="^org\\.apache\\.kafka", message="rebalance"),
            set=RuleSet(recoverability=Recoverability.RETRYABLE, category=Category.CONCURRENCY),
        )
    )
    got = c.classify_log(
        record(
            17,
            "x",
            {
                "exception.type": "org.apache.kafka.CommitFailedException",
                "exception.message": "group rebalance in progress",
            },
        )
    )
    assert got is not None and (got.classified_by, got.category, got.severity) == (
        "kafka",
        Category.CONCURRENCY,
        Severity.LOW,
    )


def test_log_weird_values() -> None:
    r = record(17)
    r.attributes.add(key="exception.type").value.array_value.values.add().bool_value = True
    r.attributes.add(key="exception.message").value.bytes_value = b"\x00"
    c = Classifier().classify_log(r)
    assert c is not None and c.error_type == "_OTHER"
