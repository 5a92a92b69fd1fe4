"""Model-based test of fleet mode's shared breaker and probe lease (DESIGN.md §9).

Three sidecars, each the real `SharedBreaker` with a real `EndpointBreaker` and `HealthProber`, share
one store. The store stands in for Redis with the semantics of the Lua scripts and of SET NX PX in
sidecar/fleet/scripts.py (tests/unit/test_fleet_redis.py checks the scripts themselves against a real
redis-server); a command may take time to reach it (the store then acts later than the request was
sent). Hypothesis interleaves time passing, ordinary traffic, pub/sub messages (delivered late, or
lost with a connection), refreshes (which renew or win the lease and start probes), the upstream
failing or recovering, sidecars dying, sidecars cut off from Redis and coming back, and Redis
restarting empty.

Invariants:

* never more than one prober: every probe that reaches the upstream comes from the sidecar the store
  names as lease holder at that moment, and no two sidecars ever believe they hold the lease;
* an open endpoint never receives ordinary traffic from a sidecar that has seen it open: a sidecar
  connected to Redis whose view is open never admits a call. (Cut off from Redis, a sidecar goes on
  with its own breaker, by design: Redis never gates delivery.) This includes opens decided by pooled
  failure evidence (each breaker trips at 3 failures; a streak of 2 is reported, and 2 of the 3
  sidecars reporting open the endpoint for all);
* a report is withdrawn: after a successful call made and ended while closed, a connected sidecar has
  no failure report left in the store (a stale report would help open the endpoint for everyone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sidecar.config.schema import CircuitBreakerConfig, HealthProbeConfig
from sidecar.config.units import Duration
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.exporters.breaker import BreakerState, CallOutcome, EndpointBreaker
from sidecar.exporters.health import HealthProber
from sidecar.fleet.breaker import LEASE_TTL, SharedBreaker
from sidecar.fleet.keys import Keys
from sidecar.fleet.view import EVIDENCE_WINDOW, Record, failure_quorum
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock

T = TypeVar("T")
N = 3
ENDPOINT = "collector:4317"
BASE, MAX = 1.0, 4.0
THRESHOLD = 3  # a streak of 2 is reported as evidence before the third failure trips the breaker
CONFIG = CircuitBreakerConfig(failure_threshold=THRESHOLD, recovery_timeout=Duration(BASE),
                              max_recovery_timeout=Duration(MAX))
SIDECAR = st.integers(0, N - 1)


@dataclass
class Store:
    """Redis as the fleet uses it: the breaker record and the lease, with its expiry."""

    clock: FakeClock
    publish: Callable[[Record], None]
    open: bool = False
    timeout: float = 0.0
    until: float = 0.0
    gen: int = 0
    holder: str | None = None
    lease_expires: float = 0.0
    failing: dict[str, float] = field(default_factory=dict)  # instance -> when it reported a streak
    members: int = N  # of the endpoint (heartbeats of dead sidecars linger until their TTL)

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def lease_holder(self) -> str | None:
        if self.holder is not None and self.now >= self.lease_expires:
            self.holder = None  # PX expired
        return self.holder

    def reply(self) -> list[Any]:
        remaining = max(0.0, self.until - self.now) if self.open else 0.0
        return ["open" if self.open else "closed", int(remaining * 1000), int(self.timeout * 1000), self.gen]

    def do_open(self, reopen: bool, instance: str) -> list[Any]:
        if self.open and not (reopen and self.lease_holder() == instance):
            return self.reply()
        self.timeout = min(MAX, max(BASE, self.timeout * 2)) if self.open else BASE
        self.open, self.until, self.gen = True, self.now + self.timeout, self.gen + 1
        self.failing.clear()
        self.publish(Record(True, self.timeout, self.timeout, self.gen))
        return self.reply()

    def do_evidence(self, instance: str) -> list[Any]:
        if self.open:
            self.failing.pop(instance, None)
            return [*self.reply(), 0, 0, 0]
        self.failing[instance] = self.now
        self.failing = {k: at for k, at in self.failing.items() if at >= self.now - EVIDENCE_WINDOW}
        failing = len(self.failing)
        if failing >= failure_quorum(self.members):
            return [*self.do_open(False, instance), 1, failing, self.members]
        return [*self.reply(), 0, failing, self.members]

    def do_close(self) -> list[Any]:
        if self.open:
            self.open, self.until, self.gen, self.holder = False, self.now, self.gen + 1, None
            self.failing.clear()
            self.publish(Record(False, 0.0, self.timeout, self.gen))
        return self.reply()


class FakeScripts:
    """FleetScripts' interface over the store; each call reaches the store `latency` after it was sent."""

    def __init__(self, machine: FleetMachine, sidecar: Sidecar) -> None:
        self.machine, self.sidecar = machine, sidecar

    def _arrive(self) -> Store:
        self.machine.clock.advance(self.sidecar.latency)
        self.sidecar.latency = 0.0
        return self.machine.store

    async def open(self, keys: list[str], args: list[Any]) -> list[Any]:
        return self._arrive().do_open(args[2] == 1, str(args[3]))

    async def close(self, keys: list[str], args: list[Any]) -> list[Any]:
        return self._arrive().do_close()

    async def evidence(self, keys: list[str], args: list[Any]) -> list[Any]:
        return self._arrive().do_evidence(str(args[0]))

    async def read(self, keys: list[str], args: list[Any]) -> list[Any]:
        store = self._arrive()
        holder = store.lease_holder()
        return [*store.reply(), holder or "", int((store.lease_expires - store.now) * 1000) if holder else -2]

    async def renew(self, keys: list[str], args: list[Any]) -> int:
        store = self._arrive()
        if store.lease_holder() != args[0]:
            return 0
        store.lease_expires = store.now + int(args[1]) / 1000
        return 1

    async def release(self, keys: list[str], args: list[Any]) -> int:
        store = self._arrive()
        if store.lease_holder() != args[0]:
            return 0
        store.holder = None
        return 1


class FakeClient:
    def __init__(self, scripts: FakeScripts) -> None:
        self.scripts = scripts

    async def set(self, key: str, value: str, nx: bool, px: int) -> bool:
        store = self.scripts._arrive()
        if not nx or store.lease_holder() is not None:
            return False
        store.holder, store.lease_expires = value, store.now + px / 1000
        return True

    async def hdel(self, key: str, field: str) -> int:
        return 1 if self.scripts._arrive().failing.pop(field, None) is not None else 0


class FakeConnection:
    """FleetConnection's interface: commands run only while connected."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.connected = True

    async def call(self, command: Callable[[], Awaitable[T]]) -> T | None:
        return await command() if self.connected else None


class ProbeTransport:
    endpoint = ENDPOINT

    def __init__(self, machine: FleetMachine, name: str) -> None:
        self.machine, self.name = machine, name

    async def probe(self, timeout: float) -> None:
        holder = self.machine.store.lease_holder()
        assert holder == self.name, f"{self.name} probes while the lease is {holder!r}'s"
        self.machine.probes += 1
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
        self.store = Store(self.clock, self.broadcast)
        self.sidecars: list[Sidecar] = []
        for i in range(N):
            name = f"s{i}"
            breaker = EndpointBreaker(ENDPOINT, CONFIG, self.clock)
            sidecar = Sidecar(name, breaker, None, None)  # type: ignore[arg-type]
            scripts = FakeScripts(self, sidecar)
            sidecar.conn = FakeConnection(FakeClient(scripts))
            sidecar.shared = SharedBreaker(ENDPOINT, sidecar.conn, scripts, Keys("m:"), name,  # type: ignore[arg-type]
                                           Events(Metrics()), self.clock)
            prober = HealthProber(ProbeTransport(self, name), HealthProbeConfig(), self.clock,  # type: ignore[arg-type]
                                  breaker)
            sidecar.shared.attach(breaker, prober)
            self.sidecars.append(sidecar)

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

        closed_before = sidecar.breaker.state is BreakerState.CLOSED

        async def call() -> None:
            async with sidecar.breaker.calling() as attempt:
                if fails:
                    attempt.outcome = CallOutcome.FAILURE
        self.run(call())
        if not fails and closed_before and sidecar.breaker.state is BreakerState.CLOSED and sidecar.conn.connected:
            assert sidecar.name not in self.store.failing, f"{sidecar.name} succeeded but its report stayed"

    @rule(i=SIDECAR)
    def streak_then_success(self, i: int) -> None:
        """A streak long enough to be reported (one failure short of tripping), then an answer."""
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
        self.store = Store(self.clock, self.broadcast)
        for i in range(N):
            self.cut_off(i)

    # ------------------------------------------------------------ invariants

    @invariant()
    def at_most_one_prober(self) -> None:
        holders = [s.name for s in self.sidecars if s.shared.lease.holds(self.now)]
        assert len(holders) <= 1, f"several sidecars hold the probe lease: {holders}"

    @invariant()
    def no_traffic_from_those_who_saw_it_open(self) -> None:
        for sidecar in self.sidecars:
            if sidecar.alive and sidecar.conn.connected and sidecar.shared.view.open:
                assert not sidecar.breaker.allow(), f"{sidecar.name} would send to an endpoint it saw open"


TestFleetModel = FleetMachine.TestCase
TestFleetModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
