"""exporters.*.dead_letter end to end: max_items, max_size_mib and max_age bound the store, and what
they push out is counted as dropped with its reason."""

from __future__ import annotations

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import wait_until
from tests.sidecar_process import SidecarProcess


def send(sidecar: SidecarProcess, n: int, spans: int = 2) -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(spans):
        scope.spans.add(trace_id=b"\x01" * 16, span_id=(n * 100 + i + 1).to_bytes(8, "big"), name=f"req {n}")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            request.SerializeToString(), timeout=10)


def dropped(sidecar: SidecarProcess, reason: str) -> float:
    return sidecar.metric_value("sidecar_dropped_items_total", signal="traces", reason=reason)


def test_max_items_evicts_the_oldest(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    upstream.fail_always(grpc_code=grpc.StatusCode.INVALID_ARGUMENT)  # permanent: every request is dead-lettered
    sidecar = sidecar_factory(upstream.grpc_endpoint, dead_letter={"max_items": 2})
    for n in range(5):
        send(sidecar, n)
    wait_until(lambda: sidecar.metric_value("sidecar_dead_letters_total") == 5, 20, "5 dead letters")
    wait_until(lambda: dropped(sidecar, "dead_letter_evicted") == 6, 10, "3 requests (6 spans) evicted")
    assert dropped(sidecar, "dead_letter_expired") == 0


def test_max_size_mib_keeps_only_what_fits(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    upstream.fail_always(grpc_code=grpc.StatusCode.INVALID_ARGUMENT)
    # ~100 bytes: less than two of these requests, so each new dead letter pushes the previous one out
    sidecar = sidecar_factory(upstream.grpc_endpoint, dead_letter={"max_size_mib": 0.0001})
    for n in range(3):
        send(sidecar, n)
    wait_until(lambda: dropped(sidecar, "dead_letter_evicted") == 4, 20, "two requests evicted by size")


def test_max_age_expires_dead_letters_even_when_nothing_new_fails(upstream: FakeCollector,
                                                                  sidecar_factory: SidecarFactory) -> None:
    upstream.fail_always(grpc_code=grpc.StatusCode.INVALID_ARGUMENT)
    sidecar = sidecar_factory(upstream.grpc_endpoint, dead_letter={"max_age": "1s"})
    send(sidecar, 1, spans=3)
    wait_until(lambda: sidecar.metric_value("sidecar_dead_letters_total") == 1, 20, "a dead letter")
    wait_until(lambda: dropped(sidecar, "dead_letter_expired") == 3, 10, "the dead letter expired")
    assert dropped(sidecar, "dead_letter_evicted") == 0
