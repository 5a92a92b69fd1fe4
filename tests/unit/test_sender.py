"""The sender chain end to end, with a virtual clock, scripted fake transports and a fake classifier."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from sidecar.config.schema import (
    CircuitBreakerConfig,
    HealthProbeConfig,
    RetryBudgetConfig,
    RetryConfig,
)
from sidecar.config.units import Duration
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.taxonomy import Category
from sidecar.exporters.health import EndpointHealth
from sidecar.exporters.sender import Reason, SendReport, Upstream, Verdict, build_sender
from sidecar.exporters.transport import SendOutcome
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import (
    INVALID,
    TOO_LARGE,
    UNAVAILABLE,
    FakeClassifier,
    FakeTransport,
    build,
    make_config,
    make_entry,
    sample,
    sender_clock,
    span_names,
)

# ---------------------------------------------------------------- tests


async def test_delivered_counts_sent_items() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock)
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(5)))
    assert report == SendReport(verdict=Verdict.DELIVERED, attempts=1, endpoint="a:4317")
    assert sample(metrics, "sidecar_exporter_sent_spans_total", {"exporter": "otlp_grpc"}) == 5
    assert len(t.calls) == 1 and t.calls[0][1].metadata == (("k", "v"),)


async def test_retry_then_success_waits_at_least_the_server_hint() -> None:
    clock, metrics = sender_clock(), Metrics()
    throttled = ExportFailure(grpc_code="RESOURCE_EXHAUSTED", retry_after=7.0, has_retry_info=True)
    t = FakeTransport("a:4317", clock, [throttled, throttled])
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(3)))
    assert report.verdict is Verdict.DELIVERED and report.attempts == 3
    times = [when for when, _ in t.calls]
    assert times[1] - times[0] >= 7.0 and times[2] - times[1] >= 7.0
    assert sample(metrics, "sidecar_exporter_retries_total", {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 2
    assert sample(metrics, "sidecar_exporter_send_failed_spans_total",
                  {"exporter": "otlp_grpc", "category": "resource_exhausted",
                   "error_type": "RESOURCE_EXHAUSTED"}) == 6
    assert sample(metrics, "sidecar_errors_total", {"category": "resource_exhausted", "severity": "medium",
                                                    "recoverability": "temporary",
                                                    "error_type": "RESOURCE_EXHAUSTED"}) == 2
    assert sample(metrics, "sidecar_outages_total", {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 1
    assert sample(metrics, "sidecar_recovery_duration_seconds_count",
                  {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 1
    assert sample(metrics, "sidecar_recovery_duration_seconds_sum",
                  {"exporter": "otlp_grpc", "endpoint": "a:4317"}) >= 14.0


async def test_budget_exhaustion_requeues_and_bounds_retries() -> None:
    """100 concurrent failing requests make at most ratio x 100 retries (no floor here)."""
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    config = make_config(
        ["a:4317"],
        retry=RetryConfig(initial_interval=Duration(1.0), max_interval=Duration(5.0),
                          budget=RetryBudgetConfig(ratio=0.2, min_per_second=0.0)),
        circuit_breaker=CircuitBreakerConfig(enabled=False),
    )
    sender = build(config, [t], clock, metrics)
    reports = await clock.run(asyncio.gather(*(sender.send(make_entry(2, tag=str(i))) for i in range(100))))
    retries = sample(metrics, "sidecar_exporter_retries_total", {"exporter": "otlp_grpc", "endpoint": "a:4317"})
    assert retries == 20  # exactly ratio x first attempts: 5 failures fund one retry
    assert len(t.calls) == 100 + retries
    assert all(r.verdict is Verdict.REQUEUE for r in reports)  # refused retries go back to the queue
    assert {r.reason for r in reports} == {Reason.BUDGET_EXHAUSTED}
    assert all(r.classification is not None and r.classification.error_type == "UNAVAILABLE" for r in reports)
    assert all(r.retry_after is not None and r.retry_after >= 0 for r in reports)


async def test_budget_floor_allows_min_per_second() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    config = make_config(
        ["a:4317"],
        retry=RetryConfig(initial_interval=Duration(0.01), max_interval=Duration(0.01),
                          max_elapsed_time=Duration(0.5),
                          budget=RetryBudgetConfig(ratio=0.2, min_per_second=3.0)),
        circuit_breaker=CircuitBreakerConfig(enabled=False),
    )
    sender = build(config, [t], clock, metrics)
    await clock.run(asyncio.gather(*(sender.send(make_entry(1, tag=str(i))) for i in range(100))))
    retries = sample(metrics, "sidecar_exporter_retries_total", {"exporter": "otlp_grpc", "endpoint": "a:4317"})
    # 20 funded by deposits, 3 by the floor bucket, plus floor refills over at most 0.5 s of virtual time
    assert 19 <= retries <= 20 + 3 + 3 * 0.5 + 1


async def test_failover_to_healthy_endpoint() -> None:
    clock, metrics = sender_clock(), Metrics()
    bad = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    good = FakeTransport("b:4317", clock)
    sender = build(make_config(["a:4317", "b:4317"]), [bad, good], clock, metrics)
    report = await clock.run(sender.send(make_entry(4)))
    assert report.verdict is Verdict.DELIVERED
    assert report.endpoint == "b:4317" and report.attempts == 2
    assert len(bad.calls) == 1 and len(good.calls) == 1


async def test_permanent_goes_to_dead_letter_without_retry_or_trip() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=INVALID)
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    for _ in range(8):
        report = await clock.run(sender.send(make_entry(2)))
        assert report.verdict is Verdict.DEAD_LETTER and report.attempts == 1
        assert report.classification is not None and report.classification.error_type == "INVALID_ARGUMENT"
    assert sender.endpoints["a:4317"].breaker.state == "closed"
    assert sample(metrics, "sidecar_exporter_retries_total", {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 0


async def test_fatal_goes_to_dead_letter() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=ExportFailure(grpc_code="UNAUTHENTICATED"))
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DEAD_LETTER and report.reason is Reason.FATAL


async def test_split_on_too_large_then_delivered() -> None:
    clock, metrics = sender_clock(), Metrics()

    async def limit(entry: QueueEntry) -> SendOutcome:
        if entry.items > 3:
            raise ExportError(TOO_LARGE)
        return SendOutcome()

    t = FakeTransport("a:4317", clock, default=limit)
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    entry = make_entry(10, resources=3)
    report = await clock.run(sender.send(entry))
    assert report.verdict is Verdict.DELIVERED
    assert report.parts and all(p.report.verdict is Verdict.DELIVERED for p in report.parts)
    assert sum(p.entry.items for p in report.parts) == 10
    assert report.attempts == len(t.calls) == 7  # 10 -> 5+5 -> (2+3)+(2+3)
    delivered = [name for _, e in t.calls if e.items <= 3 for name in span_names(e)]
    assert sorted(delivered) == sorted(span_names(entry))  # each span delivered exactly once
    assert sample(metrics, "sidecar_exporter_sent_spans_total", {"exporter": "otlp_grpc"}) == 10
    # the halves keep their resources and metadata
    assert all(p.entry.metadata == entry.metadata for p in report.parts)
    assert sender.endpoints["a:4317"].breaker.state == "closed"


async def test_single_item_too_large_is_dead_lettered() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=TOO_LARGE)
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(1)))
    assert report.verdict is Verdict.DEAD_LETTER and report.reason is Reason.TOO_LARGE
    assert report.classification is not None and report.classification.error_type == "payload_too_large"


async def test_split_with_mixed_outcomes_reports_each_part() -> None:
    clock, metrics = sender_clock(), Metrics()
    # whole entry too large; first half accepted; second half is rejected as bad data
    t = FakeTransport("a:4317", clock, [TOO_LARGE, SendOutcome(), INVALID])
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    entry = make_entry(6)
    report = await clock.run(sender.send(entry))
    assert report.verdict is Verdict.DEAD_LETTER
    assert [p.report.verdict for p in report.parts] == [Verdict.DELIVERED, Verdict.DEAD_LETTER]
    assert [p.entry.items for p in report.parts] == [3, 3]
    assert span_names(report.parts[0].entry) + span_names(report.parts[1].entry) == span_names(entry)
    assert report.attempts == 3
    assert report.outcomes(entry) == list(report.parts)


async def test_pre_send_split_to_max_request_size() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock)
    entry = make_entry(40, resources=4)
    limit_mib = (len(entry.payload) / 5) / (1024 * 1024)
    sender = build(make_config(["a:4317"], max_request_size_mib=limit_mib), [t], clock, metrics)
    report = await clock.run(sender.send(entry))
    assert report.verdict is Verdict.DELIVERED
    assert len(t.calls) >= 5
    assert all(len(e.payload) <= len(entry.payload) / 5 for _, e in t.calls)
    assert sorted(n for _, e in t.calls for n in span_names(e)) == sorted(span_names(entry))


async def test_partial_success_counted_as_dropped_and_not_retried() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, [SendOutcome(rejected=3, rejected_message="bad spans")])
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(10)))
    assert report.verdict is Verdict.DELIVERED and report.rejected == 3 and report.attempts == 1
    assert report.classification is not None and report.classification.error_type == "partial_success"
    assert sample(metrics, "sidecar_dropped_items_total", {"signal": "traces", "reason": "upstream_rejected"}) == 3
    assert sample(metrics, "sidecar_exporter_sent_spans_total", {"exporter": "otlp_grpc"}) == 7
    assert len(t.calls) == 1
    assert sample(metrics, "sidecar_export_duration_seconds_count",
                  {"exporter": "otlp_grpc", "endpoint": "a:4317", "outcome": "partial_success"}) == 1


async def test_max_elapsed_time_dead_letters_with_last_class() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    config = make_config(
        ["a:4317"],
        retry=RetryConfig(initial_interval=Duration(1.0), max_interval=Duration(2.0), multiplier=2.0,
                          jitter="equal",
                          randomization_factor=0.0, max_elapsed_time=Duration(6.0),
                          budget=RetryBudgetConfig(ratio=1.0, min_per_second=100.0)),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=100, minimum_calls=100),
    )
    sender = build(config, [t], clock, metrics)
    start = clock.now
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DEAD_LETTER and report.reason is Reason.MAX_ELAPSED_TIME
    assert report.classification is not None and report.classification.error_type == "UNAVAILABLE"
    assert clock.now - start <= 6.0
    assert [round(when - start, 6) for when, _ in t.calls] == [0.0, 1.0, 3.0, 5.0]


async def test_all_breakers_open_requeues_with_retry_after() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    config = make_config(["a:4317"], circuit_breaker=CircuitBreakerConfig(
        failure_threshold=2, recovery_timeout=Duration(30.0), half_open_success_threshold=1))
    sender = build(config, [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.REQUEUE and report.reason is Reason.BREAKER_OPEN
    assert report.attempts == 2 and report.retry_after is not None and 0 < report.retry_after <= 30.0
    assert sample(metrics, "sidecar_breaker_state", {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 2
    assert sample(metrics, "sidecar_breaker_transitions_total",
                  {"exporter": "otlp_grpc", "endpoint": "a:4317", "from_state": "closed",
                   "to_state": "open", "source": "local"}) == 1
    # nothing is attempted while it is open
    again = await clock.run(sender.send(make_entry(2)))
    assert again.verdict is Verdict.REQUEUE and again.attempts == 0 and len(t.calls) == 2
    # wait_ready returns once the recovery timeout elapsed; the probe then succeeds
    t.default = SendOutcome()
    await clock.run(sender.wait_ready())
    done = await clock.run(sender.send(make_entry(2)))
    assert done.verdict is Verdict.DELIVERED
    assert sender.endpoints["a:4317"].breaker.state == "closed"


async def test_timeout_is_classified_and_retried() -> None:
    clock, metrics = sender_clock(), Metrics()

    async def slow(entry: QueueEntry) -> SendOutcome:
        await asyncio.sleep(5)
        return SendOutcome()

    t = FakeTransport("a:4317", clock, [slow])
    sender = build(make_config(["a:4317"], timeout=Duration(0.02)), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DELIVERED and report.attempts == 2
    assert sample(metrics, "sidecar_exporter_send_failed_spans_total",
                  {"exporter": "otlp_grpc", "category": "timeout", "error_type": "DEADLINE_EXCEEDED"}) == 2


async def test_cancellation_during_retry_wait_propagates_and_leaves_no_trace() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    task = asyncio.ensure_future(sender.send(make_entry(2)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(t.calls) == 1 and clock.sleeps  # waiting for the retry
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ep = sender.endpoints["a:4317"]
    assert ep.limiter.in_flight == 0 and sender.balancer.stats("a:4317").outstanding == 0
    assert ep.breaker.consecutive_failures == 1


async def test_cancellation_during_transport_call_is_neutral() -> None:
    clock, metrics = sender_clock(), Metrics()
    gate = asyncio.Event()

    async def hang(entry: QueueEntry) -> SendOutcome:
        await gate.wait()
        return SendOutcome()

    t = FakeTransport("a:4317", clock, [UNAVAILABLE, hang])
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    task = asyncio.ensure_future(sender.send(make_entry(2)))
    for _ in range(60):
        await asyncio.sleep(0)
    clock.advance(1.0)  # the first retry waits at most initial_interval (full jitter)
    for _ in range(60):
        await asyncio.sleep(0)
    assert len(t.calls) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ep = sender.endpoints["a:4317"]
    assert ep.breaker.consecutive_failures == 1  # neither a failure nor a success
    assert ep.limiter.in_flight == 0 and sender.balancer.stats("a:4317").outstanding == 0


async def test_transport_bug_is_internal_and_neutral_for_breaker() -> None:
    clock, metrics = sender_clock(), Metrics()

    async def boom(entry: QueueEntry) -> SendOutcome:
        raise RuntimeError("bug")

    t = FakeTransport("a:4317", clock, [UNAVAILABLE, boom])
    sender = build(make_config(["a:4317"]), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DEAD_LETTER
    assert report.classification is not None and report.classification.category is Category.INTERNAL
    assert sender.endpoints["a:4317"].breaker.consecutive_failures == 1


async def test_retry_disabled_dead_letters_retryable_failure() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    sender = build(make_config(["a:4317"], retry=RetryConfig(enabled=False)), [t], clock, metrics)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DEAD_LETTER and report.reason is Reason.RETRY_DISABLED and report.attempts == 1


async def test_build_sender_wires_gauges_and_probers() -> None:
    clock, metrics = sender_clock(), Metrics()
    ta, tb = FakeTransport("a:4317", clock), FakeTransport("b:4317", clock)
    seen: list[tuple[str, str, str]] = []
    sender = build_sender("otlp_grpc", make_config(["a:4317", "b:4317"]), [ta, tb], FakeClassifier(),
                          Events(metrics, clock), clock, random.Random(1),
                          on_breaker_transition=lambda *a: seen.append(a))
    assert sample(metrics, "sidecar_concurrency_limit", {"endpoint": "a:4317"}) == 1
    # Unknown until the first probe answers: not counted as healthy.
    assert sample(metrics, "sidecar_endpoint_healthy", {"exporter": "otlp_grpc", "endpoint": "b:4317"}) == 0
    sender.endpoints["a:4317"].breaker.record_failure()
    for _ in range(5):
        sender.endpoints["a:4317"].breaker.record_failure()
    assert seen == [("a:4317", "closed", "open")]
    assert sender.upstream() is Upstream.UNKNOWN  # no probe has answered yet
    sender.start()
    assert all(ep.prober is not None and ep.prober.running for ep in sender.endpoints.values())
    for _ in range(10):  # let the start-up probes run
        await asyncio.sleep(0)
    await sender.close()
    assert not any(ep.prober is not None and ep.prober.running for ep in sender.endpoints.values())
    # The start-up probes answered: b is healthy (a's breaker is open, but its probe succeeded too).
    assert sender.upstream() is Upstream.REACHABLE
    assert [s["endpoint"] for s in sender.status()] == ["a:4317", "b:4317"]
    assert [s["health"] for s in sender.status()] == ["healthy", "healthy"]


async def test_unprobed_endpoint_is_unknown_until_it_delivers_and_unhealthy_while_open() -> None:
    clock, metrics = sender_clock(), Metrics()
    t = FakeTransport("a:4317", clock)
    config = msgspec.structs.replace(make_config(["a:4317"]), health_probe=HealthProbeConfig(enabled=False))
    sender = build(config, [t], clock, metrics)
    ep = sender.endpoints["a:4317"]
    assert sender.endpoint_health(ep) is EndpointHealth.UNKNOWN and sender.upstream() is Upstream.UNKNOWN
    await clock.run(sender.send(make_entry(1)))
    assert sender.endpoint_health(ep) is EndpointHealth.HEALTHY and sender.upstream() is Upstream.REACHABLE
    for _ in range(5):
        ep.breaker.record_failure()
    assert sender.endpoint_health(ep) is EndpointHealth.UNHEALTHY and sender.upstream() is Upstream.UNREACHABLE
    assert [s["health"] for s in sender.status()] == ["unhealthy"] and sender.status()[0]["probed"] is False
