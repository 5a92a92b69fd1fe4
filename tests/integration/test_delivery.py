"""Delivery guarantees (DESIGN.md §2, §4): the sidecar runs as its own process between the real SDK
(or raw gRPC clients, where the SDK cannot express the request) and a fault-injecting fake Collector.

No assertion here bounds wall-clock time from above: every wait is bounded, but a slow machine only
makes a test wait longer, never makes it fail.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import eventually, holds_for
from tests.sdk_app import SdkApp
from tests.sidecar_process import SidecarProcess

MIB = 1024 * 1024
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
NO_PROBES = {"enabled": False}  # scripted faults must be consumed by data, not by health probes
# Where a test counts attempts exactly, a slow answer on a loaded machine must not turn into a client
# timeout and a (legitimate, at-least-once) retry.
PATIENT = "15s"


# ---------------------------------------------------------------------------------------------- helpers


def span_id_bytes(ids: Sequence[int]) -> set[bytes]:
    return {i.to_bytes(8, "big") for i in ids}


def make_request(first_id: int, count: int, attribute_bytes: int = 0) -> trace_service_pb2.ExportTraceServiceRequest:
    """`count` spans with span ids first_id.. (and a trace id per span); optionally a big attribute each."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value="delivery-test"))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "raw-client"
    now = time.time_ns()
    for n in range(count):
        ident = first_id + n
        span = scope_spans.spans.add(trace_id=ident.to_bytes(16, "big"), span_id=ident.to_bytes(8, "big"),
                                     name=f"op {n}", kind=trace_pb2.Span.SPAN_KIND_SERVER,
                                     start_time_unix_nano=now, end_time_unix_nano=now + 1000)
        if attribute_bytes:
            filler = (f"{ident:016x}" * (attribute_bytes // 16 + 1))[:attribute_bytes]
            span.attributes.add(key="app.payload", value=AnyValue(string_value=filler))
    return request


def span_ids_of(request: trace_service_pb2.ExportTraceServiceRequest) -> set[bytes]:
    return {s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}


@contextlib.contextmanager
def trace_client(sidecar: SidecarProcess) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    """A raw OTLP/gRPC trace Export stub against the sidecar's receiver."""
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}",
                                    options=[("grpc.max_send_message_length", 64 * MIB)])
    try:
        yield channel.unary_unary(
            TRACE_EXPORT,
            request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
    finally:
        channel.close()


class RecordingExporter(SpanExporter):
    """The SDK's own OTLP/gRPC exporter (configured from OTEL_EXPORTER_OTLP_ENDPOINT); keeps every result."""

    def __init__(self) -> None:
        self.inner = OTLPSpanExporter()
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def metric(sidecar: SidecarProcess, name: str, **labels: str) -> float:
    return sidecar.metric_value(name, **labels)


def metric_in(text: str, name: str, **labels: str) -> float:
    """Like SidecarProcess.metric_value, on one scrape already taken (to read several samples at once)."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if not line.startswith("#") and metric_name == name and all(
                f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


# ---------------------------------------------------------------------------------------------- 1


def test_upstream_down_for_ten_seconds_loses_nothing(upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    upstream.go_down()
    down_at = time.monotonic()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    recorder = RecordingExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "outage"}))
    provider.add_span_processor(BatchSpanProcessor(recorder, max_export_batch_size=64, schedule_delay_millis=100))
    tracer = provider.get_tracer("delivery")
    sent: list[int] = []
    try:
        for burst in range(3):  # bursts spread over the outage
            for i in range(100):
                with tracer.start_as_current_span(f"burst {burst} op {i}") as span:
                    span.set_attribute("app.index", burst * 100 + i)
                    sent.append(span.get_span_context().span_id)
            assert provider.force_flush(30_000), "the sidecar acknowledges from its queue"
            time.sleep(max(0.0, down_at + 3.0 * (burst + 1) - time.monotonic()))
        assert metric(sidecar, "sidecar_exporter_queue_size") > 0, "the queue holds what was acknowledged"
        time.sleep(max(0.0, down_at + 10.0 - time.monotonic()))
        upstream.come_up()
    finally:
        provider.shutdown()

    assert len(recorder.results) >= 3
    assert all(result is SpanExportResult.SUCCESS for result in recorder.results), recorder.results
    expected = span_id_bytes(sent)
    assert upstream.wait_for(lambda f: expected <= f.span_ids(), timeout=30), (
        len(expected - upstream.span_ids()), sidecar.logs()[-3000:])
    assert metric(sidecar, "sidecar_dropped_items_total") == 0


# ---------------------------------------------------------------------------------------------- 2


def test_open_breaker_lets_only_probes_through(upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    recovery_timeout = 4.0
    sidecar = sidecar_factory(upstream.grpc_endpoint, circuit_breaker={
        "failure_threshold": 3, "recovery_timeout": f"{recovery_timeout}s", "max_recovery_timeout": "8s",
        "half_open_max_calls": 2})
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    app = SdkApp("grpc", batch_size=10)
    sent = app.send_traces(80)
    assert app.flush()

    scrape = [""]

    def breaker_open() -> bool:
        scrape[0] = sidecar.metrics_text()
        return metric_in(scrape[0], "sidecar_breaker_state") == 2

    assert eventually(breaker_open, timeout=20), sidecar.logs()[-3000:]
    # The window starts a little after the open state was seen (calls admitted just before it opened may
    # still be on the wire) and ends well before recovery_timeout could have elapsed.
    opened_seen = time.monotonic()
    half_opens_before = metric_in(scrape[0], "sidecar_breaker_transitions_total", to_state="half_open")
    window_start = opened_seen + 0.3
    window_end = opened_seen + recovery_timeout / 2
    time.sleep(max(0.0, window_end + 0.1 - time.monotonic()))
    half_opens_during = metric(sidecar, "sidecar_breaker_transitions_total", to_state="half_open") - half_opens_before
    in_window = [r for r in upstream.attempts() if window_start <= r.received_at <= window_end]
    data = [r for r in in_window if r.item_count > 0]
    probes = [r for r in upstream.attempts() if r.item_count == 0 and r.received_at >= opened_seen]
    # Only a half-open breaker admits data, and then at most half_open_max_calls at a time. On a machine
    # fast enough for the window to fit in the open period (the normal case) that is zero.
    assert len(data) <= 2 * half_opens_during, (len(data), half_opens_during)
    assert probes, "the health prober keeps probing the endpoint while the breaker is open"

    upstream.clear_faults()
    expected = span_id_bytes(sent)
    assert upstream.wait_for(lambda f: expected <= f.span_ids(), timeout=30), sidecar.logs()[-3000:]
    assert eventually(lambda: metric(sidecar, "sidecar_breaker_state") == 0, timeout=10)
    assert metric(sidecar, "sidecar_breaker_transitions_total", to_state="open") >= 1
    assert metric(sidecar, "sidecar_breaker_transitions_total", from_state="half_open", to_state="closed") >= 1
    app.shutdown()


# ---------------------------------------------------------------------------------------------- 3


def test_retry_budget_bounds_retries_of_concurrent_failures(upstream: FakeCollector,
                                                            sidecar_factory: SidecarFactory) -> None:
    ratio, min_per_second, requests = 0.2, 1.0, 100
    sidecar = sidecar_factory(
        upstream.grpc_endpoint,
        retry_on_failure={"initial_interval": "50ms", "max_interval": "200ms",
                          "budget": {"ratio": ratio, "min_per_second": min_per_second}},
        circuit_breaker={"failure_threshold": 100_000, "minimum_calls": 100_000},
        sending_queue={"num_consumers": requests},  # all 100 in flight at once
        health_probe=NO_PROBES,
    )
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    with trace_client(sidecar) as export, ThreadPoolExecutor(max_workers=requests) as pool:
        futures = [pool.submit(export, make_request(1000 + n, 1), timeout=10) for n in range(requests)]
        for future in futures:
            future.result()  # acknowledged by the queue

    def first_seen() -> dict[bytes, float]:
        seen: dict[bytes, float] = {}
        for r in upstream.attempts():
            seen.setdefault(r.message.SerializeToString(), r.received_at)
        return seen

    assert eventually(lambda: len(first_seen()) >= requests, timeout=30), len(first_seen())
    firsts = first_seen()
    first_at = min(firsts.values())
    # The window: from the first attempt to 2 s after the last request's first attempt (its length is
    # whatever the machine needed; only the bound below depends on it).
    window = max(firsts.values()) - first_at + 2.0
    time.sleep(max(0.0, first_at + window + 0.2 - time.monotonic()))
    in_window = [r for r in upstream.attempts() if r.received_at <= first_at + window]
    retries = len(in_window) - requests
    # Each request's first attempt deposits `ratio` tokens and each retry spends one; when the deposits
    # cannot pay, a floor bucket refilled at min_per_second (holding max(1, min_per_second) tokens, full
    # at start) may. A request that the budget sent back to the queue is still retried data when it is
    # offered again, so it is paid the same way. Hence, within the window:
    #   attempts <= 100 first attempts + ratio * 100 + max(1, min_per_second) + min_per_second * window
    # plus 1 of slack for a floor token refilled at the window's very edge.
    floor = max(1.0, min_per_second) + 1

    assert retries <= ratio * requests + floor + min_per_second * window, (len(in_window), window)
    retries_metric = metric(sidecar, "sidecar_exporter_retries_total")  # counted when a retry is decided
    scraped_by = time.monotonic() - first_at
    assert retries_metric >= ratio * requests, "the deposits of the first attempts were used"
    assert retries_metric <= ratio * requests + floor + min_per_second * scraped_by, (retries_metric, scraped_by)
    upstream.clear_faults()
    assert upstream.wait_for_spans(requests, timeout=30), "refused retries were kept, not dropped"


# ---------------------------------------------------------------------------------------------- 4


def test_failover_to_the_healthy_endpoint_and_back(upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeCollector() as second:
        a, b = upstream, second
        sidecar = sidecar_factory(a.grpc_endpoint, endpoint=None,
                                  endpoints=[a.grpc_endpoint, b.grpc_endpoint])
        b.go_down()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
        app = SdkApp("grpc", batch_size=10)
        sent: list[int] = []
        for _ in range(10):
            sent += app.send_traces(10)
            assert app.flush()
        expected = span_id_bytes(sent)
        assert a.wait_for(lambda f: expected <= f.span_ids(), timeout=20), sidecar.logs()[-3000:]
        assert not b.data_attempts()  # (its start-up probe came before it went down)

        b.come_up()
        a_before, b_before = len(a.accepted("traces")), len(b.accepted("traces"))
        more: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            more += app.send_traces(10)
            assert app.flush()
            if len(a.accepted("traces")) > a_before + 2 and len(b.accepted("traces")) > b_before + 2:
                break
            time.sleep(0.1)
        assert len(b.accepted("traces")) > b_before + 2, "traffic returns to the recovered endpoint"
        assert len(a.accepted("traces")) > a_before + 2, "and keeps going to the other one"
        expected_more = span_id_bytes(more)
        assert eventually(lambda: expected_more <= a.span_ids() | b.span_ids(), timeout=20)
        app.shutdown()


# ---------------------------------------------------------------------------------------------- 5


def test_retry_info_delay_is_honoured(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    hint = 2.0
    sidecar = sidecar_factory(upstream.grpc_endpoint, health_probe=NO_PROBES, timeout=PATIENT)
    upstream.fail_next(1, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="memory limiter",
                       retry_after_s=hint)
    request = make_request(5000, 5)
    with trace_client(sidecar) as export:
        export(request, timeout=10)
    expected = span_ids_of(request)
    assert upstream.wait_for(lambda f: expected <= f.span_ids(), timeout=20), sidecar.logs()[-3000:]
    attempts = [r for r in upstream.attempts("traces") if span_ids_of(r.message) & expected]  # type: ignore[arg-type]
    assert len(attempts) == 2, [(r.fault, r.received_at) for r in attempts]
    failed, delivered = attempts
    assert failed.fault == "fail" and delivered.accepted
    assert delivered.received_at - failed.received_at >= hint - 0.05


# ---------------------------------------------------------------------------------------------- 6


@pytest.mark.parametrize("exporter", ["otlp_http", "otlp_grpc"])
def test_oversized_request_is_split_and_fully_delivered(exporter: str, upstream: FakeCollector,
                                                        sidecar_factory: SidecarFactory) -> None:
    def edit(config: dict[str, object]) -> None:
        config["receivers"]["otlp"]["protocols"]["grpc"]["max_recv_msg_size_mib"] = 8  # type: ignore[index]

    target = upstream.http_endpoint if exporter == "otlp_http" else upstream.grpc_endpoint
    sidecar = sidecar_factory(target, exporter, config_edit=edit, health_probe=NO_PROBES,
                              timeout=PATIENT)
    upstream.set_max_message_bytes(MIB)
    request = make_request(10_000, 96, attribute_bytes=32 * 1024)
    assert request.ByteSize() > 3 * MIB
    with trace_client(sidecar) as export:
        export(request, timeout=20)
    expected = span_ids_of(request)
    assert upstream.wait_for(lambda f: expected <= f.span_ids(), timeout=30), sidecar.logs()[-3000:]
    accepted = upstream.accepted("traces")
    assert all(len(r.raw) <= MIB for r in accepted)
    assert len(accepted) >= 4, "3 MiB and more in parts of at most 1 MiB"
    assert any(r.fault == "too_large" for r in upstream.attempts("traces"))
    assert metric(sidecar, "sidecar_dead_letters_total") == 0
    assert metric(sidecar, "sidecar_dropped_items_total") == 0


# ---------------------------------------------------------------------------------------------- 7


def test_partial_success_is_counted_and_never_retried(upstream: FakeCollector,
                                                      sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, health_probe=NO_PROBES, timeout=PATIENT)
    upstream.partial_success_next(1, rejected=3, message="3 spans over the attribute limit")
    with trace_client(sidecar) as export:
        export(make_request(20_000, 10), timeout=10)
    assert eventually(lambda: metric(sidecar, "sidecar_dropped_items_total", reason="upstream_rejected") == 3,
                      timeout=20), sidecar.logs()[-3000:]
    # For several initial retry intervals (100 ms) no retry happens.
    assert holds_for(lambda: len(upstream.attempts("traces")) == 1
                     and metric(sidecar, "sidecar_exporter_retries_total") == 0, seconds=1.0), upstream.attempts()
    attempts = upstream.attempts("traces")
    assert len(attempts) == 1 and attempts[0].fault == "partial"
    assert metric(sidecar, "sidecar_exporter_sent_spans_total") == 7
    # Kept as one dead letter standing for the 3 rejected spans (tests/integration/test_chaos_partial.py).
    assert metric(sidecar, "sidecar_dead_letters_total") == 1
    assert metric(sidecar, "sidecar_dead_letters_total", category="processing") == 1


# ---------------------------------------------------------------------------------------------- 8


def test_permanent_error_is_dead_lettered_without_retry_or_breaker(upstream: FakeCollector,
                                                                   sidecar_factory: SidecarFactory) -> None:
    threshold, requests = 3, 8
    sidecar = sidecar_factory(upstream.grpc_endpoint, health_probe=NO_PROBES, timeout=PATIENT,
                              circuit_breaker={"failure_threshold": threshold, "minimum_calls": 4})
    upstream.fail_always(grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad span")
    with trace_client(sidecar) as export:
        for n in range(requests):
            export(make_request(30_000 + 10 * n, 2), timeout=10)
    assert eventually(lambda: metric(sidecar, "sidecar_dead_letters_total") == requests, timeout=20), (
        sidecar.logs()[-3000:])
    # For several initial retry intervals no request is tried again.
    assert holds_for(lambda: len(upstream.attempts("traces")) == requests, seconds=1.0), (
        "each request tried exactly once")
    assert metric(sidecar, "sidecar_dead_letters_total", category="serialization") == requests
    assert metric(sidecar, "sidecar_exporter_retries_total") == 0
    assert metric(sidecar, "sidecar_breaker_state") == 0
    assert metric(sidecar, "sidecar_breaker_transitions_total") == 0
    assert metric(sidecar, "sidecar_exporter_queue_size") == 0, "dead-lettered requests left the queue"
    # The endpoint is still in use: the next good request goes through at once.
    upstream.clear_faults()
    with trace_client(sidecar) as export:
        export(make_request(40_000, 1), timeout=10)
    assert upstream.wait_for_spans(1, timeout=10)
