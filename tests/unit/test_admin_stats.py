"""The admin API's derived figures: error rates, recovery statistics, hotspots, and their hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import ClassifyProcessorConfig, DegradationProcessorConfig, EnrichProcessorConfig
from sidecar.core.entry import QueueEntry
from sidecar.core.ingest import IngestResult
from sidecar.core.signals import Signal
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.exporters.sender import Verdict
from sidecar.exporters.transport import SendOutcome
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.router import Pipeline, Router
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.stats import MAX_NAME_CHARS, UNKNOWN_SERVICE, ErrorStats, HotspotKey
from tests.fakes.enrich_model import enrich_traces
from tests.fakes.sender import INVALID, UNAVAILABLE, FakeTransport, build, make_config, make_entry, sender_clock

TRANSPORT = Classification(Category.TRANSPORT, Severity.MEDIUM, Recoverability.RETRYABLE,
                           Recovery.RETRY_WITH_BACKOFF, "UNAVAILABLE", "test")
ERROR = trace_pb2.Status.STATUS_CODE_ERROR


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------- error rates


def test_error_rates_per_window() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    clock.now += 3600  # long running: every window is full
    for _ in range(30):
        stats.export_error("e", "a", TRANSPORT)  # 14 minutes ago
    clock.now += 10 * 60
    stats.item_error("svc", "op", "traces", "transport", "connection_refused", count=20)  # 4 minutes ago
    clock.now += 3 * 60 + 30
    for _ in range(6):
        stats.export_error("e", "a", TRANSPORT)  # 30 s ago
    clock.now += 30
    rates = {r.window_minutes: r for r in stats.error_rates()}
    assert (rates[1].errors, rates[1].export_errors, rates[1].item_errors) == (6, 6, 0)
    assert rates[1].per_minute == pytest.approx(6.0)
    assert (rates[5].errors, rates[5].item_errors) == (26, 20)
    assert rates[5].per_minute == pytest.approx(26 / 5)
    assert rates[15].errors == 56 and rates[15].export_errors == 36
    assert rates[15].per_minute == pytest.approx(56 / 15)
    clock.now += 15 * 60  # everything ages out
    assert all(r.errors == 0 and r.per_minute == 0 for r in stats.error_rates())


def test_error_rate_of_a_young_sidecar_is_not_diluted() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    clock.now += 20
    for _ in range(10):
        stats.export_error("e", "a", TRANSPORT)
    rates = {r.window_minutes: r for r in stats.error_rates()}
    assert rates[1].per_minute == pytest.approx(10.0)  # at least a minute is the divisor
    assert rates[15].per_minute == pytest.approx(10.0)
    clock.now += 100  # two minutes up
    rates = {r.window_minutes: r for r in stats.error_rates()}
    assert rates[1].errors == 0
    assert rates[5].per_minute == pytest.approx(10 / 2)  # 2 minutes observed, not 5
    assert rates[15].per_minute == pytest.approx(10 / 2)


def test_rate_buckets_are_bounded() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    for _ in range(5000):
        stats.export_error("e", "a", TRANSPORT)
        clock.now += 0.5
    assert len(stats._buckets) <= 15 * 60 + 1
    assert {r.window_minutes: r.errors for r in stats.error_rates()} == {1: 120, 5: 600, 15: 1800}


# ---------------------------------------------------------------- recovery


def test_recovery_statistics() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    empty = stats.recovery()
    assert (empty.outages, empty.success_rate, empty.mean_seconds) == (0, None, None)

    stats.outage_started("e", "a")
    stats.outage_started("e", "a")  # the same episode
    stats.outage_started("e", "b")
    clock.now += 4
    stats.recovered("e", "a", 4.0)
    summary = stats.recovery()
    assert (summary.outages, summary.recovered, summary.ongoing) == (2, 1, 1)
    assert summary.success_rate == pytest.approx(0.5)
    assert summary.mean_seconds == pytest.approx(4.0)

    stats.outage_started("e", "a")  # a new episode on a
    stats.recovered("e", "a", 10.0)
    stats.recovered("e", "b", 2.0)
    summary = stats.recovery()
    assert (summary.outages, summary.recovered, summary.ongoing) == (3, 3, 0)
    assert summary.success_rate == pytest.approx(1.0)
    assert summary.mean_seconds == pytest.approx((4 + 10 + 2) / 3)
    assert (summary.max_seconds, summary.last_seconds) == (10.0, 2.0)

    stats.recovered("f", "c", 1.0)  # an episode whose start was not seen still counts once
    assert stats.recovery().outages == 4 and stats.recovery().success_rate == pytest.approx(1.0)


# ---------------------------------------------------------------- hotspots


def test_hotspot_ranking() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    stats.item_error("cart", "GET /cart", "traces", "transport", "connection_refused", 3)
    clock.now += 1
    stats.item_error("pay", "charge", "traces", "timeout", "timeout", 5)
    clock.now += 1
    stats.item_error("cart", "GET /cart", "traces", "transport", "connection_refused", 2)  # ties pay at 5, newer
    stats.item_error("cart", "GET /cart", "traces", "timeout", "timeout", 1)  # another class: another key
    stats.item_error("", "db", "logs", "processing", "deadlock")
    top = stats.top_hotspots(10)
    assert [(h.key.service, h.key.name, h.key.category, h.count) for h in top] == [
        ("cart", "GET /cart", "transport", 5),
        ("pay", "charge", "timeout", 5),
        ("cart", "GET /cart", "timeout", 1),
        (UNKNOWN_SERVICE, "db", "processing", 1),  # equal count and time: first seen first
    ]
    assert top[0].key == HotspotKey("cart", "GET /cart", "traces", "transport", "connection_refused")
    assert top[0].last_seen == clock.wall()
    assert len(stats.top_hotspots(2)) == 2


def test_hotspots_are_bounded_and_heavy_hitters_survive() -> None:
    clock = Clock()
    stats = ErrorStats(clock, max_hotspots=40)
    for i in range(2000):
        clock.now += 0.01
        stats.item_error("noisy", f"GET /item/{i}", "traces", "transport", "http_503")  # unique names
        if i % 10 == 0:
            stats.item_error("pay", "charge", "traces", "timeout", "timeout")
        assert stats.hotspot_keys <= 40
    top = stats.top_hotspots(3)
    assert top[0].key.name == "charge" and top[0].count == 200
    assert stats.hotspot_keys_evicted >= 2000 - 40
    assert stats.hotspot_keys_evicted + stats.hotspot_keys == 2001  # every key is either kept or counted


def test_long_names_are_cut() -> None:
    stats = ErrorStats(Clock())
    stats.item_error("s" * 500, "n" * 500, "traces", "transport", "x")
    key = stats.top_hotspots(1)[0].key
    assert len(key.service) == MAX_NAME_CHARS and len(key.name) == MAX_NAME_CHARS


# ---------------------------------------------------------------- enrichment hook


def _trace_request() -> ExportTraceServiceRequest:
    """Two services, two scopes in the first; errors by status (fast path) and by attribute (slow path)."""
    request = ExportTraceServiceRequest()
    for service, scopes in (("cart", (("lib-a", ("ok", "GET /cart")), ("lib-b", ("charge",)))),
                            ("pay", (("lib-c", ("ok2", "authorize", "authorize")),))):
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = service
        for scope_name, names in scopes:
            ss = rs.scope_spans.add()
            ss.scope.name = scope_name
            for n, name in enumerate(names):
                span = ss.spans.add(name=name, trace_id=bytes([n + 1]) * 16, span_id=bytes([n + 1]) * 8)
                span.kind = trace_pb2.Span.SPAN_KIND_SERVER
                if name in ("GET /cart", "authorize"):
                    span.status.code = ERROR
                elif name == "charge":  # an error only by its http status attribute: the slow path
                    kv = span.attributes.add(key="http.response.status_code")
                    kv.value.int_value = 503
    return request


def test_enrich_collects_each_enriched_item_with_its_place() -> None:
    request = _trace_request()
    stats = enrich_traces(request, Classifier(ClassifyProcessorConfig()), EnrichProcessorConfig(), collect=True)
    assert stats.enriched == 4 and stats.hotspots is not None
    places = sorted((where, name, n) for (where, name, _), n in stats.hotspots.items())
    assert places == [((0, 0), "GET /cart", 1), ((0, 1), "charge", 1), ((1, 0), "authorize", 2)]
    plain = enrich_traces(_trace_request(), Classifier(ClassifyProcessorConfig()), EnrichProcessorConfig())
    assert plain.hotspots is None and plain.enriched == 4


class Sink:
    name = "sink"

    def __init__(self) -> None:
        self.entries: list[QueueEntry] = []

    async def accept(self, entry: QueueEntry, message: Message,
                     degradation: DegradationProcessorConfig | None) -> IngestResult:
        self.entries.append(entry)
        return IngestResult()


def _router(signal: Signal, stats: ErrorStats | None) -> Router:
    pipeline = Pipeline(name=signal.value, signal=signal, receivers=["otlp"], exporters=[Sink()],
                        classifier=Classifier(ClassifyProcessorConfig()), enrich=EnrichProcessorConfig())
    return Router([pipeline], Events(Metrics()), Clock(), stats)


async def test_router_counts_hotspots_by_service_name_and_class() -> None:
    stats = ErrorStats(Clock())
    router = _router(Signal.TRACES, stats)
    request = _trace_request()
    await router.ingest("otlp", Signal.TRACES, request.SerializeToString(), request, (), "grpc")
    found = {(h.key.service, h.key.name, h.key.signal, h.count) for h in stats.top_hotspots(10)}
    assert found == {("cart", "GET /cart", "traces", 1), ("cart", "charge", "traces", 1),
                     ("pay", "authorize", "traces", 2)}
    charge = next(h for h in stats.top_hotspots(10) if h.key.name == "charge")
    assert (charge.key.category, charge.key.error_type) == ("transport", "http_503")
    assert {r.window_minutes: r.item_errors for r in stats.error_rates()}[1] == 4


class CountingStats(ErrorStats):
    def __init__(self) -> None:
        super().__init__(Clock())
        self.calls: list[dict[tuple[str, str, str, str], int]] = []

    def item_errors(self, signal: str, counts: Mapping[tuple[str, str, str, str], int]) -> None:
        self.calls.append(dict(counts))
        super().item_errors(signal, counts)


async def test_router_counts_hotspots_once_per_request_by_group_not_per_span() -> None:
    stats = CountingStats()
    router = _router(Signal.TRACES, stats)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "cart"
    scope = rs.scope_spans.add()
    for n in range(300):
        span = scope.spans.add(name=f"GET /cart/{n % 3}", trace_id=n.to_bytes(16, "big"), span_id=bytes(8))
        span.status.code = ERROR if n % 2 else trace_pb2.Status.STATUS_CODE_OK
    await router.ingest("otlp", Signal.TRACES, request.SerializeToString(), request, (), "grpc")
    assert len(stats.calls) == 1  # one call for the request's 150 error spans
    assert sorted((service, name, n) for (service, name, _, _), n in stats.calls[0].items()) == [
        ("cart", "GET /cart/0", 50), ("cart", "GET /cart/1", 50), ("cart", "GET /cart/2", 50)]
    assert sum(h.count for h in stats.top_hotspots(10)) == 150
    assert {r.window_minutes: r.item_errors for r in stats.error_rates()}[1] == 150


def test_item_errors_counts_each_group_as_item_error_does() -> None:
    clock = Clock()
    one, many = ErrorStats(clock), ErrorStats(clock)
    groups = {("cart", "GET /a", "transport", "http_503"): 3, ("pay", "charge", "timeout", "timeout"): 2,
              ("pay", "noop", "timeout", "timeout"): 0}
    for (service, name, category, error_type), n in groups.items():
        one.item_error(service, name, "traces", category, error_type, n)
    many.item_errors("traces", groups)
    assert [(h.key, h.count) for h in one.top_hotspots(10)] == [(h.key, h.count) for h in many.top_hotspots(10)]
    assert one.service_totals() == many.service_totals() == {"cart": 3, "pay": 2}
    assert one.error_rates() == many.error_rates()


async def test_router_names_log_hotspots_by_event_or_scope() -> None:
    stats = ErrorStats(Clock())
    router = _router(Signal.LOGS, stats)
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()  # no service.name
    sl = rl.scope_logs.add()
    sl.scope.name = "payments.db"
    sl.log_records.add(severity_number=17).body.string_value = "deadlock"
    sl.log_records.add(severity_number=9).body.string_value = "fine"
    record = sl.log_records.add(severity_number=21, event_name="order.failed")
    record.body.string_value = "boom"
    other = request.resource_logs.add()
    other.resource.attributes.add(key="service.name").value.string_value = "worker"
    scope = other.scope_logs.add()
    scope.scope.name = "jobs"
    scope.log_records.add(severity_number=9).body.string_value = "fine"
    quiet = scope.log_records.add(severity_number=9)  # an error only by its exception.type: the slow path
    quiet.attributes.add(key="exception.type").value.string_value = "KeyError"
    await router.ingest("otlp", Signal.LOGS, request.SerializeToString(), request, (), "grpc")
    names = {(h.key.service, h.key.name, h.key.signal) for h in stats.top_hotspots(10)}
    assert names == {(UNKNOWN_SERVICE, "payments.db", "logs"), (UNKNOWN_SERVICE, "order.failed", "logs"),
                     ("worker", "jobs", "logs")}


async def test_router_without_stats_collects_nothing() -> None:
    router = _router(Signal.TRACES, None)
    request = _trace_request()
    await router.ingest("otlp", Signal.TRACES, request.SerializeToString(), request, (), "grpc")
    assert router.error_stats is None


# ---------------------------------------------------------------- sender hook


async def test_sender_reports_failures_outages_and_recoveries() -> None:
    clock, metrics = sender_clock(), Metrics()
    transport = FakeTransport("a:4317", clock, [UNAVAILABLE, UNAVAILABLE, SendOutcome(), INVALID,
                                                SendOutcome(rejected=1, rejected_message="bad")])
    stats = ErrorStats(clock)
    sender: Any = build(make_config(["a:4317"]), [transport], clock, metrics, error_stats=stats)
    report = await clock.run(sender.send(make_entry(3)))
    assert report.verdict is Verdict.DELIVERED and report.attempts == 3
    summary = stats.recovery()
    assert (summary.outages, summary.recovered, summary.ongoing) == (1, 1, 0)
    recovery_sum = metrics.registry.get_sample_value("sidecar_recovery_duration_seconds_sum",
                                                     {"exporter": "otlp_grpc", "endpoint": "a:4317"})
    assert summary.mean_seconds == pytest.approx(recovery_sum)
    assert (await clock.run(sender.send(make_entry(2)))).verdict is Verdict.DEAD_LETTER  # permanent: no outage
    assert stats.recovery().outages == 1
    assert (await clock.run(sender.send(make_entry(2)))).rejected == 1  # a partial success is an error too
    errors_total = sum(s.value for m in metrics.registry.collect() if m.name == "sidecar_errors"
                       for s in m.samples if s.name == "sidecar_errors_total")
    rates = {r.window_minutes: r for r in stats.error_rates()}
    assert rates[15].export_errors == errors_total == 4  # 2 UNAVAILABLE + 1 INVALID + 1 partial success


def test_hotspots_are_counted_over_sliding_windows() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    stats.item_error("cart", "GET /cart", "traces", "transport", "connection_refused", 100)  # long ago
    clock.now += 10 * 60
    stats.item_error("pay", "charge", "traces", "timeout", "timeout", 7)  # 10 minutes later
    clock.now += 4 * 60
    stats.item_error("db", "query", "traces", "processing", "deadlock", 2)  # just now

    def top(window: int) -> list[tuple[str, int]]:
        return [(h.key.name, h.count) for h in stats.top_hotspots(10, window_minutes=window)]

    assert top(1) == [("query", 2)]
    assert top(5) == [("charge", 7), ("query", 2)]
    assert top(15) == [("GET /cart", 100), ("charge", 7), ("query", 2)]
    assert top(5) == [(h.key.name, h.count) for h in stats.top_hotspots(10)], "5 minutes is the default"
    clock.now += 2 * 60  # the cart errors are more than 15 minutes old now: forgotten
    assert top(15) == [("charge", 7), ("query", 2)]
    assert stats.hotspot_keys == 2 and stats.hotspot_keys_evicted == 0, "aged out, not evicted"
    with pytest.raises(ValueError):
        stats.top_hotspots(10, window_minutes=16)


def test_service_totals_are_kept_per_service_and_bounded() -> None:
    clock = Clock()
    stats = ErrorStats(clock, max_hotspots=8)
    stats.item_error("cart", "a", "traces", "transport", "x", 5)
    stats.item_error("cart", "b", "logs", "timeout", "y", 2)
    stats.item_error("", "c", "traces", "transport", "x")
    assert stats.service_totals() == {"cart": 7, UNKNOWN_SERVICE: 1}
    for i in range(50):
        stats.item_error(f"svc-{i}", "op", "traces", "transport", "x")
        assert len(stats.service_totals()) <= 8
    assert stats.service_totals()["cart"] == 7, "the service with the most errors is kept"


def test_minute_history_counts_each_of_the_last_minutes() -> None:
    clock = Clock()
    stats = ErrorStats(clock)
    assert stats.minute_history() == [0], "a young aggregator has one minute"
    stats.item_error("cart", "a", "traces", "transport", "x", 3)  # 190 s before the end: 3 minutes ago
    clock.now += 90
    stats.export_error("otlp", "a:4317", TRANSPORT)  # 100 s before: the minute before last
    clock.now += 100
    stats.item_error("cart", "a", "traces", "transport", "x", 2)  # now: the last minute
    assert stats.minute_history() == [3, 0, 1, 2], "minutes counted back from now, oldest first"
    clock.now += 20 * 60
    stats.item_error("cart", "a", "traces", "transport", "x")
    history = stats.minute_history()
    assert len(history) == 15 and history[-1] == 1 and sum(history) == 1, "older minutes are out of the 15"
