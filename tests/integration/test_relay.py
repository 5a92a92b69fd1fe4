"""Issue 3: the real SDK exporters send all three signals through the sidecar process, unchanged."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.fakes.collector import FakeCollector, otlp_json_to_message
from tests.integration.conftest import SidecarFactory
from tests.sdk_app import SdkApp

MATRIX = [("grpc", "otlp_grpc"), ("grpc", "otlp_http"), ("http", "otlp_grpc"), ("http", "otlp_http")]


@pytest.mark.parametrize(("client", "exporter"), MATRIX, ids=[f"{c}-in-{e}-out" for c, e in MATRIX])
def test_sdk_signals_arrive_intact(client: str, exporter: str, upstream: FakeCollector,
                                   sidecar_factory: SidecarFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    target = upstream.grpc_endpoint if exporter == "otlp_grpc" else upstream.http_endpoint
    sidecar = sidecar_factory(target, exporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       sidecar.grpc_endpoint if client == "grpc" else sidecar.http_endpoint)
    app = SdkApp(client)  # type: ignore[arg-type]
    sent = app.send_traces(60, error_every=10)
    app.record_metrics(30)
    app.emit_logs(20, error_every=5)
    assert app.flush()
    app.shutdown()

    assert upstream.wait_for(lambda f: len(f.span_ids()) >= 60 and len(f.log_records()) >= 20
                             and f.metric_point_count() >= 1, timeout=20), sidecar.logs()[-3000:]
    received = {int.from_bytes(s.span_id, "big"): s for s in upstream.spans()}
    assert set(sent) <= set(received)
    for request in upstream.accepted("traces"):
        for rs in request.message.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert resource["service.name"] == "checkout"
            assert all(ss.scope.name == "sdk_app" for ss in rs.scope_spans)
    for span_id in sent:
        span = received[span_id]
        attributes = {a.key: a for a in span.attributes}
        assert attributes["app.order_index"].value.int_value >= 0
        if span_id not in app.error_span_ids:
            assert not any(key.startswith("sidecar.error.") for key in attributes)
    logs = upstream.log_records()
    indexes = sorted(a.value.int_value for r in logs for a in r.attributes if a.key == "log.index")
    assert indexes == list(range(20))
    for record in logs:
        keys = {a.key: a.value for a in record.attributes}
        if record.severity_number >= 17:
            assert keys["sidecar.error.category"].string_value == "timeout"
            assert keys["error.type"].string_value
        else:
            assert not any(k.startswith("sidecar.error.") for k in keys)
    latest: dict[str, int] = {}  # cumulative temporality: each export repeats the running total
    for metric in upstream.metrics():
        if metric.name == "orders_total":
            for point in metric.sum.data_points:
                shop = point.attributes[0].value.string_value
                latest[shop] = max(latest.get(shop, 0), point.as_int)
    assert latest == {"shop-0": 10, "shop-1": 10, "shop-2": 10}
    # What went upstream keeps the client's wire format choice out of it: always protobuf.
    assert all(r.content_type in ("", "application/x-protobuf", None) or r.protocol == "grpc"
               for r in upstream.accepted())


JSON_REQUEST = {
    "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]},
        "scopeSpans": [{
            "scope": {"name": "manual", "version": "0.1"},
            "spans": [{
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                "parentSpanId": "eee19b7ec3c1b173", "name": "I'm a server span", "kind": 2,
                "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
                "attributes": [{"key": "my.int", "value": {"intValue": "9007199254740993"}},
                               {"key": "my.double", "value": {"doubleValue": 1.5}},
                               {"key": "my.list", "value": {"arrayValue": {"values": [{"boolValue": True}]}}}],
                "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175"}],
                "status": {"code": 1},
            }],
        }],
    }],
}


def _post(url: str, body: bytes, content_type: str, encoding: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_json_in_protobuf_out_equal_content(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    body = json.dumps(JSON_REQUEST).encode()
    status, response, headers = _post(f"{sidecar.http_endpoint}/v1/traces", body, "application/json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(response) == {}
    assert upstream.wait_for_spans(1, timeout=10)
    expected = otlp_json_to_message(body, trace_service_pb2.ExportTraceServiceRequest)
    assert upstream.accepted("traces")[0].message == expected


# compression setting -> Content-Encoding the Collector sees from a loopback sidecar (None: the default, auto)
COMPRESSIONS = [(None, None), ("auto", None), ("none", None), ("gzip", "gzip"), ("zstd", "zstd")]


@pytest.mark.parametrize(("compression", "encoding"), COMPRESSIONS)
def test_gzip_in_and_compression_out(upstream: FakeCollector, sidecar_factory: SidecarFactory,
                                     compression: str | None, encoding: str | None) -> None:
    overrides = {} if compression is None else {"compression": compression}
    sidecar = sidecar_factory(upstream.http_endpoint, "otlp_http", **overrides)
    body = gzip.compress(json.dumps(JSON_REQUEST).encode())
    status, _, _ = _post(f"{sidecar.http_endpoint}/v1/traces", body, "application/json", "gzip")
    assert status == 200
    assert upstream.wait_for_spans(1, timeout=10)
    request = upstream.accepted("traces")[0]
    assert request.metadata.get("content-encoding") == encoding
    assert request.message == otlp_json_to_message(json.dumps(JSON_REQUEST),
                                                    trace_service_pb2.ExportTraceServiceRequest)


def test_include_metadata_is_passed_upstream(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    def edit(config: dict[str, object]) -> None:
        config["receivers"]["otlp"]["include_metadata"] = ["x-scope-orgid"]  # type: ignore[index]

    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=edit)
    request = urllib.request.Request(f"{sidecar.http_endpoint}/v1/traces", data=json.dumps(JSON_REQUEST).encode(),
                                     headers={"Content-Type": "application/json", "X-Scope-OrgID": "tenant-7",
                                              "X-Other": "not-passed"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert upstream.wait_for_spans(1, timeout=10)
    metadata = upstream.accepted("traces")[0].metadata
    assert metadata.get("x-scope-orgid") == "tenant-7"
    assert "x-other" not in metadata


def test_bad_input_gets_precise_answers_and_others_are_served(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    def edit(config: dict[str, object]) -> None:
        protocols = config["receivers"]["otlp"]["protocols"]  # type: ignore[index]
        protocols["http"]["max_request_body_size_mib"] = 1
        protocols["grpc"]["max_recv_msg_size_mib"] = 1

    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=edit)
    url = f"{sidecar.http_endpoint}/v1/traces"
    good = trace_service_pb2.ExportTraceServiceRequest()
    good.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="ok")
    cases = [
        (b"\xff\xfe garbage", "application/x-protobuf", None, 400),
        (good.SerializeToString()[:-3], "application/x-protobuf", None, 400),
        (b'{"resourceSpans": [', "application/json", None, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "application/json", None, 400),
        (b'{"resourceSpans": "nope"}', "application/json", None, 400),
        (b"not gzip at all", "application/x-protobuf", "gzip", 400),
        (good.SerializeToString(), "text/plain", None, 415),
        (b"\x00" * (2 * 1024 * 1024), "application/x-protobuf", None, 413),
        (gzip.compress(b"\x0a\x00" * (2 * 1024 * 1024)), "application/x-protobuf", "gzip", 413),
    ]
    for body, content_type, encoding, expected in cases:
        status, response, _headers = _post(url, body, content_type, encoding)
        assert status == expected, (body[:40], content_type, status, response[:200])
        assert response, "error bodies carry a google.rpc.Status"
    status, _, _ = _post(f"{sidecar.http_endpoint}/v2/nothing", b"", "application/x-protobuf")
    assert status == 404
    request = urllib.request.Request(url, method="GET")
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=10)
    assert http_error.value.code == 405

    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                 request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        export(b"\xff\xff\xff garbage", timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        export(b"\x0a" + b"\x80" * 3, timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        export(b"\x00" * (2 * 1024 * 1024), timeout=5)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    unknown = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Nope",
                                  request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        unknown(b"", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    # The process keeps serving a well-formed request from another client.
    assert export(good.SerializeToString(), timeout=5) is not None
    channel.close()
    status, _, _ = _post(url, good.SerializeToString(), "application/x-protobuf")
    assert status == 200
    assert upstream.wait_for(lambda f: len(f.accepted("traces")) >= 2, timeout=10)


def test_fan_out_to_named_exporters_each_with_its_own_queue(upstream: FakeCollector,
                                                            sidecar_factory: SidecarFactory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """One pipeline, two exporters: a slow or down destination does not stall the other."""
    with FakeCollector() as second:
        def edit(config: dict[str, object]) -> None:
            exporters = config["exporters"]  # type: ignore[index]
            primary = exporters.pop("otlp_grpc")  # type: ignore[union-attr]
            exporters["otlp_grpc/primary"] = primary  # type: ignore[index]
            exporters["otlp_http/archive"] = {**primary, "endpoint": second.http_endpoint}  # type: ignore[index]
            for pipeline in config["service"]["pipelines"].values():  # type: ignore[index]
                pipeline["exporters"] = ["otlp_grpc/primary", "otlp_http/archive"]

        second.go_down()
        sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=edit)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
        app = SdkApp("grpc")
        sent = app.send_traces(40)
        assert app.flush()
        app.shutdown()
        # The archive is down, yet the primary gets everything without waiting for it.
        assert upstream.wait_for_spans(40, timeout=15)
        second.come_up()
        assert second.wait_for_spans(40, timeout=30)
        expected = {i.to_bytes(8, "big") for i in sent}
        assert expected <= upstream.span_ids() and expected <= second.span_ids()
        assert all(r.protocol == "http" for r in second.accepted("traces"))
