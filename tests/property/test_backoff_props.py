"""Properties of the backoff policy: every delay within [0, cap] and never below the server hint."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.exporters.backoff import JITTER_MODES, Backoff

intervals = st.floats(min_value=0.0, max_value=120.0, allow_nan=False)
hints = st.none() | st.floats(min_value=0.0, max_value=600.0, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(
    initial=intervals,
    cap=intervals,
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    jitter=st.sampled_from(JITTER_MODES),
    factor=st.floats(min_value=0.0, max_value=1.0),
    attempt=st.integers(min_value=0, max_value=5000),
    prev=st.none() | intervals,
    base=st.none() | intervals,
    hint=hints,
    seed=st.integers(0, 2**32 - 1),
)
def test_delay_within_cap_and_at_least_hint(
    initial: float, cap: float, multiplier: float, jitter: str, factor: float, attempt: int,
    prev: float | None, base: float | None, hint: float | None, seed: int,
) -> None:
    b = Backoff(initial_interval=initial, max_interval=cap, multiplier=multiplier, jitter=jitter,  # type: ignore[arg-type]
                randomization_factor=factor, max_elapsed_time=0.0, rng=random.Random(seed))
    jittered = b.delay(attempt, prev=prev, base=base)
    assert 0.0 <= jittered <= cap
    delay = b.next_delay(attempt, 0.0, hint=hint, prev=prev, base=base)
    assert delay is not None
    if hint is None:
        assert 0.0 <= delay <= cap
    elif hint > cap:
        assert delay == hint  # the server's hint wins over the cap
    else:
        assert hint <= delay <= cap


@settings(max_examples=300, deadline=None)
@given(
    jitter=st.sampled_from(JITTER_MODES),
    max_elapsed=st.floats(min_value=0.1, max_value=1000.0),
    elapsed=st.floats(min_value=0.0, max_value=2000.0),
    attempt=st.integers(min_value=0, max_value=50),
    hint=hints,
    seed=st.integers(0, 2**32 - 1),
)
def test_next_delay_never_ends_past_max_elapsed_time(
    jitter: str, max_elapsed: float, elapsed: float, attempt: int, hint: float | None, seed: int,
) -> None:
    def make() -> Backoff:
        return Backoff(initial_interval=1.0, max_interval=30.0, multiplier=1.5, jitter=jitter,  # type: ignore[arg-type]
                       max_elapsed_time=max_elapsed, rng=random.Random(seed))

    delay = make().next_delay(attempt, elapsed, hint=hint)
    wait = max(make().delay(attempt), hint or 0.0)  # the same draw, without the elapsed check
    if delay is not None:
        assert delay == wait
        assert elapsed + delay <= max_elapsed
    else:
        assert elapsed + wait > max_elapsed


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), jitter=st.sampled_from(JITTER_MODES))
def test_same_seed_same_delays(seed: int, jitter: str) -> None:
    a = Backoff(jitter=jitter, rng=random.Random(seed))  # type: ignore[arg-type]
    b = Backoff(jitter=jitter, rng=random.Random(seed))  # type: ignore[arg-type]
    assert [a.delay(n) for n in range(10)] == [b.delay(n) for n in range(10)]
