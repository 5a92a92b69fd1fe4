"""Properties of the error-rate anomaly detector (sidecar/telemetry/anomaly.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.telemetry.anomaly import AnomalySettings, EwmaDetector

SETTINGS = AnomalySettings(alpha=0.05, threshold=4.0, clear=2.0, warmup=30, min_std=1.0)
levels = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)


@given(level=levels, length=st.integers(min_value=1, max_value=500))
def test_a_constant_rate_never_alarms(level: float, length: int) -> None:
    detector = EwmaDetector(SETTINGS)
    for _ in range(length):
        verdict = detector.update(level)
        assert not verdict.active and verdict.score == pytest.approx(0, abs=1e-6)


@given(level=st.floats(min_value=0, max_value=1e4), sigma=st.floats(min_value=1, max_value=1e3),
       k=st.floats(min_value=6, max_value=50))
def test_a_step_of_k_standard_deviations_alarms_at_once(level: float, sigma: float, k: float) -> None:
    """A baseline with noise sigma, then a step of k sigma (k above the threshold, with margin for the
    EWMA's estimate of sigma): the first interval of the step alarms."""
    detector = EwmaDetector(SETTINGS)
    for i in range(200):
        assert not detector.update(level + (sigma if i % 2 else -sigma) + sigma).active
    verdict = detector.update(level + sigma + k * sigma)
    assert verdict.active and verdict.changed
    assert verdict.score >= SETTINGS.threshold


@given(level=st.floats(min_value=0, max_value=1e4), sigma=st.floats(min_value=1, max_value=1e3),
       k=st.floats(min_value=6, max_value=50))
def test_the_score_decays_back_when_the_new_level_stays(level: float, sigma: float, k: float) -> None:
    detector = EwmaDetector(SETTINGS)
    for i in range(200):
        detector.update(level + (sigma if i % 2 else -sigma) + sigma)
    new_level = level + sigma + k * sigma
    scores = [detector.update(new_level).score for _ in range(60)]
    assert scores[0] >= SETTINGS.threshold
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(scores)), \
        "a sustained level scores lower every interval"
    assert scores[-1] < SETTINGS.clear and not detector.active


@given(burst=st.floats(min_value=5, max_value=1e5))
def test_a_new_error_class_alarms_after_quiet(burst: float) -> None:
    """A category quiet since start (variance 0) scores a burst against min_std."""
    detector = EwmaDetector(SETTINGS)
    for _ in range(SETTINGS.warmup + 5):
        detector.update(0.0)
    verdict = detector.update(burst)
    assert verdict.active and verdict.score == pytest.approx(burst / SETTINGS.min_std)


def test_no_alarm_during_warm_up_and_the_warm_up_learns_the_plain_mean() -> None:
    detector = EwmaDetector(SETTINGS)
    for value in (0, 100, 0, 100):
        assert not detector.update(value).active
    assert detector.mean == pytest.approx(50)
    assert detector.std == pytest.approx(50)


@given(scores=st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=100))
def test_hysteresis_raises_at_threshold_and_clears_below_clear(scores: list[float]) -> None:
    """Driven through values that produce chosen scores: the alarm follows the two thresholds."""
    detector = EwmaDetector(AnomalySettings(alpha=0.05, threshold=4.0, clear=2.0, warmup=1, min_std=1.0))
    detector.update(0.0)
    active = False
    for score in scores:
        # Keep the baseline at mean 0, std 0 (so score = value / min_std) by resetting it each time.
        detector.mean, detector.var = 0.0, 0.0
        verdict = detector.update(score)
        if not active and score >= 4.0:
            active = True
        elif active and score < 2.0:
            active = False
        assert verdict.active is active


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        AnomalySettings(threshold=2.0, clear=3.0)
    with pytest.raises(ValueError):
        AnomalySettings(alpha=0)
    with pytest.raises(ValueError):
        EwmaDetector().update(-1)
