"""Reading the evidence of an error from a span or a log record in one pass: status-code attributes,
exception events and attributes. Shared by the classifier, enrich and the wire-level pre-scan.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.pipeline.vocabulary import (
    GRPC_CODE_NAMES,
    MAX_ERROR_TYPE_CHARS,
    grpc_code_name,
    truncate,
)

HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")  # current, deprecated
RPC_STATUS_KEYS = ("rpc.response.status_code", "rpc.grpc.status_code")  # current, deprecated
DB_STATUS_KEY = "db.response.status_code"
STATUS_CODE_KEYS = frozenset((*HTTP_STATUS_KEYS, *RPC_STATUS_KEYS))

_STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
_KIND_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
_KIND_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
SEVERITY_ERROR = 17  # SEVERITY_NUMBER_ERROR


def http_value(value: common_pb2.AnyValue) -> int | None:
    """An HTTP status from an int (or, leniently, a digit string) AnyValue."""
    which = value.WhichOneof("value")
    if which == "int_value":
        return int(value.int_value)
    if which == "string_value":
        s = value.string_value.strip()
        if 0 < len(s) <= 3 and s.isascii() and s.isdigit():
            return int(s)
    return None


def http_clearly_ok(value: common_pb2.AnyValue) -> bool:
    """No value, or an int in [0, 400): OK for every span kind. Mirrors enrich's byte-level pre-scan."""
    which = value.WhichOneof("value")
    if which is None:
        return True
    return which == "int_value" and 0 <= value.int_value < 400


def http_4xx(value: common_pb2.AnyValue) -> bool:
    """An int in [400, 500): an error on CLIENT spans only. Mirrors enrich's byte-level pre-scan."""
    return value.WhichOneof("value") == "int_value" and 400 <= value.int_value < 500


def rpc_value(value: common_pb2.AnyValue) -> tuple[str | None, bool]:
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
        return (grpc_code_name(s) or s[:MAX_ERROR_TYPE_CHARS]), True
    return None, False


def rpc_clearly_ok(value: common_pb2.AnyValue) -> bool:
    """No value, int 0, or exactly "OK" / "0". Mirrors enrich's byte-level pre-scan."""
    which = value.WhichOneof("value")
    if which is None:
        return True
    if which == "int_value":
        return value.int_value == 0
    return which == "string_value" and value.string_value in ("OK", "0")


def string_of(value: common_pb2.AnyValue) -> str | None:
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
                    http_old = http_value(value)
                else:
                    facts.http_status = http_value(value)
                if not http_clearly_ok(value):
                    facts.suspects += 1
                    facts.suspects_4xx += http_4xx(value)
            elif key == "rpc.response.status_code":
                rpc_new = rpc_value(value)
                facts.suspects += not rpc_clearly_ok(value)
            elif key == "rpc.grpc.status_code":
                rpc_old = rpc_value(value)
                facts.suspects += not rpc_clearly_ok(value)
            elif key == DB_STATUS_KEY:
                which = value.WhichOneof("value")
                if which == "string_value":
                    facts.db_code = value.string_value
                elif which == "int_value":
                    facts.db_code = str(value.int_value)
                else:  # a repeated key: the last occurrence decides, as in the byte-level view
                    facts.db_code = None
            elif key == "exception.type":
                exc_type = string_of(value) or ""
            elif key == "exception.message":
                exc_msg = string_of(value) or ""
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
                    e_type = string_of(event_attributes[index].value) or ""
                elif key == "exception.message":
                    e_msg = string_of(event_attributes[index].value) or ""
            facts.exceptions.append((e_type, truncate(e_msg)))
    if exc_type or exc_msg:  # exception attributes on the span itself (older instrumentations)
        facts.exceptions.append((exc_type, truncate(exc_msg)))
    if facts.status_code == _STATUS_ERROR or facts.exceptions or facts.db_code is not None:
        facts.status_message = truncate(span.status.message)
    return facts


_KEY = operator.attrgetter("key")


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
                facts.exception_type = string_of(attributes[index].value) or ""
            elif key == "exception.message":
                facts.exception_message = truncate(string_of(attributes[index].value) or "")
    return facts


