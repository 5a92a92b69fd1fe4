"""Who may hold the fleet's probe lease when health probing is off (sidecar/fleet/breaker.py).

Without an active prober, the lease holder probes with its own half-open calls, so only a sidecar whose
data waits for the endpoint may take the lease, and a holder whose data is gone hands it over. Before
this rule an idle sidecar could win the lease and keep the whole fleet open with nothing to probe with.
Real `SharedBreaker`s and `EndpointBreaker`s over the in-memory store of tests/fakes/fleet_store.py.
"""

from __future__ import annotations

import asyncio
import contextlib

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.config.units import Duration
from sidecar.exporters.breaker import BreakerState, EndpointBreaker
from sidecar.fleet.breaker import SharedBreaker
from sidecar.fleet.keys import Keys
from sidecar.fleet.view import EvidenceRule, Record
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.fleet_store import FakeClient, FakeConnection, FakeScripts, Store

ENDPOINT = "collector:4317"
CONFIG = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=Duration(1.0), max_recovery_timeout=Duration(2.0))


class Fleet:
    """Three sidecars without health probers sharing one store; pub/sub delivered at once."""

    def __init__(self) -> None:
        self.clock = FakeClock(100.0)
        self.store = Store(self.clock, self.broadcast, 1.0, 2.0, 3, rule=EvidenceRule(0.5, 4))  # 2 failures
        self.breakers: list[EndpointBreaker] = []
        self.shared: list[SharedBreaker] = []
        for i in range(3):
            conn = FakeConnection(FakeClient(FakeScripts(lambda: self.store)))
            shared = SharedBreaker(ENDPOINT, conn, conn.client.scripts, Keys("t:"), f"s{i}",  # type: ignore[arg-type]
                                   Events(Metrics()), self.clock)
            breaker = EndpointBreaker(ENDPOINT, CONFIG, self.clock)
            shared.attach(breaker, None)
            self.breakers.append(breaker)
            self.shared.append(shared)

    def broadcast(self, record: Record) -> None:
        for shared in self.shared:
            shared.on_message(record)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
            pending = [t for s in self.shared for t in s._tasks if not t.done()]
            if pending:
                await asyncio.gather(*pending)

    async def tick(self, i: int) -> None:
        await self.shared[i]._tick()
        await self.settle()


async def test_only_a_sidecar_with_data_waiting_takes_the_lease_and_hands_it_over_when_it_has_none() -> None:
    fleet = Fleet()
    fleet.breakers[0].record_failure()  # s0's breaker trips: its own, the fleet's record stays closed
    await fleet.settle()
    assert not fleet.store.open and fleet.breakers[1].state is BreakerState.CLOSED
    fleet.breakers[1].record_failure()  # a second sidecar fails too: the fleet opens the endpoint for all
    await fleet.settle()
    assert fleet.store.open and all(b.state is BreakerState.OPEN for b in fleet.breakers)

    # s1 and s2 have nothing to send: they never take the lease, however often they look.
    for _ in range(3):
        await fleet.tick(1)
        await fleet.tick(2)
    assert fleet.store.lease_holder() is None

    # s0's data waits for the endpoint: s0 takes the lease, and probes with that data one probe interval
    # (1.5 s) after the open.
    waiting = asyncio.ensure_future(fleet.breakers[0].wait_until_probe_allowed())
    await asyncio.sleep(0)
    assert fleet.breakers[0].waiting
    await fleet.tick(1)
    await fleet.tick(0)
    assert fleet.store.lease_holder() == "s0"
    fleet.clock.advance(1.5)
    await fleet.settle()
    assert fleet.breakers[0].state is BreakerState.HALF_OPEN
    assert waiting.done()  # its data may go now: the one probe of the fleet

    # That data went elsewhere (or expired) before a call was made: nothing to probe with any more, so
    # s0 frees the lease and stays open like the others until someone with data probes.
    await fleet.tick(0)
    assert fleet.store.lease_holder() is None
    assert fleet.breakers[0].state is BreakerState.OPEN and not fleet.breakers[0].allow()
    waiting2 = asyncio.ensure_future(fleet.breakers[2].wait_until_probe_allowed())
    await asyncio.sleep(0)
    await fleet.tick(2)
    assert fleet.store.lease_holder() == "s2"
    waiting2.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting2
    for shared in fleet.shared:
        await shared.stop()
