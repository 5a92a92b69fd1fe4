"""What is coming (issue 17), end to end: the sidecar as its own process, the real OpenTelemetry SDK as the
client, the fake Collector as the upstream.

* An outage under steady SDK traffic: the oldest entry's age grows, the predicted time to full becomes
  finite and is right within 30 % of the time the queue then takes to fill, both return to normal
  after recovery, and the delivery latency histogram holds the backlog's requests.
* A burst of a new error class raises its anomaly score and the anomaly event; a steady error rate
  does not.
* Every metric family docs/metrics.md lists has samples from the first scrape of a fresh sidecar, and
  every family that scrape exposes is listed there.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.collector import FakeCollector
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import SidecarFactory
from tests.markdown import metric_rows
from tests.polling import wait_until
from tests.sdk_app import SdkApp
from tests.sidecar_process import ROOT, SidecarProcess, free_port


def _with_admin(config: dict[str, Any]) -> None:
    config["extensions"]["admin"] = {"endpoint": f"127.0.0.1:{free_port()}"}
    config["service"]["extensions"].append("admin")


def _status(sidecar: SidecarProcess) -> dict[str, Any]:
    """`python -m sidecar status --json` against the sidecar's admin API, as an operator runs it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "sidecar", "status", "--json", "--config", str(sidecar.config_path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def _without_degradation(config: dict[str, Any]) -> None:
    """The ladder would shed non-error spans from 80 % on, which changes the fill rate on purpose; the
    prediction is checked against a queue filled at a known rate."""
    _with_admin(config)
    config["processors"].pop("degradation")
    for pipeline in config["service"]["pipelines"].values():
        pipeline["processors"] = [p for p in pipeline["processors"] if p != "degradation"]


def _samples(sidecar: SidecarProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for line in sidecar.metrics_text().splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(name, pairs)] = float(value)
    return out


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    found = [v for (n, pairs), v in samples.items() if n == name and wanted <= pairs]
    assert found, f"no sample {name}{labels}"
    return sum(found)


class _SteadyTraffic:
    """Spans from the SDK at a fixed rate (paced to a schedule, so a slow moment catches up)."""

    def __init__(self, app: SdkApp, spans_per_tick: int, tick: float, error_every: int = 0) -> None:
        self.app, self.spans_per_tick, self.tick, self.error_every = app, spans_per_tick, tick, error_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.app.send_traces(self.spans_per_tick, error_every=self.error_every)
            self.sent += self.spans_per_tick
            next_at += self.tick
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> _SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------- lag and time to full


SPANS_PER_SECOND = 100
CAPACITY = 2400  # items: 24 s to fill at that rate


@pytest.mark.parametrize("storage", [False, True], ids=["memory_queue", "disk_queue"])
def test_outage_lag_time_to_full_and_delivery_latency(storage: bool, upstream: FakeCollector,
                                                      sidecar_factory: SidecarFactory,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    upstream.go_down()
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=_without_degradation, storage=storage,
                              sending_queue={"queue_size": CAPACITY, "sizer": "items", "num_consumers": 2})
    exporter = {"exporter": "otlp_grpc"}

    def queue_size() -> float:
        return sidecar.metric_value("sidecar_exporter_queue_size", **exporter)

    first = _samples(sidecar)
    assert _value(first, "sidecar_exporter_queue_oldest_age_seconds", **exporter) == 0
    assert _value(first, "sidecar_exporter_queue_time_to_full_seconds", **exporter) == math.inf

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    app = SdkApp("grpc")
    try:
        with _SteadyTraffic(app, SPANS_PER_SECOND // 10, 0.1):
            started = time.monotonic()
            # At about 40 % full the prediction has a dozen seconds of fill behind it.
            wait_until(lambda: queue_size() >= 0.4 * CAPACITY, 30, "the queue did not reach 40 %")
            at_40 = _samples(sidecar)
            predicted_at = time.monotonic()
            predicted = _value(at_40, "sidecar_exporter_queue_time_to_full_seconds", **exporter)
            age_at_40 = _value(at_40, "sidecar_exporter_queue_oldest_age_seconds", **exporter)
            assert math.isfinite(predicted), at_40
            lag = _status(sidecar)["exporters"][0]["lag"]  # the admin API says the same, a moment later
            assert lag["time_to_full_seconds"] is not None and lag["oldest_age_seconds"] >= age_at_40
            assert lag["net_fill_rate_per_second"] == pytest.approx(SPANS_PER_SECOND, rel=0.3)
            assert lag["size_history"] and lag["size_history"][-1] > 0
            assert 0.7 * (predicted_at - started) <= age_at_40 <= predicted_at - started + 2, "age of the first spans"
            wait_until(lambda: queue_size() >= CAPACITY - 20, 60, "the queue did not fill")
            actual = time.monotonic() - predicted_at
            full = _samples(sidecar)
        print(f"time to full predicted at 40 %: {predicted:.1f}s, actual {actual:.1f}s")
        assert abs(predicted - actual) <= 0.3 * actual, f"predicted {predicted:.1f}s, took {actual:.1f}s"
        assert _value(full, "sidecar_exporter_queue_oldest_age_seconds", **exporter) > age_at_40 + 0.7 * actual
        assert _value(full, "sidecar_exporter_queue_time_to_full_seconds", **exporter) <= 5
        assert _value(full, "sidecar_exporter_delivery_latency_seconds_count", **exporter) == 0

        upstream.come_up()
        wait_until(lambda: queue_size() == 0, 60, "the backlog was not delivered")
        time.sleep(1.5)  # one more sample of the watch
        after = _samples(sidecar)
        delivered_requests = sum(1 for request in upstream.requests
                                 if not request.is_probe and request.signal == "traces")
    finally:
        app.shutdown()
    assert _value(after, "sidecar_exporter_queue_oldest_age_seconds", **exporter) == 0
    assert _value(after, "sidecar_exporter_queue_time_to_full_seconds", **exporter) == math.inf
    # Every request of the backlog was observed, from its client's acknowledgement to upstream's: the
    # first of them waited for the whole fill (at least the time from 40 % to full).
    count = _value(after, "sidecar_exporter_delivery_latency_seconds_count", **exporter)
    assert count >= delivered_requests * 0.9 and count > 0
    waited_long = count - _value(after, "sidecar_exporter_delivery_latency_seconds_bucket", le="10.0", **exporter)
    assert waited_long > 0, "no backlog sample over 10 s"
    assert _value(after, "sidecar_exporter_delivery_latency_seconds_sum", **exporter) >= actual * count / 4
    assert _value(after, "sidecar_outages_total", **exporter) >= 1
    recovered = _status(sidecar)["exporters"][0]["lag"]
    assert recovered["oldest_age_seconds"] is None and recovered["time_to_full_seconds"] is None
    assert _value(after, "sidecar_recovery_success_ratio") == 1.0


# ---------------------------------------------------------------- anomalies


def _anomaly_settings(config: dict[str, Any]) -> None:
    # One rate sample a second; min_std at about the steady rate, so the SDK's batching jitter (an
    # export landing in the next second doubles one sample) stays well under the threshold while a
    # burst of a class that was quiet scores tens of standard deviations.
    config["service"]["telemetry"]["anomaly"] = {"interval": "1s", "alpha": 0.1, "threshold": 4, "clear": 2,
                                                 "warmup": 5, "min_std": 2000}
    _with_admin(config)


def test_a_burst_of_a_new_error_class_is_an_anomaly_and_a_steady_rate_is_not(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=_anomaly_settings)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    app = SdkApp("grpc")
    transport, timeout = {"category": "transport"}, {"category": "timeout"}
    peak: dict[str, float] = {"transport": 0.0, "timeout": 0.0}

    def observe() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        samples = _samples(sidecar)
        for category in peak:
            peak[category] = max(peak[category], _value(samples, "sidecar_error_rate_anomaly", category=category))
        return samples

    try:
        # Steady: 40 connection-refused error spans a second (category transport) from the start.
        with _SteadyTraffic(app, 4, 0.1, error_every=1):
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                observe()
                time.sleep(0.2)
            steady = observe()
            assert _value(steady, "sidecar_errors_total", **transport) > 300, "the steady errors arrived"
            assert peak["transport"] < 4, peak
            assert _value(steady, "sidecar_error_rate_anomalies_total", **transport) == 0

            # A burst of a class quiet until now: 400 error log records a second for 4 s (TimeoutError:
            # category timeout). While it lasts the alarm stays raised (a sustained level decays under
            # `clear` only after a few intervals), so `status` shows it.
            def burst() -> None:
                for _ in range(16):
                    app.emit_logs(100, error_every=1)
                    time.sleep(0.25)

            bursting = threading.Thread(target=burst, daemon=True)
            bursting.start()
            def raised() -> bool:  # scrapes (and records the scores) while it waits
                return _value(observe(), "sidecar_error_rate_anomalies_total", **timeout) >= 1

            wait_until(raised, 10, "no anomaly event for the burst")
            anomalies = {a["category"] or f"service {a['service']}": a for a in _status(sidecar)["anomalies"]}
            bursting.join(10)
            app.logger_provider.force_flush(10_000)
            assert anomalies["timeout"]["active"] and anomalies["timeout"]["since"] is not None, anomalies
            assert not anomalies["transport"]["active"]
            assert "service checkout" in anomalies, "the top services are scored too"
            for _ in range(15):
                observe()
                time.sleep(0.2)
            after = observe()
    finally:
        app.shutdown()
    print(f"peak anomaly scores: {peak}")
    # The gauge holds an interval's score for one interval (1 s): the scrape right after the event
    # normally sees it at >= 4, a slow one the next interval's, still far above the steady category's.
    assert peak["timeout"] >= 2, peak
    assert _value(after, "sidecar_error_rate_anomalies_total", **timeout) == 1
    assert peak["transport"] < 4 and _value(after, "sidecar_error_rate_anomalies_total", **transport) == 0
    raised = [e for e in sidecar.log_events() if e.get("event") == "error_rate_anomaly" and e.get("state") == "raised"]
    by_category = [e for e in raised if "category" in e]
    assert [e["category"] for e in by_category] == ["timeout"], raised
    assert by_category[0]["score"] >= 4
    assert by_category[0]["errors_per_minute"] > by_category[0]["baseline_per_minute"]
    # The burst came from the same service as the steady errors: its own score (top services) rose too.
    assert [e["service"] for e in raised if "service" in e] == ["checkout"], raised
    assert _value(after, "sidecar_service_error_rate_anomaly", service="checkout") >= 0


# ---------------------------------------------------------------- every family from the first scrape


def _documented_families() -> set[str]:
    return {name for row in metric_rows() for name in row.names}


def test_every_metric_family_in_docs_has_samples_from_the_first_scrape_and_none_is_undocumented(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, tmp_path: Path) -> None:
    families = _documented_families()
    assert len(families) >= 35 and "sidecar_exporter_send_failed_log_records_total" in families

    def fleet_mode(config: dict[str, Any]) -> None:  # the fleet's families exist only in fleet mode
        config["extensions"]["fleet"] = {"endpoint": redis.url}
        config["service"]["extensions"].append("fleet")

    # Every optional part on (the disk queue's storage families, fleet mode's), so every family applies.
    with RedisServer(tmp_path / "redis") as redis:
        sidecar = sidecar_factory(upstream.grpc_endpoint, storage=True, config_edit=fleet_mode)
        text = sidecar.metrics_text()
        exposed = {name for name, _ in _samples(sidecar)}
    # Every family the first scrape announces (`# TYPE name type`) has its row in docs/metrics.md.
    announced = set(re.findall(r"^# TYPE (\S+) \S+$", text, flags=re.MULTILINE))
    # prometheus-client announces each counter's and histogram's creation time as a gauge of its own.
    created = {name for name in announced if name.endswith("_created")
               and {name[:-len("_created")], name[:-len("_created")] + "_total"} & families}
    undocumented = sorted(announced - created - families)
    assert not undocumented, f"/metrics exposes families docs/metrics.md does not list: {undocumented}"
    # Families whose labels are not known before data arrives (the services an application reports).
    not_known_in_advance = {"sidecar_service_error_rate_anomaly"}
    missing = []
    for family in sorted(families - not_known_in_advance):
        candidates = {family, family + "_count", family + "_bucket"}
        if not candidates & exposed:
            missing.append(family)
    assert not missing, f"no samples on the first scrape for {missing}"
