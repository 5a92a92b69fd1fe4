"""The fault-injecting fake Collector (tests/fakes/collector.py), driven by raw OTLP clients."""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.fakes.collector import (
    GRPC_STATUS_DETAILS_KEY,
    FakeCollector,
    message_to_otlp_json,
    otlp_json_to_message,
)

PB = "application/x-protobuf"
JS = "application/json"

# Reconnect fast after go_down/come_up instead of grpc's default 1 s+ backoff.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def trace_request(
    n: int = 2, seed: int = 1, name_size: int = 4
) -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    for i in range(n):
        span = ss.spans.add()
        span.trace_id = bytes([seed]) * 16
        span.span_id = bytes([seed, i + 1]) + b"\x00" * 6
        span.name = "x" * name_size
    return req


def metrics_request() -> metrics_service_pb2.ExportMetricsServiceRequest:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    g = sm.metrics.add(name="g")
    g.gauge.data_points.add(as_double=1.0)
    g.gauge.data_points.add(as_double=2.0)
    s = sm.metrics.add(name="s")
    s.sum.data_points.add(as_int=3)
    h = sm.metrics.add(name="h")
    h.histogram.data_points.add(count=1)
    e = sm.metrics.add(name="e")
    e.exponential_histogram.data_points.add(count=1)
    q = sm.metrics.add(name="q")
    q.summary.data_points.add(count=1)
    return req


def logs_request(n: int = 3) -> logs_service_pb2.ExportLogsServiceRequest:
    req = logs_service_pb2.ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for i in range(n):
        sl.log_records.add(severity_number=9, span_id=bytes([i + 1]) * 8)
    return req


def grpc_status_details(err: grpc.RpcError) -> status_pb2.Status | None:
    for md in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if md.key == GRPC_STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(md.value)
    return None


def retry_delay_s(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def http_post(
    url: str,
    body: bytes,
    content_type: str = PB,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    with FakeCollector() as c:
        yield c


@pytest.fixture
def channel(collector: FakeCollector) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(collector.grpc_endpoint, options=FAST_RECONNECT) as ch:
        yield ch


# ---------------------------------------------------------------------------------------------------
# acceptance and records
# ---------------------------------------------------------------------------------------------------


def test_endpoints_and_ports(collector: FakeCollector) -> None:
    assert collector.grpc_port > 0 and collector.http_port > 0
    assert collector.grpc_endpoint == f"127.0.0.1:{collector.grpc_port}"
    assert collector.http_endpoint == f"http://127.0.0.1:{collector.http_port}"
    assert collector.http_url("logs") == f"http://127.0.0.1:{collector.http_port}/v1/logs"
    assert collector.is_up


def test_grpc_accepts_all_signals_and_records_metadata(
    collector: FakeCollector, channel: grpc.Channel
) -> None:
    traces = trace_request(3)
    resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(
        traces, metadata=(("x-tenant", "acme"), ("authorization", "Bearer t")), timeout=5
    )
    assert not resp.HasField("partial_success")
    metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(metrics_request(), timeout=5)
    logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs_request(3), timeout=5)

    assert collector.wait_for_spans(3, timeout=2)
    [rec] = collector.attempts("traces")
    assert rec.protocol == "grpc" and rec.accepted and rec.fault is None
    assert rec.metadata["x-tenant"] == "acme"
    assert rec.metadata["authorization"] == "Bearer t"
    assert rec.raw == traces.SerializeToString()
    assert rec.message == traces
    assert rec.item_count == 3
    assert rec.received_at <= time.monotonic()
    assert collector.span_ids() == {s.span_id for s in traces.resource_spans[0].scope_spans[0].spans}
    assert collector.metric_point_count() == 6
    assert len(collector.log_records()) == 3
    assert len(collector.received()) == len(collector.requests) == 3
    assert [r.signal for r in collector.accepted()] == ["traces", "metrics", "logs"]

    collector.reset_records()
    assert collector.attempts() == [] and collector.spans() == []


def test_http_protobuf_and_gzip(collector: FakeCollector) -> None:
    req = trace_request(2)
    status, headers, body = http_post(collector.http_url("traces"), req.SerializeToString())
    assert status == 200 and headers["Content-Type"].startswith(PB)
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(body) == (
        trace_service_pb2.ExportTraceServiceResponse()
    )
    req2 = trace_request(2, seed=2)
    status, _, _ = http_post(
        collector.http_url("traces"),
        gzip.compress(req2.SerializeToString()),
        headers={"Content-Encoding": "gzip", "X-Tenant": "acme"},
    )
    assert status == 200
    recs = collector.accepted("traces")
    assert [r.protocol for r in recs] == ["http", "http"]
    assert recs[1].raw == req2.SerializeToString()  # inflated
    assert recs[1].metadata["content-encoding"] == "gzip"
    assert recs[1].metadata["x-tenant"] == "acme"
    assert recs[1].content_type == PB
    assert len(collector.span_ids()) == 4


# ---------------------------------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------------------------------


def test_grpc_fail_next_with_retry_info(collector: FakeCollector, channel: grpc.Channel) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    collector.fail_next(
        2, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="slow down", retry_after_s=2.5
    )
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(trace_request(), timeout=5)
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert err.details() == "slow down"  # type: ignore[attr-defined]
        status = grpc_status_details(err)
        assert status is not None
        assert status.code == code_pb2.RESOURCE_EXHAUSTED and status.message == "slow down"
        assert retry_delay_s(status) == pytest.approx(2.5)
    stub.Export(trace_request(), timeout=5)
    assert len(collector.attempts()) == 3
    assert [r.fault for r in collector.attempts()] == ["fail", "fail", None]
    assert len(collector.accepted()) == 1
    assert collector.pending_faults() == 0


def test_grpc_fail_default_code_without_retry_info_and_signal_filter(
    collector: FakeCollector, channel: grpc.Channel
) -> None:
    collector.fail_next(1, signal="logs")
    # traces are not affected by a logs-only fault
    trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs_request(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert info.value.details() == "injected"  # type: ignore[attr-defined]
    assert grpc_status_details(info.value) is None
    assert [(r.signal, r.accepted) for r in collector.attempts()] == [("traces", True), ("logs", False)]


def test_http_503_retry_after_and_status_body(collector: FakeCollector) -> None:
    collector.fail_next(1, retry_after_s=3)
    status, headers, body = http_post(collector.http_url("traces"), trace_request().SerializeToString())
    assert status == 503
    assert headers["Retry-After"] == "3"
    assert headers["Content-Type"].startswith(PB)
    st = status_pb2.Status.FromString(body)
    assert st.code == code_pb2.UNAVAILABLE and st.message == "injected"
    assert retry_delay_s(st) == pytest.approx(3.0)

    # JSON request -> JSON google.rpc.Status; 429 maps to RESOURCE_EXHAUSTED; Retry-After rounds up
    collector.fail_next(1, http_status=429, message="throttled", retry_after_s=1.2)
    body_json = message_to_otlp_json(trace_request())
    status, headers, body = http_post(collector.http_url("traces"), body_json, content_type=JS)
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert headers["Content-Type"].startswith(JS)
    obj = json.loads(body)
    assert obj["code"] == code_pb2.RESOURCE_EXHAUSTED and obj["message"] == "throttled"
    assert obj["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
    st = json_format.ParseDict(obj, status_pb2.Status())
    assert retry_delay_s(st) == pytest.approx(1.2)

    # no retry_after_s: no Retry-After header
    collector.fail_next(1, http_status=502)
    status, headers, _ = http_post(collector.http_url("traces"), trace_request().SerializeToString())
    assert status == 502 and "Retry-After" not in headers

    assert http_post(collector.http_url("traces"), trace_request().SerializeToString())[0] == 200


def test_fail_always_and_clear_faults(collector: FakeCollector, channel: grpc.Channel) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    collector.fail_always(grpc_code=grpc.StatusCode.UNAUTHENTICATED, message="no token")
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(trace_request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    status, _, body = http_post(collector.http_url("traces"), trace_request().SerializeToString())
    assert status == 401
    assert status_pb2.Status.FromString(body).code == code_pb2.UNAUTHENTICATED
    # the script is consulted before fail_always
    collector.partial_success_next(1, rejected=1)
    assert stub.Export(trace_request(), timeout=5).partial_success.rejected_spans == 1

    collector.clear_faults()
    stub.Export(trace_request(), timeout=5)
    assert http_post(collector.http_url("traces"), trace_request().SerializeToString())[0] == 200
    assert [r.accepted for r in collector.attempts()] == [False] * 4 + [True] * 3


def test_partial_success(collector: FakeCollector, channel: grpc.Channel) -> None:
    collector.partial_success_next(1, rejected=2, message="two bad spans")
    resp = trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(3), timeout=5)
    assert resp.partial_success.rejected_spans == 2
    assert resp.partial_success.error_message == "two bad spans"
    rec = collector.attempts()[0]
    assert rec.accepted and rec.fault == "partial" and rec.rejected == 2
    assert len(collector.spans()) == 3  # all spans of an accepted request

    collector.partial_success_next(1, rejected=1, signal="logs")
    status, headers, body = http_post(
        collector.http_url("logs"), message_to_otlp_json(logs_request(2)), content_type=JS
    )
    assert status == 200 and headers["Content-Type"].startswith(JS)
    assert json.loads(body) == {
        "partialSuccess": {"rejectedLogRecords": "1", "errorMessage": "rejected by fake"}
    }

    collector.partial_success_next(1, rejected=4, signal="metrics")
    status, _, body = http_post(collector.http_url("metrics"), metrics_request().SerializeToString())
    resp_m = metrics_service_pb2.ExportMetricsServiceResponse.FromString(body)
    assert resp_m.partial_success.rejected_data_points == 4


def test_delay(collector: FakeCollector, channel: grpc.Channel) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    collector.delay_next(1, 0.4)
    t0 = time.monotonic()
    stub.Export(trace_request(), timeout=5)
    assert time.monotonic() - t0 >= 0.39
    t0 = time.monotonic()
    stub.Export(trace_request(), timeout=5)
    assert time.monotonic() - t0 < 0.3
    assert [r.fault for r in collector.attempts()] == ["delay", None]
    assert all(r.accepted for r in collector.attempts())

    collector.set_delay(0.3)
    t0 = time.monotonic()
    assert http_post(collector.http_url("traces"), trace_request().SerializeToString())[0] == 200
    assert time.monotonic() - t0 >= 0.29
    # a client deadline shorter than the delay
    with pytest.raises(grpc.RpcError) as info:
        stub.Export(trace_request(), timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    collector.set_delay(0)
    t0 = time.monotonic()
    stub.Export(trace_request(), timeout=5)
    assert time.monotonic() - t0 < 0.3


def test_reset_grpc(collector: FakeCollector, channel: grpc.Channel) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    stub.Export(trace_request(), timeout=5)
    collector.reset_next(1)
    with pytest.raises(grpc.RpcError) as info:
        stub.Export(trace_request(seed=2), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    # the channel reconnects; a call racing with grpc noticing the dead connection may still fail
    for attempt in range(5):
        try:
            stub.Export(trace_request(seed=3), timeout=5)
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and attempt < 4  # type: ignore[attr-defined]
            time.sleep(0.05)
    assert [(r.fault, r.accepted) for r in collector.attempts()] == [
        (None, True),
        ("reset", False),
        (None, True),
    ]


def test_reset_http(collector: FakeCollector) -> None:
    collector.reset_next(1, signal="traces")
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        http_post(collector.http_url("traces"), trace_request().SerializeToString())
    assert http_post(collector.http_url("traces"), trace_request().SerializeToString())[0] == 200
    assert [r.fault for r in collector.attempts()] == ["reset", None]


# ---------------------------------------------------------------------------------------------------
# down / up
# ---------------------------------------------------------------------------------------------------


def test_go_down_come_up(collector: FakeCollector, channel: grpc.Channel) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    stub.Export(trace_request(), timeout=5)
    grpc_port, http_port = collector.grpc_port, collector.http_port
    idle = socket.create_connection(("127.0.0.1", http_port), timeout=2)  # an open connection

    collector.go_down()
    assert not collector.is_up
    # open connections are dropped
    try:
        assert idle.recv(10) == b""
    except ConnectionResetError:
        pass
    finally:
        idle.close()
    # new connections are refused, on both ports
    for port in (grpc_port, http_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(grpc.RpcError) as info:
        stub.Export(trace_request(), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    with pytest.raises(urllib.error.URLError) as http_info:
        http_post(collector.http_url("traces"), trace_request().SerializeToString())
    assert isinstance(http_info.value.reason, ConnectionRefusedError)
    collector.go_down()  # idempotent

    collector.come_up()
    assert collector.is_up
    assert (collector.grpc_port, collector.http_port) == (grpc_port, http_port)
    stub.Export(trace_request(seed=2), timeout=5, wait_for_ready=True)  # the old channel reconnects
    with grpc.insecure_channel(collector.grpc_endpoint) as fresh:
        trace_service_pb2_grpc.TraceServiceStub(fresh).Export(trace_request(seed=3), timeout=5)
    assert http_post(collector.http_url("traces"), trace_request(seed=4).SerializeToString())[0] == 200
    assert len(collector.accepted("traces")) == 4
    collector.come_up()  # idempotent


# ---------------------------------------------------------------------------------------------------
# message size
# ---------------------------------------------------------------------------------------------------


def test_max_message_bytes(collector: FakeCollector, channel: grpc.Channel) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    big = trace_request(5, name_size=100)
    size = big.ByteSize()
    collector.set_max_message_bytes(200)
    collector.fail_next(1)  # not consumed by an oversized request
    with pytest.raises(grpc.RpcError) as info:
        stub.Export(big, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    details = str(info.value.details())  # type: ignore[attr-defined]
    assert re.fullmatch(rf"grpc: received message larger than max \({size} vs\. 200\)", details)
    status, _, body = http_post(collector.http_url("traces"), big.SerializeToString())
    assert status == 413
    assert status_pb2.Status.FromString(body).code == code_pb2.RESOURCE_EXHAUSTED
    # gzip: the inflated size counts
    status, _, _ = http_post(
        collector.http_url("traces"),
        gzip.compress(big.SerializeToString()),
        headers={"Content-Encoding": "gzip"},
    )
    assert status == 413
    assert [r.fault for r in collector.attempts()] == ["too_large"] * 3
    assert collector.pending_faults() == 1

    small = trace_request(1)
    assert small.ByteSize() <= 200
    with pytest.raises(grpc.RpcError):  # the scripted failure
        stub.Export(small, timeout=5)
    stub.Export(small, timeout=5)
    collector.set_max_message_bytes(None)
    stub.Export(big, timeout=5)
    assert len(collector.accepted()) == 2


# ---------------------------------------------------------------------------------------------------
# OTLP/JSON
# ---------------------------------------------------------------------------------------------------

TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"
PARENT_ID = "eee19b7ec3c1b173"


def test_json_hex_ids_round_trip(collector: FakeCollector) -> None:
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "lib"},
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                                "parentSpanId": PARENT_ID,
                                "name": "op",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "status": {"code": 2, "message": "boom"},
                                "links": [{"traceId": TRACE_ID, "spanId": PARENT_ID}],
                                "aFieldFromTheFuture": {"x": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    raw = json.dumps(doc).encode()
    status, headers, body = http_post(
        collector.http_url("traces"),
        gzip.compress(raw),
        content_type=JS,
        headers={"Content-Encoding": "gzip"},
    )
    assert status == 200 and headers["Content-Type"].startswith(JS)
    assert json.loads(body) == {}
    [span] = collector.spans()
    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.span_id == bytes.fromhex(SPAN_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.links[0].trace_id == bytes.fromhex(TRACE_ID)
    assert span.links[0].span_id == bytes.fromhex(PARENT_ID)
    assert span.status.code == 2 and span.end_time_unix_nano == 1544712661000000000
    rec = collector.accepted()[0]
    assert rec.raw == raw and rec.content_type == JS
    # and back: ids are hex again
    again = json.loads(message_to_otlp_json(rec.message))
    out_span = again["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert (out_span["traceId"], out_span["spanId"], out_span["parentSpanId"]) == (
        TRACE_ID,
        SPAN_ID,
        PARENT_ID,
    )
    assert out_span["kind"] == 2


def test_json_ids_in_logs_and_exemplars(collector: FakeCollector) -> None:
    logs = {
        "resourceLogs": [
            {"scopeLogs": [{"logRecords": [{"traceId": TRACE_ID, "spanId": SPAN_ID, "severityNumber": 17}]}]}
        ]
    }
    assert http_post(collector.http_url("logs"), json.dumps(logs).encode(), content_type=JS)[0] == 200
    [lr] = collector.log_records()
    assert lr.trace_id == bytes.fromhex(TRACE_ID) and lr.span_id == bytes.fromhex(SPAN_ID)

    metrics = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "m",
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "asDouble": 1.5,
                                            "exemplars": [{"traceId": TRACE_ID, "spanId": SPAN_ID}],
                                        }
                                    ]
                                },
                            }
                        ]
                    }
                ]
            }
        ]
    }
    assert http_post(collector.http_url("metrics"), json.dumps(metrics).encode(), content_type=JS)[0] == 200
    [m] = collector.metrics()
    ex = m.gauge.data_points[0].exemplars[0]
    assert ex.trace_id == bytes.fromhex(TRACE_ID) and ex.span_id == bytes.fromhex(SPAN_ID)
    assert collector.metric_point_count() == 1
    parsed = otlp_json_to_message(json.dumps(metrics), metrics_service_pb2.ExportMetricsServiceRequest)
    assert parsed == collector.accepted("metrics")[0].message


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------


def test_bad_input(collector: FakeCollector, channel: grpc.Channel) -> None:
    url = collector.http_url("traces")
    assert http_post(url, b"x", content_type="text/plain")[0] == 415
    status, _, body = http_post(url, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert status_pb2.Status.FromString(body).code == code_pb2.INVALID_ARGUMENT
    assert http_post(url, b"{not json", content_type=JS)[0] == 400
    assert (
        http_post(
            url,
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}).encode(),
            content_type=JS,
        )[0]
        == 400
    )
    assert http_post(url, b"\xff\xff\xff")[0] == 400
    assert http_post(collector.http_endpoint + "/v1/nope", b"")[0] == 404

    export = channel.unary_unary(  # type: ignore[call-arg]
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    )
    with pytest.raises(grpc.RpcError) as info:
        export(b"\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    unknown = channel.unary_unary(  # type: ignore[call-arg]
        "/opentelemetry.proto.collector.trace.v1.TraceService/Nope"
    )
    with pytest.raises(grpc.RpcError) as info:
        unknown(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    invalid = [r for r in collector.attempts() if r.fault == "invalid"]
    assert len(invalid) == 4 and not any(r.accepted for r in invalid)


# ---------------------------------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------------------------------


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fake-collector-loop"]


def test_lifecycle_idempotent_stop_no_threads_and_fixed_ports() -> None:
    before = len(_loop_threads())
    c = FakeCollector()
    c.start()
    assert c.start() is c  # idempotent
    ports = (c.grpc_port, c.http_port)
    assert len(_loop_threads()) == before + 1
    c.stop()
    c.stop()
    assert len(_loop_threads()) == before
    with pytest.raises(RuntimeError):
        c.go_down()

    # a fixed port; start again on the same ports
    with FakeCollector(grpc_port=ports[0], http_port=ports[1]) as c2:
        assert (c2.grpc_port, c2.http_port) == ports
        with grpc.insecure_channel(c2.grpc_endpoint) as ch:
            trace_service_pb2_grpc.TraceServiceStub(ch).Export(trace_request(), timeout=5)
        assert c2.wait_for_spans(2, timeout=2)
    assert len(_loop_threads()) == before


def test_start_raises_when_port_busy() -> None:
    before = len(_loop_threads())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        c = FakeCollector(http_port=port)
        with pytest.raises(OSError, match=rf"OTLP/HTTP on 127\.0\.0\.1:{port}"):
            c.start()
        assert not c.running
    assert len(_loop_threads()) == before


def test_wait_for_times_out(collector: FakeCollector) -> None:
    t0 = time.monotonic()
    assert not collector.wait_for_spans(1, timeout=0.1)
    assert 0.1 <= time.monotonic() - t0 < 1
    assert collector.wait_for(lambda c: c.attempts() == [], timeout=0.1)


def test_argument_validation(collector: FakeCollector) -> None:
    with pytest.raises(ValueError):
        collector.fail_next(1, signal="profiles")
    with pytest.raises(ValueError):
        collector.delay_next(-1, 1.0)
    with pytest.raises(ValueError):
        collector.attempts("spans")
    collector.fail_next(0)
    assert collector.pending_faults() == 0


# ---------------------------------------------------------------------------------------------------
# black hole and open-call gauge (issue 16)
# ---------------------------------------------------------------------------------------------------


def test_black_hole_accepts_connections_and_never_answers(collector: FakeCollector) -> None:
    collector.black_hole()
    host, port = collector.grpc_endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:  # accepted
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # not even the server's HTTP/2 settings frame
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Export(trace_request(), timeout=1.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert collector.attempts() == []  # nothing reached the server
    collector.black_hole(False)
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(), timeout=5.0)
    assert len(collector.accepted("traces")) == 1


def test_open_data_calls_are_counted_probes_are_not(collector: FakeCollector) -> None:
    collector.set_delay(0.5)
    with grpc.insecure_channel(collector.grpc_endpoint) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        calls = [stub.Export.future(trace_request(seed=i), timeout=5.0) for i in range(3)]
        probe = stub.Export.future(trace_service_pb2.ExportTraceServiceRequest(), timeout=5.0)
        for call in [*calls, probe]:
            call.result()
    assert collector.max_concurrent_data_calls == 3
    collector.reset_concurrency()
    assert collector.max_concurrent_data_calls == 0
