"""Model-based test of the handoff's claim and acknowledge protocol (sidecar/fleet/handoff.py) on a real
redis-server, with the real HandoffSink, Claimer and Lua scripts.

Hypothesis interleaves sidecars departing (their memory queue and dead letters handed off under a small
fleet-wide budget; what does not fit is what a departing memory queue counts as dropped, reason
shutdown), members claiming and delivering (the upstream accepting, refusing for now, or the member's
breaker open), members dying with claims held (SIGKILL: their claims stay pending) and new members
joining. Every claim is open to takeover at once (claim_timeout 0): the harshest schedule for duplicates.
At the end a healthy member works until Redis is empty.

Invariant: every entry acknowledged by a departed sidecar is delivered (or kept as a dead letter) at
least once, or counted lost with a reason; never both, never neither. The byte budget's counter comes back
to 0 and nothing is left pending.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from sidecar.config.schema import FleetConfig, HandoffConfig, QueueBatchConfig
from sidecar.config.units import Duration
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import INTERNAL_ERROR
from sidecar.exporters.breaker import BreakerState
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.handoff import Claimer, HandoffSink, HandoffStore
from sidecar.fleet.keys import Keys
from sidecar.queue.deadletter import DeadLetter, MemoryDeadLetters
from sidecar.queue.memory import MemoryQueue
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.clock import FakeClock
from tests.fakes.redis_server import RedisServer

ENDPOINT = "collector:4317"
PAYLOAD = 100  # bytes per entry: the budget below holds 0..30 of them


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(Path(tmp_path_factory.mktemp("redis"))) as s:
        yield s


class Member:
    """A fleet member's claiming side: the real Claimer on a fake exporter whose upstream is scripted."""

    def __init__(self, name: str, store: HandoffStore, config: FleetConfig, events: Events,
                 delivered: Counter[int], clock: FakeClock, batch: int) -> None:
        self.breaker = SimpleNamespace(state=BreakerState.CLOSED)
        self.accepts = True
        self.delivered = delivered
        exporter = SimpleNamespace(
            name=name, sender=SimpleNamespace(endpoints={ENDPOINT: SimpleNamespace(breaker=self.breaker)},
                                              max_request_bytes=None),
            config=SimpleNamespace(sending_queue=SimpleNamespace(num_consumers=2, batch=QueueBatchConfig(
                enabled=batch > 1, max_requests=batch))),
            take_handed_off=self.take, take_handed_off_batch=self.take_batch)
        conn = cast(FleetConnection, SimpleNamespace(connected=True))
        self.claimer = Claimer(store, conn, cast(Any, exporter), ENDPOINT, Signal.TRACES, name, config, events, clock)
        self.claimer.claim_timeout_ms = 0  # any pending claim may be taken over at once

    async def take(self, entry: QueueEntry, dead: DeadLetter | None) -> bool:
        if not self.accepts:
            return False
        self.delivered[int(entry.payload[:8])] += 1
        return True

    async def take_batch(self, entries: list[QueueEntry]) -> list[bool]:
        """A merged request: accepted or refused as a whole."""
        assert len({e.signal for e in entries}) == 1 and len(entries) > 1
        if not self.accepts:
            return [False] * len(entries)
        for entry in entries:
            self.delivered[int(entry.payload[:8])] += 1
        return [True] * len(entries)


class HandoffProtocol(RuleBasedStateMachine):
    server: RedisServer

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.events = Events(Metrics(), self.clock)
        self.delivered: Counter[int] = Counter()
        self.lost: dict[int, str] = {}
        self.next_id = 0
        self.members: list[Member] = []
        self.names = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(budget_entries=st.integers(0, 30), batch=st.integers(1, 5))
    def setup(self, budget_entries: int, batch: int) -> None:
        self.batch = batch
        self.config = FleetConfig(endpoint=self.server.url, handoff=HandoffConfig(
            max_mib=max(1e-9, budget_entries * PAYLOAD / (1024 * 1024)), claim_timeout=Duration(1.0)))
        self.store = HandoffStore(self.config, Keys("otlp-sidecar:"))
        self.run(self.store.client.flushdb())
        self.join()

    def teardown(self) -> None:
        try:
            if hasattr(self, "store"):
                self.finish()
                self.run(self.store.close())
        finally:
            self.loop.close()

    # ------------------------------------------------------------ rules

    @rule(entries=st.integers(1, 12), dead=st.integers(0, 3))
    def depart(self, entries: int, dead: int) -> None:
        """A sidecar stops: its memory queue and dead letters go to Redis as far as the budget allows."""
        queue = MemoryQueue(1000)
        letters = MemoryDeadLetters()
        ids = list(range(self.next_id, self.next_id + entries + dead))
        self.next_id += entries + dead
        for ident in ids[:entries]:
            self.run(queue.put(self.entry(ident)))
        for ident in ids[entries:]:
            self.run(letters.add(self.entry(ident), INTERNAL_ERROR, "failed", 0.0))
        exporter = SimpleNamespace(name="otlp", sender=SimpleNamespace(endpoints={ENDPOINT: None}), queue=queue,
                                   dead_letters=letters, storage_directory=None, update_queue_gauges=lambda: None)
        sink = HandoffSink(self.store, f"departed-{ids[0]}", 5.0, self.events, self.clock)
        self.run(sink.hand_off(cast(Any, exporter), 5.0))
        # What stays in a memory queue at exit is counted dropped (reason shutdown) by the exporter.
        for entry in queue.drain_nowait():
            self.lost[int(entry.payload[:8])] = "shutdown"
        for letter in self.run(letters.list(limit=1000)):
            self.lost[int(letter.entry.payload[:8])] = "shutdown"

    @rule(which=st.integers(0, 7), accepts=st.booleans(), closed=st.booleans())
    def claim_round(self, which: int, accepts: bool, closed: bool) -> None:
        if not self.members:
            return
        member = self.members[which % len(self.members)]
        member.accepts = accepts
        member.breaker.state = BreakerState.CLOSED if closed else BreakerState.OPEN
        self.run(member.claimer.round())

    @rule(which=st.integers(0, 7))
    def kill(self, which: int) -> None:
        """SIGKILL: the member's claims stay pending in Redis, held by nobody alive."""
        if self.members:
            self.members.pop(which % len(self.members))

    @rule()
    def join(self) -> None:
        self.names += 1
        self.members.append(Member(f"m{self.names}", self.store, self.config, self.events, self.delivered,
                                   self.clock, self.batch))

    # ------------------------------------------------------------ the end

    def finish(self) -> None:
        """A healthy member works until Redis holds nothing, then the invariant."""
        self.join()
        last = self.members[-1]
        client = self.store.client
        stream = self.store.keys.handoff(ENDPOINT, "traces")
        for _ in range(200):
            if not self.run(client.xlen(stream)):
                break
            self.run(last.claimer.round())
        assert self.run(client.xlen(stream)) == 0
        assert int(self.run(client.get(self.store.keys.handoff_bytes(ENDPOINT))) or 0) == 0
        for ident in range(self.next_id):
            delivered, lost = self.delivered[ident] > 0, ident in self.lost
            assert delivered != lost, f"entry {ident}: delivered {self.delivered[ident]}x, lost {self.lost.get(ident)}"

    @staticmethod
    def entry(ident: int) -> QueueEntry:
        return QueueEntry(Signal.TRACES, b"%08d" % ident + b"x" * (PAYLOAD - 8), 1, (), 0.0)


HandoffProtocol.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                                   suppress_health_check=[HealthCheck.too_slow])
TestHandoffProtocol = HandoffProtocol.TestCase


@pytest.fixture(autouse=True)
def _server(server: RedisServer) -> None:
    HandoffProtocol.server = server
