"""processors.degradation.memory_essential_above / memory_backpressure_at move the memory driver."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, load_config_text
from sidecar.config.schema import DegradationProcessorConfig
from sidecar.pipeline.degrade import DegradationLadder, Level, Pressure


def test_configured_memory_thresholds_drive_the_ladder() -> None:
    ladder = DegradationLadder(DegradationProcessorConfig(memory_essential_above=0.5, memory_backpressure_at=0.7))
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.5)) is Level.NORMAL  # "above": strict
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.55)) is Level.ESSENTIAL
    assert ladder.cause == "memory"
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.7)) is Level.BACKPRESSURE
    # hysteresis (0.1) below the configured thresholds, not the defaults
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.61)) is Level.BACKPRESSURE
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.59)) is Level.ESSENTIAL
    assert ladder.update(Pressure(queue_fill=0.0, memory_fraction=0.39)) is Level.NORMAL


def test_defaults_are_the_documented_80_and_100_percent() -> None:
    config = DegradationProcessorConfig()
    assert (config.memory_essential_above, config.memory_backpressure_at) == (0.8, 1.0)


BASE = """
receivers: {otlp: {protocols: {grpc: }}}
processors:
  degradation: %s
exporters:
  otlp_grpc: {endpoint: "c:4317"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [degradation], exporters: [otlp_grpc]}
"""


@pytest.mark.parametrize(("value", "error"), [
    ("{memory_essential_above: 0.9, memory_backpressure_at: 0.9}",
     "processors.degradation: thresholds must satisfy memory_essential_above < memory_backpressure_at"),
    ("{memory_backpressure_at: 0}", "processors.degradation.memory_backpressure_at: must be > 0"),
    ("{memory_essential_above: 1.5}", "processors.degradation.memory_essential_above: must be <= 1"),
])
def test_bad_memory_thresholds_are_errors(value: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE % value, environ={})
    assert any(e.startswith(error) for e in info.value.errors), info.value.errors
