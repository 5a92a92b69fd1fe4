"""Enrichment fails open, end to end: a classifier bug never costs the client its request.

The sidecar runs as its own process with a classifier that raises on a poison item
(tests/fakes/broken_classifier.py). The real SDK's requests carrying one are delivered upstream
exactly as sent (no sidecar.error.* attributes), the client is answered OK, the failure is
counted in sidecar_enrich_failures_total and logged once, and other requests are still enriched.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.trace import Status, StatusCode

from tests.fakes.broken_classifier import POISON
from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sdk_app import SdkApp

PREFIX = "sidecar.error."


def _keys(item: object) -> set[str]:
    return {a.key for a in item.attributes}  # type: ignore[attr-defined]


def test_a_classifier_bug_forwards_requests_unenriched(upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, module="tests.fakes.broken_classifier")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    app = SdkApp("grpc")
    for n in range(3):  # three requests (flushed one by one), each with a poisoned error span
        with app.tracer.start_as_current_span(f"poisoned {n}") as span:
            span.set_status(Status(StatusCode.ERROR, f"{POISON}: the classifier chokes on this"))
        assert app.flush()
    app.logger.emit(severity_number=SeverityNumber.ERROR, body=f"{POISON} in a log record")
    assert app.flush()
    with app.tracer.start_as_current_span("healthy error") as span:
        span.set_status(Status(StatusCode.ERROR, "connection refused"))
    assert app.flush()

    assert upstream.wait_for(lambda f: len(f.spans()) == 4, timeout=20), sidecar.logs()[-3000:]
    spans = {s.name: s for s in upstream.spans()}
    for n in range(3):
        assert not any(k.startswith(PREFIX) for k in _keys(spans[f"poisoned {n}"]))  # as the app sent it
    assert PREFIX + "category" in _keys(spans["healthy error"])  # the rest is still enriched
    assert upstream.wait_for(lambda f: bool(f.accepted("logs")), timeout=20)
    (record,) = [r for req in upstream.accepted("logs") for rl in req.message.resource_logs
                 for sl in rl.scope_logs for r in sl.log_records]
    assert not any(k.startswith(PREFIX) for k in _keys(record))

    # A raw client sees the answer itself: OK, never UNKNOWN.
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="raw poisoned")
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = POISON
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        export(request.SerializeToString(), timeout=5)  # raises on any non-OK status
    http = urllib.request.Request(f"{sidecar.http_endpoint}/v1/traces", data=request.SerializeToString(),
                                  headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(http, timeout=5) as response:
        assert response.status == 200

    assert sidecar.metric_value("sidecar_enrich_failures_total", signal="traces") == 5
    assert sidecar.metric_value("sidecar_enrich_failures_total", signal="logs") == 1
    lines = [json.loads(line) for line in sidecar.logs().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("event") == "enrich_failed"]
    assert len(logged) == 1, logged  # once per minute per cause, not per request
    assert logged[0]["cause"] == "RuntimeError" and "injected classifier bug" in logged[0]["exception"]
    app.shutdown()
