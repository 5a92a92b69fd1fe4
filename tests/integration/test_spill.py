"""Degradation level 1 "spill" end to end (`sending_queue.storage_mode: spill`).

While the Collector answers, requests stay in memory (nothing spilled). Once its breaker is open the
exporter is at level 1 and new requests are committed to the SQLite queue before the client is
answered: a SIGKILL then loses none of them, and the next sidecar drains them, counting the drain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import wait_until
from tests.sidecar_process import SidecarProcess


def send(sidecar: SidecarProcess, n: int) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x09" * 16, span_id=(n + 1).to_bytes(8, "big"), name=f"span {n}")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10)


def spill_to(directory: Path) -> Any:
    def edit(config: dict[str, Any]) -> None:
        config["extensions"]["file_storage"] = {"directory": str(directory)}
        config["service"]["extensions"].append("file_storage")
        queue = config["exporters"]["otlp_grpc"]["sending_queue"]
        queue.update({"storage": "file_storage", "storage_mode": "spill"})
    return edit


def test_spill_from_level_one_survives_a_crash_and_drains(tmp_path: Path, upstream: FakeCollector,
                                                           sidecar_factory: SidecarFactory) -> None:
    storage = tmp_path / "storage"
    overrides = {"circuit_breaker": {"failure_threshold": 1, "recovery_timeout": "60s",
                                     "max_recovery_timeout": "60s"},
                 "health_probe": {"enabled": False}}
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=spill_to(storage), **overrides)
    for n in range(3):
        send(sidecar, n)
    wait_until(lambda: len(upstream.span_ids()) == 3, 20, "healthy traffic delivered")
    assert sidecar.metric_value("sidecar_exporter_spilled_requests_total") == 0  # memory while healthy

    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    send(sidecar, 3)  # its failure opens the breaker: level 1 from the next request on
    wait_until(lambda: sidecar.metric_value("sidecar_breaker_state") == 2, 20, "the breaker open")
    for n in range(4, 9):
        send(sidecar, n)
    assert sidecar.metric_value("sidecar_exporter_spilled_requests_total") == 5
    assert sidecar.metric_value("sidecar_degradation_level") >= 1
    sidecar.kill()  # SIGKILL: what was spilled is on disk

    upstream.clear_faults()
    restarted = sidecar_factory(upstream.grpc_endpoint, config_edit=spill_to(storage), **overrides)
    spilled = {(n + 1).to_bytes(8, "big") for n in range(4, 9)}
    wait_until(lambda: spilled <= upstream.span_ids(), 20, "the spilled requests delivered after the crash")
    wait_until(lambda: restarted.metric_value("sidecar_exporter_spill_drained_requests_total") >= 5, 10,
               "the drain counted")


def test_the_error_rate_and_latency_triggers_make_it_spill(tmp_path: Path, upstream: FakeCollector,
                                                           sidecar_factory: SidecarFactory) -> None:
    """No open breaker and an empty queue: only the error-rate (then the p99 latency) trigger raises level 1."""
    def edit(config: dict[str, Any]) -> None:
        spill_to(tmp_path / "storage")(config)
        config["processors"]["degradation"] = {"error_rate": 0.5, "latency": "300ms"}

    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=edit, circuit_breaker={"enabled": False},
                              health_probe={"enabled": False}, sending_queue={"num_consumers": 1},
                              retry_on_failure={"max_attempts": 1})  # each failure: one attempt, dead-lettered
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    send(sidecar, 0)
    wait_until(lambda: sidecar.metric_value("sidecar_dead_letters_total") == 1, 20, "one failed send")
    send(sidecar, 1)  # error rate 1.0 over the last minute: level 1
    assert sidecar.metric_value("sidecar_exporter_spilled_requests_total") == 1
    wait_until(lambda: sidecar.metric_value("sidecar_exporter_spill_drained_requests_total") == 1, 20,
               "the spilled request taken from disk")

    latency = tmp_path / "latency"
    upstream.clear_faults()
    upstream.set_delay(0.5)

    def edit_latency(config: dict[str, Any]) -> None:
        spill_to(latency)(config)
        config["processors"]["degradation"] = {"latency": "300ms"}

    slow = sidecar_factory(upstream.grpc_endpoint, config_edit=edit_latency, circuit_breaker={"enabled": False},
                           health_probe={"enabled": False}, sending_queue={"num_consumers": 1})
    send(slow, 10)
    wait_until(lambda: slow.metric_value("sidecar_exporter_sent_spans_total") == 1, 20, "one slow success")
    assert slow.metric_value("sidecar_exporter_spilled_requests_total") == 0
    send(slow, 11)  # p99 of the last minute's successes is 0.5 s >= 300 ms: level 1
    assert slow.metric_value("sidecar_exporter_spilled_requests_total") == 1
