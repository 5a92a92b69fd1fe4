"""The Classifier (DESIGN.md §3): export failures, partial successes, error spans and logs.

Pure: no I/O, no clocks. Its parts live beside it, one concern each: the vocabulary and export tables
(vocabulary.py), exception types and messages (error_text.py), the span and log evidence readers shared with
enrich and wire (evidence.py), configured rules (rules.py), escalation (escalation.py); RetryInfo and
Retry-After parsing sits with the transports (exporters/hints.py).

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

import math

from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import ClassifyProcessorConfig
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import Classification, default_severity
from sidecar.pipeline.error_text import exception_evidence
from sidecar.pipeline.evidence import LogFacts, SpanFacts, log_facts, span_facts
from sidecar.pipeline.rules import CompiledRule, Evidence
from sidecar.pipeline.vocabulary import (
    APP_PERMANENT,
    CLIENT_ERROR_NAME,
    CLIENT_ERRORS,
    EXPORT_PERMANENT,
    EXPORT_RETRY,
    GRPC_CODES,
    MAX_ERROR_TYPE_CHARS,
    OTHER,
    T_OTHER,
    T_PARTIAL_SUCCESS,
    T_TOO_LARGE,
    TRANSPORT_RETRY,
    Template,
    db_template,
    error_type_from_exception,
    grpc_code_name,
    grpc_template,
    http_app_template,
    http_export_template,
    is_message_too_large,
    truncate,
)


class Classifier:
    """Classifies export failures, partial successes, error spans and error log records.

    Built once from `processors.classify`; rule regexes are compiled here. Thread-safe and pure.
    """

    def __init__(self, config: ClassifyProcessorConfig | None = None) -> None:
        config = config or ClassifyProcessorConfig()
        self.strict_otlp = config.strict_otlp
        self._rules: tuple[CompiledRule, ...] = tuple(CompiledRule.compile(rule) for rule in config.rules)
        self._made: dict[tuple[Template, str], Classification] = {}
        self._ruled: dict[tuple[int, int], tuple[Classification, Classification]] = {}

    @property
    def effective(self) -> Classifier:
        """The classifier that decides: itself (a reloadable handle answers the one it delegates to now)."""
        return self

    # -------------------------------------------------------------- building blocks

    def _make(self, template: Template, by: str, retry_after: float | None = None) -> Classification:
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

    def _apply_rules(self, default: Classification, evidence: Evidence) -> Classification:
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
        grpc_code = grpc_code_name(failure.grpc_code) if failure.grpc_code else None
        template: Template
        if failure.client_error:
            by = "default:client_error"
            template = CLIENT_ERRORS.get(failure.client_error) or (
                *TRANSPORT_RETRY,
                failure.client_error if CLIENT_ERROR_NAME.fullmatch(failure.client_error) else OTHER,
            )
        elif failure.grpc_code:
            by = "default:grpc_code"
            if grpc_code is None:  # not a gRPC status name: not retryable, like UNKNOWN
                template = (*EXPORT_PERMANENT, OTHER)
            else:
                template = grpc_template(grpc_code, message, failure.has_retry_info, self.strict_otlp, app=False)
        elif failure.http_status is not None:
            by = "default:http_status"
            template = http_export_template(failure.http_status)
        elif is_message_too_large(message):
            by = "default:message"
            template = T_TOO_LARGE
        else:
            # Nothing observed: retry within the budget rather than drop what may be fine data.
            by = "default:unknown"
            template = (*EXPORT_RETRY, OTHER)
        retry_after = failure.retry_after
        if retry_after is not None:
            retry_after = max(0.0, retry_after) if math.isfinite(retry_after) else None
        default = self._make(template, by, retry_after)
        if not self._rules:
            return default
        evidence = Evidence(
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
        return self._apply_rules(default, Evidence(messages=(message or "",)))

    # -------------------------------------------------------------- spans

    def classify_span(self, span: trace_pb2.Span) -> Classification | None:
        """The class of an error span, None when the span is not an error (DESIGN §3)."""
        facts = span_facts(span)
        if not facts.is_error:
            return None
        return self.classify_span_facts(facts)

    def classify_span_facts(self, facts: SpanFacts) -> Classification:
        template: Template | None = None
        by = ""
        grpc_from_exception: str | None = None
        for exc_type, exc_msg in facts.exceptions:
            found, code = exception_evidence(exc_type, exc_msg)
            if found is not None:
                if code is not None and code == "RESOURCE_EXHAUSTED":
                    found = grpc_template(code, exc_msg, False, self.strict_otlp, app=True)
                template, by, grpc_from_exception = found, "default:exception", code
                break
        grpc_code = None
        if facts.rpc_code is not None and facts.rpc_code in GRPC_CODES:
            grpc_code = facts.rpc_code
        if template is None and facts.rpc_error and facts.rpc_code is not None:
            by = "default:rpc_status_code"
            if grpc_code is not None:
                template = grpc_template(grpc_code, facts.status_message, False, self.strict_otlp, app=True)
            else:
                template = (*APP_PERMANENT, facts.rpc_code[:MAX_ERROR_TYPE_CHARS])
        if template is None and facts.db_code is not None:
            template = db_template(facts.db_code)
            by = "default:db_status_code"
        if template is None and facts.http_status is not None and facts.http_status >= 400:
            template, by = http_app_template(facts.http_status), "default:http_status"
        if template is None and facts.exceptions:
            template = (*APP_PERMANENT, error_type_from_exception(facts.exceptions[-1][0]))
            by = "default:exception"
        if template is None and facts.status_message:
            found, code = exception_evidence("", facts.status_message)
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
        evidence = Evidence(
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
        template: Template | None = None
        by = ""
        grpc_code: str | None = None
        body: str | None = None
        if record.HasField("body") and record.body.WhichOneof("value") == "string_value":
            body = truncate(record.body.string_value)
        if facts.exception_type or facts.exception_message:
            template, grpc_code = exception_evidence(facts.exception_type, facts.exception_message)
            by = "default:exception"
        if template is None and body:
            template, grpc_code = exception_evidence("", body)
            by = "default:log_body"
        if template is None and facts.exception_type:
            template, by = (*APP_PERMANENT, error_type_from_exception(facts.exception_type)), "default:exception"
        if template is None:
            template, by = T_OTHER, "default:log"
        if grpc_code == "RESOURCE_EXHAUSTED":
            template = grpc_template(grpc_code, facts.exception_message or body or "", False, self.strict_otlp,
                                      app=True)
        default = self._make(template, by)
        if not self._rules:
            return default
        messages: tuple[str, ...] = tuple(m for m in (facts.exception_message, body) if m)
        evidence = Evidence(
            grpc_code=grpc_code,
            messages=messages,
            exception_types=(facts.exception_type,) if facts.exception_type else (),
        )
        return self._apply_rules(default, evidence)
