"""SIGHUP: a valid config is applied in place, an invalid one is refused and the old one kept."""

from __future__ import annotations

import signal
import time

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sidecar_process import SidecarProcess


def _send_error_span(sidecar: SidecarProcess, span_id: int) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x07" * 16, span_id=span_id.to_bytes(8, "big"), name="db call")
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    event = span.events.add(name="exception")
    attribute = event.attributes.add(key="exception.type")
    attribute.value.string_value = "psycopg2.errors.DeadlockDetected"
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                            request_serializer=None, response_deserializer=None)(request.SerializeToString(),
                                                                                 timeout=10)


def _attributes(upstream: FakeCollector, span_id: int) -> dict[str, str]:
    for span in upstream.spans():
        if span.span_id == span_id.to_bytes(8, "big"):
            return {a.key: a.value.string_value for a in span.attributes}
    raise AssertionError(f"span {span_id} not received")


def _wait_log(sidecar: SidecarProcess, text: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if sidecar.logs().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} x{count} not logged:\n{sidecar.logs()[-2000:]}")


def test_sighup_applies_valid_and_refuses_invalid(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    assert sidecar.proc is not None
    _send_error_span(sidecar, 1)
    assert upstream.wait_for_spans(1, timeout=10)
    assert _attributes(upstream, 1)["sidecar.error.category"] == "concurrency"

    config = yaml.safe_load(sidecar.config_path.read_text())
    config["processors"]["enrich"] = {"attribute_prefix": "acme.err."}
    sidecar.config_path.write_text(yaml.safe_dump(config))
    sidecar.proc.send_signal(signal.SIGHUP)
    _wait_log(sidecar, "config reloaded", 1)
    _send_error_span(sidecar, 2)
    assert upstream.wait_for_spans(2, timeout=10)
    second = _attributes(upstream, 2)
    assert second["acme.err.category"] == "concurrency"
    assert not any(k.startswith("sidecar.error.") for k in second)

    config["exporters"]["otlp_grpc"]["retry_on_failure"]["multiplier"] = 0  # invalid
    sidecar.config_path.write_text(yaml.safe_dump(config))
    sidecar.proc.send_signal(signal.SIGHUP)
    _wait_log(sidecar, "config reload failed", 1)
    assert "exporters.otlp_grpc.retry_on_failure.multiplier: must be >= 1" in sidecar.logs()
    assert sidecar.proc.poll() is None
    _send_error_span(sidecar, 3)
    assert upstream.wait_for_spans(3, timeout=10)
    assert _attributes(upstream, 3)["acme.err.category"] == "concurrency"
    assert sidecar.metric_value("sidecar_config_reloads_total", result="invalid") == 1
    assert sidecar.metric_value("sidecar_config_reloads_total", result="applied") == 1


def test_sighup_reports_changes_that_need_a_restart(upstream: FakeCollector,
                                                   sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    assert sidecar.proc is not None
    config = yaml.safe_load(sidecar.config_path.read_text())
    config["exporters"]["otlp_grpc"]["sending_queue"]["queue_size"] = 5
    sidecar.config_path.write_text(yaml.safe_dump(config))
    sidecar.proc.send_signal(signal.SIGHUP)
    _wait_log(sidecar, "config reloaded", 1)
    assert "exporters.otlp_grpc" in sidecar.logs().split("config reloaded", 1)[1].splitlines()[0]
    # The queue (and its breakers) survived: capacity is still the original one.
    assert sidecar.metric_value("sidecar_exporter_queue_capacity") == 1000
    _send_error_span(sidecar, 9)
    assert upstream.wait_for_spans(1, timeout=10)
