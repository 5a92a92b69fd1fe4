"""The once-a-second watch (sidecar/telemetry/watch.py): lag gauges from real queues, anomaly scores
from the errors counter, all on a fake clock."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.core.clock import Clock
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.memory import MemoryQueue
from sidecar.telemetry.anomaly import AnomalySettings
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.stats import ErrorStats
from sidecar.telemetry.watch import Watch
from tests.fakes.clock import FakeClock


@dataclass
class _Exporter:
    name: str
    queue: MemoryQueue | None


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return value


def _watch(clock: Clock, metrics: Metrics, exporters: dict[str, _Exporter], interval: float = 10.0,
           stats: ErrorStats | None = None) -> Watch:
    settings = AnomalySettings(alpha=0.1, threshold=4.0, clear=2.0, warmup=5, min_std=1.0)
    return Watch(Events(metrics, clock), clock, lambda: exporters, stats, settings, interval)


def _entry(accepted_at: float) -> QueueEntry:
    return QueueEntry(Signal.TRACES, b"x", 1, (), accepted_at)


async def test_oldest_age_and_time_to_full_follow_the_queue() -> None:
    clock, metrics = FakeClock(start=100.0, wall_offset=1_000_000.0), Metrics()
    queue = MemoryQueue(100)
    watch = _watch(clock, metrics, {"otlp": _Exporter("otlp", queue), "sync": _Exporter("sync", None)})
    labels = {"exporter": "otlp"}
    watch.tick()
    assert _sample(metrics, "sidecar_exporter_queue_oldest_age_seconds", labels) == 0
    assert _sample(metrics, "sidecar_exporter_queue_time_to_full_seconds", labels) == math.inf
    assert watch.lag("sync") is None, "no queue, nothing to watch"

    # Two entries a second for 20 s: 40 held, 60 left at 2/s = 30 s to full.
    for _ in range(20):
        clock.now += 1
        await queue.put(_entry(clock.wall()))
        await queue.put(_entry(clock.wall()))
        watch.tick()
    lag = watch.lag("otlp")
    assert lag is not None and lag.net_rate == pytest.approx(2.0)
    assert lag.time_to_full == pytest.approx(30.0)
    assert _sample(metrics, "sidecar_exporter_queue_time_to_full_seconds", labels) == pytest.approx(30.0)
    assert _sample(metrics, "sidecar_exporter_queue_oldest_age_seconds", labels) == pytest.approx(19.0)
    assert lag.size_history[-1] == 40

    # Draining: not growing any more, and the oldest left is younger.
    for _ in range(30):
        clock.now += 1
        await queue.ack(await queue.get())
        watch.tick()
    assert _sample(metrics, "sidecar_exporter_queue_time_to_full_seconds", labels) == math.inf
    assert _sample(metrics, "sidecar_exporter_queue_oldest_age_seconds", labels) == pytest.approx(34.0)
    while queue.count:
        await queue.ack(await queue.get())
    watch.tick()
    assert _sample(metrics, "sidecar_exporter_queue_oldest_age_seconds", labels) == 0


def _errors(metrics: Metrics, category: str, n: int) -> None:
    metrics.errors.labels(category, "low", "retryable", "UNAVAILABLE").inc(n)


def test_every_category_is_scored_from_the_first_scrape() -> None:
    metrics = Metrics()
    _watch(FakeClock(), metrics, {})
    for category in ("transport", "timeout", "serialization", "internal"):
        assert _sample(metrics, "sidecar_error_rate_anomaly", {"category": category}) == 0
        assert _sample(metrics, "sidecar_error_rate_anomalies_total", {"category": category}) == 0


def test_a_burst_of_a_new_category_raises_an_anomaly_and_a_steady_one_does_not(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics = FakeClock(), Metrics()
    watch = _watch(clock, metrics, {}, interval=10.0)
    _errors(metrics, "transport", 5)  # before the watch's first interval: not counted as a burst
    for i in range(40):
        _errors(metrics, "transport", 10 + (i % 3))  # steady, with a little noise
        clock.now += 10
        watch.score_error_rates(10.0)
    transport = {"category": "transport"}
    assert (_sample(metrics, "sidecar_error_rate_anomaly", transport) or 0) < 4
    assert _sample(metrics, "sidecar_error_rate_anomalies_total", transport) == 0

    _errors(metrics, "timeout", 50)
    _errors(metrics, "transport", 11)
    clock.now += 10
    with caplog.at_level("WARNING", logger="sidecar.events"):
        watch.score_error_rates(10.0)
    timeout = {"category": "timeout"}
    assert (_sample(metrics, "sidecar_error_rate_anomaly", timeout) or 0) >= 4
    assert _sample(metrics, "sidecar_error_rate_anomalies_total", timeout) == 1
    raised = [r for r in caplog.records if getattr(r, "event", "") == "error_rate_anomaly"]
    assert [getattr(r, "category", "") for r in raised] == ["timeout"]
    (top, *_) = watch.anomalies()
    assert top.category == "timeout" and top.active and top.rate_per_minute == pytest.approx(300.0)

    # It stays at the new level: the score decays and the alarm clears (logged, not counted again).
    for _ in range(30):
        _errors(metrics, "timeout", 50)
        clock.now += 10
        watch.score_error_rates(10.0)
    assert (_sample(metrics, "sidecar_error_rate_anomaly", timeout) or 0) < 2
    assert _sample(metrics, "sidecar_error_rate_anomalies_total", timeout) == 1
    assert not any(a.active for a in watch.anomalies())


async def test_the_loop_samples_every_second_and_scores_every_interval() -> None:
    clock, metrics = FakeClock(), Metrics()
    queue = MemoryQueue(10)
    stats = ErrorStats(clock)
    watch = _watch(clock, metrics, {"otlp": _Exporter("otlp", queue)}, interval=5.0, stats=stats)
    watch.start()
    try:
        await queue.put(_entry(clock.wall()))
        _errors(metrics, "transport", 5)
        for _ in range(7):
            clock.advance(1.0)
            for _ in range(5):
                await asyncio_sleep0()
        assert _sample(metrics, "sidecar_exporter_queue_oldest_age_seconds", {"exporter": "otlp"}) == \
            pytest.approx(clock.wall() - 0.0, abs=1.0)
        transport = next(a for a in watch.anomalies() if a.category == "transport")
        assert transport.rate_per_minute == pytest.approx(60.0), "one 5 s interval was scored: 5 errors"
        assert _sample(metrics, "sidecar_recovery_success_ratio", {}) == 1.0
        stats.outage_started("otlp", "a:4317")
        clock.advance(1.0)
        for _ in range(5):
            await asyncio_sleep0()
        assert _sample(metrics, "sidecar_recovery_success_ratio", {}) == 0.0
    finally:
        await watch.stop()


async def asyncio_sleep0() -> None:
    import asyncio

    await asyncio.sleep(0)


def test_reconfigure_keeps_the_baselines() -> None:
    clock, metrics = FakeClock(), Metrics()
    watch = _watch(clock, metrics, {}, interval=10.0)
    for _ in range(10):
        _errors(metrics, "transport", 10)
        watch.score_error_rates(10.0)
    before = next(a for a in watch.anomalies() if a.category == "transport")
    strict = AnomalySettings(alpha=0.1, threshold=3.0, clear=1.0, warmup=5, min_std=0.5)
    watch.reconfigure(strict, 2.0)
    assert watch.anomaly_interval == 2.0 and watch.anomaly_settings is strict
    _errors(metrics, "transport", 10)
    watch.score_error_rates(10.0)
    after = next(a for a in watch.anomalies() if a.category == "transport")
    assert after.baseline_per_minute == pytest.approx(before.rate_per_minute, rel=0.01), "the baseline was kept"
    with pytest.raises(ValueError):
        watch.reconfigure(strict, 0)


async def test_a_reload_applies_new_anomaly_settings_in_place(tmp_path: Path) -> None:
    from sidecar.config import load_config
    from sidecar.service import Service
    from tests.sidecar_process import SidecarPorts, base_config

    config = base_config("127.0.0.1:1", SidecarPorts())
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    service = Service(load_config(path))
    service.build()
    assert service.watch is not None and service.watch.anomaly_settings.threshold == 4.0
    config["service"]["telemetry"]["anomaly"] = {"threshold": 6, "clear": 3, "interval": "30s"}
    path.write_text(yaml.safe_dump(config))
    assert await service.reload_config(str(path))
    assert service.watch.anomaly_settings.threshold == 6.0 and service.watch.anomaly_settings.clear == 3.0
    assert service.watch.anomaly_interval == 30.0
    assert service.config.service.telemetry.anomaly.threshold == 6.0
    applied = service.metrics.registry.get_sample_value("sidecar_config_reloads_total", {"result": "applied"})
    assert applied == 1, "applied in place: nothing needs a restart"


def test_services_are_scored_and_only_the_top_ones_exported(caplog: pytest.LogCaptureFixture) -> None:
    clock, metrics = FakeClock(), Metrics()
    stats = ErrorStats(clock)
    settings = AnomalySettings(alpha=0.1, threshold=4.0, clear=2.0, warmup=5, min_std=1.0)
    watch = Watch(Events(metrics, clock), clock, lambda: {}, stats, settings, 10.0, top_services=2)

    def service_score(service: str) -> float | None:
        return metrics.registry.get_sample_value("sidecar_service_error_rate_anomaly", {"service": service})

    for i in range(20):
        stats.item_error("cart", "GET /cart", "traces", "transport", "connection_refused", 30 + i % 2)
        stats.item_error("pay", "charge", "traces", "timeout", "timeout", 20)
        stats.item_error("search", "query", "traces", "timeout", "timeout", 1)
        clock.now += 10
        watch.score_error_rates(10.0)
    assert service_score("cart") is not None and service_score("pay") is not None
    assert service_score("search") is None, "only the top 2 services are exported"
    assert not any(a.active for a in watch.anomalies())

    # A service quiet until now bursts: scored against the quiet it had, alarmed, exported (top 2 by
    # errors now) while `pay` leaves the exported set.
    stats.item_error("checkout", "POST /pay", "logs", "timeout", "timeout", 2000)
    clock.now += 10
    with caplog.at_level("WARNING", logger="sidecar.events"):
        watch.score_error_rates(10.0)
    assert (service_score("checkout") or 0) >= 4
    assert service_score("pay") is None, "left the top services: its series is removed"
    raised = [r for r in caplog.records if getattr(r, "event", "") == "error_rate_anomaly"]
    assert [getattr(r, "service", "") for r in raised] == ["checkout"]
    (top, *_) = watch.anomalies()
    assert top.service == "checkout" and top.category == "" and top.active

    watch.reconfigure(settings, 10.0, top_services=0)
    assert service_score("checkout") is None and service_score("cart") is None
