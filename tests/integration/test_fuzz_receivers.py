"""Issue 9: hostile input against both receivers of a running sidecar process.

One sidecar (and one fake upstream) serves the whole module. Every case sends something
hostile — random or mutated protobuf, deep nesting, invalid UTF-8, unknown fields, OTLP/JSON with
wrong types and huge numbers, gzip bombs, wrong content types, unknown paths and methods, slow and
never-ending bodies, hundreds of connections at once — and checks the precise answer of the table in
DESIGN.md §2. After each case the sidecar must still serve a well-formed request from another client,
and everything it acknowledged (the well-formed requests and any fuzzed request it accepted) must reach
the fake upstream: nothing acknowledged is lost.

`FUZZ_EXAMPLES` sets hypothesis' examples per test (default small, so the module runs in well under a
minute; `make fuzz` runs many more).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import itertools
import json
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.core.signals import SPECS, Signal
from sidecar.receivers import codec
from tests.fakes.collector import FakeCollector, message_to_otlp_json
from tests.sidecar_process import SidecarPorts, SidecarProcess, base_config

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

MAX_BODY = 1024 * 1024  # receivers.otlp.protocols.http.max_request_body_size_mib: 1 (and grpc's)
READ_TIMEOUT = 1.0  # receivers.otlp.protocols.http.read_timeout
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
REQUEST_TYPES: dict[str, type[Message]] = {s.value: SPECS[s].request_type for s in Signal}
HTTP_PATHS = {s.value: SPECS[s].http_path for s in Signal}
GRPC_METHODS = {s.value: SPECS[s].grpc_method for s in Signal}

# ================================================================================ wire-format helpers


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint((field << 3) | 2) + varint(len(payload)) + payload


def deep_any_value(depth: int, kind: str) -> bytes:
    """An AnyValue nested `depth` times through kvlist_value (6) or array_value (5) or both."""
    value = varint(3 << 3) + varint(1)  # int_value: 1
    for level in range(depth):
        use = kind if kind != "mixed" else ("kvlist" if level % 2 else "array")
        if use == "kvlist":
            value = ld(6, ld(1, ld(1, b"k") + ld(2, value)))  # KeyValueList{values: [KeyValue{k, value}]}
        else:
            value = ld(5, ld(1, value))  # ArrayValue{values: [value]}
    return value


# ================================================================================ strategies: valid OTLP

# Mostly well-formed ids, sometimes empty, sometimes the wrong length (protobuf carries any bytes; OTLP/JSON
# refuses them).
ids16 = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), st.just(b""),
                  st.binary(min_size=1, max_size=20))
ids8 = st.one_of(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8), st.just(b""),
                 st.binary(min_size=1, max_size=12))
texts = st.text(max_size=16)
uint64 = st.integers(min_value=0, max_value=2**64 - 1)


def enum_values(top: int) -> st.SearchStrategy[Any]:
    """Enum values in and out of range (proto3 enums are open); Any for the stubs' enum ValueTypes."""
    return st.integers(0, top)


int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
STATUS_KEYS = ["http.response.status_code", "http.status_code", "rpc.response.status_code",
               "rpc.grpc.status_code", "db.response.status_code"]
INTERESTING_KEYS = [*STATUS_KEYS, "exception.type", "exception.message", "exception.stacktrace", "error.type",
                    "sidecar.error.category", "sidecar.error.retryable", "service.name", "db.system", ""]
keys = st.one_of(st.sampled_from(INTERESTING_KEYS), texts)

scalar_values = st.one_of(
    st.just(common_pb2.AnyValue()),
    texts.map(lambda v: common_pb2.AnyValue(string_value=v)),
    st.sampled_from(["OK", "0", "14", "UNAVAILABLE", "500", "TimeoutError", "ConnectionRefusedError",
                     "grpc.RpcError", "OutOfMemory"]).map(lambda v: common_pb2.AnyValue(string_value=v)),
    st.booleans().map(lambda v: common_pb2.AnyValue(bool_value=v)),
    int64.map(lambda v: common_pb2.AnyValue(int_value=v)),
    st.integers(min_value=0, max_value=700).map(lambda v: common_pb2.AnyValue(int_value=v)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: common_pb2.AnyValue(double_value=v)),
    st.binary(max_size=12).map(lambda v: common_pb2.AnyValue(bytes_value=v)),
)


def _array(values: list[common_pb2.AnyValue]) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=values))


def _kvlist(pairs: list[tuple[str, common_pb2.AnyValue]]) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
        values=[common_pb2.KeyValue(key=k, value=v) for k, v in pairs]))


any_values = st.recursive(scalar_values, lambda children: st.one_of(
    st.lists(children, max_size=3).map(_array),
    st.lists(st.tuples(keys, children), max_size=3).map(_kvlist)), max_leaves=6)
attributes = st.lists(st.tuples(keys, any_values).map(lambda kv: common_pb2.KeyValue(key=kv[0], value=kv[1])),
                      max_size=5)


@st.composite
def resources(draw: st.DrawFn) -> resource_pb2.Resource:
    return resource_pb2.Resource(attributes=draw(attributes), dropped_attributes_count=draw(st.integers(0, 3)))


@st.composite
def scopes(draw: st.DrawFn) -> common_pb2.InstrumentationScope:
    return common_pb2.InstrumentationScope(name=draw(texts), version=draw(texts), attributes=draw(attributes))


@st.composite
def spans(draw: st.DrawFn) -> trace_pb2.Span:
    span = trace_pb2.Span(trace_id=draw(ids16), span_id=draw(ids8), parent_span_id=draw(ids8), name=draw(texts),
                          kind=draw(enum_values(9)), start_time_unix_nano=draw(uint64),
                          end_time_unix_nano=draw(uint64), attributes=draw(attributes),
                          trace_state=draw(texts), flags=draw(st.integers(0, 2**32 - 1)))
    span.status.code = draw(enum_values(4))
    span.status.message = draw(texts)
    for _ in range(draw(st.integers(0, 2))):
        span.events.add(name=draw(st.sampled_from(["exception", "log", ""])), time_unix_nano=draw(uint64),
                        attributes=draw(attributes))
    for _ in range(draw(st.integers(0, 1))):
        span.links.add(trace_id=draw(ids16), span_id=draw(ids8), attributes=draw(attributes))
    return span


@st.composite
def log_records(draw: st.DrawFn) -> logs_pb2.LogRecord:
    return logs_pb2.LogRecord(time_unix_nano=draw(uint64), observed_time_unix_nano=draw(uint64),
                              severity_number=draw(enum_values(30)), severity_text=draw(texts),
                              body=draw(any_values), attributes=draw(attributes), trace_id=draw(ids16),
                              span_id=draw(ids8), flags=draw(st.integers(0, 2**32 - 1)))


@st.composite
def metrics(draw: st.DrawFn) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=draw(texts), unit=draw(texts), description=draw(texts))
    kind = draw(st.sampled_from(["gauge", "sum", "histogram", "summary"]))
    for _ in range(draw(st.integers(1, 3))):
        common = {"attributes": draw(attributes), "time_unix_nano": draw(uint64),
                  "start_time_unix_nano": draw(uint64)}
        if kind in ("gauge", "sum"):
            data = metric.gauge if kind == "gauge" else metric.sum
            point = data.data_points.add(**common)
            if draw(st.booleans()):
                point.as_int = draw(int64)
            else:
                point.as_double = draw(st.floats(allow_nan=True, allow_infinity=True))
            for _ in range(draw(st.integers(0, 1))):
                point.exemplars.add(trace_id=draw(ids16), span_id=draw(ids8), as_double=draw(st.floats()))
            if kind == "sum":
                metric.sum.aggregation_temporality = draw(enum_values(3))
                metric.sum.is_monotonic = draw(st.booleans())
        elif kind == "histogram":
            metric.histogram.data_points.add(
                **common, count=draw(uint64), bucket_counts=draw(st.lists(uint64, max_size=4)),
                explicit_bounds=draw(st.lists(st.floats(), max_size=4)))
        else:
            metric.summary.data_points.add(**common, count=draw(uint64), sum=draw(st.floats()))
    return metric


@st.composite
def trace_requests(draw: st.DrawFn) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add(resource=draw(resources()), schema_url=draw(texts))
        for _ in range(draw(st.integers(1, 2))):
            rs.scope_spans.add(scope=draw(scopes()), spans=draw(st.lists(spans(), min_size=1, max_size=3)))
    return request


@st.composite
def log_requests(draw: st.DrawFn) -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        rl = request.resource_logs.add(resource=draw(resources()))
        rl.scope_logs.add(scope=draw(scopes()), log_records=draw(st.lists(log_records(), min_size=1, max_size=3)))
    return request


@st.composite
def metric_requests(draw: st.DrawFn) -> metrics_service_pb2.ExportMetricsServiceRequest:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add(resource=draw(resources()))
    rm.scope_metrics.add(scope=draw(scopes()), metrics=draw(st.lists(metrics(), min_size=1, max_size=3)))
    return request


REQUESTS: dict[str, st.SearchStrategy[Any]] = {"traces": trace_requests(), "logs": log_requests(),
                                               "metrics": metric_requests()}


@st.composite
def signal_requests(draw: st.DrawFn) -> tuple[str, Message]:
    signal = draw(st.sampled_from(sorted(REQUESTS)))
    return signal, draw(REQUESTS[signal])


# ================================================================================ fingerprints


def fingerprints(signal: str, message: Message) -> set[bytes]:
    """What identifies each item across the sidecar (which may only append attributes to error items)."""
    out: set[bytes] = set()
    if signal == "traces":
        for rs in message.resource_spans:  # type: ignore[attr-defined]
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.add(b"|".join((span.trace_id, span.span_id, span.name.encode(),
                                       str(span.start_time_unix_nano).encode())))
    elif signal == "logs":
        for rl in message.resource_logs:  # type: ignore[attr-defined]
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    bare = logs_pb2.LogRecord()
                    bare.CopyFrom(record)
                    del bare.attributes[:]
                    bare.dropped_attributes_count = 0
                    out.add(bare.SerializeToString(deterministic=True))
    else:
        for rm in message.resource_metrics:  # type: ignore[attr-defined]
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.WhichOneof("data") is not None and len(getattr(metric, metric.WhichOneof("data"))
                                                                      .data_points):
                        out.add(metric.SerializeToString(deterministic=True))
    return out


# ================================================================================ the harness


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Harness:
    """Talks to the module's sidecar and keeps the books of what it acknowledged."""

    def __init__(self, sidecar: SidecarProcess, upstream: FakeCollector) -> None:
        self.sidecar = sidecar
        self.upstream = upstream
        self.http_port = sidecar.ports.http
        self.grpc_port = sidecar.ports.grpc
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.other_channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}",
                                                   options=[("grpc.use_local_subchannel_pool", 1)])
        self.expected: dict[str, set[bytes]] = {s: set() for s in REQUEST_TYPES}
        self.delivered: dict[str, set[bytes]] = {s: set() for s in REQUEST_TYPES}
        self.seen_records = 0
        self.counter = itertools.count(1)
        self.accepted_fuzz = 0

    # ---- clients ------------------------------------------------------------------------------------
    def http(self, path: str, body: bytes | None, content_type: str | None = PROTOBUF,
             headers: dict[str, str] | None = None, method: str = "POST", timeout: float = 15.0) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            all_headers = dict(headers or {})
            if content_type is not None:
                all_headers["Content-Type"] = content_type
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def grpc(self, path: str, body: bytes, compression: grpc.Compression | None = None,
             channel: grpc.Channel | None = None) -> tuple[grpc.StatusCode, str, bytes | None]:
        call = (channel or self.channel).unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            response = call(body, timeout=15, compression=compression)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, "", response

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def acknowledged(self, signal: str, message: Message, response: bytes, content_type: str = PROTOBUF) -> None:
        """The sidecar answered success for `message`: each of its items must reach upstream."""
        answer = SPECS[Signal(signal)].response_type()
        if content_type == JSON:
            json_format.Parse(response or b"{}", answer)
        else:
            answer.ParseFromString(response)
        partial = answer.partial_success  # type: ignore[attr-defined]
        rejected = partial.rejected_spans if signal == "traces" else (
            partial.rejected_log_records if signal == "logs" else partial.rejected_data_points)
        assert rejected == 0, f"an idle sidecar shed {rejected} items: {partial.error_message}"
        self.expected[signal] |= fingerprints(signal, message)

    def good_request(self) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int]:
        n = next(self.counter)
        request = trace_service_pb2.ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add(
            trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), name=f"good-{n}",
            start_time_unix_nano=n, end_time_unix_nano=n + 1)
        span.attributes.add(key="http.response.status_code").value.int_value = 200
        return request, n

    def serve_good(self, protocol: str) -> None:
        """A well-formed request from another client is served."""
        request, _ = self.good_request()
        body = request.SerializeToString()
        if protocol == "http":
            answer = self.http("/v1/traces", body)
            assert answer.status == 200, (answer.status, answer.body[:300])
            self.acknowledged("traces", request, answer.body)
        else:
            code, details, response = self.grpc(GRPC_METHODS["traces"], body, channel=self.other_channel)
            assert code is grpc.StatusCode.OK, (code, details)
            assert response is not None
            self.acknowledged("traces", request, response)

    def check(self, what: str = "") -> None:
        """Alive, serving both protocols, and every acknowledged item is (or soon is) upstream."""
        assert self.sidecar.proc is not None and self.sidecar.proc.poll() is None, \
            f"sidecar died after {what}:\n{self.sidecar.logs()[-4000:]}"
        self.serve_good("http")
        self.serve_good("grpc")
        self.wait_delivered(what)

    def wait_delivered(self, what: str = "", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            records = self.upstream.received()
            for record in records[self.seen_records:]:
                if record.accepted:
                    self.delivered[record.signal] |= fingerprints(record.signal, record.message)
            self.seen_records = len(records)
            missing = {s: len(self.expected[s] - self.delivered[s]) for s in self.expected}
            if not any(missing.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"acknowledged items never reached upstream after {what}: {missing}\n"
                                     f"{self.sidecar.logs()[-3000:]}")
            time.sleep(0.01)

    def close(self) -> None:
        self.channel.close()
        self.other_channel.close()


def rpc_status(body: bytes, content_type: str) -> status_pb2.Status:
    """Error bodies are a google.rpc.Status in the request's content type."""
    status = status_pb2.Status()
    if content_type == JSON:
        json_format.Parse(body, status)
    else:
        status.ParseFromString(body)
    return status


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with FakeCollector() as upstream:
        ports = SidecarPorts()
        workdir: Path = tmp_path_factory.mktemp("fuzz-sidecar")
        config = base_config(upstream.grpc_endpoint, ports)
        protocols = config["receivers"]["otlp"]["protocols"]
        protocols["http"]["max_request_body_size_mib"] = MAX_BODY / 1024 / 1024
        protocols["http"]["read_timeout"] = f"{READ_TIMEOUT}s"
        protocols["grpc"]["max_recv_msg_size_mib"] = MAX_BODY / 1024 / 1024
        config["exporters"]["otlp_grpc"]["sending_queue"]["queue_size"] = 5000
        sidecar = SidecarProcess(config, workdir, ports).start()
        harness = Harness(sidecar, upstream)
        try:
            yield harness
            harness.check("the whole module")
            logs = sidecar.logs()
            assert "Traceback" not in logs and "Error handling request" not in logs, logs[-6000:]
            assert sidecar.stop() == 0, sidecar.logs()[-3000:]
        finally:
            harness.close()
            sidecar.kill()


# ================================================================================ valid but unusual input


@FUZZ
@given(request=signal_requests(), protocol=st.sampled_from(["http-protobuf", "http-json", "grpc"]))
def test_valid_unusual_requests_are_accepted_and_delivered(harness: Harness, request: tuple[str, Message],
                                                           protocol: str) -> None:
    """Any valid OTLP message (odd attribute types, out-of-range enums, NaN, empty ids) is served; never a 500."""
    signal, message = request
    if protocol == "grpc":
        code, details, response = harness.grpc(GRPC_METHODS[signal], message.SerializeToString())
        assert code is grpc.StatusCode.OK, (code, details)
        assert response is not None
        harness.acknowledged(signal, message, response)
    elif protocol == "http-protobuf":
        answer = harness.http(HTTP_PATHS[signal], message.SerializeToString())
        assert answer.status == 200, (answer.status, answer.body[:300])
        harness.acknowledged(signal, message, answer.body)
    else:
        body = message_to_otlp_json(message)
        answer = harness.http(HTTP_PATHS[signal], body, JSON)
        ids_ok = _ids_well_formed(signal, message)
        assert answer.status == (200 if ids_ok else 400), (answer.status, answer.body[:300])
        assert answer.headers["content-type"].startswith(JSON)
        if answer.status == 200:
            harness.acknowledged(signal, codec.decode_json(Signal(signal), body), answer.body, JSON)
        else:
            assert rpc_status(answer.body, JSON).code == code_pb2.INVALID_ARGUMENT
    harness.check(f"a valid {signal} request over {protocol}")


def _ids_well_formed(signal: str, message: Message) -> bool:
    """OTLP/JSON ids must be empty or exactly 16/8 bytes; protobuf carries whatever bytes were set."""
    def ok(value: bytes, size: int) -> bool:
        return len(value) in (0, size)

    if signal == "traces":
        return all(ok(s.trace_id, 16) and ok(s.span_id, 8) and ok(s.parent_span_id, 8)
                   and all(ok(link.trace_id, 16) and ok(link.span_id, 8) for link in s.links)
                   for rs in message.resource_spans for ss in rs.scope_spans  # type: ignore[attr-defined]
                   for s in ss.spans)
    if signal == "logs":
        return all(ok(r.trace_id, 16) and ok(r.span_id, 8)
                   for rl in message.resource_logs for sl in rl.scope_logs  # type: ignore[attr-defined]
                   for r in sl.log_records)
    return all(ok(e.trace_id, 16) and ok(e.span_id, 8)
               for rm in message.resource_metrics for sm in rm.scope_metrics  # type: ignore[attr-defined]
               for m in sm.metrics for p in (m.gauge.data_points if m.HasField("gauge") else m.sum.data_points)
               for e in p.exemplars)


# ================================================================================ malformed protobuf


def _send_protobuf_both_ways(harness: Harness, signal: str, body: bytes) -> None:
    """The oracle is the protobuf runtime itself: what it cannot parse is 400/INVALID_ARGUMENT, the rest 200/OK."""
    try:
        local: Message | None = REQUEST_TYPES[signal].FromString(body)
    except Exception:
        local = None
    answer = harness.http(HTTP_PATHS[signal], body)
    code, details, response = harness.grpc(GRPC_METHODS[signal], body)
    if local is None:
        assert answer.status == 400, (answer.status, answer.body[:200])
        assert rpc_status(answer.body, PROTOBUF).code == code_pb2.INVALID_ARGUMENT
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    else:
        assert answer.status == 200, (answer.status, answer.body[:200])
        assert code is grpc.StatusCode.OK, (code, details)
        assert response is not None
        harness.acknowledged(signal, local, answer.body)
        harness.acknowledged(signal, local, response)
        harness.accepted_fuzz += 1


@FUZZ
@given(signal=st.sampled_from(sorted(REQUEST_TYPES)), body=st.binary(max_size=512))
def test_random_bytes(harness: Harness, signal: str, body: bytes) -> None:
    _send_protobuf_both_ways(harness, signal, body)
    harness.check("random bytes")


@st.composite
def mutated_protobuf(draw: st.DrawFn) -> tuple[str, bytes]:
    signal, message = draw(signal_requests())
    data = bytearray(message.SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "huge_length", "duplicate", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "huge_length":
            # A length-delimited field declaring far more bytes than follow (up to 2**64-1).
            field = draw(st.integers(1, 20))
            data[at:at] = varint((field << 3) | 2) + varint(draw(st.sampled_from(
                [2**31 - 1, 2**32, 2**63, 2**64 - 1, MAX_BODY * 4])))
        elif op == "duplicate":
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end]
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
    return signal, bytes(data)


@FUZZ
@given(case=mutated_protobuf())
def test_mutated_protobuf(harness: Harness, case: tuple[str, bytes]) -> None:
    signal, body = case
    _send_protobuf_both_ways(harness, signal, body)
    harness.check("mutated protobuf")


@pytest.mark.parametrize("kind", ["kvlist", "array", "mixed"])
@pytest.mark.parametrize("where", ["span_attribute", "resource_attribute", "log_body"])
def test_nesting_1000_deep_is_refused(harness: Harness, kind: str, where: str) -> None:
    deep = deep_any_value(1000, kind)
    if where == "log_body":
        signal = "logs"
        record = ld(1, (1).to_bytes(8, "little")) + ld(5, deep)  # body: AnyValue (field 5)
        body = ld(1, ld(2, ld(2, record)))  # resource_logs / scope_logs / log_records
    else:
        signal = "traces"
        attribute = ld(1, b"deep") + ld(2, deep)
        span = ld(1, b"\x01" * 16) + ld(2, b"\x02" * 8) + ld(5, b"deep")
        if where == "span_attribute":
            body = ld(1, ld(2, ld(2, span + ld(9, attribute))))
        else:
            body = ld(1, ld(1, ld(1, attribute)) + ld(2, ld(2, span)))
    answer = harness.http(HTTP_PATHS[signal], body)
    assert answer.status == 400, answer.body[:200]
    code, _details, _ = harness.grpc(GRPC_METHODS[signal], body)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    # The same depth in OTLP/JSON.
    opening = '{"kvlistValue": {"values": [{"key": "k", "value": ' if kind != "array" else '{"arrayValue": {"values": ['
    closing = "}]}}" if kind != "array" else "]}}"
    value = opening * 1000 + '{"intValue": "1"}' + closing * 1000  # json.dumps itself cannot nest this deep
    doc = '{"resourceSpans": [{"resource": {"attributes": [{"key": "deep", "value": ' + value + "}]}}]}"
    answer = harness.http("/v1/traces", doc.encode(), JSON)
    assert answer.status == 400, answer.body[:200]
    harness.check(f"nesting 1000 deep in {where}")


PLACEHOLDER = "\u2603PLACEHOLDER\u2603"  # 17 bytes in UTF-8


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    size = len(PLACEHOLDER.encode())
    raw = draw(st.one_of(
        st.binary(min_size=size, max_size=size),
        st.sampled_from([b"\xff" * size, b"\xc0\x80" + b"a" * (size - 2), b"\xed\xa0\x80" + b"b" * (size - 3),
                         b"a" * (size - 1) + b"\xe2"])))
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    assume(False)
    return raw


@FUZZ
@given(where=st.sampled_from(["span.name", "attribute.key", "string_value", "resource", "scope", "event",
                              "log.severity_text", "log.body", "metric.name"]),
       bad=invalid_utf8())
def test_invalid_utf8_in_string_fields_is_refused(harness: Harness, where: str, bad: bytes) -> None:
    if where.startswith("log"):
        signal = "logs"
        request: Message = logs_service_pb2.ExportLogsServiceRequest()
        record = request.resource_logs.add().scope_logs.add().log_records.add(  # type: ignore[attr-defined]
            time_unix_nano=1)
        if where == "log.body":
            record.body.string_value = PLACEHOLDER
        else:
            record.severity_text = PLACEHOLDER
    elif where == "metric.name":
        signal = "metrics"
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        metric = request.resource_metrics.add().scope_metrics.add().metrics.add(  # type: ignore[attr-defined]
            name=PLACEHOLDER)
        metric.gauge.data_points.add(as_int=1)
    else:
        signal = "traces"
        request = trace_service_pb2.ExportTraceServiceRequest()
        rs = request.resource_spans.add()  # type: ignore[attr-defined]
        ss = rs.scope_spans.add()
        span = ss.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="n")
        if where == "span.name":
            span.name = PLACEHOLDER
        elif where == "attribute.key":
            span.attributes.add(key=PLACEHOLDER).value.int_value = 1
        elif where == "string_value":
            span.attributes.add(key="k").value.string_value = PLACEHOLDER
        elif where == "resource":
            rs.resource.attributes.add(key="service.name").value.string_value = PLACEHOLDER
        elif where == "scope":
            ss.scope.name = PLACEHOLDER
        else:
            span.events.add(name=PLACEHOLDER)
    body = request.SerializeToString().replace(PLACEHOLDER.encode(), bad)
    answer = harness.http(HTTP_PATHS[signal], body)
    assert answer.status == 400, (answer.status, answer.body[:200])
    code, details, _ = harness.grpc(GRPC_METHODS[signal], body)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    harness.check(f"invalid UTF-8 in {where}")


def _unknown_field(number: int, wire: int, payload: bytes) -> bytes:
    tag = varint((number << 3) | wire)
    if wire == 0:
        return tag + varint(int.from_bytes(payload[:9] or b"\x00", "little") % 2**64)
    if wire == 1:
        return tag + payload[:8].ljust(8, b"\x00")
    if wire == 5:
        return tag + payload[:4].ljust(4, b"\x00")
    return tag + varint(len(payload)) + payload


unknown_fields = st.lists(st.builds(
    _unknown_field, st.integers(1000, 18999) | st.integers(20000, 2**29 - 1), st.sampled_from([0, 1, 2, 5]),
    st.binary(max_size=16)), max_size=3).map(b"".join)


@FUZZ
@given(span=spans(), extra=st.tuples(unknown_fields, unknown_fields, unknown_fields, unknown_fields,
                                     unknown_fields, unknown_fields))
def test_unknown_fields_are_accepted_and_delivered(harness: Harness, span: trace_pb2.Span,
                                                   extra: tuple[bytes, ...]) -> None:
    """Forward compatibility: unknown fields at every level are accepted (and kept), as protobuf requires."""
    attribute = common_pb2.KeyValue(key="a", value=common_pb2.AnyValue(int_value=7)).SerializeToString()
    span_bytes = span.SerializeToString() + ld(9, attribute + extra[5]) + extra[4]
    scope_spans = ld(1, b"\x0a\x01s" + extra[3]) + ld(2, span_bytes) + extra[2]
    resource_spans = ld(2, scope_spans) + extra[1]
    body = ld(1, resource_spans) + extra[0]
    _send_protobuf_both_ways(harness, "traces", body)
    doc = json.loads(message_to_otlp_json(trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
    doc["someFutureField"] = {"x": [1, 2, 3]}
    doc["resourceSpans"][0]["futureResourceField"] = "y"
    if _ids_well_formed("traces", trace_service_pb2.ExportTraceServiceRequest.FromString(body)):
        answer = harness.http("/v1/traces", json.dumps(doc).encode(), JSON)
        assert answer.status == 200, answer.body[:200]
        harness.acknowledged("traces", codec.decode_json(Signal.TRACES, json.dumps(doc).encode()), answer.body, JSON)
    harness.check("unknown fields")


# ================================================================================ OTLP/JSON

HUGE_NUMBERS = [2**64, 2**64 + 1, -(2**63) - 1, 10**30, 10**400, 1e308, -1e308, 1.5, -1, 0.5]
json_scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(HUGE_NUMBERS), st.integers(),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                         st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "0x10", "zz", "",
                                          "18446744073709551616", "5b8efff798038103d269b633813fc60c",
                                          "eee19b7ec3c1b174"]))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)), max_leaves=8)


def _json_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_paths(value, (*path, i))


@st.composite
def mutated_json(draw: st.DrawFn) -> tuple[str, bytes]:
    signal, message = draw(signal_requests())
    doc = json.loads(message_to_otlp_json(message))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _json_paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add_key"]))
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["traceId", "intValue", "timeUnixNano", "kind", "code", "asInt",
                                         "resourceSpans", "x"]))] = draw(json_values)
    return signal, json.dumps(doc).encode()


@FUZZ
@given(case=mutated_json())
def test_json_with_wrong_types_and_huge_numbers(harness: Harness, case: tuple[str, bytes]) -> None:
    """Wrong types and numbers out of range are 400 with a Status in JSON; whatever parses is delivered."""
    signal, body = case
    try:
        local: Message | None = codec.decode_json(Signal(signal), body)
    except codec.BadRequest:
        local = None
    answer = harness.http(HTTP_PATHS[signal], body, JSON)
    assert answer.headers["content-type"].startswith(JSON)
    if local is None:
        assert answer.status == 400, (answer.status, body[:300])
        assert rpc_status(answer.body, JSON).code == code_pb2.INVALID_ARGUMENT
    else:
        assert answer.status == 200, (answer.status, answer.body[:300], body[:300])
        harness.acknowledged(signal, local, answer.body, JSON)
    harness.check("mutated OTLP/JSON")


@FUZZ
@given(signal=st.sampled_from(sorted(REQUEST_TYPES)), doc=json_values,
       text=st.sampled_from(["", "{", "[]", "null", '{"resourceSpans": [', '{"a": 1}{', "\xff", '"x"', "1e999",
                             '{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": 1e999}]}]}]}',
                             '{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": "SPAN_KIND_NOPE"}]}]}]}',
                             '{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": 2e40}]}]}]}',
                             '{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"sum": {"dataPoints": [{"asInt": '
                             '"99999999999999999999"}]}}]}]}]}']))
def test_random_json_documents(harness: Harness, signal: str, doc: Any, text: str) -> None:
    for body in (json.dumps(doc).encode(), text.encode("utf-8", "surrogatepass"), b"\xff\xfe{}"):
        try:
            local: Message | None = codec.decode_json(Signal(signal), body)
        except codec.BadRequest:
            local = None
        answer = harness.http(HTTP_PATHS[signal], body, JSON)
        if local is None:
            assert answer.status == 400, (answer.status, body[:200])
        else:
            assert answer.status == 200, (answer.status, body[:200])
            harness.acknowledged(signal, local, answer.body, JSON)
    harness.check("random JSON")


# ================================================================================ gzip and sizes


def _bomb(inflated_mib: int, encoding: str) -> bytes:
    """A stream inflating to `inflated_mib` MiB of zeros: one full-flushed 1 MiB block repeated (see test_codec)."""
    if encoding == "zstd":
        zstd = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join(zstd.compress(b"\x00" * 1024 * 1024) for _ in range(inflated_mib)) + zstd.flush()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    head = compressor.compress(b"\x00" * 1024 * 1024) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(b"\x00" * 1024 * 1024) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * (inflated_mib - 1) + compressor.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_compression_bombs_and_bad_streams(harness: Harness, encoding: str) -> None:
    good, _ = harness.good_request()
    raw = good.SerializeToString()

    def compress(data: bytes) -> bytes:
        if encoding == "zstd":
            return zstandard.compress(data)
        return gzip.compress(data) if encoding == "gzip" else zlib.compress(data)

    bomb = _bomb(512, encoding)  # 512 MiB inflated
    assert len(bomb) < MAX_BODY  # small on the wire: only its inflated size is over the limit
    for content_type in (PROTOBUF, JSON):
        answer = harness.http("/v1/traces", bomb, content_type, {"Content-Encoding": encoding})
        assert answer.status == 413, answer.body[:200]
        assert rpc_status(answer.body, content_type).code == code_pb2.RESOURCE_EXHAUSTED
    # Just over the limit is refused, just under is accepted.
    padded = raw + ld(1000, b"\x00" * (MAX_BODY - len(raw) - 10))
    assert len(padded) <= MAX_BODY
    answer = harness.http("/v1/traces", compress(padded), PROTOBUF, {"Content-Encoding": encoding})
    assert answer.status == 200, answer.body[:200]
    harness.acknowledged("traces", good, answer.body)
    over = raw + ld(1000, b"\x00" * (MAX_BODY - len(raw) + 10))
    assert harness.http("/v1/traces", compress(over), PROTOBUF, {"Content-Encoding": encoding}).status == 413
    for bad in (compress(raw)[:-6], compress(raw)[: len(compress(raw)) // 2], b"not compressed", b"",
                compress(raw) + b"trailing garbage", bytes(reversed(compress(raw)))):
        answer = harness.http("/v1/traces", bad, PROTOBUF, {"Content-Encoding": encoding})
        assert answer.status == 400, (bad[:20], answer.status, answer.body[:200])
    answer = harness.http("/v1/traces", raw, PROTOBUF, {"Content-Encoding": "br"})
    assert answer.status == 400
    harness.check(f"{encoding} bombs")


def test_grpc_compressed_bomb_and_oversized_message(harness: Harness) -> None:
    code, details, _ = harness.grpc(GRPC_METHODS["traces"], b"\x00" * (64 * MAX_BODY),
                                    compression=grpc.Compression.Gzip)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    code, details, _ = harness.grpc(GRPC_METHODS["logs"], b"\x00" * (MAX_BODY + 1))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    harness.check("grpc bombs")


def test_size_limits_declared_and_chunked(harness: Harness) -> None:
    # A declared length over the limit is refused before the body is read.
    with socket.create_connection(("127.0.0.1", harness.http_port), timeout=10) as sock:
        sock.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
                     f"Content-Length: {10 * MAX_BODY}\r\n\r\n".encode())
        assert _read_status(sock) == 413
    # A chunked body that keeps coming past the limit is cut off at the limit.
    with socket.create_connection(("127.0.0.1", harness.http_port), timeout=10) as sock:
        sock.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"\x00" * 65536
        status = None
        with contextlib.suppress(OSError):
            for _ in range(2 * MAX_BODY // len(chunk) + 2):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status = _read_status(sock)
        assert status == 413
    harness.check("oversized bodies")


# ================================================================================ content types, paths, methods

content_types = st.one_of(
    st.sampled_from(["text/plain", "application/protobuf", "application/x-protobuf2", "application/grpc",
                     "application/octet-stream", "application/jsonx", "multipart/form-data; boundary=x",
                     "application/x-www-form-urlencoded", "*/*", "application", "/", ";", "application/json+x"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30))


@FUZZ
@given(content_type=content_types, signal=st.sampled_from(sorted(REQUEST_TYPES)))
def test_wrong_content_types_get_415(harness: Harness, content_type: str, signal: str) -> None:
    media = content_type.split(";", 1)[0].strip().lower()
    assume(media not in (PROTOBUF, JSON))
    good, _ = harness.good_request()
    answer = harness.http(HTTP_PATHS[signal], good.SerializeToString(), content_type)
    assert answer.status == 415, (content_type, answer.status, answer.body[:200])
    assert rpc_status(answer.body, PROTOBUF).message
    harness.check(f"content type {content_type!r}")


def test_missing_content_type_and_parameters(harness: Harness) -> None:
    good, _ = harness.good_request()
    assert harness.http("/v1/traces", good.SerializeToString(), None).status == 415
    answer = harness.http("/v1/traces", good.SerializeToString(), "Application/X-Protobuf; charset=binary")
    assert answer.status == 200, answer.body[:200]
    harness.acknowledged("traces", good, answer.body)
    harness.check("content type parameters")


paths = st.one_of(st.sampled_from(["/", "/v1", "/v1/", "/v1/trace", "/v1/traces/", "/v2/traces", "/v1/profiles",
                                   "//v1/traces", "/v1/traces/../metrics", "/metrics", "/health", "/%00"]),
                  st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                 exclude_characters="?#%"), max_size=20).map(lambda s: "/" + s))


@FUZZ
@given(path=paths, method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
def test_unknown_paths_and_methods(harness: Harness, path: str, method: str) -> None:
    answer = harness.http(path, b"", PROTOBUF, method=method)
    if path in HTTP_PATHS.values():
        assert answer.status == (200 if method == "POST" else 405), answer.status
    elif method == "POST":
        # An unknown path is 404; a path that normalises to an OTLP one ("/v1/traces/../logs") is served.
        assert answer.status in (200, 404), (path, answer.status)
    else:
        assert answer.status in (404, 405), (path, method, answer.status)
    if answer.status != 200:
        assert rpc_status(answer.body, PROTOBUF).message


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_known_paths_other_methods_get_405(harness: Harness, method: str) -> None:
    for path in HTTP_PATHS.values():
        answer = harness.http(path, None, PROTOBUF, method=method)
        assert answer.status == 405, (method, path, answer.status)
        assert answer.headers.get("allow") == "POST"


@FUZZ
@given(service=st.sampled_from(["opentelemetry.proto.collector.trace.v1.TraceService",
                                "opentelemetry.proto.collector.profiles.v1development.ProfilesService",
                                "grpc.health.v1.Health", "x"]) | st.text(max_size=20),
       method=st.sampled_from(["Export", "export", "Check", ""]) | st.text(max_size=10))
def test_unknown_grpc_methods_are_unimplemented(harness: Harness, service: str, method: str) -> None:
    path = f"/{service}/{method}"
    assume(path not in GRPC_METHODS.values() and "\n" not in path and "\r" not in path)
    code, details, _ = harness.grpc(path, b"")
    assert code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL), (path, code, details)
    harness.check(f"grpc {path!r}")


# ================================================================================ slow clients


def _read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed without a status line: {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


def _stall(port: int, kind: str, results: dict[str, tuple[int | str, float]]) -> None:
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT + 10) as sock:
            head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
            if kind == "partial_body":
                sock.sendall((head + "Content-Length: 1000\r\n\r\n").encode() + b"\x0a\x05abc")
            elif kind == "chunked_never_ends":
                sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"5\r\nabcde\r\n")
            elif kind == "headers_never_end":
                sock.sendall(head.encode())  # no blank line: the request never starts
            elif kind == "trickle":
                sock.sendall((head + "Content-Length: 1000\r\n\r\n").encode())
                sock.settimeout(0.1)
                while time.monotonic() - started < READ_TIMEOUT + 5:
                    try:
                        sock.recv(1, socket.MSG_PEEK)
                        break  # an answer (or the close that follows it) is there
                    except TimeoutError:
                        sock.sendall(b"\x00")
                sock.settimeout(READ_TIMEOUT + 10)
            if kind in ("headers_never_end", "idle"):
                first = sock.recv(4096)
                results[kind] = ("closed" if not first else repr(first[:40]), time.monotonic() - started)
                return
            results[kind] = (_read_status(sock), time.monotonic() - started)
    except Exception as exc:
        results[kind] = (repr(exc), time.monotonic() - started)


def test_slow_and_stalled_clients_are_cut_off_while_others_are_served(harness: Harness) -> None:
    results: dict[str, tuple[int | str, float]] = {}
    kinds = ["partial_body", "chunked_never_ends", "trickle", "headers_never_end", "idle"]
    threads = [threading.Thread(target=_stall, args=(harness.http_port, f"{kind}", results))
               for kind in kinds]
    many = [threading.Thread(target=_stall, args=(harness.http_port, "partial_body", {})) for _ in range(20)]
    for thread in threads + many:
        thread.start()
    time.sleep(0.2)
    # Meanwhile other clients are served promptly.
    for _ in range(3):
        started = time.monotonic()
        harness.serve_good("http")
        harness.serve_good("grpc")
        assert time.monotonic() - started < READ_TIMEOUT / 2
    for thread in threads + many:
        thread.join(READ_TIMEOUT + 15)
    for kind in kinds:
        status, elapsed = results[kind]
        # Without a complete request there is nothing to answer: the connection is closed.
        assert status == (408 if kind not in ("headers_never_end", "idle") else "closed"), (kind, status)
        assert READ_TIMEOUT * 0.9 <= elapsed <= READ_TIMEOUT + 3, (kind, elapsed)
    harness.check("slow clients")


# ================================================================================ many connections


async def _raw_requests(port: int, bodies: list[bytes]) -> list[int]:
    """Open one socket per body, all at once; only then send every request."""
    connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in bodies))
    for (_reader, writer), body in zip(connections, bodies, strict=True):
        writer.write((f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)

    async def status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        line = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
        return int(line.split(b" ", 2)[1])

    return await asyncio.gather(*(status(r, w) for r, w in connections))


def test_two_hundred_connections_at_once(harness: Harness) -> None:
    requests = [harness.good_request()[0] for _ in range(200)]
    bodies = [r.SerializeToString() for r in requests]

    statuses = asyncio.run(_raw_requests(harness.http_port, bodies))
    assert statuses == [200] * 200
    for request in requests:
        harness.expected["traces"] |= fingerprints("traces", request)
    # 200 idle sockets on each port (a gRPC one never sends its preface) while another client is served.
    idle = [socket.create_connection(("127.0.0.1", port)) for port in (harness.http_port, harness.grpc_port)
            for _ in range(200)]
    try:
        harness.check("400 idle connections")
        channels = [grpc.insecure_channel(f"127.0.0.1:{harness.grpc_port}",
                                          options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(50)]
        try:
            request, _ = harness.good_request()
            futures = [channel.unary_unary(GRPC_METHODS["traces"], request_serializer=None,
                                           response_deserializer=None).future(request.SerializeToString(),
                                                                              timeout=30)
                       for channel in channels]
            for future in futures:
                future.result()
            harness.expected["traces"] |= fingerprints("traces", request)
        finally:
            for channel in channels:
                channel.close()
    finally:
        for sock in idle:
            sock.close()
    harness.check("200 connections")


def test_abrupt_disconnects_mid_request(harness: Harness) -> None:
    """Clients that vanish mid-body or reset the connection leave no trace but a log line."""
    rng = random.Random(9)
    good, _ = harness.good_request()
    body = good.SerializeToString()
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", harness.http_port)) as sock:
            sock.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
                         f"Content-Length: {len(body) + 100}\r\n\r\n".encode() + body[: rng.randrange(len(body))])
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    for _ in range(10):  # HTTP/2 preface and half a frame to the gRPC port, then gone
        with socket.create_connection(("127.0.0.1", harness.grpc_port)) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(rng.randrange(256) for _ in range(20)))
    harness.check("abrupt disconnects")
