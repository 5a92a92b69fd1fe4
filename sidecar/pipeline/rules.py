"""Configured classification rules (`processors.classify.rules`), compiled once: the first match wins."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.config.schema import ClassifyRule, RuleSet
from sidecar.core.taxonomy import Classification, default_severity
from sidecar.pipeline.vocabulary import (
    truncate,
)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a rule can match on."""

    grpc_code: str | None = None
    http_status: int | None = None
    messages: tuple[str, ...] = ()
    has_retry_info: bool = False
    exception_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    grpc_code: str | None
    http_status: frozenset[int] | None
    message: re.Pattern[str] | None
    has_retry_info: bool | None
    exception_type: re.Pattern[str] | None
    error_type: str | None
    set: RuleSet

    @classmethod
    def compile(cls, rule: ClassifyRule) -> CompiledRule:
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

    def matches(self, ev: Evidence, default: Classification) -> bool:
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
            if not any(rx.search(truncate(msg)) for msg in ev.messages):
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


