"""Recurring export errors are reported worse (sidecar_errors_total, events, status) while decisions
and span/log attributes keep the base severity."""

from __future__ import annotations

import logging

import pytest

from sidecar.admin import status as render
from sidecar.admin.v1 import admin_pb2 as pb
from sidecar.config.schema import CircuitBreakerConfig, RetryConfig
from sidecar.exporters.sender import Verdict
from sidecar.pipeline.escalation import ESCALATE_AT
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import UNAVAILABLE, FakeTransport, build, make_config, make_entry, sample, sender_clock


async def test_a_recurring_class_is_counted_and_logged_at_a_raised_severity(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock, default=UNAVAILABLE)
    config = make_config(["a:4317"], retry=RetryConfig(enabled=False),
                         circuit_breaker=CircuitBreakerConfig(enabled=False))
    sender = build(config, [transport], clock, metrics)
    caplog.set_level(logging.INFO, logger="sidecar.events")
    for _ in range(ESCALATE_AT + 2):
        report = await clock.run(sender.send(make_entry(1)))
        assert report.verdict is Verdict.DEAD_LETTER
        assert report.classification.severity.value == "medium"  # what decides and is stored keeps its base
        clock.advance(1.0)

    def errors(severity: str) -> float:
        return sample(metrics, "sidecar_errors_total",
                      {"category": "transport", "severity": severity, "recoverability": "retryable",
                       "error_type": "UNAVAILABLE"})

    assert errors("medium") == ESCALATE_AT - 1 and errors("high") == 3
    escalations = [r for r in caplog.records if getattr(r, "event", None) == "error_escalation"]
    assert len(escalations) == 1 and escalations[0].levelno == logging.WARNING
    assert (escalations[0].from_severity, escalations[0].to_severity) == ("medium", "high")
    (worse,) = sender.escalation.worsening(clock.monotonic())
    assert (worse.error_type, worse.base_severity, worse.severity, worse.occurrences) == (
        "UNAVAILABLE", "medium", "high", ESCALATE_AT + 2)
    clock.advance(120.0)
    assert sender.escalation.worsening(clock.monotonic()) == []  # the window slid past: no longer worsening


def test_status_shows_what_is_worsening() -> None:
    status = pb.GetStatusResponse(ready=True, accepting=True)
    exporter = status.exporters.add(name="otlp_grpc", reachable=True)
    exporter.queue.CopyFrom(pb.QueueStatus(enabled=True, sizer="requests", capacity=10))
    exporter.worsening.add(category="transport", error_type="UNAVAILABLE", base_severity="low", severity="medium",
                           occurrences=57, window_seconds=60.0)
    lines = render.render_status(status, 0.0).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("EXPORTER") and "SEVERITY" in line)
    assert lines[header - 1].startswith("WORSENING")
    assert lines[header + 1].split() == ["otlp_grpc", "transport", "UNAVAILABLE", "low", "->", "medium",
                                         "57", "in", "1m00s"]
    quiet = pb.GetStatusResponse(ready=True, accepting=True)
    assert "WORSENING" not in render.render_status(quiet, 0.0)


