"""Issue 16, fault 1, the end of the road: the disk is full AND the memory that takes over is full.

A sidecar process with `file_storage` on a 1 MiB tmpfs, the upstream down, and
`service.memory_limit_mib` small enough that the queue's memory fallback (half of it) fills within
the test. Clients must then be pushed back with a status they retry (gRPC UNAVAILABLE, HTTP 503 +
Retry-After) and the reason that is true: the storage is failing (`disk_full`) and its memory fallback
is full; not `queue_full` (the queue is far from its `queue_size`) and not `memory_limit` (the
ladder's RSS thresholds are set so they do not fire: see MEMORY_LIMIT_MIB). Once the disk has room
again and the upstream is back, every acknowledged span is delivered, nothing is counted as dropped,
and the process never crashed.

Mounting the tmpfs needs root: where it is impossible the test skips with the reason, except under
CI (`CI` set), where it fails.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.fakes.collector import FakeCollector
from tests.fakes.volume import mounted_tmpfs, resize_tmpfs
from tests.integration.conftest import SidecarFactory
from tests.polling import eventually
from tests.sidecar_process import SidecarProcess, get_json

EXPORTER = "otlp_grpc"
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# The queue's memory fallback holds half of the memory limit (sidecar/queue/fallback.py). The ladder
# compares RSS with the limit less 5 % (sidecar/exporters/exporter.py, MEMORY_HEADROOM); its thresholds
# go up to memory_essential_above < memory_backpressure_at <= 1.0, so they stay out of the way only while
# idle RSS (about 75 MiB) + the fallback's 0.5 x limit + decoding in flight < 0.99 x 0.95 x limit, which
# needs a limit of about 200 MiB or more. 256 MiB leaves ~35 MiB of margin; the test measures the peak.
MEMORY_LIMIT_MIB = 256
FALLBACK_BYTES = MEMORY_LIMIT_MIB * 1024 * 1024 // 2
SPANS_PER_REQUEST = 64
PADDING = 4000  # bytes of attribute per span: a request of ~260 KB
_RUN = os.urandom(8)


def trace_request(first: int, spans: int = SPANS_PER_REQUEST, padding: int = PADDING
                  ) -> tuple[trace_service_pb2.ExportTraceServiceRequest, set[bytes]]:
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    ids = set()
    for n in range(first, first + spans):
        span_id = _RUN[:4] + n.to_bytes(4, "big")
        span = scope.spans.add(trace_id=_RUN + span_id, span_id=span_id, name="fill",
                               start_time_unix_nano=1_700_000_000_000_000_000,
                               end_time_unix_nano=1_700_000_000_100_000_000)
        span.attributes.add(key="app.padding").value.string_value = "m" * padding
        ids.add(span_id)
    return request, ids


def rss_bytes(sidecar: SidecarProcess) -> int:
    assert sidecar.proc is not None
    with open(f"/proc/{sidecar.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def post_http(sidecar: SidecarProcess, request: trace_service_pb2.ExportTraceServiceRequest
              ) -> tuple[int, dict[str, str], bytes]:
    http = urllib.request.Request(f"http://127.0.0.1:{sidecar.ports.http}/v1/traces",
                                  data=request.SerializeToString(), method="POST",
                                  headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(http, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_full_disk_and_full_memory_fallback_push_back_with_the_true_reason_and_lose_nothing(
        upstream: FakeCollector, sidecar_factory: SidecarFactory, tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "1m") as volume:
        def edit(config: dict[str, Any]) -> None:
            config["extensions"]["file_storage"]["directory"] = str(volume)
            config["service"]["memory_limit_mib"] = MEMORY_LIMIT_MIB
            config["processors"]["degradation"] = {"memory_essential_above": 0.99, "memory_backpressure_at": 1.0}

        upstream.go_down()
        sidecar = sidecar_factory(upstream.grpc_endpoint, storage=True, config_edit=edit,
                                  sending_queue={"queue_size": 100_000})
        idle_rss = rss_bytes(sidecar)
        channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
        export = channel.unary_unary(
            TRACE_EXPORT, request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        acknowledged: set[bytes] = set()
        acknowledged_bytes = 0
        refused: list[tuple[grpc.StatusCode, str]] = []
        peak_rss = idle_rss
        next_id = 0
        try:
            # Fill the disk, then the memory fallback, until clients are pushed back (bounded: twice what
            # the fallback holds would be sent at most).
            request_bytes = trace_request(0)[0].ByteSize()
            for _ in range(2 * FALLBACK_BYTES // request_bytes):
                request, ids = trace_request(next_id)
                next_id += SPANS_PER_REQUEST
                try:
                    response = export(request, timeout=10, wait_for_ready=True)
                except grpc.RpcError as exc:
                    call: Any = exc
                    refused.append((call.code(), call.details() or ""))
                    if len(refused) >= 3:
                        break
                else:
                    assert not response.partial_success.rejected_spans, response  # nothing shed
                    acknowledged |= ids
                    acknowledged_bytes += request.ByteSize()
                peak_rss = max(peak_rss, rss_bytes(sidecar))
            assert len(refused) == 3, f"never pushed back after {len(acknowledged)} spans acknowledged"

            # Pushed back with a status clients retry, and the true reason.
            for code, details in refused:
                assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
                assert "queue storage is failing and its memory fallback is full (disk_full)" in details, details
            status, headers, body = post_http(sidecar, trace_request(next_id)[0])
            assert status == 503 and int(headers["Retry-After"]) >= 1, (status, body)
            assert "memory fallback is full (disk_full)" in status_pb2.Status.FromString(body).message
            reasons = {e.get("reason") for e in sidecar.log_events() if e.get("event") == "backpressure"}
            assert reasons == {"disk_full"}, reasons  # never queue_full, never memory_limit

            # What memory held when it refused: about the fallback's bound (the disk took the first ~1 MiB).
            ready_status, ready = get_json(f"http://127.0.0.1:{sidecar.ports.health}/ready")
            assert ready_status == 200 and ready["storage_degraded"] == {EXPORTER: "disk_full"}, ready
            assert sidecar.metric_value("sidecar_exporter_queue_storage_errors_total", exporter=EXPORTER,
                                        store="queue", reason="disk_full") > 0
            in_memory = ready["exporters"][EXPORTER]["storage"]["queue"]["in_memory"]
            assert FALLBACK_BYTES - request_bytes < in_memory * request_bytes <= FALLBACK_BYTES, in_memory
            assert acknowledged_bytes >= in_memory * request_bytes
            # The RSS thresholds stayed out of the way: nothing shed, the ladder below level 3.
            assert sidecar.metric_value("sidecar_degradation_level", exporter=EXPORTER) < 3
            for reason in ("degradation_sampled", "degradation_essential"):
                assert sidecar.metric_value("sidecar_dropped_items_total", reason=reason) == 0
            print(f"idle RSS {idle_rss / 2**20:.0f} MiB, peak RSS {peak_rss / 2**20:.0f} MiB "
                  f"(limit {MEMORY_LIMIT_MIB} MiB), {len(acknowledged)} spans / {acknowledged_bytes / 2**20:.0f} MiB "
                  f"acknowledged, {in_memory} requests in memory")

            # The disk gets room again and the upstream comes back: everything acknowledged arrives.
            resize_tmpfs(volume, "512m")
            upstream.come_up()
            assert upstream.wait_for(lambda f: acknowledged <= f.span_ids(), timeout=180), (
                f"{len(acknowledged - upstream.span_ids())} of {len(acknowledged)} acknowledged spans lost\n"
                f"{sidecar.logs()[-3000:]}")
            # Back on the disk once a write succeeds: moving memory back did, or (when the consumers emptied
            # memory first) the next request's put does.
            request, ids = trace_request(next_id + SPANS_PER_REQUEST)
            export(request, timeout=10)
            assert eventually(lambda: get_json(f"http://127.0.0.1:{sidecar.ports.health}/ready")[1]
                              ["storage_degraded"] == {}, timeout=30), sidecar.logs()[-3000:]
            assert upstream.wait_for(lambda f: ids <= f.span_ids(), timeout=30)
            assert sidecar.metric_value("sidecar_dropped_items_total") == 0  # nothing lost, by any reason
            assert sidecar.proc is not None and sidecar.proc.poll() is None  # never crashed
        finally:
            channel.close()
