"""The narrow hooks fleet mode uses in the local breaker and health prober, and the pure decisions of
sidecar/fleet/view.py. Without a gate, everything behaves as before (the other breaker tests)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from sidecar.config.schema import CircuitBreakerConfig, HealthProbeConfig
from sidecar.config.units import Duration
from sidecar.exporters.breaker import BreakerOpenError, BreakerState, EndpointBreaker
from sidecar.exporters.health import HealthProber
from sidecar.exporters.sender import FLEET_REFUSED_WAIT, Verdict
from sidecar.exporters.transport import SendOutcome
from sidecar.fleet.breaker import parse_message
from sidecar.fleet.view import (
    EVIDENCE_BATCH,
    MAX_WINDOW,
    MIN_WINDOW,
    SAFETY,
    EvidenceRule,
    FleetView,
    ProbeLease,
    Record,
    decode_class,
    encode_class,
    next_probe_at,
    probe_delay,
    scheduled_probe_allowed,
    should_probe,
    should_try_lease,
)
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.sender import UNAVAILABLE, FakeTransport, build, make_config, make_entry, sample, sender_clock

CONFIG = CircuitBreakerConfig(failure_threshold=2, recovery_timeout=Duration(1.0), max_recovery_timeout=Duration(4.0))


class Gate:
    def __init__(self, delay: float | None) -> None:
        self.delay = delay

    def probe_delay(self) -> float | None:
        return self.delay


def opened(clock: FakeClock, seen: list[tuple[str, str, str]] | None = None) -> EndpointBreaker:
    breaker = EndpointBreaker("c:4317", CONFIG, clock)
    if seen is not None:
        breaker.add_observer(lambda old, new, source: seen.append((old, new, source)))
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_a_gate_holds_an_open_breaker_past_its_recovery_timeout() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    breaker.set_gate(Gate(0.25))
    clock.advance(10.0)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.time_until_probe_allowed() == 0.25
    try:
        asyncio.run(_admit(breaker))
        raise AssertionError("an open breaker admitted a call")
    except BreakerOpenError as exc:
        assert exc.retry_after == 0.25


async def _admit(breaker: EndpointBreaker) -> None:
    async with breaker.calling():
        pass


def test_a_gate_may_let_it_probe_before_its_own_timeout() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    breaker.set_gate(Gate(0.0))  # the lease holder, the fleet's open period over
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_gate_without_opinion_leaves_the_local_timeout() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    breaker.set_gate(Gate(None))
    clock.advance(0.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.2)
    assert breaker.state is BreakerState.HALF_OPEN


def test_follow_open_and_close_are_transitions_from_the_fleet() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str, str]] = []
    breaker = EndpointBreaker("c:4317", CONFIG, clock)
    breaker.add_observer(lambda old, new, source: seen.append((old, new, source)))
    breaker.follow_open()
    assert breaker.state is BreakerState.OPEN
    breaker.follow_open()  # idempotent
    breaker.follow_close()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    breaker.record_failure()
    assert seen == [("closed", "open", "fleet"), ("open", "closed", "fleet"), ("closed", "open", "local")]


async def test_a_waiter_held_by_the_gate_wakes_when_the_gate_changes() -> None:
    clock = FakeClock()
    breaker = opened(clock)
    gate = Gate(5.0)
    breaker.set_gate(gate)
    waiter = asyncio.ensure_future(breaker.wait_until_probe_allowed())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    gate.delay = 0.0
    breaker.gate_changed()
    for _ in range(5):
        await asyncio.sleep(0)
    assert waiter.done() and breaker.state is BreakerState.HALF_OPEN


class Transport:
    endpoint = "c:4317"

    def __init__(self) -> None:
        self.probes = 0

    async def probe(self, timeout: float) -> None:
        self.probes += 1

    async def send(self, entry: object, timeout: float) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


async def test_scheduled_probes_skip_while_the_fleet_says_no() -> None:
    clock = FakeClock()
    transport = Transport()
    prober = HealthProber(transport, HealthProbeConfig(interval=Duration(1.0)), clock)  # type: ignore[arg-type]
    allowed = [False]
    prober.may_probe = lambda: allowed[0]
    prober.start()
    for _ in range(3):
        await asyncio.sleep(0)
        clock.advance(1.0)
    assert transport.probes == 0 and prober.skipped >= 2
    allowed[0] = True
    for _ in range(3):
        await asyncio.sleep(0)
        clock.advance(1.0)
    await prober.stop()
    assert transport.probes >= 1


# ---------------------------------------------------------------- pure decisions


def test_the_lease_is_trusted_for_less_than_its_ttl_from_the_request() -> None:
    lease = ProbeLease(ttl=3.0)
    assert not lease.holds(0.0)
    lease.granted(sent_at=10.0)
    assert lease.holds(10.0 + 3.0 * SAFETY - 0.001) and not lease.holds(10.0 + 3.0 * SAFETY)
    lease.lost()
    assert not lease.holds(10.5)


def test_a_view_ignores_older_generations_and_reports_changes() -> None:
    view = FleetView()
    assert view.apply(Record(open=True, remaining=2.0, timeout=2.0, gen=3), now=100.0)
    assert view.open and view.until == 102.0
    assert not view.apply(Record(open=False, remaining=0.0, timeout=2.0, gen=2), now=100.5)  # late message
    assert view.open
    assert not view.apply(Record(open=True, remaining=1.0, timeout=2.0, gen=3), now=101.0)  # a refresh
    assert view.until == 102.0
    view.forget()  # a restarted Redis counts from 0 again
    assert view.apply(Record(open=False, remaining=0.0, timeout=0.0, gen=0), now=103.0) and not view.open


def test_gate_answers() -> None:
    view, lease = FleetView(), ProbeLease(ttl=3.0)
    gate = functools.partial(probe_delay, recheck=0.25)
    assert gate(view, lease, connected=True, now=0.0, active_prober=True, next_probe=0.0) is None
    # The record's open period is 60 s (a breaker's default recovery_timeout): it does not delay the probes.
    view.apply(Record(open=True, remaining=60.0, timeout=60.0, gen=1), now=10.0)
    assert view.since == 10.0
    nxt = next_probe_at(view, last_probe=float("-inf"), interval=1.5)
    assert nxt == 11.5
    assert gate(view, lease, connected=False, now=10.0, active_prober=True, next_probe=nxt) is None
    assert gate(view, lease, connected=True, now=10.0, active_prober=True, next_probe=nxt) == 0.25
    lease.granted(10.0)
    assert gate(view, lease, connected=True, now=10.0, active_prober=True, next_probe=nxt) == 0.25
    assert gate(view, lease, connected=True, now=10.5, active_prober=False, next_probe=nxt) == 1.0
    assert gate(view, lease, connected=True, now=11.5, active_prober=False, next_probe=nxt) == 0.0
    assert not scheduled_probe_allowed(view, connected=True) and scheduled_probe_allowed(view, connected=False)
    assert not should_probe(view, lease, now=11.0, probing=False, next_probe=nxt)
    assert should_probe(view, lease, now=11.5, probing=False, next_probe=nxt)
    assert not should_probe(view, lease, 11.5, probing=True, next_probe=nxt)
    # After a probe at 11.6 the next is due 1.5 s later; a reopen (a new generation, still open) keeps `since`.
    assert next_probe_at(view, last_probe=11.6, interval=1.5) == pytest.approx(13.1)
    view.apply(Record(open=True, remaining=120.0, timeout=120.0, gen=2), now=11.7)
    assert view.since == 10.0
    assert not should_try_lease(view, lease, holder="me", now=11.0)
    assert should_try_lease(view, ProbeLease(3.0), holder="", now=11.0)
    assert not should_try_lease(view, ProbeLease(3.0), holder="other", now=11.0)


def test_messages_parse_with_endpoints_that_contain_separators() -> None:
    parsed = parse_message("dns:///collector:4317\nopen\n7\n1500\n2000")
    assert parsed is not None
    endpoint, record = parsed
    assert endpoint == "dns:///collector:4317"
    assert record == Record(open=True, remaining=1.5, timeout=2.0, gen=7)
    assert parse_message("garbage") is None


# ---------------------------------------------------------------- the sender's fleet budget hook


class SharedBudget:
    def __init__(self, answer: bool | None, clock: FakeClock | None = None, latency: float = 0.0) -> None:
        self.answers = [answer]
        self.deposits = 0
        self.asked = 0
        self.clock = clock
        self.latency = latency  # how long Redis takes to answer, in the fake clock's time

    def deposit(self) -> None:
        self.deposits += 1

    async def try_spend(self) -> bool | None:
        self.asked += 1
        if self.clock is not None and self.latency:
            await self.clock.sleep(self.latency)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def fleet_sender(answer: bool | None, latency: float = 0.0,
                 script: list[Any] | None = None) -> tuple[Any, FakeTransport, SharedBudget, Metrics, FakeClock]:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock, script=script if script is not None else [UNAVAILABLE],
                              default=SendOutcome())
    sender = build(make_config(["a:4317"]), [transport], clock, metrics)
    shared = SharedBudget(answer, clock, latency)
    sender.endpoints["a:4317"].shared_budget = shared
    return sender, transport, shared, metrics, clock


async def test_a_retry_the_fleet_budget_refuses_stays_queued() -> None:
    sender, transport, shared, metrics, clock = fleet_sender(False)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.REQUEUE and report.reason == "budget_exhausted"  # as the local budget's
    assert len(transport.calls) == 1 and shared.deposits == 1 and shared.asked == 1
    assert sample(metrics, "sidecar_fleet_budget_refused_retries_total",
                  {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 1
    assert sample(metrics, "sidecar_exporter_retries_refused_total",  # a budget's refusal, as the local one's
                  {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 1


async def test_without_an_answer_from_the_fleet_the_local_budget_decides() -> None:
    for answer in (True, None):
        sender, transport, shared, metrics, clock = fleet_sender(answer)
        report = await clock.run(sender.send(make_entry(2)))
        assert report.verdict is Verdict.DELIVERED and len(transport.calls) == 2 and shared.asked == 1
        assert sample(metrics, "sidecar_fleet_budget_refused_retries_total",
                      {"exporter": "otlp_grpc", "endpoint": "a:4317"}) == 0


async def test_the_fleet_answers_during_the_backoff_not_after_it() -> None:
    sender, transport, shared, _, clock = fleet_sender(True, latency=0.03)
    report = await clock.run(sender.send(make_entry(2)))
    assert report.verdict is Verdict.DELIVERED and shared.asked == 1
    backoff = next(d for d in clock.sleeps if d != 0.03)
    gap = transport.calls[1][0] - transport.calls[0][0]
    assert abs(gap - max(backoff, 0.03)) < 1e-9  # Redis's 30 ms overlapped the backoff


async def test_a_resend_the_fleet_refuses_waits_before_asking_again() -> None:
    sender, _, shared, _, clock = fleet_sender(False, script=[UNAVAILABLE])
    first = await clock.run(sender.send(make_entry(2)))
    assert first.verdict is Verdict.REQUEUE and first.reason == "budget_exhausted"
    shared.answers = [False, True]  # the fleet refuses the resend once, then pays
    again = await clock.run(sender.send(make_entry(2), resend=True))
    assert again.verdict is Verdict.DELIVERED and shared.asked == 3
    assert FLEET_REFUSED_WAIT in clock.sleeps



def test_streak_observers_hear_consecutive_failures_while_closed_and_nothing_once_it_trips() -> None:
    clock = FakeClock()
    breaker = EndpointBreaker("c:4317", CircuitBreakerConfig(failure_threshold=3), clock)
    streaks: list[int] = []
    breaker.add_streak_observer(streaks.append)
    breaker.record_failure()
    breaker.record_failure()
    asyncio.run(_admit(breaker))  # a success
    assert streaks == [1, 2, 0]
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_failure()  # the third trips it: that is a transition, not a streak
    assert breaker.state is BreakerState.OPEN
    assert streaks == [1, 2, 0, 1, 2]
    breaker.record_failure()  # ignored while open
    assert streaks == [1, 2, 0, 1, 2]


def test_a_call_that_ends_without_a_verdict_is_no_streak() -> None:
    breaker = EndpointBreaker("c:4317", CircuitBreakerConfig(failure_threshold=3), FakeClock())
    streaks: list[int] = []
    breaker.add_streak_observer(streaks.append)

    async def cancelled_call() -> None:
        async with breaker.calling():
            raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_call())
    assert streaks == []


def test_the_evidence_needed_does_not_grow_with_the_fleet_and_its_window_shrinks_with_its_rate() -> None:
    rule = EvidenceRule()  # the shipped defaults: 25 % of about 20 calls, or of 150 ms of a busy fleet's
    assert rule.needed(0.0) == 5 and rule.window(0.0) == MAX_WINDOW
    # 8 sidecars x 10 requests/s: reports arriving within 150 ms carry failures of up to 250 ms (one batch
    # more), the span in which the fleet makes the 20 calls.
    assert rule.needed(80.0) == 5 and rule.window(80.0) == pytest.approx(0.25 - EVIDENCE_BATCH)
    assert rule.needed(100.0) == 5 and rule.needed(133.0) == 5
    assert rule.needed(500.0) == 18 and rule.window(500.0) == MIN_WINDOW  # 25 % of 75 calls in 150 ms
    assert rule.needed(1000.0) == 37 and rule.needed(2000.0) == 75 and rule.window(2000.0) == MIN_WINDOW
    assert rule.window(1.0) == MAX_WINDOW
    # Two sidecars at least (when the endpoint has two members): one sidecar's trouble is its own.
    assert not rule.opens(failures=100, reporters=1, members=1000, rate=80.0)
    assert rule.opens(failures=5, reporters=2, members=1000, rate=80.0)
    assert rule.opens(failures=5, reporters=1, members=1, rate=80.0)
    assert not rule.opens(failures=4, reporters=2, members=2, rate=80.0)


def test_an_open_class_survives_the_record_and_odd_text_is_no_class() -> None:
    from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
    cls = Classification(Category.TRANSPORT, Severity.LOW, Recoverability.RETRYABLE, Recovery.RETRY_WITH_BACKOFF,
                         "UNAVAILABLE", "default")
    assert decode_class(encode_class(cls)) == cls
    assert decode_class("") is None and decode_class("a|b") is None and decode_class("x|low|retryable|drop|e|d") is None
