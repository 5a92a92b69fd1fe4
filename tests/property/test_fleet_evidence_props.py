"""Properties of the fleet's evidence rule (sidecar/fleet/view.py `EvidenceRule`, issue 28): the failures that
open an endpoint fleet-wide do not grow with the number of members, an outage reaches them within the first
moments of the fleet's traffic, and independent scattered failures almost never do."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sidecar.fleet.view import MAX_WINDOW, MIN_WINDOW, EvidenceRule

RATES = st.floats(0.0, 100_000.0)
RULES = st.builds(EvidenceRule, failure_ratio=st.floats(0.1, 1.0), minimum_calls=st.integers(5, 200))


def poisson_tail(mean: float, at_least: int) -> float:
    """P(X >= at_least) for X ~ Poisson(mean)."""
    if mean <= 0:
        return 0.0 if at_least > 0 else 1.0
    term = math.exp(-mean)
    below = 0.0
    for k in range(at_least):
        below += term
        term *= mean / (k + 1)
    return max(0.0, 1.0 - below)


@given(rule=RULES, rate=RATES, members=st.integers(2, 100_000))
def test_the_failures_needed_do_not_depend_on_the_members(rule: EvidenceRule, rate: float, members: int) -> None:
    needed = rule.needed(rate)
    assert rule.opens(needed, 2, members, rate) and not rule.opens(needed - 1, 2, members, rate)
    assert not rule.opens(10 * needed, 1, members, rate)  # one sidecar alone, however many failures
    # Bounded by the fleet's traffic in the window, never by its size: at most failure_ratio of
    # max(minimum_calls, 50 ms of traffic).
    assert needed <= max(1.0, rule.failure_ratio * max(rule.minimum_calls, rate * MIN_WINDOW) + 1e-6)


@given(rule=RULES, rate=st.floats(1.0, 100_000.0))
def test_an_outage_reaches_the_count_within_the_window(rule: EvidenceRule, rate: float) -> None:
    """When every call fails, the failures of one window are enough: the fleet opens within
    max(minimum_calls / rate, 50 ms) of traffic (at most MAX_WINDOW for a very quiet fleet)."""
    window = rule.window(rate)
    assert MIN_WINDOW <= window <= MAX_WINDOW
    calls = rate * window
    if calls >= rule.minimum_calls:
        assert calls >= rule.needed(rate)


@given(rate=RATES)
def test_one_percent_scattered_failures_almost_never_open_it_with_the_defaults(rate: float) -> None:
    """With independent failures of 1 % of the calls, the chance that one window holds enough is below 1e-5
    at any rate (it is largest for a fleet making about minimum_calls calls per window: 5 of 20 calls)."""
    rule = EvidenceRule()
    calls = max(rate * rule.window(rate), 0.0)
    assert poisson_tail(0.01 * calls, rule.needed(rate)) < 1e-5


def test_the_five_percent_row_as_it_is() -> None:
    """5 % scattered failures: a busy fleet (2,000 requests/s) needs 25 in 50 ms where 5 are expected; a fleet
    of about 400 requests/s or less needs 5 in a window of 20 calls where 1 is expected (0.4 % per window)."""
    rule = EvidenceRule()
    assert poisson_tail(0.05 * 2000 * rule.window(2000), rule.needed(2000)) < 1e-8
    assert 0.003 < poisson_tail(0.05 * 20, rule.needed(80)) < 0.004
