"""Pure decisions of fleet mode for one endpoint: what this sidecar knows of the fleet's breaker, whether
it holds the probe lease, and what it may do. No I/O, no clock read: `now` is passed in (local monotonic
seconds). sidecar/fleet/breaker.py feeds them from Redis; the model tests drive them directly.

Invariants they keep (tests/property/test_fleet_model.py):

* at most one prober: a sidecar probes only while `ProbeLease.holds(now)`, and its local deadline is
  computed from the time it *sent* the SET NX PX / renewal, scaled by `SAFETY` < 1, so it ends before
  Redis lets the key expire and another sidecar can win it (clocks may differ in offset, and in rate by
  less than 1 - SAFETY);
* an open endpoint gets no ordinary traffic from a sidecar that has seen it open: while connected and
  the view is open, `probe_delay` keeps the local breaker open (the lease holder with an active prober
  included: its probe decides), and only a fleet close (a newer generation) lets it close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAFETY = 0.8  # fraction of the lease TTL this sidecar trusts itself to hold the lease

# Fleet-wide failure evidence (the EVIDENCE script in sidecar/fleet/scripts.py applies the same rule).
EVIDENCE_STREAK = 2  # consecutive failures that make a sidecar report the endpoint failing
QUORUM_FRACTION = 0.5  # of the endpoint's live members, each with a reported streak, to open it fleet-wide
EVIDENCE_WINDOW = 5.0  # seconds a report counts (a sidecar that stops sending stops counting)


@dataclass(slots=True)
class ProbeLease:
    ttl: float  # seconds, as given to PX
    deadline: float | None = None  # local monotonic time until which this sidecar holds the lease

    def holds(self, now: float) -> bool:
        return self.deadline is not None and now < self.deadline

    def granted(self, sent_at: float) -> None:
        """Redis answered OK to SET NX PX (or to a renewal) sent at local time `sent_at`."""
        self.deadline = sent_at + self.ttl * SAFETY

    def lost(self) -> None:
        self.deadline = None


@dataclass(frozen=True, slots=True)
class Record:
    """The fleet's breaker record as Redis returned it (durations relative to Redis's own time)."""

    open: bool
    remaining: float  # seconds left of the open period
    timeout: float  # seconds: the current open period
    gen: int


@dataclass(slots=True)
class FleetView:
    """This sidecar's view of the fleet's breaker of one endpoint."""

    open: bool = False
    until: float = 0.0  # local monotonic end of the fleet's open period
    timeout: float = 0.0
    gen: int = -1  # -1: nothing seen yet (or forgotten at a resync: a restarted Redis counts from 0)

    def apply(self, record: Record, now: float) -> bool:
        """Take a record read or received at `now`; True when it is a new generation (a change to act on).
        An older generation (a late pub/sub message, a read that crossed a change) is ignored."""
        if record.gen < self.gen:
            return False
        changed = record.gen > self.gen
        self.gen = record.gen
        self.open = record.open
        self.timeout = record.timeout
        self.until = now + record.remaining if record.open else now
        return changed

    def forget(self) -> None:
        self.gen = -1


def evidence_streak(failure_threshold: int) -> int:
    """The consecutive failures after which this sidecar reports the endpoint failing to the fleet:
    `EVIDENCE_STREAK`, or fewer when its own breaker would already trip on fewer."""
    return max(1, min(EVIDENCE_STREAK, failure_threshold))


def failure_quorum(members: int) -> int:
    """How many members (of those sending to the endpoint) must report a streak to open it fleet-wide.

    At least two, so no single sidecar decides for the others before its own breaker trips; half of
    the members, so independent, scattered failures (each sidecar's streak is cleared by its next
    success) do not add up to a trip as the fleet grows.
    """
    return max(2, math.ceil(members * QUORUM_FRACTION - 1e-9))


def probe_delay(view: FleetView, lease: ProbeLease, connected: bool, now: float, active_prober: bool,
                recheck: float) -> float | None:
    """The breaker gate's answer (see sidecar.exporters.breaker.BreakerGate).

    None (decide locally) when Redis is down or the fleet has the endpoint closed. While it is open:
    a sidecar without the lease stays open (ask again after `recheck`); the holder stays open too when
    it has an active prober (the probe decides, then the fleet closes), otherwise its breaker goes
    half-open when the fleet's open period ends and its real calls probe.
    """
    if not connected or not view.open:
        return None
    if lease.holds(now) and not active_prober:
        return max(0.0, view.until - now)
    return recheck


def scheduled_probe_allowed(view: FleetView, connected: bool) -> bool:
    """A health prober's own schedule: skipped while the fleet has the endpoint open (one prober)."""
    return not (connected and view.open)


def should_probe(view: FleetView, lease: ProbeLease, now: float, probing: bool) -> bool:
    """The lease holder probes when the fleet's open period is over (one probe at a time)."""
    return view.open and lease.holds(now) and now >= view.until and not probing


def should_try_lease(view: FleetView, lease: ProbeLease, holder: str, now: float) -> bool:
    """Ask for the lease when the endpoint is open and nobody holds it (Redis decides who wins)."""
    return view.open and not lease.holds(now) and holder == ""
