"""`sending_queue.batch` (on by default) end to end: the sidecar process with the default batch.

Clients are acknowledged as before; upstream gets fewer, merged requests carrying every span once; a
permanent error on a merged request sends each entry again alone, so no client's data is
dead-lettered for another's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
REQUESTS = 6


def default_batch(config: dict[str, Any]) -> None:
    """The default batch (the tests' base config turns it off), waiting 1 s rather than 100 ms: the
    requests below are sent one after the other, and on a loaded machine six calls can take longer than
    100 ms (tests/unit/test_queue_batch.py checks the default values themselves)."""
    config["exporters"]["otlp_grpc"]["sending_queue"]["batch"] = {"flush_timeout": "1s"}


def request(first_id: int) -> trace_service_pb2.ExportTraceServiceRequest:
    message = trace_service_pb2.ExportTraceServiceRequest()
    spans = message.resource_spans.add().scope_spans.add().spans
    for ident in (first_id, first_id + 1):
        spans.add(trace_id=ident.to_bytes(16, "big"), span_id=ident.to_bytes(8, "big"), name=f"op {ident}",
                  kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=1, end_time_unix_nano=2)
    return message


@contextmanager
def client(sidecar: SidecarProcess) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        yield channel.unary_unary(TRACE_EXPORT,
                                  request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
                                  response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)


def send_all(sidecar: SidecarProcess) -> set[bytes]:
    sent: set[bytes] = set()
    with client(sidecar) as export:
        for n in range(REQUESTS):
            message = request(1000 + 10 * n)
            answer = export(message, timeout=10)
            assert not answer.HasField("partial_success")  # acknowledged in full, as without batching
            sent |= {s.span_id for s in message.resource_spans[0].scope_spans[0].spans}
    return sent


def test_default_batching_merges_upstream_requests_and_delivers_every_span_once(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=default_batch)
    sent = send_all(sidecar)
    assert eventually(lambda: upstream.span_ids() == sent, timeout=10), upstream.span_ids()
    assert len(upstream.spans()) == len(sent)  # each once
    assert len(upstream.accepted("traces")) < REQUESTS  # merged (they arrived within one flush_timeout)
    assert sidecar.metric_value("sidecar_exporter_sent_spans_total") == len(sent)


def test_a_permanent_error_on_a_merged_request_dead_letters_nobody(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=default_batch)
    upstream.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad span", data_only=True)
    sent = send_all(sidecar)
    assert eventually(lambda: upstream.span_ids() == sent, timeout=10), upstream.span_ids()
    refused = [r for r in upstream.data_attempts("traces") if not r.accepted]
    assert len(refused) == 1 and refused[0].item_count > 2  # the merged request was the one refused
    assert sidecar.metric_value("sidecar_dead_letters_total") == 0
    assert len(upstream.spans()) == len(sent)
