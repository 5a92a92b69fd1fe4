"""The ladder's error-rate and latency triggers: error rate and p99 (not median) over a sliding window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.config.schema import DegradationProcessorConfig
from sidecar.config.units import Duration
from sidecar.exporters.outcomes import OutcomeWindow, percentile
from sidecar.pipeline.degrade import DegradationLadder, Level, Pressure


def test_one_slow_request_in_fifty_is_what_the_latency_trigger_sees() -> None:
    window = OutcomeWindow(window=60.0, refresh=1.0)
    for i in range(100):
        window.record(float(i) / 10, True, 12.0 if i % 50 == 0 else 0.01)
    error_rate, latency = window.stats(10.0)
    assert error_rate == 0.0 and latency == 12.0  # p99; the median would be 0.01
    ladder = DegradationLadder(DegradationProcessorConfig(latency=Duration(10.0)))
    assert ladder.update(Pressure(queue_fill=0.0, error_rate=error_rate, latency=latency)) is Level.SPILL
    assert ladder.cause == "latency"


def test_error_rate_and_window_expiry() -> None:
    window = OutcomeWindow(window=60.0, refresh=0.0)
    assert window.stats(0.0) == (None, None)
    window.record(0.0, False, 1.0)
    window.record(1.0, True, 0.5)
    assert window.stats(1.0) == (0.5, 0.5)
    window.record(70.0, True, 0.2)
    assert window.stats(70.0) == (0.0, 0.2)  # the first two left the window
    assert window.stats(200.0) == (None, None)


def test_the_percentile_is_recomputed_at_most_every_refresh() -> None:
    window = OutcomeWindow(window=60.0, refresh=5.0)
    window.record(0.0, True, 1.0)
    assert window.stats(0.0)[1] == 1.0
    window.record(1.0, True, 9.0)
    assert window.stats(1.0)[1] == 1.0  # cached
    assert window.stats(5.0)[1] == 9.0


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=400),
       st.floats(min_value=0.01, max_value=1.0))
def test_nearest_rank_percentile(values: list[float], q: float) -> None:
    ordered = sorted(values)
    got = percentile(ordered, q)
    assert got in ordered
    at_or_below = sum(1 for v in ordered if v <= got)
    assert at_or_below >= q * len(ordered) - 1e-9  # at least q of the values are <= it
    assert sum(1 for v in ordered if v < got) < q * len(ordered) + 1e-9  # and it is the smallest such
