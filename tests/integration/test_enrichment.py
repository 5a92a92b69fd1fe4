"""Issue 4 end to end: the real SDK's error spans arrive upstream classified; the rest unchanged."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from sidecar.config.schema import ClassifyProcessorConfig, ExporterConfig, TLSClientConfig
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError
from sidecar.core.signals import Signal
from sidecar.exporters.transport_grpc import GrpcTransport
from sidecar.exporters.transport_http import HttpTransport
from sidecar.pipeline.classify import Classifier
from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sdk_app import SdkApp


def _attrs(span: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:  # type: ignore[attr-defined]
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


@pytest.mark.parametrize("client", ["grpc", "http"])
def test_error_spans_arrive_classified(client: str, upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       sidecar.grpc_endpoint if client == "grpc" else sidecar.http_endpoint)
    app = SdkApp(client)  # type: ignore[arg-type]
    tracer = app.tracer
    with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT, record_exception=False,
                                      set_status_on_exception=False) as failing:
        try:
            raise TimeoutError("payment gateway timed out after 5s")
        except TimeoutError as exc:
            failing.record_exception(exc)
            failing.set_status(Status(StatusCode.ERROR, "gateway timeout"))
    with tracer.start_as_current_span("GET /cart", kind=SpanKind.SERVER) as server_503:
        server_503.set_attribute("http.response.status_code", 503)
    with tracer.start_as_current_span("GET /health", kind=SpanKind.SERVER) as fine:
        fine.set_attribute("http.response.status_code", 200)
        fine.set_attribute("error.type", "kept-as-is")  # an app attribute on a non-error span: untouched
    with tracer.start_as_current_span("GET /missing", kind=SpanKind.SERVER) as not_found:
        not_found.set_attribute("http.response.status_code", 404)  # a server's 404 is not an error
    with tracer.start_as_current_span("lookup", kind=SpanKind.INTERNAL, record_exception=False,
                                      set_status_on_exception=False) as custom:
        custom.set_status(Status(StatusCode.ERROR))
        custom.set_attribute("error.type", "my.custom.Error")
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            custom.record_exception(exc)
    assert app.flush()
    app.shutdown()
    assert upstream.wait_for_spans(5, timeout=15)
    spans = {s.name: s for s in upstream.spans()}

    timeout = _attrs(spans["charge card"])
    assert timeout["sidecar.error.category"] == "timeout"
    assert timeout["sidecar.error.recoverability"] == "retryable"
    assert timeout["sidecar.error.recovery"] == "increase_timeout"
    assert timeout["sidecar.error.retryable"] is True
    assert timeout["sidecar.error.transient"] is True
    assert timeout["sidecar.error.severity"] in ("low", "medium", "high", "critical")
    assert timeout["sidecar.error.classified_by"]
    assert timeout["error.type"] == "timeout"

    unavailable = _attrs(spans["GET /cart"])
    assert unavailable["sidecar.error.category"] == "transport"
    assert unavailable["sidecar.error.recoverability"] == "retryable"
    assert unavailable["error.type"] == "http_503"
    assert unavailable["http.response.status_code"] == 503

    custom_attrs = _attrs(spans["lookup"])
    assert custom_attrs["error.type"] == "my.custom.Error", "error.type set by the app is never overwritten"
    assert custom_attrs["sidecar.error.category"] == "transport"

    for name in ("GET /health", "GET /missing"):
        assert not any(k.startswith("sidecar.error.") for k in _attrs(spans[name])), name
    assert _attrs(spans["GET /health"])["error.type"] == "kept-as-is"

    assert sidecar.metric_value("sidecar_enriched_items_total", signal="traces") == 3
    assert sidecar.metric_value("sidecar_errors_total", category="timeout", recoverability="retryable") == 1
    assert sidecar.metric_value("sidecar_errors_total", category="transport") == 2


def test_non_error_requests_are_forwarded_byte_for_byte(upstream: FakeCollector,
                                                        sidecar_factory: SidecarFactory) -> None:
    """The fast path: what the client sent is what the Collector gets, to the byte."""
    sidecar = sidecar_factory(upstream.grpc_endpoint, compression="none")
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("fine"):
        pass
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    payload = encode_spans(memory.get_finished_spans()).SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                 request_serializer=None, response_deserializer=None)
    export(payload, timeout=10)
    channel.close()
    assert upstream.wait_for_spans(1, timeout=10)
    assert upstream.accepted("traces")[0].raw == payload


async def test_real_grpc_resource_exhausted_with_retry_info_is_classified(upstream: FakeCollector) -> None:
    upstream.fail_next(1, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="memory limiter",
                       retry_after_s=2.5)
    config = ExporterConfig(endpoint=upstream.grpc_endpoint, tls=TLSClientConfig(insecure=True),
                            compression="none")
    transport = GrpcTransport(upstream.grpc_endpoint, config)
    entry = QueueEntry(Signal.TRACES, b"", 0, (), 0.0)
    with pytest.raises(ExportError) as info:
        await transport.send(entry, timeout=5)
    await transport.close()
    classification = Classifier(ClassifyProcessorConfig()).classify_export(info.value.failure)
    assert classification.category.value == "resource_exhausted"
    assert classification.recoverability.value == "temporary"
    assert classification.retry_after == pytest.approx(2.5)


async def test_real_http_429_with_retry_after_is_classified(upstream: FakeCollector) -> None:
    upstream.fail_next(1, http_status=429, retry_after_s=3)
    transport = HttpTransport(upstream.http_endpoint, ExporterConfig(endpoint=upstream.http_endpoint))
    with pytest.raises(ExportError) as info:
        await transport.send(QueueEntry(Signal.LOGS, b"", 0, (), 0.0), timeout=5)
    await transport.close()
    classification = Classifier().classify_export(info.value.failure)
    assert (classification.category.value, classification.recoverability.value) == ("resource_exhausted",
                                                                                     "temporary")
    assert classification.retry_after == pytest.approx(3.0)


async def test_connection_refused_is_observed_as_such() -> None:
    from tests.sidecar_process import free_port

    port = free_port()
    for transport in (GrpcTransport(f"127.0.0.1:{port}", ExporterConfig(endpoint=f"127.0.0.1:{port}",
                                                                     tls=TLSClientConfig(insecure=True))),
                      HttpTransport(f"http://127.0.0.1:{port}", ExporterConfig(endpoint=f"http://127.0.0.1:{port}"))):
        with pytest.raises(ExportError) as info:
            await transport.send(QueueEntry(Signal.TRACES, b"", 0, (), 0.0), timeout=3)
        await transport.close()
        classification = Classifier().classify_export(info.value.failure)
        assert classification.category.value == "transport", info.value.failure
        assert classification.error_type == "connection_refused", info.value.failure
