"""The knobs that were constants, end to end with the sidecar as its own process: each one changes
what the sidecar does (retry_on_failure.max_attempts, circuit_breaker.half_open_success_threshold,
processors.degradation.memory_essential_above)."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import holds_for, wait_until
from tests.sidecar_process import SidecarProcess


def export(sidecar: SidecarProcess, n: int, spans: int = 1) -> trace_service_pb2.ExportTraceServiceResponse:
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(spans):
        scope.spans.add(trace_id=(n + 1).to_bytes(16, "big"), span_id=(n * 100 + i + 1).to_bytes(8, "big"),
                        name=f"span {n}.{i}")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10)
    return trace_service_pb2.ExportTraceServiceResponse.FromString(raw)


def test_max_attempts_dead_letters_after_that_many_attempts(upstream: FakeCollector,
                                                            sidecar_factory: SidecarFactory) -> None:
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    sidecar = sidecar_factory(upstream.grpc_endpoint, circuit_breaker={"failure_threshold": 100},
                              health_probe={"enabled": False},
                              retry_on_failure={"initial_interval": "50ms", "max_interval": "100ms", "max_attempts": 2})
    export(sidecar, 1)
    wait_until(lambda: sidecar.metric_value("sidecar_dead_letters_total", category="transport") == 1, 20,
               "the request dead-lettered")
    assert holds_for(lambda: len(upstream.data_attempts()) == 2, 1.0)  # exactly two attempts, then no more


def test_half_open_success_threshold_keeps_the_breaker_half_open_until_enough_successes(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, health_probe={"enabled": False},
                              sending_queue={"num_consumers": 1},
                              circuit_breaker={"failure_threshold": 1, "recovery_timeout": "500ms",
                                               "max_recovery_timeout": "500ms", "half_open_max_calls": 1,
                                               "half_open_success_threshold": 3})
    upstream.fail_next(1, grpc_code=grpc.StatusCode.UNAVAILABLE)
    export(sidecar, 0)
    wait_until(lambda: sidecar.metric_value("sidecar_breaker_transitions_total", to_state="open") == 1, 20,
               "the breaker open")
    upstream.set_delay(0.4)  # each success takes a while, so the state between them can be seen
    for n in range(1, 4):
        export(sidecar, n)
    wait_until(lambda: len(upstream.accepted("traces")) >= 1, 20, "the first half-open success")
    assert sidecar.metric_value("sidecar_breaker_state") == 1  # one success is not enough: still half-open
    wait_until(lambda: sidecar.metric_value("sidecar_breaker_state") == 0, 20, "closed after three successes")
    assert len(upstream.accepted("traces")) >= 3
    assert sidecar.metric_value("sidecar_breaker_transitions_total", from_state="half_open", to_state="closed") == 1


def test_memory_essential_above_sheds_when_rss_passes_it(upstream: FakeCollector,
                                                         sidecar_factory: SidecarFactory) -> None:
    def low_memory_thresholds(config: dict[str, object]) -> None:
        config["service"]["memory_limit_mib"] = 100_000  # type: ignore[index]
        config["processors"]["degradation"] = {  # type: ignore[index]
            "memory_essential_above": 0.0001, "memory_backpressure_at": 0.9}  # ~10 MiB: any process is above

    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=low_memory_thresholds)
    answer = export(sidecar, 1, spans=4)  # no error span among them: level 3 keeps none
    assert answer.partial_success.rejected_spans == 4, answer
    assert "essential" in answer.partial_success.error_message
    assert sidecar.metric_value("sidecar_dropped_items_total", reason="degradation_essential") == 4
    assert sidecar.metric_value("sidecar_degradation_level") == 3
