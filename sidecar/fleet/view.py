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
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity

SAFETY = 0.8  # fraction of the lease TTL this sidecar trusts itself to hold the lease

# Fleet-wide failure evidence (the EVIDENCE script in sidecar/fleet/scripts.py applies the same rule).
MIN_WINDOW = 0.05  # seconds: the shortest window failures are summed over (a busy fleet)
MAX_WINDOW = 5.0  # seconds: the longest (a quiet fleet); reports older than this are forgotten
EVIDENCE_BATCH = 0.1  # seconds: a sidecar sends its failure counts at most this often (and only when it has some)
# seconds: a report also carries the calls its sidecar made since its previous report, over at most this long
# back (the span a busy fleet's window compares failures with) ...
CALLS_LOOKBACK = MIN_WINDOW + EVIDENCE_BATCH
# ... and over at most this long back (the span of the longest window: a quiet fleet's, or an unknown rate's)
LONG_CALLS_LOOKBACK = MAX_WINDOW + EVIDENCE_BATCH
# With an unknown rate a sidecar's failures count only once it has reported at least this many in the window
# (see EvidenceRule.tally).
REPEATED_FAILURES = 2
# seconds: the least wait the rule adds to a window (see EvidenceRule): reports counted at arrival bunch
MIN_SPAN_WAIT = 0.05


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
    since: float = 0.0  # local monotonic time this sidecar saw the current open start (probes count from it)
    timeout: float = 0.0
    gen: int = -1  # -1: nothing seen yet (or forgotten at a resync: a restarted Redis counts from 0)

    def apply(self, record: Record, now: float) -> bool:
        """Take a record read or received at `now`; True when it is a new generation (a change to act on).
        An older generation (a late pub/sub message, a read that crossed a change) is ignored."""
        if record.gen < self.gen:
            return False
        changed = record.gen > self.gen
        self.gen = record.gen
        if record.open and not self.open:
            self.since = now
        self.open = record.open
        self.timeout = record.timeout
        self.until = now + record.remaining if record.open else now
        return changed

    def forget(self) -> None:
        self.gen = -1


@dataclass(frozen=True, slots=True)
class EvidenceRule:
    """When pooled failures open an endpoint fleet-wide (Envoy's outlier detection `failure_percentage`,
    fleet-wide and over a short window).

    `rate` is the fleet's request rate on the endpoint (first attempts per second, as the retry budget
    counts them). Redis sums the failures of the reports that *arrived* within `window(rate)` and opens
    the endpoint when they reach `failure_ratio` of the calls the fleet made in the span those failures
    can come from, counted from at least two sidecars (when it has two).

    The span is the window plus EVIDENCE_BATCH: a sidecar sends its failures at most every EVIDENCE_BATCH
    (B) and Redis counts a report at its arrival, so the reports arriving within a window of length `a`
    carry failures of up to `a + B` (the rule before carried them against the calls of `a` alone: with
    a = 50 ms, 150 ms of failures against 50 ms of calls, and 5 % scattered failures opened the fleet
    36 to 39 times a minute in bench/fleet_scale.py). So, with m = minimum_calls and r = rate:

    * window a = clamp(m / r - B, MIN_WINDOW, MAX_WINDOW) (MAX_WINDOW when the rate is unknown, `tally`): the span
      a + B holds about m calls, or MIN_WINDOW + B = 150 ms of a busy fleet's traffic;
    * needed = floor(ratio x max(m, r x (a + w))), and, unless the window is the longest, never more than
      the window's own calls r x a (a large `failure_ratio`: when every call fails, one window's failures
      are always enough).

    w is how long the window's failures waited in their sidecars' batches: B is the most, but a sidecar
    that fails seldom sends each failure at once, so its report carries only the failure of its arrival.
    Each report says how long its first failure waited (`Report.wait`); w is their mean over the failures
    (`Tally.wait`: a batched report's many failures weigh more), at least MIN_SPAN_WAIT (reports are counted
    at arrival, and sidecars that started together, or an event loop that lagged, send theirs together),
    and a whole batch for 3 s after a close (the held data comes back in a burst, whose first failures are
    each sent at once with the few calls before them: tests/property/test_fleet_evidence_props.py).
    With w = B every busy fleet needed 75 failures within 50 ms at 2,000 requests/s: 75 % of what a fleet
    of members making 2 calls/s each can report in 50 ms, so an outage with a quarter of the fleet silent
    (a stalled event loop in bench/fleet_scale.py, a slowed client) opened only when that quarter came back.

    With the defaults (0.25, 20): 5 failures up to 133 requests/s, then 25 % of 100 to 150 ms of traffic
    (12 to 18 at 500/s, 25 to 37 at 1,000/s, 50 to 75 at 2,000/s), the same for 4 sidecars or 1,000:

    * bounded: the failures needed depend on the fleet's rate, never on its number of members;
    * scattered errors never add up: failures summed over a + w are compared with the calls of a + w, so a
      failure fraction well below `failure_ratio` stays below it however the reports are batched
      (tests/property/test_fleet_evidence_props.py), and its Poisson spread in so short a span almost never
      reaches it;
    * an outage reaches it: the window's calls are at least a / (ratio x (a + B)) = 1.33 times the
      failures needed (the defaults, from 4 requests/s: below, the 5 s window holds fewer than 20 calls),
      twice when the reports were sent at once;
    * one sidecar alone (its own network, its bad data) never opens it for the others.

    The rate is an average over two seconds, and a burst undercounts it: when the fleet closes after a
    hold, every sidecar sends what it held at once, and 5 % of that burst reached the failures needed for
    the average rate, so the fleet re-opened after every probe interval (bench/fleet_scale.py: 40 opens a
    minute at N = 50). So each report also carries the calls its sidecar made since its previous report
    (at most CALLS_LOOKBACK back, a span that holds the failures it reports), and the failures must also
    reach `failure_ratio` of the reported calls in the window: the reporters' own calls are a lower bound
    on the fleet's. In an outage nearly all of them failed.
    """

    failure_ratio: float = 0.25
    minimum_calls: int = 20

    def long_span(self, rate: float) -> bool:
        """Whether the window compares its failures with the reports' calls over LONG_CALLS_LOOKBACK (the longest
        window) rather than over CALLS_LOOKBACK."""
        return self.window(rate) >= MAX_WINDOW

    def tally(self, reports: Iterable[Report], rate: float) -> Tally:
        """The failures, reporters, calls and wait of the reports that arrived within `window(rate)`, as `opens`
        counts them (the wait: see `Tally`).

        A known rate counts every report, with its calls over CALLS_LOOKBACK (or LONG_CALLS_LOOKBACK for the
        longest window, whose span they are). An unknown rate (rate <= 0: no first attempts counted in the
        second before last, see `fleet_rate`: a fleet whose traffic just started, or a Redis that just did)
        gets the longest window, and with it:

        * the calls of LONG_CALLS_LOOKBACK (`long_calls`): the span the window's failures come from (with
          150 ms of calls, a member making 10 calls/s carried 1 or 2, and 1 % scattered failures of a fleet of
          50 reached 5 failures within 5 s in about a second: bench/fleet_scale.py opened it once, at its
          start);
        * only the failures of a sidecar that reported at least REPEATED_FAILURES of them in the window count
          (and only such sidecars are reporters): an outage fails each sidecar's calls again and again, within
          its next report or two (every EVIDENCE_BATCH), while a scattered failure seldom strikes the same
          sidecar twice in its few first calls. A fleet's first seconds have no history to tell them apart
          otherwise: 1,000 members making 2 calls/s each report 1 failure of 1 call at 1 %, as in an outage.
        """
        failures: dict[str, int] = {}
        waited: dict[str, float] = {}  # failures x wait, per sidecar
        calls = 0
        long = self.long_span(rate)
        for report in reports:
            failures[report.instance] = failures.get(report.instance, 0) + report.failures
            waited[report.instance] = waited.get(report.instance, 0.0) + report.failures * clamp_wait(report.wait)
            calls += report.calls_long if long else report.calls
        if rate <= 0:
            failures = {i: f for i, f in failures.items() if f >= REPEATED_FAILURES}
        counted = sum(failures.values())
        wait = sum(waited[i] for i in failures) / counted if counted else EVIDENCE_BATCH
        return Tally(counted, len(failures), calls, wait)

    def long_calls(self, short: int, recent: int) -> int:
        """The calls a report carries over LONG_CALLS_LOOKBACK: its sidecar's `recent` calls since its previous
        report, but at most minimum_calls / 2 of them (and at least its `short` ones, CALLS_LOOKBACK's). The cap
        bounds what a sidecar's healthy calls before an outage weigh against the failures it sees until its
        own breaker trips (`failure_threshold` in a row, 5, and the trip: 6 of at most 10 + 5 calls, over 25 %);
        uncapped, an outage that began a second or two after a busy fleet's start (40 calls/s per sidecar) did
        not open it (tests/property/test_fleet_evidence_props.py). A few calls per failure are enough against
        scattered failures: those count only when they repeat on one sidecar (`tally`)."""
        return max(short, min(recent, self.minimum_calls // 2))

    def window(self, rate: float) -> float:
        """How long ago a report may have arrived to count."""
        if rate <= 0:
            return MAX_WINDOW
        return min(MAX_WINDOW, max(MIN_WINDOW, self.minimum_calls / rate - EVIDENCE_BATCH))

    def needed(self, rate: float, calls: int = 0, wait: float = EVIDENCE_BATCH) -> int:
        """The failures within `window(rate)` that open the endpoint, when the reports in it carry `calls` and
        their failures waited `wait` on average (`Tally.wait`; at most EVIDENCE_BATCH, the default)."""
        window = self.window(rate)
        rate = max(0.0, rate)
        limit = self.failure_ratio * max(float(self.minimum_calls), rate * (window + span_wait(wait)))
        if rate > 0 and window < MAX_WINDOW:  # a quiet fleet (the longest window) keeps ratio x minimum_calls
            limit = min(limit, rate * window)
        limit = max(limit, self.failure_ratio * calls)
        # Rounded down: when every call fails, one window's calls are always enough.
        return max(1, math.floor(limit + 1e-9))

    def opens(self, failures: int, reporters: int, members: int, rate: float, calls: int = 0,
              wait: float = EVIDENCE_BATCH) -> bool:
        return failures >= self.needed(rate, calls, wait) and reporters >= (2 if members >= 2 else 1)


class Tally(NamedTuple):
    """What `EvidenceRule.tally` counts of the reports in a window."""

    failures: int
    reporters: int
    calls: int  # the calls they carry (over the lookback that matches the window)
    # seconds: how long their failures waited in their sidecars' batches, on average over the failures
    # (EVIDENCE_BATCH when there are none: the longest, the old rule's assumption)
    wait: float


def clamp_wait(wait: float) -> float:
    """A report's wait as the rule takes it: within [0, EVIDENCE_BATCH]. A batch is sent at most
    EVIDENCE_BATCH after its sidecar's previous report; a longer wait is a slow round trip or a stalled
    sidecar, whose failures still count against no more than the old rule's span."""
    return min(EVIDENCE_BATCH, max(0.0, wait))


def span_wait(wait: float) -> float:
    """The wait the rule adds to the window: the reports' mean wait, but at least MIN_SPAN_WAIT."""
    return max(MIN_SPAN_WAIT, clamp_wait(wait))


@dataclass(frozen=True, slots=True)
class Report:
    """One failure report as the EVIDENCE script keeps it (`encode_report`)."""

    instance: str
    failures: int
    calls: int  # its sidecar's calls since its previous report, at most CALLS_LOOKBACK back
    calls_long: int  # the same, at most LONG_CALLS_LOOKBACK back
    # seconds its first failure waited in its sidecar's batch before the report was sent (EVIDENCE_BATCH: not
    # said, an earlier version's report)
    wait: float = EVIDENCE_BATCH


def encode_report(instance: str, seq: int, failures: int, calls: int, calls_long: int, wait_ms: int) -> str:
    """`instance NL seq:wait_ms/calls_long NL calls NL failures`, as the EVIDENCE script writes it (NL a
    newline). The wait and the long calls ride in the sequence field, which the scripts of earlier versions
    read past (their pattern takes the last three fields as seq, calls, failures, and the long calls as the
    digits after the field's last `/`), so a fleet in the middle of an upgrade still pools its reports."""
    return f"{instance}\n{seq}:{wait_ms}/{calls_long}\n{calls}\n{failures}"


def parse_report(entry: str) -> Report:
    """`encode_report`'s entry read back, and those of earlier versions: `instance NL seq NL calls NL failures`
    (long calls: the short ones) and `instance NL seq NL failures` (calls: the failures)."""
    fields = entry.split("\n")
    if len(fields) >= 4:
        instance, (seq, calls, failures) = "\n".join(fields[:-3]), fields[-3:]
    else:
        instance, (seq, failures) = "\n".join(fields[:-2]), fields[-2:]
        calls = failures
    head, _, long = seq.partition("/")
    wait_ms = head.partition(":")[2]
    return Report(instance, int(failures), int(calls), int(long) if long else int(calls),
                  int(wait_ms) / 1000 if wait_ms else EVIDENCE_BATCH)


def fleet_rate(last: int, before: int) -> float:
    """The fleet's request rate from the retry budget's counts of first attempts in the last two whole seconds:
    their average, or 0 (unknown) while the one before last counted none. When a fleet's traffic starts (or
    a Redis does), the first second that counts any is partial (members flush their deposits once a second)
    and may hold a sliver of it: alone, it gave a rate of a fraction of the real one and a window far too
    long for the traffic (at 100 requests/s counted of 2,000: 5 failures within 100 ms, which 1 % scattered
    failures reach about once in three windows). Once the second after it is counted too, the average is at
    least half the real rate."""
    if before <= 0:
        return 0.0
    return (last + before) / 2


@dataclass(slots=True)
class RecentCalls:
    """The times of this sidecar's recent calls to an endpoint, kept for LONG_CALLS_LOOKBACK (for its reports)."""

    times: deque[float] = field(default_factory=deque)

    def add(self, now: float) -> None:
        self.times.append(now)
        while self.times and self.times[0] <= now - LONG_CALLS_LOOKBACK:
            self.times.popleft()

    def since(self, start: float, now: float, lookback: float = CALLS_LOOKBACK) -> int:
        """The calls after `start` (and within `lookback` of `now`). Counted from the newest: a report costs
        the calls since the previous one, not every call kept."""
        start = max(start, now - lookback)
        count = 0
        for t in reversed(self.times):
            if t <= start:
                break
            count += 1
        return count


def next_probe_at(view: FleetView, last_probe: float, interval: float) -> float:
    """When the lease holder probes next: a fixed cadence from the open (or its last probe), whatever the
    fleet's open period has grown to, so recovery is seen within about one `interval`."""
    return max(view.since, last_probe) + interval


def encode_class(classification: Classification) -> str:
    """The class that opened an endpoint, as the breaker record keeps it (for severity escalation)."""
    c = classification
    return "|".join((c.category.value, c.severity.value, c.recoverability.value, c.recovery.value, c.error_type,
                     c.classified_by))


def decode_class(text: str) -> Classification | None:
    """`encode_class` read back; None when absent or not understood (another version's record)."""
    parts = text.split("|")
    if len(parts) != 6:
        return None
    try:
        return Classification(Category(parts[0]), Severity(parts[1]), Recoverability(parts[2]), Recovery(parts[3]),
                              parts[4], parts[5])
    except ValueError:
        return None


def probe_delay(view: FleetView, lease: ProbeLease, connected: bool, now: float, active_prober: bool,
                recheck: float, next_probe: float) -> float | None:
    """The breaker gate's answer (see sidecar.exporters.breaker.BreakerGate).

    None (decide locally) when Redis is down or the fleet has the endpoint closed. While it is open:
    a sidecar without the lease stays open (ask again after `recheck`); the holder stays open too when
    it has an active prober (the probe decides, then the fleet closes), otherwise its breaker goes
    half-open at `next_probe` (`next_probe_at`) and its real calls probe.
    """
    if not connected or not view.open:
        return None
    if lease.holds(now) and not active_prober:
        return max(0.0, next_probe - now)
    return recheck


def scheduled_probe_allowed(view: FleetView, connected: bool) -> bool:
    """A health prober's own schedule: skipped while the fleet has the endpoint open (one prober)."""
    return not (connected and view.open)


def should_probe(view: FleetView, lease: ProbeLease, now: float, probing: bool, next_probe: float) -> bool:
    """The lease holder probes on its cadence (`next_probe_at`), one probe at a time."""
    return view.open and lease.holds(now) and now >= next_probe and not probing


def should_try_lease(view: FleetView, lease: ProbeLease, holder: str, now: float) -> bool:
    """Ask for the lease when the endpoint is open and nobody holds it (Redis decides who wins)."""
    return view.open and not lease.holds(now) and holder == ""
