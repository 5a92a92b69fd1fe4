"""The members of the fleet-scale simulation (bench/fleet_scale.py): real sidecar code, a light data path.

The seam: `sidecar.exporters.transport.Transport`. A sidecar's exporter is assembled exactly as the
service assembles it (`build_sender` -> `Exporter` -> `Fleet.attach`), with the real memory queue,
batching consumers, retry policy, local and fleet retry budgets, `EndpointBreaker`, `HealthProber`,
and fleet `SharedBreaker`/`FleetRetryBudget`/`Heartbeat`/`FleetConnection` (its own redis-py client
and pub/sub connection per member, as each sidecar process has). Only the transport differs:
`SimTransport.send`/`probe` ask an in-process `SimUpstream` instead of making a gRPC call, so a
call costs microseconds rather than a gRPC round trip and a whole fleet fits in a few processes.
Everything above the transport (every breaker, budget, lease and evidence decision, every Redis
command) is the code a sidecar runs.

The upstream's behaviour is a pure function of wall-clock time and a seeded random draw
(`UpstreamPlan.fails`), so the upstreams of all worker processes fail and recover together.
Each request carries its acceptance time (one span whose start time is the wall clock at
`accept`), so the delivery latency of every request is read at the upstream, merged batches
included.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.config.schema import ClassifyProcessorConfig, ExporterConfig, FleetConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.signals import Signal
from sidecar.exporters.breaker import BreakerState
from sidecar.exporters.exporter import Exporter
from sidecar.exporters.sender import build_sender
from sidecar.exporters.transport import SendOutcome
from sidecar.fleet.fleet import Fleet
from sidecar.pipeline.classify import Classifier
from sidecar.telemetry.events import Events

EXPORTER = "otlp/sim"
ENDPOINT = "sim-collector:4317"
UPSTREAM_LATENCY = 0.002  # seconds a simulated Export takes (a Collector on the same network)


@dataclass(frozen=True, slots=True)
class UpstreamPlan:
    """When the simulated upstream fails (wall-clock seconds) and how often outside that window."""

    fail_from: float = float("inf")  # UNAVAILABLE to every call in [fail_from, fail_until)
    fail_until: float = float("inf")
    fail_ratio: float = 0.0  # otherwise each call fails independently with this probability

    def fails(self, now: float, draw: float) -> bool:
        if self.fail_from <= now < self.fail_until:
            return True
        return draw < self.fail_ratio


@dataclass(slots=True)
class Calls:
    """What the upstream of one worker saw: every call with its time and outcome, and delivery latencies."""

    data: list[tuple[float, bool]] = field(default_factory=list)  # (wall time, succeeded)
    probes: list[tuple[float, bool]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # per request delivered: accept -> accepted upstream
    requests_delivered: int = 0
    # The requests delivered after at least one failed attempt (a subset of `latencies_ms`): (latency, ms from
    # its last failed attempt to its delivery: backoff, budget and queueing together), so the p99's two groups,
    # first attempt and retried, are told apart (bench/notes.md, "Fleet scale ... p99 at 1,000").
    retried_ms: list[tuple[float, float]] = field(default_factory=list)


class SimUpstream:
    def __init__(self, plan: UpstreamPlan, seed: int) -> None:
        self.plan = plan
        self.calls = Calls()
        self._rng = random.Random(seed)
        self.record_latency_from = 0.0  # wall time: latencies of requests accepted earlier are not kept
        self._failed_at: dict[bytes, int] = {}  # trace id -> wall time (ns) of its last failed attempt

    def _answer(self, now: float) -> bool:
        return not self.plan.fails(now, self._rng.random())

    async def export(self, payload: bytes) -> None:
        await asyncio.sleep(UPSTREAM_LATENCY)
        now = time.time()
        ok = self._answer(now)
        self.calls.data.append((now, ok))
        request = ExportTraceServiceRequest.FromString(payload)
        now_ns = time.time_ns()
        if not ok:
            for group in request.resource_spans:
                self._failed_at[group.scope_spans[0].spans[0].trace_id] = now_ns
            raise ExportError(ExportFailure(grpc_code="UNAVAILABLE", message="simulated outage"))
        floor_ns = int(self.record_latency_from * 1e9)
        for group in request.resource_spans:
            span = group.scope_spans[0].spans[0]
            accepted_ns = span.start_time_unix_nano
            self.calls.requests_delivered += 1
            failed_ns = self._failed_at.pop(span.trace_id, None)
            if accepted_ns >= floor_ns:
                latency = (now_ns - accepted_ns) / 1e6
                self.calls.latencies_ms.append(latency)
                if failed_ns is not None:
                    self.calls.retried_ms.append((latency, (now_ns - failed_ns) / 1e6))

    async def probe(self) -> None:
        await asyncio.sleep(UPSTREAM_LATENCY)
        now = time.time()
        ok = self._answer(now)
        self.calls.probes.append((now, ok))
        if not ok:
            raise ExportError(ExportFailure(grpc_code="UNAVAILABLE", message="simulated outage"))


class SimTransport:
    """A `Transport` whose Export is a call on the in-process `SimUpstream` (the seam, see the module doc)."""

    def __init__(self, endpoint: str, upstream: SimUpstream) -> None:
        self.endpoint = endpoint
        self._upstream = upstream

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome:
        await self._upstream.export(entry.payload)
        return SendOutcome()

    async def probe(self, timeout: float) -> None:
        await self._upstream.probe()

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Headers change nothing for the simulated upstream."""

    async def close(self) -> None:
        """Nothing to close: no connection."""


def request(accepted_ns: int, trace_id: bytes) -> tuple[ExportTraceServiceRequest, bytes]:
    """One Export request of one span whose start time is when the client got its acknowledgement."""
    message = ExportTraceServiceRequest()
    span = message.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = trace_id
    span.span_id = trace_id[:8]
    span.name = "GET /checkout"
    span.start_time_unix_nano = accepted_ns
    span.end_time_unix_nano = accepted_ns
    return message, message.SerializeToString()


@dataclass(slots=True)
class Transition:
    at: float  # wall time
    old: str
    new: str
    source: str


class Member:
    """One simulated sidecar: an exporter as the service builds it, and (fleet mode) its own `Fleet`."""

    def __init__(self, index: int, redis_url: str | None, upstream: SimUpstream, events: Events,
                 classifier: Classifier, key_prefix: str) -> None:
        self.index = index
        self.config = ExporterConfig(endpoint=ENDPOINT)  # the shipped defaults, as a user who sets nothing
        sender = build_sender(EXPORTER, self.config, [SimTransport(ENDPOINT, upstream)], classifier, events,
                              SYSTEM_CLOCK)
        self.exporter = Exporter(EXPORTER, self.config, sender, classifier, events, SYSTEM_CLOCK,
                                 storage_directory=None, memory_limit_bytes=None)
        self.transitions: list[Transition] = []
        chain = sender.endpoints[ENDPOINT]
        chain.breaker.add_observer(self._observe)
        self.breaker = chain.breaker
        self.fleet: Fleet | None = None
        if redis_url is not None:
            fleet_config = FleetConfig(endpoint=redis_url, instance_id=f"m{index}", key_prefix=key_prefix)
            self.fleet = Fleet(fleet_config, events, SYSTEM_CLOCK, self.snapshot)
            self.fleet.attach(EXPORTER, sender)
        self.chain = chain
        # The fleet budget's answers to retries: (seconds the round trip took, True / False / None unknown).
        self.fleet_spends: list[tuple[float, bool | None]] = []
        if chain.shared_budget is not None:
            self._time_fleet_spends(chain.shared_budget)

    def _time_fleet_spends(self, budget: Any) -> None:
        """Wrap the fleet budget's `try_spend` (the only Redis round trip on a retry's path) to time it."""
        spend = budget.try_spend

        async def timed() -> bool | None:
            started = time.monotonic()
            answer: bool | None = await spend()
            self.fleet_spends.append((time.monotonic() - started, answer))
            return answer

        budget.try_spend = timed

    def _observe(self, old: str, new: str, source: str) -> None:
        self.transitions.append(Transition(time.time(), old, new, source))

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's payload, shaped as the service's `fleet_snapshot`."""
        health = self.exporter.health()
        return {"version": "sim", "pid": self.index, "accepting": self.exporter.accepting,
                "exporters": {EXPORTER: {"queue_size": health["queue_size"],
                                         "queue_capacity": health["queue_capacity"],
                                         "degradation_level": health["degradation_level"],
                                         "breakers": {ENDPOINT: self.breaker.state.value}}}}

    async def start(self) -> None:
        await self.exporter.start()
        if self.fleet is not None:
            self.fleet.start()

    async def accept(self, message: ExportTraceServiceRequest, payload: bytes, accepted_at: float) -> bool:
        entry = QueueEntry(Signal.TRACES, payload, 1, (), accepted_at)
        try:
            await self.exporter.accept(entry, message, None)
        except Exception:  # backpressure (queue full): the client would retry; counted as refused
            return False
        return True

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        await self.exporter.shutdown(0.0)

    def open_now(self) -> bool:
        return self.breaker.state is BreakerState.OPEN


def export_classifier() -> Classifier:
    return Classifier(ClassifyProcessorConfig())
