"""Model-based test of fleet mode's shared breaker and probe lease (DESIGN.md §9).

Three sidecars, each with a real `EndpointBreaker` gated by the real pure decisions of
sidecar/fleet/view.py, share one store. The store below has the semantics of the Lua scripts and of
SET NX PX in sidecar/fleet/scripts.py (tests/unit/test_fleet_redis.py checks the scripts themselves
against a real redis-server). Hypothesis interleaves time passing, ordinary traffic, pub/sub
messages (delivered late, or lost with a disconnect), refreshes with request latency, lease
acquisition and renewal, probes that succeed or fail, sidecars dying, sidecars cut off from Redis,
and Redis restarting empty.

Invariants:

* never more than one prober: at no time do two sidecars (alive or dead) hold the lease as far as
  they themselves know, which is when they would probe;
* an open endpoint never receives ordinary traffic from a sidecar that has seen it open: a sidecar
  connected to Redis whose view is open never admits a call. (Cut off from Redis, a sidecar goes on
  with its own breaker, by design: Redis never gates delivery.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.config.units import Duration
from sidecar.exporters.breaker import SOURCE_LOCAL, BreakerState, EndpointBreaker
from sidecar.fleet.breaker import LEASE_TTL, RECHECK
from sidecar.fleet.view import (
    FleetView,
    ProbeLease,
    Record,
    probe_delay,
    should_probe,
    should_try_lease,
)
from tests.fakes.clock import FakeClock

N = 3
BASE, MAX = 1.0, 4.0
CONFIG = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=Duration(BASE),
                              max_recovery_timeout=Duration(MAX))
SIDECAR = st.integers(0, N - 1)


@dataclass
class Store:
    """Redis as the scripts use it: the breaker record, the lease with its expiry, the message order."""

    open: bool = False
    timeout: float = 0.0
    until: float = 0.0
    gen: int = 0
    holder: str | None = None
    lease_expires: float = 0.0

    def lease_holder(self, now: float) -> str | None:
        if self.holder is not None and now >= self.lease_expires:
            self.holder = None  # PX expired
        return self.holder

    def record(self, now: float) -> Record:
        return Record(self.open, max(0.0, self.until - now) if self.open else 0.0, self.timeout, self.gen)

    def do_open(self, instance: str, reopen: bool, now: float) -> tuple[Record, bool]:
        reopen = reopen and self.lease_holder(now) == instance
        if self.open and not reopen:
            return self.record(now), False
        self.timeout = min(MAX, max(BASE, self.timeout * 2)) if self.open else BASE
        self.open, self.until, self.gen = True, now + self.timeout, self.gen + 1
        return self.record(now), True

    def do_close(self, now: float) -> tuple[Record, bool]:
        if not self.open:
            return self.record(now), False
        self.open, self.until, self.gen, self.holder = False, now, self.gen + 1, None
        return self.record(now), True

    def set_nx_px(self, instance: str, ttl: float, now: float) -> bool:
        if self.lease_holder(now) is not None:
            return False
        self.holder, self.lease_expires = instance, now + ttl
        return True

    def renew(self, instance: str, ttl: float, now: float) -> bool:
        if self.lease_holder(now) != instance:
            return False
        self.lease_expires = now + ttl
        return True


@dataclass
class Sidecar:
    name: str
    breaker: EndpointBreaker
    view: FleetView = field(default_factory=FleetView)
    lease: ProbeLease = field(default_factory=lambda: ProbeLease(LEASE_TTL))
    connected: bool = True
    alive: bool = True
    inbox: list[Record] = field(default_factory=list)
    local_opens: list[bool] = field(default_factory=list)  # reopen flags of local opens to publish


class FleetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1000.0)
        self.store = Store()
        self.sidecars: list[Sidecar] = []
        for i in range(N):
            breaker = EndpointBreaker("collector:4317", CONFIG, self.clock)
            sidecar = Sidecar(f"s{i}", breaker)
            breaker.set_gate(_Gate(self, sidecar))
            breaker.add_observer(_observer(self, sidecar))
            self.sidecars.append(sidecar)

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    # ------------------------------------------------------------ how SharedBreaker reacts

    def apply(self, sidecar: Sidecar, record: Record, force: bool = False) -> None:
        if not (sidecar.view.apply(record, self.now) or force):
            return
        if sidecar.view.open:
            sidecar.breaker.follow_open()
        else:
            sidecar.lease.lost()
            sidecar.breaker.follow_close()

    def broadcast(self, record: Record) -> None:
        for sidecar in self.sidecars:
            if sidecar.alive and sidecar.connected:
                sidecar.inbox.append(record)

    def publish_local_opens(self, sidecar: Sidecar) -> None:
        opens, sidecar.local_opens = sidecar.local_opens, []
        for reopen in opens:
            if sidecar.connected:
                record, changed = self.store.do_open(sidecar.name, reopen, self.now)
                if changed:
                    self.broadcast(record)
                self.apply(sidecar, record)

    # ------------------------------------------------------------ rules

    @initialize(i=SIDECAR)
    def outage_starts(self, i: int) -> None:
        """Most of what matters happens while the endpoint is open: start there (it can close later)."""
        self.ordinary_call(i, fails=True)

    # Small steps, and the lease's TTL in one go (a stalled holder: a GC pause, renewals lost).
    @rule(seconds=st.one_of(st.floats(0.01, 1.5), st.just(LEASE_TTL)))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(i=SIDECAR, fails=st.booleans())
    def ordinary_call(self, i: int, fails: bool) -> None:
        sidecar = self.sidecars[i]
        if not sidecar.alive or not sidecar.breaker.allow():
            return
        assert not (sidecar.connected and sidecar.view.open), f"{sidecar.name} sends to an endpoint it saw open"
        if fails:
            sidecar.breaker.record_failure()
        elif sidecar.breaker.state is BreakerState.HALF_OPEN:
            sidecar.breaker.follow_close()  # a successful probe call closes it (and would publish)
            if sidecar.connected:
                record, changed = self.store.do_close(self.now)
                if changed:
                    self.broadcast(record)
                self.apply(sidecar, record)
        self.publish_local_opens(sidecar)

    @rule(i=SIDECAR, count=st.integers(1, 3))
    def messages_arrive(self, i: int, count: int) -> None:
        sidecar = self.sidecars[i]
        if not sidecar.alive:
            return
        arrived, sidecar.inbox = sidecar.inbox[:count], sidecar.inbox[count:]
        for record in arrived:
            self.apply(sidecar, record)

    @rule(i=SIDECAR, latency=st.floats(0.0, 0.5))
    def refresh(self, i: int, latency: float) -> None:
        """SharedBreaker._tick: read, then renew or try to win the lease; requests were sent `latency` ago."""
        sidecar = self.sidecars[i]
        if not (sidecar.alive and sidecar.connected):
            return
        sent_at = self.now - latency
        self.apply(sidecar, self.store.record(self.now))
        holder = self.store.lease_holder(self.now) or ""
        if holder != sidecar.name and sidecar.lease.holds(self.now):
            sidecar.lease.lost()
        if not sidecar.view.open:
            return
        if sidecar.lease.holds(self.now):
            if self.store.renew(sidecar.name, LEASE_TTL, self.now):
                sidecar.lease.granted(sent_at)
            else:
                sidecar.lease.lost()
        elif should_try_lease(sidecar.view, sidecar.lease, holder, self.now) and self.store.set_nx_px(
                sidecar.name, LEASE_TTL, self.now):
            sidecar.lease.granted(sent_at)

    @rule(i=SIDECAR, healthy=st.booleans())
    def probe(self, i: int, healthy: bool) -> None:
        """SharedBreaker._probe: only the lease holder, when the fleet's open period is over."""
        sidecar = self.sidecars[i]
        if not (sidecar.alive and sidecar.connected and should_probe(sidecar.view, sidecar.lease, self.now, False)):
            return
        assert self.store.lease_holder(self.now) == sidecar.name, "a sidecar probes without holding the lease"
        if healthy:
            sidecar.breaker.follow_close()
            sidecar.view.open = False
            sidecar.lease.lost()
            record, changed = self.store.do_close(self.now)
        else:
            sidecar.view.until = self.now + BASE
            record, changed = self.store.do_open(sidecar.name, True, self.now)
        if changed:
            self.broadcast(record)
        self.apply(sidecar, record)

    @precondition(lambda self: sum(s.alive for s in self.sidecars) > 1)
    @rule(i=SIDECAR)
    def dies(self, i: int) -> None:
        self.sidecars[i].alive = False

    @rule(i=SIDECAR)
    def cut_off(self, i: int) -> None:
        sidecar = self.sidecars[i]
        sidecar.connected = False
        sidecar.inbox.clear()  # pub/sub messages are lost with the connection
        sidecar.lease.lost()  # SharedBreaker.disconnected

    @rule(i=SIDECAR)
    def reconnects(self, i: int) -> None:
        """SharedBreaker.resync."""
        sidecar = self.sidecars[i]
        if not sidecar.alive or sidecar.connected:
            return
        sidecar.connected = True
        sidecar.local_opens.clear()
        sidecar.view.forget()
        sidecar.lease.lost()
        record = self.store.record(self.now)
        if sidecar.breaker.state is BreakerState.OPEN and not record.open:
            sidecar.local_opens.append(False)
            self.publish_local_opens(sidecar)
        else:
            self.apply(sidecar, record, force=True)

    @rule()
    def redis_restarts_empty(self) -> None:
        self.store = Store()
        for i, sidecar in enumerate(self.sidecars):
            if sidecar.connected:
                self.cut_off(i)

    # ------------------------------------------------------------ invariants

    @invariant()
    def at_most_one_prober(self) -> None:
        holders = [s.name for s in self.sidecars if s.lease.holds(self.now)]
        assert len(holders) <= 1, f"several sidecars hold the probe lease: {holders}"

    @invariant()
    def no_traffic_from_those_who_saw_it_open(self) -> None:
        for sidecar in self.sidecars:
            if sidecar.alive and sidecar.connected and sidecar.view.open:
                assert not sidecar.breaker.allow(), f"{sidecar.name} would send to an endpoint it saw open"


class _Gate:
    def __init__(self, machine: FleetMachine, sidecar: Sidecar) -> None:
        self.machine, self.sidecar = machine, sidecar

    def probe_delay(self) -> float | None:
        s = self.sidecar
        return probe_delay(s.view, s.lease, s.connected, self.machine.now, active_prober=True, recheck=RECHECK)


def _observer(machine: FleetMachine, sidecar: Sidecar):  # type: ignore[no-untyped-def]
    def observe(old: str, new: str, source: str) -> None:
        if source == SOURCE_LOCAL and new == BreakerState.OPEN and sidecar.connected:
            sidecar.local_opens.append(old == BreakerState.HALF_OPEN and sidecar.lease.holds(machine.now))
    return observe


TestFleetModel = FleetMachine.TestCase
TestFleetModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
