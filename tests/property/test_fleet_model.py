"""Model-based test of fleet mode's shared breaker and probe lease (DESIGN.md §9).

Three sidecars, each the real `SharedBreaker` with a real `EndpointBreaker` and `HealthProber`, share
one store (tests/fakes/fleet_store.py), which stands in for Redis with the semantics of the Lua scripts
and of SET NX PX in sidecar/fleet/scripts.py (tests/unit/test_fleet_redis.py checks the scripts
themselves against a real redis-server); a command may take time to reach it (the store then acts later
than the request was sent). Hypothesis interleaves time passing, ordinary traffic, pub/sub messages
(delivered late, or lost with a connection), refreshes (which renew or win the lease and start probes),
the upstream failing or recovering, sidecars dying, sidecars cut off from Redis and coming back, and
Redis restarting empty.

Invariants:

* never more than one prober: every probe that reaches the upstream comes from the sidecar the store
  names as lease holder at that moment, and no two sidecars ever believe they hold the lease;
* an open endpoint never receives ordinary traffic from a sidecar that has seen it open: a sidecar
  connected to Redis whose view is open never admits a call. (Cut off from Redis, a sidecar goes on
  with its own breaker, by design: Redis never gates delivery.) This includes opens decided by pooled
  failure evidence (the store applies `EvidenceRule`: here 2 failures from 2 sidecars; a sidecar's own
  trip is one more failure of its evidence, never an open for all);
* the prober keeps its cadence: one sidecar's consecutive probes of the same open are at least
  `probe_interval` apart, however the fleet's open period has grown;
* one sidecar alone never opens the fleet: every evidence open is preceded by failures of two sidecars.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sidecar.config.schema import CircuitBreakerConfig, HealthProbeConfig
from sidecar.config.units import Duration
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.exporters.breaker import CallOutcome, EndpointBreaker
from sidecar.exporters.health import HealthProber
from sidecar.fleet.breaker import LEASE_TTL, SharedBreaker
from sidecar.fleet.keys import Keys
from sidecar.fleet.view import EvidenceRule, Record
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.fleet_store import FakeClient, FakeConnection, FakeScripts, Store

T = TypeVar("T")
N = 3
ENDPOINT = "collector:4317"
BASE, MAX = 1.0, 4.0
THRESHOLD = 3  # failures that trip one breaker
RULE = EvidenceRule(failure_ratio=0.5, minimum_calls=4)  # 2 failures, from 2 sidecars, within 5 s
PROBE_INTERVAL = 0.7
CONFIG = CircuitBreakerConfig(failure_threshold=THRESHOLD, recovery_timeout=Duration(BASE),
                              max_recovery_timeout=Duration(MAX))
SIDECAR = st.integers(0, N - 1)


class ProbeTransport:
    endpoint = ENDPOINT

    def __init__(self, machine: FleetMachine, name: str) -> None:
        self.machine, self.name = machine, name

    async def probe(self, timeout: float) -> None:
        machine = self.machine
        holder = machine.store.lease_holder()
        assert holder == self.name, f"{self.name} probes while the lease is {holder!r}'s"
        last = machine.last_probe.get(self.name)
        if last is not None and last[1] == machine.store.gen_opened:
            assert machine.now - last[0] >= PROBE_INTERVAL - 1e-9, f"{self.name} probes faster than its cadence"
        machine.last_probe[self.name] = (machine.now, machine.store.gen_opened)
        machine.probes += 1
        if not self.machine.upstream_healthy:
            raise ExportError(ExportFailure(grpc_code="UNAVAILABLE", message="down"))

    async def send(self, entry: object, timeout: float) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


@dataclass
class Sidecar:
    name: str
    breaker: EndpointBreaker
    shared: SharedBreaker
    conn: FakeConnection
    alive: bool = True
    latency: float = 0.0  # how late the next command reaches the store
    inbox: list[Record] = field(default_factory=list)


class FleetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(1000.0)
        self.upstream_healthy = False
        self.probes = 0
        self.store = self.new_store()
        self.last_probe: dict[str, tuple[float, int]] = {}  # prober -> (when, the open it probed)
        self.sidecars: list[Sidecar] = []
        for i in range(N):
            name = f"s{i}"
            breaker = EndpointBreaker(ENDPOINT, CONFIG, self.clock)
            sidecar = Sidecar(name, breaker, None, None)  # type: ignore[arg-type]
            scripts = FakeScripts(functools.partial(self.arrive, sidecar))
            sidecar.conn = FakeConnection(FakeClient(scripts))
            sidecar.shared = SharedBreaker(ENDPOINT, sidecar.conn, scripts, Keys("m:"), name,  # type: ignore[arg-type]
                                           Events(Metrics()), self.clock, RULE, PROBE_INTERVAL)
            sidecar.shared.evidence_batch = 0.0  # reports go at once: the model's clock moves only by its rules
            prober = HealthProber(ProbeTransport(self, name), HealthProbeConfig(), self.clock,  # type: ignore[arg-type]
                                  breaker)
            sidecar.shared.attach(breaker, prober)
            self.sidecars.append(sidecar)

    def new_store(self) -> Store:
        return Store(self.clock, self.broadcast, BASE, MAX, N, rule=RULE)  # dead sidecars' heartbeats linger

    def arrive(self, sidecar: Sidecar) -> Store:
        """A command of `sidecar` reaches Redis, `latency` after it was sent."""
        self.clock.advance(sidecar.latency)
        sidecar.latency = 0.0
        return self.store

    def teardown(self) -> None:
        for sidecar in self.sidecars:
            self.run(sidecar.shared.stop())
        self.loop.close()

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def run(self, work: Awaitable[T]) -> T:
        """Run `work`, then everything it spawned (publishes, probes) until nothing is left."""
        result = self.loop.run_until_complete(work)
        self.loop.run_until_complete(self._settle())
        return result

    async def _settle(self) -> None:
        for _ in range(20):
            pending = [t for s in self.sidecars for t in s.shared._tasks if not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)
            for task in pending:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

    def broadcast(self, record: Record) -> None:
        for sidecar in self.sidecars:
            if sidecar.alive and sidecar.conn.connected:
                sidecar.inbox.append(record)

    def live(self, i: int) -> Sidecar | None:
        sidecar = self.sidecars[i]
        return sidecar if sidecar.alive else None

    # ------------------------------------------------------------ rules

    @initialize(i=SIDECAR)
    def outage_starts(self, i: int) -> None:
        """Most of what matters happens while the endpoint is open: start there (it can close later)."""
        for _ in range(THRESHOLD):
            self.ordinary_call(i, fails=True)

    # Small steps, and the lease's TTL in one go (a stalled holder: a GC pause, renewals lost).
    @rule(seconds=st.one_of(st.floats(0.01, 1.5), st.just(LEASE_TTL)))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(healthy=st.booleans())
    def upstream_changes(self, healthy: bool) -> None:
        self.upstream_healthy = healthy

    @rule(i=SIDECAR, fails=st.booleans())
    def ordinary_call(self, i: int, fails: bool) -> None:
        sidecar = self.live(i)
        if sidecar is None or not sidecar.breaker.allow():
            return
        assert not (sidecar.conn.connected and sidecar.shared.view.open), \
            f"{sidecar.name} sends to an endpoint it saw open"

        async def call() -> None:
            async with sidecar.breaker.calling() as attempt:
                if fails:
                    attempt.outcome = CallOutcome.FAILURE
        self.run(call())

    @rule(i=SIDECAR)
    def streak_then_success(self, i: int) -> None:
        """Failures one short of tripping (each reported), then an answer."""
        for _ in range(THRESHOLD - 1):
            self.ordinary_call(i, fails=True)
        self.ordinary_call(i, fails=False)

    @rule(i=SIDECAR, count=st.integers(1, 3))
    def messages_arrive(self, i: int, count: int) -> None:
        sidecar = self.live(i)
        if sidecar is None:
            return
        arrived, sidecar.inbox = sidecar.inbox[:count], sidecar.inbox[count:]
        for record in arrived:
            sidecar.shared.on_message(record)
        self.run(asyncio.sleep(0))

    @rule(i=SIDECAR, latency=st.floats(0.0, 0.5))
    def refresh(self, i: int, latency: float) -> None:
        """SharedBreaker's periodic tick: read, renew or win the lease, probe when due."""
        sidecar = self.live(i)
        if sidecar is None or not sidecar.conn.connected:
            return
        sidecar.latency = latency
        self.run(sidecar.shared._tick())

    @precondition(lambda self: sum(s.alive for s in self.sidecars) > 1)
    @rule(i=SIDECAR)
    def dies(self, i: int) -> None:
        sidecar = self.sidecars[i]
        sidecar.alive = False
        self.run(sidecar.shared.stop())

    @rule(i=SIDECAR)
    def cut_off(self, i: int) -> None:
        sidecar = self.sidecars[i]
        if sidecar.conn.connected:
            sidecar.conn.connected = False
            sidecar.inbox.clear()  # pub/sub messages are lost with the connection
            sidecar.shared.disconnected()  # what FleetConnection.mark_down calls

    @rule(i=SIDECAR)
    def reconnects(self, i: int) -> None:
        sidecar = self.live(i)
        if sidecar is None or sidecar.conn.connected:
            return
        sidecar.conn.connected = True
        self.run(sidecar.shared.resync())

    @rule()
    def redis_restarts_empty(self) -> None:
        self.store = self.new_store()
        for i in range(N):
            self.cut_off(i)

    # ------------------------------------------------------------ invariants

    @invariant()
    def at_most_one_prober(self) -> None:
        holders = [s.name for s in self.sidecars if s.shared.lease.holds(self.now)]
        assert len(holders) <= 1, f"several sidecars hold the probe lease: {holders}"

    @invariant()
    def one_sidecar_alone_never_opens_the_fleet(self) -> None:
        assert all(len(set(reporters)) >= 2 for reporters in self.store.opened_by_evidence), \
            self.store.opened_by_evidence

    @invariant()
    def no_traffic_from_those_who_saw_it_open(self) -> None:
        for sidecar in self.sidecars:
            if sidecar.alive and sidecar.conn.connected and sidecar.shared.view.open:
                assert not sidecar.breaker.allow(), f"{sidecar.name} would send to an endpoint it saw open"


TestFleetModel = FleetMachine.TestCase
TestFleetModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
