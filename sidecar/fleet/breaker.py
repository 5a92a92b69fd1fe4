"""The fleet's breaker of one endpoint: shared open/closed verdict, one prober elected by a lease.

Each sidecar's `EndpointBreaker`s of the endpoint stay what they were; this object sits beside them:

* their failures are pooled: each sidecar counts the failures it sees on the endpoint (calls, failed
  probes, its own breaker's trips) and sends the count at most every EVIDENCE_BATCH, only when it has
  some (EVIDENCE script); the record opens fleet-wide on the rule of `EvidenceRule` (a share of the
  fleet's calls over a short window, from two sidecars at least), before any single breaker has counted
  `failure_threshold`. A sidecar's own trip does not open the record: one sidecar's trouble (its
  network, its bad data) never holds the others;
* while the record is open, the lease holder probes every `probe_interval` (an empty Export, or a GET
  of `health_check_url`), whatever the open period has grown to: a failed probe (or failed half-open
  call of a holder without a prober) starts the next fleet-wide open period, a success closes the record
  for all (CLOSE script, which also frees the lease);
* the fleet's changes (pub/sub, and a refresh every `REFRESH_INTERVAL` while open, `CLOSED_REFRESH_INTERVAL`
  while closed, for missed messages) are
  applied with source ``fleet``: `follow_open` on a newer open generation, `follow_close` on a newer
  closed one; the record's error class becomes the breakers' `open_class` (severity escalation);
* it is the breakers' gate and the health probers' `may_probe` (see sidecar/fleet/view.py): while the
  fleet has the endpoint open, only the lease holder probes, on its cadence. The other sidecars' breakers
  are held "until further notice" (`HELD`): every change of the gate's answer (the view's state, the
  lease, the connection) calls `_gate_changed`, which wakes the consumers waiting on the breakers, so a
  held endpoint wakes nobody but the prober while the outage lasts;
* while Redis is down everything here answers "decide locally".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.core.clock import Clock
from sidecar.core.tasks import cancel_and_wait
from sidecar.exporters.breaker import SOURCE_LOCAL, BreakerState, EndpointBreaker
from sidecar.exporters.health import HealthProber
from sidecar.fleet import scripts
from sidecar.fleet.client import ScriptCall, run_scripts
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.fleet.view import (
    EVIDENCE_BATCH,
    LONG_CALLS_LOOKBACK,
    MAX_WINDOW,
    MIN_SPAN_WAIT,
    MIN_WINDOW,
    REPEATED_FAILURES,
    EvidenceRule,
    FleetView,
    ProbeLease,
    RecentCalls,
    Record,
    clamp_wait,
    decode_class,
    encode_class,
    next_probe_at,
    probe_delay,
    scheduled_probe_allowed,
    should_probe,
    should_try_lease,
)
from sidecar.telemetry.events import Events

if TYPE_CHECKING:
    from sidecar.fleet.budget import FleetRetryBudget

log = logging.getLogger(__name__)

# Seconds between two refreshes (READ) while the fleet has the endpoint open: the lease is taken, renewed and
# checked at this cadence.
REFRESH_INTERVAL = 0.5
# ... and while it is closed, when a refresh only catches a pub/sub message missed around a reconnect (a
# subscription on a live connection misses none) and carries the budget's deposits. Each refresh costs the
# member's process ~0.1-0.3 ms of CPU, a pod's sidecar little, but a closed endpoint is nearly always the
# state: at 0.5 s the refreshes were two thirds of a healthy member's background work (bench/notes.md,
# "Fleet scale").
CLOSED_REFRESH_INTERVAL = 1.0
FLUSH_INTERVAL = 1.0  # the fleet budget's deposits go with a refresh this often (see sidecar/fleet/budget.py)
LEASE_TTL = 3.0  # a dead prober is replaced within about this long
# The gate's answer while the fleet holds a breaker open: until `_gate_changed` says otherwise. (It was a
# recheck every 0.25 s: 10 consumers x 1,000 members woke 40,000 times a second in bench/fleet_scale.py.)
HELD = math.inf
PROBE_INTERVAL = 1.5  # seconds between the lease holder's probes (FleetConfig.probe_interval)


class FleetScripts:
    """The registered Lua scripts (redis-py loads them again after a Redis restart)."""

    def __init__(self, conn: FleetConnection) -> None:
        client = conn.client
        self.open = client.register_script(scripts.OPEN)
        self.evidence = client.register_script(scripts.EVIDENCE)
        self.close = client.register_script(scripts.CLOSE)
        self.read = client.register_script(scripts.READ)
        self.renew = client.register_script(scripts.RENEW)
        self.release = client.register_script(scripts.RELEASE)
        self.budget = client.register_script(scripts.BUDGET)
        self.heartbeat = client.register_script(scripts.HEARTBEAT)
        self.endpoint_heartbeat = client.register_script(scripts.ENDPOINT_HEARTBEAT)
        self.leave = client.register_script(scripts.LEAVE)


class Rider(Protocol):
    """Scripts that go with a refresh when due, to share its round trip (the member's heartbeat)."""

    def due(self, now: float, early: float) -> bool: ...

    def calls(self, now: float) -> list[ScriptCall]: ...

    def answered(self, replies: list[Any]) -> None: ...


def parse_record(reply: Any) -> Record:
    """OPEN/CLOSE/READ replies and pub/sub messages: state, remaining ms, timeout ms, gen."""
    state, remaining, timeout, gen = reply[0], reply[1], reply[2], reply[3]
    return Record(open=str(state) == "open", remaining=float(remaining) / 1000.0,
                  timeout=float(timeout) / 1000.0, gen=int(gen))


def parse_message(data: str) -> tuple[str, Record] | None:
    """A breaker channel message: ``endpoint\\nstate\\ngen\\nremaining\\ntimeout``."""
    parts = data.rsplit("\n", 4)
    if len(parts) != 5:
        return None
    endpoint, state, gen, remaining, timeout = parts
    try:
        return endpoint, Record(open=state == "open", remaining=float(remaining) / 1000.0,
                                timeout=float(timeout) / 1000.0, gen=int(gen))
    except ValueError:
        return None


class SharedBreaker:
    def __init__(self, endpoint: str, conn: FleetConnection, fleet_scripts: FleetScripts, keys: Keys,
                 instance: str, events: Events, clock: Clock, rule: EvidenceRule | None = None,
                 probe_interval: float = PROBE_INTERVAL) -> None:
        self.endpoint = endpoint
        self._conn = conn
        self._scripts = fleet_scripts
        self._keys = keys
        self._instance = instance
        self._events = events
        self._clock = clock
        self.view = FleetView()
        self.lease = ProbeLease(LEASE_TTL)
        self.holder = ""  # the lease holder as last read
        self.breakers: list[EndpointBreaker] = []
        self.probers: list[HealthProber] = []
        self.rule = rule or EvidenceRule()
        self.probe_interval = probe_interval
        self.evidence_batch = EVIDENCE_BATCH  # seconds between two failure reports of this sidecar
        self.last_probe = float("-inf")  # local monotonic time of this sidecar's last probe as lease holder
        self.open_class = ""  # the error class of the open, as the record keeps it ('' unknown)
        self._probing = False
        self._failures = 0  # failures seen and not yet sent to the fleet
        self._report_seq = 0
        self._last_report = float("-inf")
        self._first_failure = 0.0  # when the first failure of the batch being gathered was counted
        self._recent_calls = RecentCalls()  # this sidecar's calls, for the calls its reports carry
        self._evidence_writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.budget: FleetRetryBudget | None = None  # the endpoint's fleet budget: its deposits ride on the refresh
        self.rider: Rider | None = None  # the heartbeat, on one endpoint's refresh (see Fleet.attach)
        self._deposited_at = float("-inf")

    # ------------------------------------------------------------ wiring (narrow hooks)

    @property
    def _base_timeout(self) -> float:
        """The fleet-wide open period starts here: the first attached breaker's current setting (a reload
        that changes `recovery_timeout` reaches the fleet's next trip)."""
        return float(self.breakers[0].config.recovery_timeout) if self.breakers else 60.0

    @property
    def _max_timeout(self) -> float:
        if not self.breakers:
            return 600.0
        return max(float(self.breakers[0].config.max_recovery_timeout), self._base_timeout)

    def disconnected(self) -> None:
        """Cut off from Redis, this sidecar cannot know it still holds the lease (Redis may have restarted
        and handed it to another): it stops being the fleet's prober at once."""
        self.lease.lost()
        self._gate_changed()

    def attach(self, breaker: EndpointBreaker, prober: HealthProber | None) -> None:
        self.breakers.append(breaker)
        breaker.set_gate(self)
        breaker.add_observer(self._on_local_transition)
        breaker.add_streak_observer(functools.partial(self._on_local_streak, breaker))
        if prober is not None:
            self.probers.append(prober)
            prober.may_probe = self.may_probe

    # ------------------------------------------------------------ gate answers (sync, local state only)

    @property
    def next_probe(self) -> float:
        return next_probe_at(self.view, self.last_probe, self.probe_interval)

    def probe_delay(self) -> float | None:
        return probe_delay(self.view, self.lease, self._conn.connected, self._clock.monotonic(),
                           active_prober=bool(self.probers), recheck=HELD, next_probe=self.next_probe)

    def may_probe(self) -> bool:
        return scheduled_probe_allowed(self.view, self._conn.connected)

    # ------------------------------------------------------------ local -> fleet

    @property
    def _record_keys(self) -> list[str]:
        return [self._keys.breaker(self.endpoint), self._keys.lease(self.endpoint),
                self._keys.evidence(self.endpoint)]

    def _on_local_streak(self, breaker: EndpointBreaker, streak: int) -> None:
        """An outcome counted while closed (a call, kept for the reports): a streak > 0 means it failed."""
        self._recent_calls.add(self._clock.monotonic())
        if streak > 0:
            self._count_failure(breaker)

    def _count_failure(self, breaker: EndpointBreaker) -> None:
        """One failure for the fleet's evidence, sent in a batch; nothing to send while the fleet has the
        endpoint open already (or while Redis is down: the counts would be stale when it is back)."""
        if not self._conn.connected or self.view.open:
            return
        if self._failures == 0:
            self._first_failure = self._clock.monotonic()
        self._failures += 1
        if breaker.open_class is not None:
            self.open_class = encode_class(breaker.open_class)
        if self._evidence_writer is None or self._evidence_writer.done():
            self._evidence_writer = asyncio.ensure_future(self._write_evidence())
            self._tasks.add(self._evidence_writer)
            self._evidence_writer.add_done_callback(self._tasks.discard)

    async def _write_evidence(self) -> None:
        """One writer per endpoint: the failures seen meanwhile go in one report, at most one report every
        EVIDENCE_BATCH (the first at once: an outage's first failures are what opens the fleet fast)."""
        while self._failures:
            wait = self._last_report + self.evidence_batch - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            failures, self._failures = self._failures, 0
            if failures == 0 or self.view.open:
                return
            now = self._clock.monotonic()
            waited = now - self._first_failure  # the span its failures come from (EvidenceRule.tally)
            # At least the failures: a trip or a failed probe is counted without a call of its own.
            calls = max(failures, self._recent_calls.since(self._last_report, now))
            recent = self._recent_calls.since(self._last_report, now, LONG_CALLS_LOOKBACK)
            calls_long = self.rule.long_calls(calls, recent)
            self._last_report = now
            await self._report_failures(failures, calls, calls_long, waited)

    async def _report_failures(self, failures: int, calls: int, calls_long: int, waited: float) -> None:
        keys = [self._keys.breaker(self.endpoint), self._keys.evidence(self.endpoint),
                self._keys.endpoint_members(self.endpoint), self._keys.budget(self.endpoint)]
        self._report_seq += 1
        args: list[str | int | float] = [
            self._instance, self._report_seq, failures, calls, float(self.rule.failure_ratio),
            int(self.rule.minimum_calls),
            int(MIN_WINDOW * 1000), int(MAX_WINDOW * 1000), int(EVIDENCE_BATCH * 1000), int(self._base_timeout * 1000),
            self._keys.channel, self.endpoint, self.open_class, calls_long, REPEATED_FAILURES,
            round(clamp_wait(waited) * 1000), int(MIN_SPAN_WAIT * 1000)]
        reply = await self._conn.call(lambda: self._scripts.evidence(keys=keys, args=args))
        if reply is None:
            return
        if int(reply[4]) == 1:
            self._events.fleet_opened_on_evidence(self.endpoint, int(reply[5]), int(reply[6]))
        self._apply(parse_record(reply))

    def _on_local_transition(self, old: str, new: str, source: str) -> None:
        if source != SOURCE_LOCAL or not self._conn.connected:
            return  # the fleet's own changes are not echoed; while down, the resync catches up
        now = self._clock.monotonic()
        if new == BreakerState.OPEN:
            if old == BreakerState.HALF_OPEN and self.view.open and self.lease.holds(now):
                # The holder's half-open call was its probe and failed: the next one waits a probe interval.
                self.last_probe = now
                self._spawn(self._publish_open(True))
            else:
                # Its own trip is evidence like any failure, not a fleet-wide verdict (see the module docstring).
                self._count_failure(self._breaker_in(new))
        elif new == BreakerState.CLOSED and old == BreakerState.HALF_OPEN:
            self._spawn(self._publish_close())

    def _breaker_in(self, state: str) -> EndpointBreaker:
        return next((b for b in self.breakers if b.state == state), self.breakers[0])

    async def _publish_open(self, reopen: bool) -> None:
        keys = self._record_keys
        args = [int(self._base_timeout * 1000), int(self._max_timeout * 1000), 1 if reopen else 0,
                self._instance, self._keys.channel, self.endpoint, self.open_class]
        reply = await self._conn.call(lambda: self._scripts.open(keys=keys, args=args))
        if reply is not None:
            record = parse_record(reply)
            # A refused reopen (the fleet closed meanwhile) leaves this sidecar's breaker open on its own
            # failed probe: it follows the fleet's close instead of holding its data for recovery_timeout.
            self._apply(record, force=reopen and not record.open)

    async def _publish_close(self) -> None:
        # Optimistic: this sidecar saw the endpoint answer; its own breakers must not be re-opened by a
        # refresh that reads the record before the CLOSE lands.
        self.view.open = False
        self.lease.lost()
        self._notify_breakers()  # another exporter's breaker of this endpoint may be held: it may go now
        keys = self._record_keys
        args = [self._instance, self._keys.channel, self.endpoint]
        reply = await self._conn.call(lambda: self._scripts.close(keys=keys, args=args))
        if reply is not None:
            self._apply(parse_record(reply))

    # ------------------------------------------------------------ fleet -> local

    def on_message(self, record: Record) -> None:
        """A pub/sub message of this endpoint."""
        self._apply(record)

    def _apply(self, record: Record, force: bool = False) -> None:
        now = self._clock.monotonic()
        was_open = self.view.open
        changed = self.view.apply(record, now)
        if not (changed or force):
            return
        if self.view.open:
            self._failures = 0  # opening forgets the fleet's evidence
            self._adopt_class()
            for breaker in self.breakers:
                breaker.follow_open()
        else:
            self.lease.lost()
            for breaker in self.breakers:
                breaker.follow_close()
        if force:
            self._gate_changed()
        elif self.view.open != was_open:
            # Only the breakers' waiters look again. A reopen (the prober's failed probe: the next open period,
            # every probe interval of an outage) changes no gate answer and wakes nobody. Nor is the refresh
            # loop woken: the lease is taken at some member's next refresh, well before the first probe is due
            # (`probe_interval` after the open), while waking every member's loop at once sent N READs and N
            # SET NX to Redis in the same instant (bench/fleet_scale.py: 1,000 of each at every open or close).
            self._notify_breakers()

    def _gate_changed(self) -> None:
        self._notify_breakers()
        self._wake.set()

    def _notify_breakers(self) -> None:
        """The gate's answer may have changed: its breakers' waiters look again (they wait for this alone
        while the answer is `HELD`, see `probe_delay`)."""
        for breaker in self.breakers:
            breaker.gate_changed()

    async def resync(self) -> None:
        """Redis is back (perhaps empty after a restart): push what this sidecar learnt meanwhile, adopt the rest.

        Only an open its own breaker made from its own failures is pushed. A breaker that merely follows
        the fleet's open is open too, and pushing it would re-open a fleet that closed while this sidecar
        was cut off (bench/fleet_scale.py: 9 of 30 opens at 1,000 members, cause `breaker`)."""
        self.view.forget()
        self.lease.lost()
        record = await self._read()
        if record is None:
            return
        locally_open = any(b.state is BreakerState.OPEN and b.opened_by == SOURCE_LOCAL for b in self.breakers)
        if locally_open and not record.open:
            await self._publish_open(False)
        else:
            self._apply(record, force=True)

    # ------------------------------------------------------------ the loop: refresh, lease, probe

    async def run(self) -> None:
        while True:
            try:
                if self._conn.connected:
                    await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet breaker refresh of %s failed", self.endpoint)
            await self._sleep_until_due()

    @property
    def _refresh_interval(self) -> float:
        return REFRESH_INTERVAL if self.view.open else CLOSED_REFRESH_INTERVAL

    async def _sleep_until_due(self) -> None:
        wait = self._refresh_interval
        now = self._clock.monotonic()
        if self.view.open and self.lease.holds(now) and not self._probing:
            wait = min(wait, max(0.01, self.next_probe - now))
        if not self._wake.is_set():
            # The timer sets the event itself (it is this loop's alone, cleared below): cheaper than
            # `asyncio.timeout`, which raises and unwinds a cancellation each time, i.e. on most ticks.
            timer = asyncio.get_running_loop().call_later(wait, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        self._wake.clear()

    async def _read(self) -> Record | None:
        """The record and the lease holder; the budget's deposits and the rider's scripts go in the same round
        trip when due."""
        keys = [self._keys.breaker(self.endpoint), self._keys.lease(self.endpoint)]
        calls: list[ScriptCall] = [(self._scripts.read, keys, [])]
        deposits = self._due_deposits()
        if deposits is not None:
            calls.append(deposits)
        now = self._clock.monotonic()
        rider = self.rider if self.rider is not None and self.rider.due(now, self._refresh_interval / 2) else None
        riding = rider.calls(now) if rider is not None else []
        if len(calls) + len(riding) == 1:
            reply = await self._conn.call(lambda: self._scripts.read(keys=keys, args=[]))
        else:
            replies = await self._conn.call(functools.partial(run_scripts, self._conn.client, calls + riding))
            reply = replies[0] if replies is not None else None
            if replies is not None and rider is not None:
                rider.answered(replies[len(calls):])
        if reply is None:
            return None
        self.holder = str(reply[4])
        record = parse_record(reply)
        if record.open and len(reply) > 6 and reply[6]:
            self.open_class = str(reply[6])
            self._adopt_class()
        return record

    def _due_deposits(self) -> ScriptCall | None:
        """The budget's pending deposits about once every FLUSH_INTERVAL: on the first refresh at most half a
        refresh interval early (refreshes come every REFRESH_INTERVAL or CLOSED_REFRESH_INTERVAL, give or take
        the loop's timing)."""
        now = self._clock.monotonic()
        if self.budget is None or now < self._deposited_at + FLUSH_INTERVAL - REFRESH_INTERVAL / 2:
            return None
        call = self.budget.take_deposits()
        if call is not None:
            self._deposited_at = now
        return call

    def _adopt_class(self) -> None:
        """The class of the fleet's open becomes the breakers' (a sidecar that saw none of the failures
        counts its held requests as that class)."""
        cause = decode_class(self.open_class) if self.open_class else None
        if cause is not None:
            for breaker in self.breakers:
                breaker.open_class = cause

    async def _tick(self) -> None:
        record = await self._read()
        if record is None:
            return
        self._apply(record)
        now = self._clock.monotonic()
        if self.holder != self._instance and self.lease.holds(now):
            self.lease.lost()  # Redis says someone else holds it (ours expired): stop at once
            self._notify_breakers()
        if not self.view.open:
            return
        if self.lease.holds(now):
            if self._can_probe():
                await self._renew()
            else:
                await self._hand_over()
        elif should_try_lease(self.view, self.lease, self.holder, now) and self._can_probe():
            await self._acquire()
        if should_probe(self.view, self.lease, self._clock.monotonic(), self._probing, self.next_probe) \
                and self.probers:
            self._probing = True
            self._spawn(self._probe())

    def _can_probe(self) -> bool:
        """Only a sidecar that can probe may hold the lease: one with an active health prober, or (probing
        off) one whose data waits for the endpoint, since its half-open calls are the probes. A holder
        with neither would keep the whole fleet open with nothing to probe with."""
        return bool(self.probers) or any(b.waiting or b.probes_in_flight for b in self.breakers)

    async def _hand_over(self) -> None:
        """Nothing left to probe with: free the lease for a sidecar that has, and stop probing here (a
        breaker left half-open would otherwise let later data through while the fleet has it open)."""
        await self.release()
        for breaker in self.breakers:
            if breaker.state is BreakerState.HALF_OPEN and not breaker.probes_in_flight:
                breaker.follow_open()
        self._gate_changed()

    async def _acquire(self) -> None:
        sent_at = self._clock.monotonic()
        key = self._keys.lease(self.endpoint)
        won = await self._conn.call(lambda: self._conn.client.set(
            key, self._instance, nx=True, px=int(LEASE_TTL * 1000)))
        if won:
            self.lease.granted(sent_at)
            self.holder = self._instance
            self._events.fleet_lease_won(self.endpoint, self._instance)
            self._gate_changed()

    async def _renew(self) -> None:
        sent_at = self._clock.monotonic()
        key = self._keys.lease(self.endpoint)
        kept = await self._conn.call(lambda: self._scripts.renew(
            keys=[key], args=[self._instance, int(LEASE_TTL * 1000)]))
        if kept == 1:
            self.lease.granted(sent_at)
        else:
            self.lease.lost()
            self._gate_changed()

    async def _probe(self) -> None:
        """One probe as the fleet's prober; its verdict goes to the whole fleet."""
        try:
            self.last_probe = self._clock.monotonic()
            healthy = await self.probers[0].probe_once()
            if healthy:
                for breaker in self.breakers:  # probe_succeeded made them half-open; the fleet closes all
                    breaker.follow_close()
                await self._publish_close()
            elif self.lease.holds(self._clock.monotonic()):
                await self._publish_open(True)
        finally:
            self._probing = False
            self._wake.set()

    async def release(self) -> None:
        """On shutdown or hand-over: free the lease at once instead of letting the fleet wait for it to expire."""
        if self.lease.holds(self._clock.monotonic()):
            key = self._keys.lease(self.endpoint)
            await self._conn.call(lambda: self._scripts.release(keys=[key], args=[self._instance]))
            self.lease.lost()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks))

