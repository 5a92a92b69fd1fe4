"""SIGHUP applies exporter settings in place: queued data stays, waiting requests take the new settings."""

from __future__ import annotations

import json
import signal
import time

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import wait_until
from tests.sidecar_process import SidecarProcess

OLD_BACKOFF = 30.0


def send(sidecar: SidecarProcess, n: int) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x05" * 16, span_id=(n + 1).to_bytes(8, "big"), name=f"span {n}")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10)


def test_sighup_retunes_retry_and_headers_without_losing_the_backlog(upstream: FakeCollector,
                                                                     sidecar_factory: SidecarFactory) -> None:
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    sidecar = sidecar_factory(
        upstream.grpc_endpoint, headers={"x-generation": "1"}, circuit_breaker={"failure_threshold": 1000},
        retry_on_failure={"initial_interval": f"{OLD_BACKOFF:.0f}s", "max_interval": "60s", "jitter": "equal",
                          "randomization_factor": 0.0, "max_elapsed_time": "0s"})
    for n in range(5):
        send(sidecar, n)
    wait_until(lambda: len(upstream.data_attempts()) >= 5, 20, "the first attempts (all failing)")
    assert all(r.metadata.get("x-generation") == "1" for r in upstream.data_attempts())

    config = yaml.safe_load(sidecar.config_path.read_text())
    exporter = config["exporters"]["otlp_grpc"]
    exporter["retry_on_failure"].update({"initial_interval": "100ms", "max_interval": "500ms"})
    exporter["headers"] = {"x-generation": "2"}
    exporter["timeout"] = "1s"
    sidecar.config_path.write_text(yaml.safe_dump(config))
    upstream.clear_faults()
    assert sidecar.proc is not None
    reloaded_at = time.monotonic()
    sidecar.proc.send_signal(signal.SIGHUP)

    # Every queued span arrives long before the old 30 s backoff would have let them go again.
    wait_until(lambda: len(upstream.span_ids()) == 5, OLD_BACKOFF / 2, "the backlog delivered after the reload")
    assert time.monotonic() - reloaded_at < OLD_BACKOFF
    delivered = upstream.accepted("traces")
    assert delivered and all(r.metadata.get("x-generation") == "2" for r in delivered)  # the new headers
    events = [json.loads(line) for line in sidecar.logs().splitlines() if line.startswith("{")]
    (reload_event,) = [e for e in events if e.get("event") == "config_reload"]
    assert reload_event["result"] == "applied" and reload_event["exporters_reconfigured"] == ["otlp_grpc"]
    assert reload_event["not_applied_need_restart"] == []
    assert sidecar.metric_value("sidecar_config_reloads_total", result="applied") == 1
    assert sidecar.metric_value("sidecar_dropped_items_total") == 0
