"""Escalation end to end: an upstream that keeps failing is reported as worsening, while span
attributes keep the deterministic base severity."""

from __future__ import annotations

import json

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import wait_until
from tests.sidecar_process import SidecarProcess


def send_error_span(sidecar: SidecarProcess, n: int) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x03" * 16, span_id=(n + 1).to_bytes(8, "big"), name=f"call {n}")
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = "connection refused"
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10)


def test_recurring_unavailable_is_reported_worse(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    sidecar = sidecar_factory(upstream.grpc_endpoint, circuit_breaker={"enabled": False},
                              retry_on_failure={"initial_interval": "50ms", "max_interval": "200ms",
                                                "budget": {"ratio": 1.0, "min_per_second": 50}})
    for n in range(12):
        send_error_span(sidecar, n)

    def errors(severity: str) -> float:
        return sidecar.metric_value("sidecar_errors_total", category="transport", severity=severity,
                                    recoverability="retryable")

    wait_until(lambda: errors("medium") > 0, 20, "export errors reported at an escalated severity")
    assert errors("low") >= 9  # the first nine of the minute at the class's own severity
    events = [json.loads(line) for line in sidecar.logs().splitlines() if line.startswith("{")]
    worsening = [e for e in events if e.get("event") == "error_escalation"]
    assert worsening and worsening[0]["from_severity"] == "low" and worsening[0]["to_severity"] == "medium"
    assert worsening[0]["error_type"] == "UNAVAILABLE"

    upstream.clear_faults()
    wait_until(lambda: len(upstream.spans()) >= 12, 30, "the spans delivered once the upstream is back")
    severities = {a.value.string_value for s in upstream.spans() for a in s.attributes
                  if a.key == "sidecar.error.severity"}
    assert severities == {"low"}  # what the spans carry is the deterministic base severity
