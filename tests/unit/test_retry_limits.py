"""retry_on_failure.max_attempts: a bound on transport attempts per request, alongside max_elapsed_time."""

from __future__ import annotations

import random

from sidecar.config.schema import CircuitBreakerConfig, RetryBudgetConfig, RetryConfig
from sidecar.config.units import Duration
from sidecar.core.taxonomy import Category, Recoverability, Recovery
from sidecar.exporters.backoff import Backoff
from sidecar.exporters.retry import RetryAction, RetryPolicy, RetryState
from sidecar.exporters.sender import Verdict
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import UNAVAILABLE, FakeTransport, build, cls, make_config, make_entry, sender_clock

RETRYABLE = cls(Category.TRANSPORT, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF, "UNAVAILABLE")


def policy(**kw: object) -> RetryPolicy:
    config = RetryConfig(initial_interval=Duration(1.0), max_interval=Duration(2.0), **kw)  # type: ignore[arg-type]
    return RetryPolicy(config, Backoff.from_config(config, random.Random(1)), {})


def test_max_attempts_counts_the_first_attempt() -> None:
    p, state = policy(max_attempts=3), RetryState(started_at=0.0)
    decisions = [p.decide(state, RETRYABLE, "a", now=1.0).action for _ in range(3)]
    assert decisions == [RetryAction.RETRY, RetryAction.RETRY, RetryAction.DEAD_LETTER]
    assert p.decide(RetryState(started_at=0.0, retries=2), RETRYABLE, "a", now=1.0).reason == "max_attempts"


def test_zero_max_attempts_is_unlimited() -> None:
    p, state = policy(max_attempts=0, max_elapsed_time=Duration(0.0)), RetryState(started_at=0.0)
    assert all(p.decide(state, RETRYABLE, "a", now=1.0).action is RetryAction.RETRY for _ in range(500))


def test_max_elapsed_time_still_applies_before_max_attempts() -> None:
    p = policy(max_attempts=100, max_elapsed_time=Duration(10.0))
    decision = p.decide(RetryState(started_at=0.0, retries=1), RETRYABLE, "a", now=9.9)
    assert decision.action is RetryAction.DEAD_LETTER and decision.reason == "max_elapsed_time"


async def test_sender_dead_letters_after_max_attempts_transport_calls() -> None:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    config = make_config(["a:4317"], retry=RetryConfig(
        initial_interval=Duration(1.0), max_interval=Duration(2.0), max_elapsed_time=Duration(300.0),
        max_attempts=3, budget=RetryBudgetConfig(ratio=1.0, min_per_second=100.0)),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=50))
    sender = build(config, [transport], clock, metrics)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DEAD_LETTER and report.reason == "max_attempts"
    assert report.attempts == 3 and len(transport.calls) == 3
