"""The sender chain of one exporter: everything between a queue entry and the upstream.

Built in ONE place, `build_sender`, like the Collector's exporterhelper or a Vector sink::

    send(entry)
      [pre-split to max_request_size_mib]
      retry loop (RetryPolicy: backoff with hint floor, max_elapsed_time, retry budget)
        balancer.pick            (skips endpoints whose breaker refuses)
        breaker.calling()        (pybreaker, per endpoint)
        concurrency.slot()       (AIMD limit, per endpoint)
        asyncio.timeout(timeout) (a timeout is ExportFailure(client_error="timeout"))
        transport.send           (raises ExportError at the I/O edge)
      classifier.classify_export (injected; the chain never looks at grpc/aiohttp errors)

`await sender.send(entry)` never raises for an upstream problem; it returns a `SendReport`
whose verdict tells the caller (the queue consumer) what to do with the entry:

* DELIVERED: upstream accepted it (partial success included: the `rejected` items are counted as
  dropped with reason ``upstream_rejected`` and never retried; the queue consumer keeps the request
  as a partial-success dead letter). Ack the lease.
* REQUEUE: not now; every breaker is open, or the retry budget refused a retry. Nack the lease;
  `retry_after` is a hint, and `await sender.wait_ready()` waits until some endpoint takes calls.
* DEAD_LETTER: permanent/fatal answer, `max_elapsed_time` exceeded, or a single item too large.
  Write it to the dead-letter store with `classification`, then ack. The sender does not count
  `sidecar_dead_letters_total`; the dead-letter writer does, once.

Splits (``split_and_retry``, or the pre-send split to ``max_request_size_mib``): the entry is cut
into parts whose item counts add up exactly to the entry's, each part goes through the whole
chain, and the report lists the leaf outcomes in `parts` (`PartReport(entry, report)`, in
order). The top-level verdict stays safe for a caller that ignores `parts`: DELIVERED only when
every part was delivered; REQUEUE when any part must be requeued (nacking the whole entry only
re-sends parts that were delivered: at-least-once, nothing lost); otherwise DEAD_LETTER.
A caller that handles parts precisely (`report.outcomes(entry)`) puts each REQUEUE part back as
a new entry, dead-letters each DEAD_LETTER part, then acks the original; if a put fails, it nacks
the original instead. Either way no item is lost, and no item is counted as sent twice for one
delivery.

`max_elapsed_time` counts from the first attempt of this `send` call (parts of a split share
it), not from `accepted_at`: an entry that waited in the queue behind an open breaker still gets
its full retry time when it is finally sent. `attempts` counts every transport call made for
the entry, split parts included.

Cancellation (shutdown) propagates out of `send` at any await (retry waits included) with all
per-call bookkeeping undone; the caller nacks the lease, so the entry is never lost.

Events raised here (sidecar/telemetry/events.py, each counting its metrics and logging):
export_failed (exporter_send_failed{category,error_type} items and errors{...} per failed attempt),
partial_success (dropped{upstream_rejected} and errors), exported (exporter_sent: items - rejected),
retry_scheduled (exporter_retries{endpoint}), export_attempted (export_duration{outcome}),
endpoint_recovered (recovery_duration, first failure to the next success per endpoint), and through
`build_sender` endpoint_added, breaker_transition, concurrency_limit_changed, endpoint_health_changed.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.config.schema import ExporterConfig
from sidecar.config.units import mib_to_bytes
from sidecar.core.clock import SYSTEM_CLOCK, Clock
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.taxonomy import INTERNAL_ERROR, Category, Classification, Recovery
from sidecar.exporters.backoff import AdaptiveBase, Backoff
from sidecar.exporters.balancer import Balancer
from sidecar.exporters.breaker import BreakerOpenError, BreakerState, EndpointBreaker
from sidecar.exporters.budget import RetryBudget, SharedRetryBudget
from sidecar.exporters.concurrency import AdaptiveConcurrency, LoadSignal
from sidecar.exporters.health import EndpointHealth, HealthProber
from sidecar.exporters.retry import (
    ExportClassifier,
    Reason,
    RetryAction,
    RetryPolicy,
    RetryState,
)
from sidecar.exporters.split import split_entry, split_entry_to_limit
from sidecar.exporters.transport import SendOutcome, Transport
from sidecar.pipeline.escalation import Escalation
from sidecar.telemetry.events import Events
from sidecar.telemetry.stats import ErrorStats

log = logging.getLogger(__name__)

# A resend the fleet's retry budget refused waits this long before asking again: the fleet's floor refills
# at min_per_second for all sidecars together, so asking faster only loads Redis.
FLEET_REFUSED_WAIT = 1.0

__all__ = [
    "EndpointChain",
    "ExportClassifier",
    "PartReport",
    "Reason",
    "SendReport",
    "Sender",
    "Upstream",
    "Verdict",
    "build_sender",
]


class Upstream(enum.StrEnum):
    """An exporter's upstream as /ready/upstream reports it."""

    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReport:
    verdict: Verdict
    classification: Classification | None = None  # the last failure's (or the partial success's) class
    attempts: int = 0  # transport calls made
    rejected: int = 0  # items upstream rejected in a partial success (already counted as dropped)
    rejected_message: str = ""  # the upstream's error_message of that partial success
    retry_after: float | None = None  # REQUEUE: seconds until it is worth trying again (a hint)
    endpoint: str | None = None  # the endpoint of the last attempt
    parts: tuple[PartReport, ...] = ()  # the leaf outcomes when the entry was split
    reason: Reason = Reason.NONE

    def outcomes(self, entry: QueueEntry) -> list[PartReport]:
        """The leaf outcomes: `[PartReport(entry, self)]` when not split, else `parts`."""
        return list(self.parts) if self.parts else [PartReport(entry=entry, report=self)]


@dataclass(frozen=True, slots=True, kw_only=True)
class PartReport:
    entry: QueueEntry  # a part of the original entry (its own payload and item count)
    report: SendReport  # a leaf report: its `parts` is empty


@dataclass(slots=True)
class EndpointChain:
    """The per-endpoint links of the chain."""

    name: str
    transport: Transport
    breaker: EndpointBreaker
    limiter: AdaptiveConcurrency
    budget: RetryBudget
    base: AdaptiveBase
    prober: HealthProber | None = None
    first_failure_at: float | None = None  # for recovery_duration
    delivered_once: bool = False  # the endpoint's health when it is not probed: see Sender.endpoint_health
    shared_budget: SharedRetryBudget | None = None  # fleet mode: the fleet-wide budget, on top of `budget`


@dataclass(slots=True)
class _Attempt:
    outcome: SendOutcome | None = None
    failure: ExportFailure | None = None
    classification: Classification | None = None


def load_signal(classification: Classification) -> LoadSignal:
    """What a failure means for adaptive concurrency."""
    if classification.recovery is Recovery.SPLIT_AND_RETRY:
        return LoadSignal.ERROR
    if classification.category is Category.RESOURCE_EXHAUSTED:
        return LoadSignal.THROTTLED
    if classification.category is Category.TIMEOUT:
        return LoadSignal.TIMEOUT
    return LoadSignal.ERROR


class Sender:
    def __init__(
        self,
        exporter_name: str,
        config: ExporterConfig,
        endpoints: Sequence[EndpointChain],
        balancer: Balancer,
        retry: RetryPolicy,
        classifier: ExportClassifier,
        events: Events,
        clock: Clock,
        error_stats: ErrorStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.exporter_name = exporter_name
        self.config = config
        self.endpoints = {ep.name: ep for ep in endpoints}
        self.balancer = balancer
        self.retry = retry
        self.classifier = classifier
        self.events = events
        self.clock = clock
        self.timeout = float(config.timeout)
        self.max_request_bytes = mib_to_bytes(config.max_request_size_mib) if config.max_request_size_mib else None
        # The admin API's derived figures (error rate, outages and recoveries), when the admin API is on.
        self.error_stats = error_stats
        # Recurring export errors are reported with a raised severity (metrics, events, status); the
        # decisions below keep the base classification.
        self.escalation = Escalation()
        self._rng = rng
        self._reconfigured = asyncio.Event()  # set (and replaced) by each `reconfigure`

    # ------------------------------------------------------------ lifecycle and status

    async def reconfigure(self, config: ExporterConfig) -> None:
        """A SIGHUP reload's new retry, breaker, concurrency, timeout, headers and health-probe settings,
        applied to the running links: their state (breaker state and counts, limits, budgets, health)
        stays, and requests in flight take the new settings at their next step (next attempt, next retry
        decision) instead of finishing on objects nobody else uses any more. Endpoints, TLS and the
        queue are not reconfigurable (the reload reports them as needing a restart)."""
        retry_cfg = config.retry_on_failure
        for ep in self.endpoints.values():
            ep.breaker.reconfigure(config.circuit_breaker)
            ep.limiter.reconfigure(config.concurrency)
            ep.budget.reconfigure(retry_cfg.budget)
            if ep.shared_budget is not None:
                ep.shared_budget.reconfigure(retry_cfg.budget)
            ep.base.reconfigure(retry_cfg.initial_interval, retry_cfg.max_interval)
            if config.headers != self.config.headers:
                ep.transport.set_headers(config.headers)
            await self._reconfigure_prober(ep, config)
        self.retry = RetryPolicy(retry_cfg, Backoff.from_config(retry_cfg, self._rng),
                                 {ep.name: ep.budget for ep in self.endpoints.values()},
                                 {ep.name: ep.base for ep in self.endpoints.values()})
        self.timeout = float(config.timeout)
        self.config = config
        self._reconfigured.set()  # retries waiting out an old backoff go on now
        self._reconfigured = asyncio.Event()

    async def _backoff(self, delay: float) -> None:
        """Wait `delay` before a retry, or until a reload changed the settings the delay came from:
        a request must not sleep out a 30 s backoff an operator has just turned down to 1 s."""
        reconfigured = self._reconfigured
        sleep = asyncio.ensure_future(self.clock.sleep(delay))
        woken = asyncio.ensure_future(reconfigured.wait())
        try:
            await asyncio.wait({sleep, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, woken):
                if not task.done():
                    task.cancel()

    async def _reconfigure_prober(self, ep: EndpointChain, config: ExporterConfig) -> None:
        # Turning probing on or off needs a restart (sidecar/reload.py keeps `enabled` as it runs): a
        # prober made here would miss the hooks others attach at start-up, such as the fleet's lease.
        if ep.prober is not None:
            await ep.prober.reconfigure(config.health_probe)

    def start(self) -> None:
        """Start the health probers (needs a running event loop)."""
        for ep in self.endpoints.values():
            if ep.prober is not None:
                ep.prober.start()

    async def stop(self) -> None:
        """Stop the health probers."""
        for ep in self.endpoints.values():
            if ep.prober is not None:
                await ep.prober.stop()

    async def close(self) -> None:
        """Stop probing and close the transports."""
        await self.stop()
        for ep in self.endpoints.values():
            try:
                await ep.transport.close()
            except Exception:
                log.exception("closing the transport of %s failed", ep.name)

    def endpoint_health(self, ep: EndpointChain) -> EndpointHealth:
        """What the active probe last found; without probing, what real exports found (unknown
        until the first delivery, unhealthy while the breaker is open)."""
        if ep.prober is not None:
            return ep.prober.state
        if ep.breaker.state is BreakerState.OPEN:
            return EndpointHealth.UNHEALTHY
        return EndpointHealth.HEALTHY if ep.delivered_once else EndpointHealth.UNKNOWN

    def upstream(self) -> Upstream:
        """For /ready/upstream: reachable when some endpoint is healthy, unknown while none is and
        some has not been found out yet, otherwise unreachable."""
        states = {self.endpoint_health(ep) for ep in self.endpoints.values()}
        if EndpointHealth.HEALTHY in states:
            return Upstream.REACHABLE
        return Upstream.UNKNOWN if EndpointHealth.UNKNOWN in states else Upstream.UNREACHABLE

    def ready_now(self) -> bool:
        """Some endpoint's breaker allows a call now."""
        return any(self.balancer.allowed(name) for name in self.endpoints)

    async def wait_ready(self) -> None:
        """Wait until some endpoint's breaker allows a call (consumers call this before `get`)."""
        await self.balancer.wait_available()

    def status(self) -> list[dict[str, Any]]:
        """Per-endpoint figures for the admin API."""
        out: list[dict[str, Any]] = []
        for ep in self.endpoints.values():
            stats = self.balancer.stats(ep.name)
            out.append({
                "endpoint": ep.name,
                "breaker": ep.breaker.state.value,
                "breaker_time_in_state": ep.breaker.time_in_state,
                "recovery_timeout": ep.breaker.recovery_timeout,
                "health": self.endpoint_health(ep).value,
                "probed": ep.prober is not None,
                "probe_error": ep.prober.last_error if ep.prober is not None else None,  # why it is unhealthy
                "concurrency_limit": ep.limiter.limit,
                "in_flight": ep.limiter.in_flight,
                "outstanding": stats.outstanding,
                "ewma_latency": stats.ewma_latency,
                "retry_budget": ep.budget.balance,
                "backoff_base": ep.base.base,
            })
        return out

    # ------------------------------------------------------------ sending

    async def send(self, entry: QueueEntry, *, resend: bool = False) -> SendReport:
        """Deliver one entry through the chain; see the module docstring for the verdicts.

        `resend`: the entry comes back after the retry budget refused its retry (REQUEUE with
        reason ``budget_exhausted``). Its next attempt is still a retry of the same data, so while
        the endpoint it goes to is failing (no success since its last failure) the attempt must be
        paid from that endpoint's budget and deposits nothing: the call waits (cancellable, holding
        the entry, so other consumers go on with fresh entries) until a token is available or the
        endpoint succeeded meanwhile, and `max_elapsed_time` then counts from that attempt.
        Without this, every requeue would come back as a fresh first attempt funding more retries:
        the retry storm the budget exists to prevent. Once the endpoint succeeded again a resend is
        an ordinary first attempt, so a recovered upstream drains the queue at full speed.
        """
        started = self.clock.monotonic()
        if self.max_request_bytes is not None and len(entry.payload) > self.max_request_bytes:
            pieces = split_entry_to_limit(entry, self.max_request_bytes)
            if len(pieces) > 1:
                return await self._send_parts(pieces, started, attempts=0, cause=None, resend=resend)
        return await self._send_entry(entry, started, resend)

    async def _send_entry(self, entry: QueueEntry, started: float, resend: bool = False) -> SendReport:
        state = RetryState(started_at=started)
        attempts = 0
        avoid: set[str] = set()
        last: Classification | None = None
        last_endpoint: str | None = None
        while True:
            name = self.balancer.pick(avoid)
            if name is None:
                return self._requeue_breakers_open(last, attempts, last_endpoint)
            ep = self.endpoints[name]
            if attempts == 0:
                if not resend or ep.first_failure_at is None:
                    ep.budget.deposit()
                    if ep.shared_budget is not None:
                        ep.shared_budget.deposit()
                elif not ep.budget.try_spend():
                    wait = ep.budget.time_until_token()
                    await self.clock.sleep(1.0 if wait is None else min(1.0, max(0.01, wait)))
                    continue  # pick again: the endpoint may have recovered, or another one be free
                elif not await self._fleet_allows_retry(ep):
                    await self.clock.sleep(FLEET_REFUSED_WAIT)
                    continue
                else:  # a resend to a failing endpoint is a retry (see `send`)
                    self.events.retry_scheduled(self.exporter_name, name, "resend", 0.0)
                    state.started_at = self.clock.monotonic()
            try:
                result = await self._attempt(ep, entry)
            except BreakerOpenError:  # refused between pick and call; not expected, handled anyway
                return self._requeue_breakers_open(last, attempts, last_endpoint)
            attempts += 1
            last_endpoint = name
            if result.outcome is not None:
                return self._delivered(ep, entry, result.outcome, attempts)

            cls = result.classification
            assert cls is not None
            last = cls
            self._count_failure(ep, entry, cls)
            decision = self.retry.decide(state, cls, name, self.clock.monotonic(), result.failure)
            if decision.action is RetryAction.SPLIT:
                return await self._split(entry, started, attempts, cls, name)
            if decision.action is RetryAction.DEAD_LETTER:
                log.debug("%s: dead letter after %d attempts (%s): %s", self.exporter_name, attempts,
                          decision.reason, cls.error_type)
                return SendReport(verdict=Verdict.DEAD_LETTER, classification=cls, attempts=attempts, endpoint=name,
                                  reason=decision.reason)
            if decision.action is RetryAction.REQUEUE:
                if decision.reason is Reason.BUDGET_EXHAUSTED:
                    self.events.retry_refused(self.exporter_name, name)
                return SendReport(verdict=Verdict.REQUEUE, classification=cls, attempts=attempts,
                                  retry_after=decision.delay, endpoint=name, reason=decision.reason)
            delay = decision.delay or 0.0
            if ep.shared_budget is None:
                self.events.retry_scheduled(self.exporter_name, name, cls.error_type, delay)
                await self._backoff(delay)  # cancellable: the caller requeues
            elif not await self._backoff_paid_by_fleet(ep, delay):  # the same verdict as the local budget's
                return SendReport(verdict=Verdict.REQUEUE, classification=cls, attempts=attempts,
                                  endpoint=name, reason=Reason.BUDGET_EXHAUSTED)
            else:
                self.events.retry_scheduled(self.exporter_name, name, cls.error_type, delay)
            avoid = {name} if len(self.endpoints) > 1 else set()

    async def _backoff_paid_by_fleet(self, ep: EndpointChain, delay: float) -> bool:
        """Fleet mode: wait the backoff while the fleet budget's answer is fetched, so a retry waits on Redis
        only when Redis answers slower than the backoff (and then at most the command timeout)."""
        assert ep.shared_budget is not None
        answer = asyncio.ensure_future(ep.shared_budget.try_spend())
        try:
            await self._backoff(delay)  # cancellable: the caller requeues
            paid = await answer
        finally:
            answer.cancel()
        if paid is False:
            self._fleet_refused(ep)
            return False
        return True

    def _fleet_refused(self, ep: EndpointChain) -> None:
        self.events.retry_refused(self.exporter_name, ep.name)  # a budget's refusal, as the local one's
        self.events.fleet_budget_refused(self.exporter_name, ep.name)

    async def _fleet_allows_retry(self, ep: EndpointChain) -> bool:
        """Fleet mode: the fleet-wide budget must pay for the retry too (unknown when Redis is down or slow:
        the local budget, already charged, decides alone)."""
        if ep.shared_budget is None:
            return True
        if await ep.shared_budget.try_spend() is False:
            self._fleet_refused(ep)
            return False
        return True

    async def _attempt(self, ep: EndpointChain, entry: QueueEntry) -> _Attempt:
        self.balancer.begin(ep.name)
        started = self.clock.monotonic()
        latency: float | None = None
        result = _Attempt()
        try:
            async with ep.breaker.calling() as call, ep.limiter.slot() as permit:
                result = await self._call_transport(ep, entry)
                if result.classification is not None:
                    call.record(result.classification)
                    permit.signal = load_signal(result.classification)
                else:
                    latency = self.clock.monotonic() - started
        finally:
            self.balancer.end(ep.name, latency)
        if result.outcome is not None:
            outcome = "partial_success" if result.outcome.rejected else "success"
        else:
            outcome = "failure"
        self.events.export_attempted(self.exporter_name, ep.name, outcome, self.clock.monotonic() - started)
        return result

    async def _call_transport(self, ep: EndpointChain, entry: QueueEntry) -> _Attempt:
        failure: ExportFailure
        classification: Classification | None = None
        try:
            async with asyncio.timeout(self.timeout):
                return _Attempt(outcome=await ep.transport.send(entry, self.timeout))
        except TimeoutError:
            failure = ExportFailure(client_error="timeout", message=f"no answer within {self.timeout}s")
        except ExportError as exc:
            failure, classification = exc.failure, exc.classification
        except Exception as exc:  # a transport must raise ExportError; anything else is our bug
            log.exception("transport %s raised an unexpected error", ep.name)
            failure = ExportFailure(client_error="internal", message=repr(exc)[:200])
        if classification is None:
            classification = self._classify(failure)
        return _Attempt(failure=failure, classification=classification)

    def _classify(self, failure: ExportFailure) -> Classification:
        try:
            return self.classifier.classify_export(failure)
        except Exception:
            log.exception("classifying an export failure failed")
            return INTERNAL_ERROR

    # ------------------------------------------------------------ outcomes

    def _delivered(self, ep: EndpointChain, entry: QueueEntry, outcome: SendOutcome, attempts: int) -> SendReport:
        rejected = max(0, min(outcome.rejected, entry.items))
        signal = entry.signal
        self.events.exported(self.exporter_name, signal, entry.items - rejected)
        cls: Classification | None = None
        if rejected:
            try:
                cls = self.classifier.classify_partial_success(rejected, outcome.rejected_message)
            except Exception:
                log.exception("classifying a partial success failed")
            self.events.partial_success(self.exporter_name, ep.name, signal, rejected, cls)
            if cls is not None and self.error_stats is not None:
                self.error_stats.export_error(self.exporter_name, ep.name, cls)
        ep.base.record(True)
        ep.delivered_once = True
        if ep.first_failure_at is not None:
            recovery = max(0.0, self.clock.monotonic() - ep.first_failure_at)
            self.events.endpoint_recovered(self.exporter_name, ep.name, recovery)
            if self.error_stats is not None:
                self.error_stats.recovered(self.exporter_name, ep.name, recovery)
            ep.first_failure_at = None
        return SendReport(verdict=Verdict.DELIVERED, classification=cls, attempts=attempts, rejected=rejected,
                          rejected_message=outcome.rejected_message if rejected else "", endpoint=ep.name,
                          reason=Reason.PARTIAL_SUCCESS if rejected else Reason.NONE)

    def _count_failure(self, ep: EndpointChain, entry: QueueEntry, cls: Classification) -> None:
        reported = self.escalation.observe(cls, self.clock.monotonic())
        self.events.export_failed(self.exporter_name, ep.name, entry.signal, entry.items, reported,
                                  base_severity=cls.severity)
        if self.error_stats is not None:
            self.error_stats.export_error(self.exporter_name, ep.name, reported)
        if cls.retryable and cls.recovery is not Recovery.SPLIT_AND_RETRY:
            ep.base.record(False)
            if ep.first_failure_at is None:
                ep.first_failure_at = self.clock.monotonic()
                self.events.outage_started(self.exporter_name, ep.name)
                if self.error_stats is not None:
                    self.error_stats.outage_started(self.exporter_name, ep.name)

    def held(self) -> None:
        """A request that cannot go now because every endpoint's breaker holds it back (its own, or the
        fleet's verdict): one occurrence of the class that opened the breaker, for severity escalation.

        An open breaker makes few attempts, and in fleet mode only the prober makes any, so counting
        attempts alone would let a sustained outage hover around the threshold (or, on the members that
        do not probe, never reach it). Counting what the outage holds back escalates it on every member
        while it lasts, and steadily: the class keeps recurring as long as requests keep arriving."""
        cause: Classification | None = None
        endpoint = ""
        for ep in self.endpoints.values():
            if self.balancer.allowed(ep.name):
                return  # something can still be sent: not held
            if cause is None and ep.breaker.open_class is not None:
                cause, endpoint = ep.breaker.open_class, ep.name
        if cause is None:
            return  # opened by no failure this sidecar or the fleet knows the class of (an operator, a reload)
        reported = self.escalation.observe(cause, self.clock.monotonic())
        self.events.export_held(self.exporter_name, endpoint, reported, base_severity=cause.severity)

    def _requeue_breakers_open(
        self, last: Classification | None, attempts: int, endpoint: str | None
    ) -> SendReport:
        return SendReport(verdict=Verdict.REQUEUE, classification=last, attempts=attempts,
                          retry_after=self.balancer.time_until_available(), endpoint=endpoint,
                          reason=Reason.BREAKER_OPEN)

    async def _split(
        self, entry: QueueEntry, started: float, attempts: int, cause: Classification, endpoint: str
    ) -> SendReport:
        halves = split_entry(entry)
        if halves is None:
            return SendReport(verdict=Verdict.DEAD_LETTER, classification=cause, attempts=attempts,
                              endpoint=endpoint, reason=Reason.TOO_LARGE)
        return await self._send_parts(halves, started, attempts=attempts, cause=cause)

    async def _send_parts(
        self, pieces: Sequence[QueueEntry], started: float, attempts: int, cause: Classification | None,
        resend: bool = False,
    ) -> SendReport:
        """Send each part through the chain in order (a part may split again) and combine."""
        parts: list[PartReport] = []
        for piece in pieces:
            report = await self._send_entry(piece, started, resend)
            attempts += report.attempts
            parts.extend(report.outcomes(piece))
        return _combine(parts, attempts, cause)


def _combine(parts: list[PartReport], attempts: int, cause: Classification | None) -> SendReport:
    """One report over the leaf outcomes of a split entry (see the module docstring)."""
    verdicts = {p.report.verdict for p in parts}
    if Verdict.REQUEUE in verdicts:
        verdict = Verdict.REQUEUE
    elif Verdict.DEAD_LETTER in verdicts:
        verdict = Verdict.DEAD_LETTER
    else:
        verdict = Verdict.DELIVERED
    classification: Classification | None = None
    for p in parts:
        if p.report.verdict is verdict and p.report.classification is not None:
            classification = p.report.classification
            break
    if classification is None and verdict is not Verdict.DELIVERED:
        classification = cause
    waits = [p.report.retry_after for p in parts
             if p.report.verdict is Verdict.REQUEUE and p.report.retry_after is not None]
    endpoint = next((p.report.endpoint for p in reversed(parts) if p.report.endpoint), None)
    return SendReport(
        verdict=verdict,
        classification=classification,
        attempts=attempts,
        rejected=sum(p.report.rejected for p in parts),
        retry_after=max(waits) if waits else None,
        endpoint=endpoint,
        parts=tuple(parts),
        reason=Reason.SPLIT,
    )


# ---------------------------------------------------------------- the one place it is built


BreakerCallback = Callable[[str, str, str], None]  # (endpoint, old, new)
HealthCallback = Callable[[str, bool], None]  # (endpoint, healthy)


def build_sender(
    exporter_name: str,
    config: ExporterConfig,
    transports: list[Transport],
    classifier: ExportClassifier,
    events: Events,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    *,
    error_stats: ErrorStats | None = None,
    on_breaker_transition: BreakerCallback | None = None,
    on_health_change: HealthCallback | None = None,
) -> Sender:
    """Assemble the chain for one exporter, one set of links per transport (endpoint).

    Events for breaker state/transitions, the concurrency limit and endpoint health are wired here;
    the optional callbacks are for the service's own reactions (readiness) and raise none of them.
    """
    if not transports:
        raise ValueError(f"exporter {exporter_name}: no endpoint")
    rng = rng if rng is not None else random.Random()
    retry_cfg = config.retry_on_failure
    backoff = Backoff.from_config(retry_cfg, rng)
    chains: list[EndpointChain] = []
    for transport in transports:
        name = transport.endpoint
        breaker = EndpointBreaker(name, config.circuit_breaker, clock)
        breaker.add_observer(_breaker_events(exporter_name, name, events))
        if on_breaker_transition is not None:
            breaker.add_listener(_bind_endpoint(on_breaker_transition, name))
        limiter = AdaptiveConcurrency(config.concurrency, clock,
                                      on_limit_change=functools.partial(events.concurrency_limit_changed, name))
        prober: HealthProber | None = None
        if config.health_probe.enabled:
            prober = HealthProber(
                transport, config.health_probe, clock, breaker,
                on_change=_health_events(exporter_name, events, on_health_change),
                classifier=classifier,
            )
        events.endpoint_added(exporter_name, name, BreakerState.CLOSED.gauge, limiter.limit, probed=prober is not None)
        chains.append(EndpointChain(
            name=name,
            transport=transport,
            breaker=breaker,
            limiter=limiter,
            budget=RetryBudget.from_config(retry_cfg.budget, clock),
            base=AdaptiveBase(retry_cfg.initial_interval, retry_cfg.max_interval, clock,
                              window=float(config.circuit_breaker.window)),
            prober=prober,
        ))
    balancer = Balancer([c.name for c in chains], {c.name: c.breaker for c in chains}, config.balancer)
    policy = RetryPolicy(retry_cfg, backoff, {c.name: c.budget for c in chains}, {c.name: c.base for c in chains})
    return Sender(exporter_name, config, chains, balancer, policy, classifier, events, clock, error_stats, rng=rng)


def _breaker_events(exporter: str, endpoint: str, events: Events) -> Callable[[str, str, str], None]:
    def observer(old: str, new: str, source: str) -> None:
        events.breaker_transition(exporter, endpoint, old, new, BreakerState(new).gauge, source)
    return observer


def _bind_endpoint(callback: BreakerCallback, endpoint: str) -> Callable[[str, str], None]:
    def listener(old: str, new: str) -> None:
        callback(endpoint, old, new)
    return listener


def _health_events(exporter: str, events: Events, extra: HealthCallback | None) -> HealthCallback:
    def listener(endpoint: str, healthy: bool) -> None:
        events.endpoint_health_changed(exporter, endpoint, healthy)
        if extra is not None:
            extra(endpoint, healthy)
    return listener
