"""SIGHUP reload of exporter settings: which keys apply in place, and the sender taking them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec
import pytest

from sidecar.config import load_config, load_config_text
from sidecar.config.schema import (
    CircuitBreakerConfig,
    ConcurrencyConfig,
    HealthProbeConfig,
    RetryBudgetConfig,
    RetryConfig,
)
from sidecar.config.units import Duration
from sidecar.exporters.health import EndpointHealth
from sidecar.exporters.sender import Verdict
from sidecar.exporters.transport import SendOutcome
from sidecar.fleet.breaker import SharedBreaker
from sidecar.reload import EXPORTER_KEYS_IN_PLACE, plan_reload
from sidecar.service import Service
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import UNAVAILABLE, FakeTransport, build, make_config, make_entry, sender_clock

BASE = """
receivers: {otlp: {protocols: {grpc: }}}
exporters:
  otlp_grpc:
    endpoint: c:4317
    %s
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp_grpc]}
"""


def test_in_place_keys_are_applied_and_the_rest_needs_a_restart() -> None:
    old = load_config_text(BASE % "timeout: 5s", environ={})
    new = load_config_text(BASE % (
        "timeout: 2s\n    headers: {x-tenant: a}\n    retry_on_failure: {max_attempts: 3}\n"
        "    sending_queue: {queue_size: 5}\n    compression: none"), environ={})
    plan = plan_reload(old, new)
    assert plan.needs_restart == ["exporters.otlp_grpc.compression", "exporters.otlp_grpc.sending_queue"]
    applied = plan.exporters_changed["otlp_grpc"]
    assert applied.timeout == 2.0 and applied.headers == {"x-tenant": "a"}
    assert applied.retry_on_failure.max_attempts == 3
    assert applied.sending_queue.queue_size == 1000 and applied.compression == "auto"  # what runs stays
    assert plan.applies_anything


def test_nothing_changed_plans_nothing() -> None:
    old = load_config_text(BASE % "timeout: 5s", environ={})
    plan = plan_reload(old, old)
    assert not plan.exporters_changed and not plan.needs_restart and not plan.applies_anything


def test_every_in_place_key_is_an_exporter_key() -> None:
    assert EXPORTER_KEYS_IN_PLACE <= set(make_config(["a"]).__struct_fields__)


async def test_sender_takes_new_settings_and_a_waiting_retry_goes_on_at_once() -> None:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock, script=[UNAVAILABLE], default=SendOutcome())
    slow = RetryConfig(initial_interval=Duration(30.0), max_interval=Duration(60.0), jitter="equal",
                       randomization_factor=0.0, budget=RetryBudgetConfig(ratio=1.0, min_per_second=10.0))
    config = make_config(["a:4317"], retry=slow)
    sender = build(config, [transport], clock, metrics)
    sending = asyncio.ensure_future(sender.send(make_entry(1)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not sending.done() and clock.sleeps and clock.sleeps[-1] == 30.0  # waiting out the old backoff
    fast = msgspec.structs.replace(slow, initial_interval=Duration(0.1), max_interval=Duration(1.0))
    new = msgspec.structs.replace(config, retry_on_failure=fast, timeout=Duration(1.0), headers={"x-t": "b"},
                                  circuit_breaker=CircuitBreakerConfig(failure_threshold=1),
                                  concurrency=ConcurrencyConfig(adaptive=False, min=1, max=3))
    await sender.reconfigure(new)
    report = await asyncio.wait_for(sending, 1.0)  # no virtual time passed: woken by the reload
    assert report.verdict is Verdict.DELIVERED and report.attempts == 2
    ep = sender.endpoints["a:4317"]
    assert sender.timeout == 1.0 and transport.headers == {"x-t": "b"}
    assert sender.retry.config.initial_interval == 0.1 and ep.base.initial_interval == 0.1
    assert ep.breaker.config.failure_threshold == 1 and ep.limiter.limit == 3
    assert sender.config is new


def test_turning_health_probing_on_or_off_needs_a_restart_other_probe_keys_apply() -> None:
    old = load_config_text(BASE % "health_probe: {enabled: false}", environ={})
    new = load_config_text(BASE % "health_probe: {enabled: true, interval: 7s}", environ={})
    plan = plan_reload(old, new)
    assert plan.needs_restart == ["exporters.otlp_grpc.health_probe.enabled"]
    applied = plan.exporters_changed["otlp_grpc"].health_probe
    assert applied.enabled is False and applied.interval == 7.0
    only_toggle = plan_reload(old, load_config_text(BASE % "health_probe: {enabled: true}", environ={}))
    assert only_toggle.exporters_changed == {}  # nothing to apply in place


async def test_a_running_prober_takes_the_new_probe_settings() -> None:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock)
    config = make_config(["a:4317"])
    sender = build(config, [transport], clock, metrics)
    sender.start()
    for _ in range(20):
        await asyncio.sleep(0)
    ep = sender.endpoints["a:4317"]
    assert ep.prober is not None and transport.probes == 1
    await sender.reconfigure(msgspec.structs.replace(config, health_probe=HealthProbeConfig(interval=Duration(7.0))))
    for _ in range(20):
        await asyncio.sleep(0)
    assert ep.prober.config.interval == 7.0 and ep.prober.running and transport.probes == 2  # restarted: probed
    assert sender.endpoint_health(ep) is EndpointHealth.HEALTHY
    await sender.stop()


class RecordingSharedBudget:
    def __init__(self) -> None:
        self.config: RetryBudgetConfig | None = None

    def deposit(self) -> None:
        return None

    async def try_spend(self) -> bool | None:
        return None

    def reconfigure(self, config: RetryBudgetConfig) -> None:
        self.config = config


async def test_fleet_mode_takes_the_reload_too() -> None:
    clock, metrics = sender_clock(), Metrics()
    config = make_config(["a:4317"], circuit_breaker=CircuitBreakerConfig(recovery_timeout=Duration(5.0),
                                                                          max_recovery_timeout=Duration(50.0)))
    sender = build(config, [FakeTransport("a:4317", clock)], clock, metrics)
    ep = sender.endpoints["a:4317"]
    shared_budget = RecordingSharedBudget()
    ep.shared_budget = shared_budget
    shared = SharedBreaker("a:4317", None, None, None, "me", Events(metrics, clock), clock)  # type: ignore[arg-type]
    shared.attach(ep.breaker, None)
    assert (shared._base_timeout, shared._max_timeout) == (5.0, 50.0)
    budget = RetryBudgetConfig(ratio=0.5, min_per_second=1.0)
    await sender.reconfigure(msgspec.structs.replace(
        config, retry_on_failure=RetryConfig(budget=budget),
        circuit_breaker=CircuitBreakerConfig(recovery_timeout=Duration(1.0), max_recovery_timeout=Duration(8.0))))
    assert shared_budget.config == budget  # the fleet-wide budget's ratio and floor
    assert (shared._base_timeout, shared._max_timeout) == (1.0, 8.0)  # the fleet's next open period


async def test_a_failing_reconfigure_is_reported_not_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(BASE % "timeout: 5s")
    service = Service(load_config(path))
    service.build()
    exporter = service.exporters["otlp_grpc"]

    async def broken(config: object) -> None:
        raise RuntimeError("a bug while reconfiguring")

    monkeypatch.setattr(exporter, "reconfigure", broken)
    path.write_text(BASE % "timeout: 2s")
    caplog.set_level(logging.INFO, logger="sidecar.service")
    assert await service.reload_config(str(path)) is True
    (reloaded,) = [r for r in caplog.records if getattr(r, "event", None) == "config_reload"]
    assert reloaded.result == "partial" and reloaded.not_applied_need_restart == ["exporters.otlp_grpc"]
    assert reloaded.exporters_reconfigured == []
    assert service.config.exporters["otlp_grpc"].timeout == 5.0  # what runs is what is reported
    assert service.metrics.registry.get_sample_value("sidecar_config_reloads_total", {"result": "partial"}) == 1
    await exporter.sender.close()
