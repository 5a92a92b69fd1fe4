"""Retry policy: what to do after one failed attempt (policy only; the sender does the waiting).

The decision for a classified failure, in this order:

1. recovery ``split_and_retry`` ("payload too large")       -> SPLIT
2. not retryable (permanent, fatal)                          -> DEAD_LETTER
3. ``retry_on_failure.enabled: false``                       -> DEAD_LETTER ("retry_disabled";
   the Collector would drop the data, we keep it in the dead-letter store)
4. ``max_attempts`` (> 0) transport attempts were made      -> DEAD_LETTER ("max_attempts")
5. backoff (hint as a floor) would end past ``max_elapsed_time`` since the first attempt
                                                             -> DEAD_LETTER ("max_elapsed_time")
6. the retry budget of the endpoint that failed refuses      -> REQUEUE (not dropped; the
   queue offers the entry again later; `delay` is the backoff that was planned)
7. otherwise                                                 -> RETRY after `delay`

Both limits count within one delivery run (`RetryState`): a request requeued because the budget
refused its retry, or because every breaker was open, starts a new run when it is sent again.

The retry budget charged is the one of the endpoint whose failure caused the retry (that is the
endpoint a retry storm would hurt), even when the retry fails over to another endpoint.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.config.schema import RetryConfig
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import Classification, Recovery
from sidecar.exporters.backoff import AdaptiveBase, Backoff
from sidecar.exporters.budget import RetryBudget


class ExportClassifier(Protocol):
    """What the chain needs from `sidecar.pipeline.classify.Classifier`."""

    def classify_export(self, failure: ExportFailure) -> Classification: ...

    def classify_partial_success(self, rejected: int, message: str) -> Classification: ...


class RetryAction(enum.StrEnum):
    RETRY = "retry"
    SPLIT = "split"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


class Reason(enum.StrEnum):
    """Why a send ended as it did (`SendReport.reason`, `RetryDecision.reason`); also the dead letter's message."""

    NONE = ""
    PERMANENT = "permanent"  # the class is not retryable (`Recoverability.PERMANENT`)
    FATAL = "fatal"  # ... or needs a person (`Recoverability.FATAL`)
    RETRY_DISABLED = "retry_disabled"
    MAX_ELAPSED_TIME = "max_elapsed_time"
    MAX_ATTEMPTS = "max_attempts"  # retry_on_failure.max_attempts reached
    BUDGET_EXHAUSTED = "budget_exhausted"
    PAYLOAD_TOO_LARGE = "payload_too_large"  # split and retried
    TOO_LARGE = "too_large"  # a single item over the limit: cannot be split further
    BREAKER_OPEN = "breaker_open"
    PARTIAL_SUCCESS = "partial_success"
    SPLIT = "split"  # the report combines the parts of a split entry


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDecision:
    action: RetryAction
    delay: float | None = None  # RETRY: the wait; REQUEUE: the wait that was planned (a retry_after hint)
    reason: Reason = Reason.NONE


@dataclass(slots=True)
class RetryState:
    """The retry history of one entry within one `send`."""

    started_at: float  # monotonic time of the first attempt
    retries: int = 0
    prev_delay: float | None = None


def server_hint(classification: Classification, failure: ExportFailure | None = None) -> float | None:
    """The server's throttle hint: the classification's, else the raw failure's."""
    if classification.retry_after is not None:
        return classification.retry_after
    return failure.retry_after if failure is not None else None


class RetryPolicy:
    def __init__(
        self,
        config: RetryConfig,
        backoff: Backoff,
        budgets: Mapping[str, RetryBudget],
        bases: Mapping[str, AdaptiveBase] | None = None,
    ) -> None:
        self.config = config
        self.backoff = backoff
        self._budgets = budgets
        self._bases = bases or {}

    def decide(
        self,
        state: RetryState,
        classification: Classification,
        endpoint: str,
        now: float,
        failure: ExportFailure | None = None,
    ) -> RetryDecision:
        if classification.recovery is Recovery.SPLIT_AND_RETRY:
            return RetryDecision(action=RetryAction.SPLIT, reason=Reason.PAYLOAD_TOO_LARGE)
        if not classification.retryable:
            return RetryDecision(action=RetryAction.DEAD_LETTER, reason=Reason(classification.recoverability.value))
        if not self.config.enabled:
            return RetryDecision(action=RetryAction.DEAD_LETTER, reason=Reason.RETRY_DISABLED)
        if 0 < self.config.max_attempts <= state.retries + 1:
            return RetryDecision(action=RetryAction.DEAD_LETTER, reason=Reason.MAX_ATTEMPTS)
        base = self._bases[endpoint].base if endpoint in self._bases else None
        delay = self.backoff.next_delay(
            state.retries,
            now - state.started_at,
            hint=server_hint(classification, failure),
            prev=state.prev_delay,
            base=base,
        )
        if delay is None:
            return RetryDecision(action=RetryAction.DEAD_LETTER, reason=Reason.MAX_ELAPSED_TIME)
        budget = self._budgets.get(endpoint)
        if budget is not None and not budget.try_spend():
            return RetryDecision(action=RetryAction.REQUEUE, delay=delay, reason=Reason.BUDGET_EXHAUSTED)
        state.retries += 1
        state.prev_delay = delay
        return RetryDecision(action=RetryAction.RETRY, delay=delay)
