"""Export-failure classification: DESIGN.md §3's export table, hints, rules, escalation."""

from __future__ import annotations

import email.utils

import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from sidecar.config.schema import ClassifyProcessorConfig, ClassifyRule, RuleMatch, RuleSet
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import (
    Category,
    Classification,
    Recoverability,
    Recovery,
    Severity,
    default_severity,
)
from sidecar.exporters.hints import parse_retry_after, retry_info_from_status_details
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.escalation import escalate
from sidecar.pipeline.vocabulary import is_message_too_large

# ----------------------------------------------------------------------------- the export table

# (failure, category, recoverability, recovery, error_type, classified_by)
EXPORT_TABLE = [
    # transport / retryable / retry_with_backoff
    (
        ExportFailure(grpc_code="UNAVAILABLE"),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "UNAVAILABLE",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=502),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "http_502",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=503),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "http_503",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=504),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "http_504",
        "default:http_status",
    ),
    (
        ExportFailure(client_error="connection_refused"),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "connection_refused",
        "default:client_error",
    ),
    (
        ExportFailure(client_error="connection_reset"),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "connection_reset",
        "default:client_error",
    ),
    # timeout / retryable / increase_timeout
    (
        ExportFailure(grpc_code="DEADLINE_EXCEEDED"),
        Category.TIMEOUT,
        Recoverability.RETRYABLE,
        Recovery.INCREASE_TIMEOUT,
        "DEADLINE_EXCEEDED",
        "default:grpc_code",
    ),
    (
        ExportFailure(client_error="timeout"),
        Category.TIMEOUT,
        Recoverability.RETRYABLE,
        Recovery.INCREASE_TIMEOUT,
        "timeout",
        "default:client_error",
    ),
    # export / retryable
    (
        ExportFailure(grpc_code="CANCELLED"),
        Category.EXPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "CANCELLED",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="ABORTED"),
        Category.EXPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "ABORTED",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="OUT_OF_RANGE"),
        Category.EXPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "OUT_OF_RANGE",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="DATA_LOSS"),
        Category.EXPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "DATA_LOSS",
        "default:grpc_code",
    ),
    # resource_exhausted with a hint / 429
    (
        ExportFailure(grpc_code="RESOURCE_EXHAUSTED", has_retry_info=True, retry_after=2.0),
        Category.RESOURCE_EXHAUSTED,
        Recoverability.TEMPORARY,
        Recovery.RETRY_WITH_BACKOFF,
        "RESOURCE_EXHAUSTED",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=429),
        Category.RESOURCE_EXHAUSTED,
        Recoverability.TEMPORARY,
        Recovery.RETRY_WITH_BACKOFF,
        "http_429",
        "default:http_status",
    ),
    # too large
    (
        ExportFailure(grpc_code="RESOURCE_EXHAUSTED", message="grpc: received message larger than max (5 vs. 4)"),
        Category.RESOURCE_EXHAUSTED,
        Recoverability.TEMPORARY,
        Recovery.SPLIT_AND_RETRY,
        "payload_too_large",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=413),
        Category.RESOURCE_EXHAUSTED,
        Recoverability.TEMPORARY,
        Recovery.SPLIT_AND_RETRY,
        "payload_too_large",
        "default:http_status",
    ),
    # resource_exhausted without RetryInfo (not strict)
    (
        ExportFailure(grpc_code="RESOURCE_EXHAUSTED", message="data refused due to high memory usage"),
        Category.RESOURCE_EXHAUSTED,
        Recoverability.TEMPORARY,
        Recovery.RETRY_WITH_BACKOFF,
        "RESOURCE_EXHAUSTED",
        "default:grpc_code",
    ),
    # serialization / permanent / drop
    (
        ExportFailure(grpc_code="INVALID_ARGUMENT"),
        Category.SERIALIZATION,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "INVALID_ARGUMENT",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=400),
        Category.SERIALIZATION,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "http_400",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=415),
        Category.SERIALIZATION,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "http_415",
        "default:http_status",
    ),
    # configuration / fatal / manual_intervention
    (
        ExportFailure(grpc_code="UNAUTHENTICATED"),
        Category.CONFIGURATION,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "UNAUTHENTICATED",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="PERMISSION_DENIED"),
        Category.CONFIGURATION,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "PERMISSION_DENIED",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=401),
        Category.CONFIGURATION,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "http_401",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=403),
        Category.CONFIGURATION,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "http_403",
        "default:http_status",
    ),
    (
        ExportFailure(client_error="tls_handshake"),
        Category.CONFIGURATION,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "tls_handshake",
        "default:client_error",
    ),
    # version_mismatch / fatal / manual_intervention
    (
        ExportFailure(grpc_code="UNIMPLEMENTED"),
        Category.VERSION_MISMATCH,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "UNIMPLEMENTED",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=404),
        Category.VERSION_MISMATCH,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "http_404",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=405),
        Category.VERSION_MISMATCH,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "http_405",
        "default:http_status",
    ),
    # DNS
    (
        ExportFailure(client_error="dns"),
        Category.TRANSPORT,
        Recoverability.TEMPORARY,
        Recovery.RETRY_WITH_BACKOFF,
        "dns",
        "default:client_error",
    ),
    # the sidecar itself
    (
        ExportFailure(client_error="internal", message="KeyError: 'x'"),
        Category.INTERNAL,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "internal",
        "default:client_error",
    ),
    # not in the table: the OTLP spec's non-retryable codes / statuses
    (
        ExportFailure(grpc_code="UNKNOWN"),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "UNKNOWN",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="INTERNAL"),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "INTERNAL",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="FAILED_PRECONDITION"),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "FAILED_PRECONDITION",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="NOT_FOUND"),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "NOT_FOUND",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="ALREADY_EXISTS"),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "ALREADY_EXISTS",
        "default:grpc_code",
    ),
    (
        ExportFailure(grpc_code="NOT_A_CODE"),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "_OTHER",
        "default:grpc_code",
    ),
    (
        ExportFailure(http_status=500),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "http_500",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=422),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "http_422",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=408),
        Category.EXPORT,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "http_408",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=501),
        Category.VERSION_MISMATCH,
        Recoverability.FATAL,
        Recovery.MANUAL_INTERVENTION,
        "http_501",
        "default:http_status",
    ),
    (
        ExportFailure(http_status=308),
        Category.CONFIGURATION,
        Recoverability.FATAL,
        Recovery.VALIDATE_CONFIG,
        "http_308",
        "default:http_status",
    ),
    (
        ExportFailure(client_error="connection_closed"),
        Category.TRANSPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "connection_closed",
        "default:client_error",
    ),
    (
        ExportFailure(),
        Category.EXPORT,
        Recoverability.RETRYABLE,
        Recovery.RETRY_WITH_BACKOFF,
        "_OTHER",
        "default:unknown",
    ),
]


@pytest.mark.parametrize(
    ("failure", "category", "recoverability", "recovery", "error_type", "by"),
    EXPORT_TABLE,
    ids=[f"{f.grpc_code or f.http_status or f.client_error or 'none'}-{i}" for i, (f, *_) in enumerate(EXPORT_TABLE)],
)
def test_export_table(
    failure: ExportFailure,
    category: Category,
    recoverability: Recoverability,
    recovery: Recovery,
    error_type: str,
    by: str,
) -> None:
    c = Classifier().classify_export(failure)
    assert (c.category, c.recoverability, c.recovery, c.error_type, c.classified_by) == (
        category,
        recoverability,
        recovery,
        error_type,
        by,
    )
    assert c.severity == default_severity(recoverability)
    assert c.retryable == (recoverability in (Recoverability.RETRYABLE, Recoverability.TEMPORARY))


def test_severity_follows_recoverability() -> None:
    assert [default_severity(r) for r in Recoverability] == [
        Severity.LOW,
        Severity.MEDIUM,
        Severity.HIGH,
        Severity.CRITICAL,
    ]


def test_grpc_code_spelling_is_normalised() -> None:
    classifier = Classifier()
    for spelling in ("UNAVAILABLE", "Unavailable", "unavailable", "14"):
        assert classifier.classify_export(ExportFailure(grpc_code=spelling)).error_type == "UNAVAILABLE"


def test_client_error_wins_over_codes() -> None:
    c = Classifier().classify_export(ExportFailure(grpc_code="UNKNOWN", client_error="connection_refused"))
    assert c.error_type == "connection_refused"
    assert c.recoverability is Recoverability.RETRYABLE


def test_grpc_code_wins_over_http_status() -> None:
    c = Classifier().classify_export(ExportFailure(grpc_code="UNAVAILABLE", http_status=400))
    assert c.error_type == "UNAVAILABLE"


def test_message_only_too_large() -> None:
    c = Classifier().classify_export(ExportFailure(message="request body too large"))
    assert c.recovery is Recovery.SPLIT_AND_RETRY


# ----------------------------------------------------------------------------- strict_otlp


def test_strict_otlp_drops_resource_exhausted_without_retry_info() -> None:
    strict = Classifier(ClassifyProcessorConfig(strict_otlp=True))
    c = strict.classify_export(ExportFailure(grpc_code="RESOURCE_EXHAUSTED", message="memory limiter"))
    assert (c.category, c.recoverability, c.recovery) == (
        Category.RESOURCE_EXHAUSTED,
        Recoverability.PERMANENT,
        Recovery.DROP,
    )
    assert c.severity is Severity.HIGH


def test_strict_otlp_keeps_retry_info_and_size_rows() -> None:
    strict = Classifier(ClassifyProcessorConfig(strict_otlp=True))
    hinted = strict.classify_export(ExportFailure(grpc_code="RESOURCE_EXHAUSTED", has_retry_info=True, retry_after=1.5))
    assert (hinted.recoverability, hinted.recovery, hinted.retry_after) == (
        Recoverability.TEMPORARY,
        Recovery.RETRY_WITH_BACKOFF,
        1.5,
    )
    large = strict.classify_export(
        ExportFailure(grpc_code="RESOURCE_EXHAUSTED", message="Received message larger than max (9 vs. 4)")
    )
    assert large.recovery is Recovery.SPLIT_AND_RETRY
    assert strict.classify_export(ExportFailure(grpc_code="UNAVAILABLE")).retryable


def test_too_large_wins_over_retry_info() -> None:
    failure = ExportFailure(
        grpc_code="RESOURCE_EXHAUSTED",
        has_retry_info=True,
        retry_after=1.0,
        message="gRPC message exceeds maximum size 4194304",
    )
    c = Classifier().classify_export(failure)
    assert c.recovery is Recovery.SPLIT_AND_RETRY
    assert c.error_type == "payload_too_large"


# ----------------------------------------------------------------------------- hints


def test_retry_after_is_carried_on_transient_classes_only() -> None:
    classifier = Classifier()
    assert classifier.classify_export(ExportFailure(http_status=429, retry_after=7.0)).retry_after == 7.0
    assert (
        classifier.classify_export(ExportFailure(http_status=503, retry_after=3.0, has_retry_info=True)).retry_after
        == 3.0
    )
    assert (
        classifier.classify_export(
            ExportFailure(grpc_code="UNAVAILABLE", retry_after=0.5, has_retry_info=True)
        ).retry_after
        == 0.5
    )
    assert classifier.classify_export(ExportFailure(http_status=400, retry_after=3.0)).retry_after is None
    assert classifier.classify_export(ExportFailure(http_status=429)).retry_after is None
    assert classifier.classify_export(ExportFailure(http_status=429, retry_after=-2.0)).retry_after == 0.0


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("grpc: received message larger than max (5242880 vs. 4194304)", True),  # grpc-go
        ("grpc: trying to send message larger than max (5242880 vs. 4194304)", True),
        ("Received message larger than max (5242880 vs. 4194304)", True),  # grpc-core, grpc-js
        ("Sent message larger than max (5242880 vs. 4194304)", True),
        ("gRPC message exceeds maximum size 4194304: 5242880", True),  # grpc-java
        ("Received message exceeds the maximum configured message size.", True),  # grpc-dotnet
        ("request body too large", True),  # Collector otlphttp receiver
        ("Request Entity Too Large", True),
        ("data refused due to high memory usage", False),  # Collector memory limiter
        ("rate limited", False),
        ("request rate exceeds the limit", False),
        ("", False),
    ],
)
def test_is_message_too_large(message: str, expected: bool) -> None:
    assert is_message_too_large(message) is expected


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  0 ", 0.0),
        ("1.5", 1.5),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # in the past: clamped
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("inf", None),
        ("nan", None),
        ("1e9", None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
        ("9" * 200, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-6)


def test_parse_retry_after_date_without_zone_is_utc() -> None:
    assert parse_retry_after("Tue, 14 Nov 2023 22:14:00 -0000", NOW) == pytest.approx(1_700_000_040.0 - NOW)


def _status_details(*details: object) -> bytes:
    status = status_pb2.Status(code=8, message="slow down")
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return status.SerializeToString()


def test_retry_info_decoding() -> None:
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    other = error_details_pb2.ErrorInfo(reason="QUOTA")
    assert retry_info_from_status_details(_status_details(other, info)) == pytest.approx(2.5)
    assert retry_info_from_status_details(_status_details(error_details_pb2.RetryInfo())) == 0.0
    assert retry_info_from_status_details(_status_details(other)) is None
    assert retry_info_from_status_details(_status_details()) is None
    negative = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=-3))
    assert retry_info_from_status_details(_status_details(negative)) == 0.0


@pytest.mark.parametrize("garbage", [None, b"", b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x1a\x03\x0a\x01x", "text"])
def test_retry_info_garbage_is_none(garbage: object) -> None:
    assert retry_info_from_status_details(garbage) is None  # type: ignore[arg-type]


def test_retry_info_with_undecodable_payload_is_none() -> None:
    status = status_pb2.Status(code=8)
    status.details.add(type_url="type.googleapis.com/google.rpc.RetryInfo", value=b"\xff\xff\xff")
    assert retry_info_from_status_details(status.SerializeToString()) is None


# ----------------------------------------------------------------------------- partial success


def test_partial_success() -> None:
    c = Classifier().classify_partial_success(3, "3 spans had invalid trace ids")
    assert (c.category, c.recoverability, c.recovery, c.error_type, c.classified_by) == (
        Category.PROCESSING,
        Recoverability.PERMANENT,
        Recovery.DROP,
        "partial_success",
        "default:partial_success",
    )
    assert not c.retryable


# ----------------------------------------------------------------------------- rules


def rule(rule_id: str, set_: RuleSet, **match: object) -> ClassifyRule:
    return ClassifyRule(id=rule_id, match=RuleMatch(**match), set=set_)  # type: ignore[arg-type]


def classifier(*rules: ClassifyRule, strict: bool = False) -> Classifier:
    return Classifier(ClassifyProcessorConfig(strict_otlp=strict, rules=list(rules)))


def test_rule_on_grpc_code_partial_override() -> None:
    c = classifier(rule("unavail-permanent", RuleSet(recoverability=Recoverability.PERMANENT), grpc_code="UNAVAILABLE"))
    got = c.classify_export(ExportFailure(grpc_code="UNAVAILABLE", retry_after=4.0, has_retry_info=True))
    assert got.classified_by == "unavail-permanent"
    assert got.recoverability is Recoverability.PERMANENT
    # untouched fields keep the default's values; severity is re-derived; a permanent class has no hint
    assert (got.category, got.recovery, got.error_type) == (
        Category.TRANSPORT,
        Recovery.RETRY_WITH_BACKOFF,
        "UNAVAILABLE",
    )
    assert got.severity is Severity.HIGH
    assert got.retry_after is None
    # other codes are untouched
    assert c.classify_export(ExportFailure(grpc_code="ABORTED")).classified_by == "default:grpc_code"


def test_rule_sets_every_field() -> None:
    set_ = RuleSet(
        category=Category.CONCURRENCY,
        severity=Severity.LOW,
        recoverability=Recoverability.FATAL,
        recovery=Recovery.SCALE_RESOURCES,
        error_type="custom",
    )
    got = classifier(rule("all", set_, http_status=[418])).classify_export(ExportFailure(http_status=418))
    assert got == Classification(
        Category.CONCURRENCY, Severity.LOW, Recoverability.FATAL, Recovery.SCALE_RESOURCES, "custom", "all"
    )


def test_rule_keeps_retry_after_when_still_transient() -> None:
    got = classifier(rule("sev", RuleSet(severity=Severity.CRITICAL), http_status=[429])).classify_export(
        ExportFailure(http_status=429, retry_after=9.0, has_retry_info=True)
    )
    assert (got.severity, got.retry_after, got.recoverability) == (Severity.CRITICAL, 9.0, Recoverability.TEMPORARY)


def test_rule_on_http_status_list() -> None:
    c = classifier(
        rule(
            "5xx",
            RuleSet(recoverability=Recoverability.RETRYABLE, recovery=Recovery.RETRY_WITH_BACKOFF),
            http_status=[500, 501],
        )
    )
    assert c.classify_export(ExportFailure(http_status=500)).classified_by == "5xx"
    assert c.classify_export(ExportFailure(http_status=501)).recoverability is Recoverability.RETRYABLE
    assert c.classify_export(ExportFailure(http_status=505)).classified_by == "default:http_status"
    assert c.classify_export(ExportFailure(grpc_code="INTERNAL")).classified_by == "default:grpc_code"


def test_rule_on_message_regex_is_searched() -> None:
    c = classifier(rule("memlimit", RuleSet(severity=Severity.HIGH), message=r"high memory usage"))
    got = c.classify_export(
        ExportFailure(grpc_code="RESOURCE_EXHAUSTED", message="data refused due to high memory usage")
    )
    assert (got.classified_by, got.severity, got.recoverability) == (
        "memlimit",
        Severity.HIGH,
        Recoverability.TEMPORARY,
    )
    assert c.classify_export(ExportFailure(grpc_code="RESOURCE_EXHAUSTED", message="x")).classified_by == (
        "default:grpc_code"
    )


def test_rule_on_has_retry_info() -> None:
    c = classifier(
        rule(
            "no-hint",
            RuleSet(recoverability=Recoverability.PERMANENT, recovery=Recovery.DROP),
            grpc_code="RESOURCE_EXHAUSTED",
            has_retry_info=False,
        )
    )
    assert c.classify_export(ExportFailure(grpc_code="RESOURCE_EXHAUSTED")).classified_by == "no-hint"
    hinted = c.classify_export(ExportFailure(grpc_code="RESOURCE_EXHAUSTED", has_retry_info=True))
    assert hinted.classified_by == "default:grpc_code"


def test_rule_on_error_type() -> None:
    c = classifier(rule("dns-fatal", RuleSet(recoverability=Recoverability.FATAL), error_type="dns"))
    assert c.classify_export(ExportFailure(client_error="dns")).recoverability is Recoverability.FATAL
    assert c.classify_export(ExportFailure(client_error="timeout")).classified_by == "default:client_error"


def test_rule_on_exception_type_does_not_match_exports() -> None:
    c = classifier(rule("exc", RuleSet(severity=Severity.LOW), exception_type=".*"))
    assert c.classify_export(ExportFailure(grpc_code="UNAVAILABLE")).classified_by == "default:grpc_code"


def test_all_conditions_must_hold() -> None:
    c = classifier(rule("both", RuleSet(severity=Severity.CRITICAL), grpc_code="UNAVAILABLE", message="^drain"))
    assert c.classify_export(ExportFailure(grpc_code="UNAVAILABLE", message="draining")).classified_by == "both"
    assert c.classify_export(ExportFailure(grpc_code="UNAVAILABLE", message="x drain")).classified_by != "both"
    assert c.classify_export(ExportFailure(grpc_code="ABORTED", message="draining")).classified_by != "both"


def test_first_match_wins() -> None:
    c = classifier(
        rule("first", RuleSet(severity=Severity.LOW), grpc_code="UNAVAILABLE"),
        rule("second", RuleSet(severity=Severity.CRITICAL), grpc_code="UNAVAILABLE"),
        rule("third", RuleSet(severity=Severity.CRITICAL), message="."),
    )
    assert c.classify_export(ExportFailure(grpc_code="UNAVAILABLE", message="x")).classified_by == "first"
    assert c.classify_export(ExportFailure(grpc_code="ABORTED", message="x")).classified_by == "third"


def test_rule_on_partial_success() -> None:
    c = classifier(rule("ps", RuleSet(severity=Severity.LOW), error_type="partial_success", message="invalid"))
    assert c.classify_partial_success(1, "invalid span").classified_by == "ps"
    assert c.classify_partial_success(1, "other").classified_by == "default:partial_success"


def test_rules_with_strict_otlp() -> None:
    c = classifier(
        rule(
            "keep",
            RuleSet(recoverability=Recoverability.TEMPORARY, recovery=Recovery.RETRY_WITH_BACKOFF),
            grpc_code="RESOURCE_EXHAUSTED",
        ),
        strict=True,
    )
    got = c.classify_export(ExportFailure(grpc_code="RESOURCE_EXHAUSTED"))
    assert (got.recoverability, got.severity, got.classified_by) == (Recoverability.TEMPORARY, Severity.MEDIUM, "keep")


def test_invalid_rule_regex_fails_at_construction() -> None:
    with pytest.raises(Exception):  # noqa: B017 - re.error
        classifier(rule("bad", RuleSet(severity=Severity.LOW), message="("))


# ----------------------------------------------------------------------------- escalation


def _c(recoverability: Recoverability, severity: Severity | None = None) -> Classification:
    return Classification(
        Category.TRANSPORT,
        severity or default_severity(recoverability),
        recoverability,
        Recovery.RETRY_WITH_BACKOFF,
        "UNAVAILABLE",
    )


@pytest.mark.parametrize(
    ("recoverability", "occurrences", "expected"),
    [
        (Recoverability.RETRYABLE, 0, Severity.LOW),
        (Recoverability.RETRYABLE, 9, Severity.LOW),
        (Recoverability.RETRYABLE, 10, Severity.MEDIUM),
        (Recoverability.RETRYABLE, 99, Severity.MEDIUM),
        (Recoverability.RETRYABLE, 100, Severity.HIGH),
        (Recoverability.TEMPORARY, 10, Severity.HIGH),
        (Recoverability.TEMPORARY, 100, Severity.CRITICAL),
        (Recoverability.TEMPORARY, 10_000, Severity.CRITICAL),
        (Recoverability.PERMANENT, 1000, Severity.HIGH),
        (Recoverability.FATAL, 1000, Severity.CRITICAL),
    ],
)
def test_escalate(recoverability: Recoverability, occurrences: int, expected: Severity) -> None:
    base = _c(recoverability)
    got = escalate(base, occurrences)
    assert got.severity is expected
    assert (got.category, got.recoverability, got.recovery, got.error_type) == (
        base.category,
        base.recoverability,
        base.recovery,
        base.error_type,
    )


def test_escalate_caps_at_critical_and_returns_same_object_when_unchanged() -> None:
    already = _c(Recoverability.RETRYABLE, Severity.CRITICAL)
    assert escalate(already, 500) is already
    low = _c(Recoverability.RETRYABLE)
    assert escalate(low, 1) is low
    assert escalate(_c(Recoverability.RETRYABLE, Severity.HIGH), 100).severity is Severity.CRITICAL
