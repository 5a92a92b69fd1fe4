"""Retry policy: what to do after one failed attempt (policy only; the sender does the waiting).

The decision for a classified failure, in this order:

1. recovery ``split_and_retry`` ("payload too large")       -> SPLIT
2. not retryable (permanent, fatal)                          -> DEAD_LETTER
3. ``retry_on_failure.enabled: false``                       -> DEAD_LETTER ("retry_disabled";
   the Collector would drop the data, we keep it in the dead-letter store)
4. backoff (hint as a floor) would end past ``max_elapsed_time`` since the first attempt
                                                             -> DEAD_LETTER ("max_elapsed_time")
5. the retry budget of the endpoint that failed refuses      -> REQUEUE (not dropped; the
   queue offers the entry again later; `delay` is the backoff that was planned)
6. otherwise                                                 -> RETRY after `delay`

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


@dataclass(frozen=True, slots=True)
class RetryDecision:
    action: RetryAction
    delay: float | None = None  # RETRY: the wait; REQUEUE: the wait that was planned (a retry_after hint)
    reason: str = ""


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
            return RetryDecision(RetryAction.SPLIT, reason="payload_too_large")
        if not classification.retryable:
            return RetryDecision(RetryAction.DEAD_LETTER, reason=classification.recoverability.value)
        if not self.config.enabled:
            return RetryDecision(RetryAction.DEAD_LETTER, reason="retry_disabled")
        base = self._bases[endpoint].base if endpoint in self._bases else None
        delay = self.backoff.next_delay(
            state.retries,
            now - state.started_at,
            hint=server_hint(classification, failure),
            prev=state.prev_delay,
            base=base,
        )
        if delay is None:
            return RetryDecision(RetryAction.DEAD_LETTER, reason="max_elapsed_time")
        budget = self._budgets.get(endpoint)
        if budget is not None and not budget.try_spend():
            return RetryDecision(RetryAction.REQUEUE, delay=delay, reason="budget_exhausted")
        state.retries += 1
        state.prev_delay = delay
        return RetryDecision(RetryAction.RETRY, delay=delay)
