"""Per-endpoint circuit breaker on pybreaker (DESIGN.md §4).

pybreaker does the bookkeeping of the classic breaker (consecutive failures -> open, a
successful half-open call -> closed) and is used exactly as DESIGN says: the awaited transport
call runs inside ``with pybreaker.CircuitBreaker.calling():``. This wrapper adds what pybreaker
lacks, all driven by an injected clock:

* open -> half_open after the recovery timeout, decided here with the injected clock (pybreaker's
  own check reads ``datetime.now``; we move pybreaker to half-open ourselves before it would look);
* the recovery timeout doubles with every repeated trip (a failed half-open probe) up to
  ``max_recovery_timeout``, and is back to ``recovery_timeout`` after a successful close;
* a failure-rate trigger: >= ``failure_rate`` failures over ``window`` once ``minimum_calls``
  calls were made (closed state only);
* an asyncio gate: half-open admits at most ``half_open_max_calls`` concurrent probes; it closes
  after ``half_open_success_threshold`` successes in a row (pybreaker's ``success_threshold``),
  and any failure in between opens it again.

What counts (see `outcome_for`):

* FAILURE: retryable/temporary classifications (UNAVAILABLE, timeouts, throttling...).
* SUCCESS: an answer. Besides real successes (partial success included), permanent and fatal
  answers (bad data, auth, unimplemented) and "payload too large" (split_and_retry): the
  endpoint answered, it is alive, so they count as pybreaker successes. They never trip it.
  This is deliberate: a half-open probe answered with 400 proves the endpoint is back.
* NEUTRAL: no verdict on the endpoint. Cancellation (``asyncio.CancelledError``) of the awaited
  call, and failures raised by the sidecar itself (category ``internal``). Neither a failure nor
  a success: pybreaker's counters are left exactly as they were (the storage is frozen while
  pybreaker processes the exit; `exclude=` is not used because it counts as a success).

A result that arrives after the breaker changed state (a call started while closed that ends
after the breaker opened, or a probe that ends after another probe closed it) is applied to the
*current* state, and ignored while the breaker is open, instead of to the state the call started
in. pybreaker alone would let a late half-open success close an open breaker.

State changes are reported to listeners ``on_transition(old, new)`` with the names
``closed``, ``half_open``, ``open``, after pybreaker finished the change; observers added with
`add_observer` also get the source of the change: ``local`` (this sidecar's own calls and timers)
or ``fleet`` (`follow_open` / `follow_close`, other sidecars' verdict shared through Redis).

Fleet mode (sidecar/fleet) plugs in through two narrow points, and without them nothing changes:

* a `BreakerGate` decides when an open breaker may go half-open (``probe_delay``): while another
  sidecar holds the fleet's probe lease this one stays open; ``None`` means "no opinion" (Redis
  down, or the fleet has no verdict) and the local recovery timeout applies as before. ``math.inf``
  means "open until I say otherwise": the gate promises to call `gate_changed` whenever its answer
  may have changed, so the callers waiting in `wait_until_probe_allowed` sleep until then instead of
  asking again on a timer (a fleet-held endpoint costs its waiting consumers nothing while it lasts);
* `follow_open` / `follow_close` apply the fleet's verdict;
* streak observers (`add_streak_observer`) hear this sidecar's consecutive failures after every
  outcome counted while closed (0 after a success), so the fleet can pool the evidence of several
  sidecars before any one of them has seen `failure_threshold` failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.config.schema import CircuitBreakerConfig
from sidecar.core.clock import Clock
from sidecar.core.taxonomy import Category, Classification, Recovery
from sidecar.exporters.budget import WindowedCounts
from sidecar.exporters.pybreaker_no_redis import pybreaker

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The value of sidecar_breaker_state: 0 closed, 1 half-open, 2 open."""
        return {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}[self]


_FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN,
    pybreaker.STATE_OPEN: BreakerState.OPEN,
}


class CallOutcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


def outcome_for(classification: Classification) -> CallOutcome:
    """What a classified export failure means for the endpoint's breaker."""
    if classification.category is Category.INTERNAL:
        return CallOutcome.NEUTRAL  # our own bug says nothing about the endpoint
    if classification.recovery is Recovery.SPLIT_AND_RETRY:
        return CallOutcome.SUCCESS  # "too large": the endpoint answered
    if classification.retryable:
        return CallOutcome.FAILURE
    return CallOutcome.SUCCESS  # permanent/fatal: the endpoint answered


class BreakerOpenError(Exception):
    """The breaker refused the call; `retry_after` is the time until a probe may be allowed."""

    def __init__(self, endpoint: str, state: BreakerState, retry_after: float) -> None:
        super().__init__(f"circuit breaker of {endpoint} is {state} (probe allowed in {retry_after:.3f}s)")
        self.endpoint = endpoint
        self.state = state
        self.retry_after = retry_after


@dataclass(slots=True)
class BreakerCall:
    """One admitted call; the caller sets `outcome` (default SUCCESS) before leaving the block."""

    state: BreakerState  # the state the call was admitted in
    probe: bool  # holds one of the half-open slots
    outcome: CallOutcome = CallOutcome.SUCCESS
    classification: Classification | None = None

    def record(self, classification: Classification) -> None:
        self.outcome = outcome_for(classification)
        self.classification = classification


class _CountedFailure(Exception):
    """Raised inside pybreaker's `calling()` block so pybreaker counts a failure."""


class _Storage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage that can be frozen to make one call's exit count for nothing."""

    def __init__(self) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self.frozen = False

    def increment_counter(self) -> None:
        if not self.frozen:
            super().increment_counter()

    def reset_counter(self) -> None:
        if not self.frozen:
            super().reset_counter()

    def increment_success_counter(self) -> None:
        if not self.frozen:
            super().increment_success_counter()


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: EndpointBreaker) -> None:
        self._owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = _FROM_PYBREAKER[old_state.name] if old_state is not None else None
        self._owner._on_pybreaker_transition(old, _FROM_PYBREAKER[new_state.name])


TransitionListener = Callable[[str, str], None]
TransitionObserver = Callable[[str, str, str], None]  # (old, new, source)
StreakObserver = Callable[[int], None]  # consecutive failures while closed (0 after a success)

SOURCE_LOCAL = "local"
SOURCE_FLEET = "fleet"


class BreakerGate(Protocol):
    """Fleet mode's say in when an open breaker may probe (see the module docstring)."""

    def probe_delay(self) -> float | None:
        """None: decide locally; 0: may go half-open now; > 0: stay open, ask again after that long;
        ``math.inf``: stay open until the gate calls `EndpointBreaker.gate_changed`."""
        ...


# What a caller refused while a gate holds the breaker "until further notice" is told to wait (a retry
# hint: BreakerOpenError.retry_after, a requeue's retry_after, a client's Retry-After). The waiters in
# `wait_until_probe_allowed` do not use it: they are woken by `gate_changed`.
HELD_RETRY_HINT = 1.0


class EndpointBreaker:
    """The circuit breaker of one endpoint. One event loop owns it (no thread safety needed)."""

    def __init__(
        self,
        endpoint: str,
        config: CircuitBreakerConfig,
        clock: Clock,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self.enabled = config.enabled
        self._clock = clock
        self._base_timeout = float(config.recovery_timeout)
        self._max_timeout = max(float(config.max_recovery_timeout), self._base_timeout)
        self._timeout = self._base_timeout
        self._storage = _Storage()
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=self._base_timeout,
            success_threshold=config.half_open_success_threshold,
            listeners=[_Listener(self)],
            state_storage=self._storage,
            name=endpoint,
            throw_new_error_on_trip=False,
        )
        self._state = BreakerState.CLOSED
        now = clock.monotonic()
        self._entered_at = now
        self._opened_at = now
        self._window = WindowedCounts(clock, float(config.window), width=2)  # (failures, calls)
        self._probes = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._pending: list[tuple[BreakerState, BreakerState, str]] = []
        self._listeners: list[TransitionListener] = [on_transition] if on_transition else []
        self._observers: list[TransitionObserver] = []
        self._streak_observers: list[StreakObserver] = []
        self._source = SOURCE_LOCAL  # the source of the transitions pybreaker is making now
        # Who made the current (or last) open: ``local`` (its own failures) or ``fleet`` (`follow_open`). A
        # fleet-mode resync pushes only its own opens to Redis (sidecar/fleet/breaker.py `resync`).
        self.opened_by = SOURCE_LOCAL
        self._gate: BreakerGate | None = None
        self.trips = 0  # times it opened, for status
        # The class of the failures that open (or opened) it: the last counted failure's, or the fleet's
        # open's. Requests held back while it is open count as occurrences of it (severity escalation).
        self.open_class: Classification | None = None

    # ------------------------------------------------------------ observation

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose timeout elapsed becomes half_open when looked at."""
        self._refresh()
        return self._state

    @property
    def time_in_state(self) -> float:
        self._refresh()
        return self._clock.monotonic() - self._entered_at

    @property
    def recovery_timeout(self) -> float:
        """The open duration of the current (or next) trip."""
        return self._timeout

    @property
    def probes_in_flight(self) -> int:
        return self._probes

    @property
    def waiting(self) -> bool:
        """Someone waits for this breaker to admit a call: data is held back by it."""
        return bool(self._waiters)

    @property
    def consecutive_failures(self) -> int:
        return self._cb.fail_counter

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    def add_observer(self, observer: TransitionObserver) -> None:
        """Like `add_listener`, with the source of the change (``local`` or ``fleet``) as third argument."""
        self._observers.append(observer)

    def add_streak_observer(self, observer: StreakObserver) -> None:
        """Hear the consecutive failures after each outcome counted while the breaker stays closed."""
        self._streak_observers.append(observer)

    def set_gate(self, gate: BreakerGate | None) -> None:
        self._gate = gate
        self._notify()

    def gate_changed(self) -> None:
        """The gate's answer changed (a lease won, the fleet's open period over): wake the waiters."""
        self._notify()

    def allow(self) -> bool:
        """Would a call be admitted now? Non-blocking; for the balancer."""
        if not self.enabled:
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._probes < self.config.half_open_max_calls
        return False

    def time_until_probe_allowed(self) -> float:
        """0 when a call may be admitted now (or soon: half-open with its probe slots busy). A hint, always
        finite: held by a gate until further notice, it is `HELD_RETRY_HINT`."""
        wait = self._wait_for_probe()
        return HELD_RETRY_HINT if math.isinf(wait) else wait

    def _wait_for_probe(self) -> float:
        """Like `time_until_probe_allowed`, with ``math.inf`` while a gate holds the breaker until it
        calls `gate_changed`."""
        if not self.enabled or self.state is not BreakerState.OPEN:
            return 0.0
        gated = self._gate_delay()
        if gated is not None:
            return gated
        return max(0.0, self._opened_at + self._timeout - self._clock.monotonic())

    async def wait_until_probe_allowed(self) -> None:
        """Wait until `allow()` is true: the open timeout elapsed, a probe slot freed, a reset, or the
        gate's answer changed. Only a finite wait sets a timer; a gate's "until further notice" and a
        busy half-open wait for a change alone (every change calls `_notify`)."""
        loop = asyncio.get_running_loop()
        while not self.allow():
            changed: asyncio.Future[None] = loop.create_future()
            self._waiters.add(changed)
            sleeper: asyncio.Task[None] | None = None
            try:
                remaining = self._wait_for_probe()
                if self._state is BreakerState.OPEN and 0 < remaining < math.inf:
                    sleeper = asyncio.ensure_future(self._clock.sleep(remaining))
                    await asyncio.wait({changed, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await changed
            finally:
                self._waiters.discard(changed)
                if sleeper is not None and not sleeper.done():
                    sleeper.cancel()

    # ------------------------------------------------------------ the guarded call

    @contextlib.asynccontextmanager
    async def calling(self) -> AsyncIterator[BreakerCall]:
        """Guard one call: ``async with breaker.calling() as call: ...; call.record(cls)``.

        Raises BreakerOpenError on entry when the breaker refuses the call. An exception that
        escapes the block (cancellation, a bug) is re-raised and counts as NEUTRAL.
        """
        if not self.enabled:
            yield BreakerCall(state=BreakerState.CLOSED, probe=False)
            return
        call = self._admit()
        escaped: BaseException | None = None
        late: CallOutcome | None = None
        outcome = CallOutcome.NEUTRAL
        try:
            try:
                with contextlib.suppress(_CountedFailure), self._cb.calling():
                    try:
                        yield call
                    except BaseException as exc:  # cancellation or a bug: no verdict on the endpoint
                        escaped = exc
                        call.outcome = CallOutcome.NEUTRAL
                    outcome = call.outcome
                    if outcome is CallOutcome.FAILURE and call.classification is not None:
                        self.open_class = call.classification
                    if self._state is not call.state:
                        late, outcome = outcome, CallOutcome.NEUTRAL
                    self._storage.frozen = outcome is CallOutcome.NEUTRAL
                    if outcome is CallOutcome.FAILURE:
                        raise _CountedFailure()
            finally:
                self._storage.frozen = False
            self._flush()
            if late is not None:
                self._apply(late)
            elif call.state is BreakerState.CLOSED:
                self._record_rate(outcome)
                self._report_streak(outcome)
        finally:
            if call.probe:
                self._probes -= 1
                self._notify()
        if escaped is not None:
            raise escaped

    # ------------------------------------------------------------ external evidence and control

    def record_failure(self, classification: Classification | None = None) -> None:
        """A failure seen outside `calling()` (a failed health probe). Ignored while open."""
        if self.enabled:
            if classification is not None and self._state is not BreakerState.OPEN:
                self.open_class = classification
            self._apply(CallOutcome.FAILURE)

    def probe_succeeded(self) -> None:
        """A healthy active probe: an open breaker goes half-open now instead of waiting."""
        if self.enabled and self.state is BreakerState.OPEN:
            self._cb.half_open()
            self._flush()

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """New settings in place (a SIGHUP reload): the state, its counters and the calls in flight
        stay; thresholds apply from the next outcome, timeouts from now (an open breaker's current
        timeout is kept within the new bounds), and callers waiting for a probe slot look again."""
        self.config = config
        self.enabled = config.enabled
        self._base_timeout = float(config.recovery_timeout)
        self._max_timeout = max(float(config.max_recovery_timeout), self._base_timeout)
        if self._state is BreakerState.CLOSED:
            self._timeout = self._base_timeout
        else:
            self._timeout = min(self._max_timeout, max(self._base_timeout, self._timeout))
        self._cb.reset_timeout = self._timeout
        self._cb.fail_max = config.failure_threshold
        self._cb.success_threshold = config.half_open_success_threshold
        if float(config.window) != self._window.window:
            self._window = WindowedCounts(self._clock, float(config.window), width=2)
        self._notify()

    def follow_open(self) -> None:
        """The fleet found the endpoint failing: open now (source ``fleet``), calls in flight finish."""
        if not self.enabled or self.state is BreakerState.OPEN:
            return
        self._source = SOURCE_FLEET
        try:
            self._cb.open()
        finally:
            self._source = SOURCE_LOCAL
        self._flush()

    def follow_close(self) -> None:
        """The fleet's probe found the endpoint back: close now (source ``fleet``)."""
        if not self.enabled or self._state is BreakerState.CLOSED:
            return
        self._source = SOURCE_FLEET
        try:
            self.reset()
        finally:
            self._source = SOURCE_LOCAL

    def reset(self) -> None:
        """Close the breaker (operator action); the recovery timeout is back to its base."""
        if self._state is not BreakerState.CLOSED:
            self._cb.close()
        self._timeout = self._base_timeout
        self._cb.reset_timeout = self._timeout
        self._window.clear()
        self._flush()

    # ------------------------------------------------------------ internals

    def _admit(self) -> BreakerCall:
        state = self.state
        if state is BreakerState.OPEN:
            raise BreakerOpenError(self.endpoint, state, self.time_until_probe_allowed())
        probe = state is BreakerState.HALF_OPEN
        if probe:
            if self._probes >= self.config.half_open_max_calls:
                raise BreakerOpenError(self.endpoint, state, 0.0)
            self._probes += 1
        return BreakerCall(state=state, probe=probe)

    def _gate_delay(self) -> float | None:
        if self._gate is None:
            return None
        try:
            delay = self._gate.probe_delay()
        except Exception:  # the fleet is an accelerator: a bug there must not stop delivery
            log.exception("breaker gate failed; deciding locally")
            return None
        return None if delay is None else max(0.0, delay)

    def _refresh(self) -> None:
        if self._state is not BreakerState.OPEN:
            return
        gated = self._gate_delay()
        due = (gated <= 0.0) if gated is not None else (
            self._clock.monotonic() - self._opened_at >= self._timeout)
        if due:
            self._cb.half_open()
            self._flush()

    def _apply(self, outcome: CallOutcome) -> None:
        """Apply an outcome to the current state through pybreaker (not while open)."""
        if outcome is CallOutcome.NEUTRAL or self.state is BreakerState.OPEN:
            return
        with contextlib.suppress(_CountedFailure), self._cb.calling():
            if outcome is CallOutcome.FAILURE:
                raise _CountedFailure()
        self._flush()
        self._record_rate(outcome)
        self._report_streak(outcome)

    def _report_streak(self, outcome: CallOutcome) -> None:
        """Tell the streak observers, unless the outcome said nothing or the breaker left closed (a trip
        is reported as a transition instead)."""
        if outcome is CallOutcome.NEUTRAL or self._state is not BreakerState.CLOSED:
            return
        streak = self._cb.fail_counter
        for observer in self._streak_observers:
            try:
                observer(streak)
            except Exception:  # the fleet is an accelerator: a bug there must not stop delivery
                log.exception("breaker streak observer failed")

    def _record_rate(self, outcome: CallOutcome) -> None:
        if outcome is CallOutcome.NEUTRAL or self._state is not BreakerState.CLOSED:
            return
        self._window.add(1.0 if outcome is CallOutcome.FAILURE else 0.0, 1.0)
        failures, calls = self._window.totals()
        if calls >= self.config.minimum_calls and failures / calls >= self.config.failure_rate:
            self._cb.open()
            self._flush()

    def _on_pybreaker_transition(self, old: BreakerState | None, new: BreakerState) -> None:
        """Called by pybreaker inside its state change; only bookkeeping, listeners run later."""
        if old is new:
            return
        now = self._clock.monotonic()
        previous = self._state
        self._state = new
        self._entered_at = now
        if new is BreakerState.OPEN:
            if previous is BreakerState.HALF_OPEN:
                self._timeout = min(self._max_timeout, self._timeout * 2.0)
            else:
                self._timeout = self._base_timeout
            self._cb.reset_timeout = self._timeout
            self._opened_at = now
            self.opened_by = self._source
            self.trips += 1
            self._window.clear()
        elif new is BreakerState.CLOSED:
            self._timeout = self._base_timeout
            self._cb.reset_timeout = self._timeout
            self._window.clear()
        self._pending.append((previous, new, self._source))
        self._notify()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for old, new, source in pending:
            for listener in list(self._listeners):
                try:
                    listener(old.value, new.value)
                except Exception:
                    log.exception("breaker transition listener failed")
            for observer in list(self._observers):
                try:
                    observer(old.value, new.value, source)
                except Exception:
                    log.exception("breaker transition observer failed")

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
