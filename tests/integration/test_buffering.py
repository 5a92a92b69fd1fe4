"""Buffering, degradation, backpressure and shutdown of the sidecar process (DESIGN.md §2, §5).

Every test runs the sidecar as a subprocess and talks to it as a client does: raw gRPC Export
calls (so each answer can be read: partial success, status code, RetryInfo), raw OTLP/HTTP
POSTs, or the real OpenTelemetry SDK.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.pipeline.degrade import trace_sampled
from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sdk_app import SdkApp
from tests.sidecar_process import SidecarProcess

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
STATUS_DETAILS = "grpc-status-details-bin"
DEGRADATION_REASONS = ("degradation_sampled", "degradation_essential")

_ids = itertools.count(1)


def new_id(size: int) -> bytes:
    """Unique, never all-zero ids (a per-process random prefix keeps runs apart)."""
    return _RUN_PREFIX[: size - 4] + next(_ids).to_bytes(4, "big")


_RUN_PREFIX = os.urandom(12)


# ---------------------------------------------------------------- building requests


def make_span(trace_id: bytes, *, error: bool, name: str = "op", parent: bytes = b"",
              padding: int = 0) -> trace_pb2.Span:
    span = trace_pb2.Span(trace_id=trace_id, span_id=new_id(8), parent_span_id=parent, name=name,
                          kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=1_700_000_000_000_000_000,
                          end_time_unix_nano=1_700_000_000_100_000_000)
    if error:
        span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        span.status.message = "inventory unavailable"
    if padding:
        attribute = span.attributes.add(key="app.padding")
        attribute.value.string_value = "x" * padding
    return span


def make_request(spans: Iterable[trace_pb2.Span]) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    service = resource_spans.resource.attributes.add(key="service.name")
    service.value.string_value = "buffering-test"
    resource_spans.scope_spans.add().spans.extend(spans)
    return request


@dataclass
class MixedRequest:
    """Two errored traces (an error span and its non-error child each) and standalone non-error spans."""

    request: trace_service_pb2.ExportTraceServiceRequest
    error_ids: set[bytes] = field(default_factory=set)
    error_sibling_ids: set[bytes] = field(default_factory=set)  # non-error spans in an errored trace
    plain_ids: set[bytes] = field(default_factory=set)  # non-error spans, each its own trace

    @property
    def all_ids(self) -> set[bytes]:
        return self.error_ids | self.error_sibling_ids | self.plain_ids


def unsampled_trace_id() -> bytes:
    """A trace id the reduce level's deterministic sampler (ratio 0.1) never keeps."""
    while trace_sampled(trace_id := new_id(16), 0.1):
        pass
    return trace_id


def mixed_request(errored_traces: int = 2, plain: int = 6, *, sampled_out: bool = False) -> MixedRequest:
    """`sampled_out`: the plain spans' traces are ones the reduce level sheds, so what it keeps is exact."""
    spans = []
    mixed = MixedRequest(trace_service_pb2.ExportTraceServiceRequest())
    for _ in range(errored_traces):
        trace_id = new_id(16)
        root = make_span(trace_id, error=True, name="GET /orders")
        child = make_span(trace_id, error=False, name="SELECT orders", parent=root.span_id)
        spans += [root, child]
        mixed.error_ids.add(root.span_id)
        mixed.error_sibling_ids.add(child.span_id)
    for _ in range(plain):
        span = make_span(unsampled_trace_id() if sampled_out else new_id(16), error=False, name="GET /health")
        spans.append(span)
        mixed.plain_ids.add(span.span_id)
    mixed.request = make_request(spans)
    return mixed


def span_ids(request: trace_service_pb2.ExportTraceServiceRequest) -> set[bytes]:
    return {s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}


# ---------------------------------------------------------------- talking to the sidecar


@dataclass
class Answer:
    code: grpc.StatusCode
    rejected: int = 0
    message: str = ""
    retry_delay: float | None = None  # RetryInfo in grpc-status-details-bin, seconds

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def retry_info_delay(trailing: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The RetryInfo delay carried by a google.rpc.Status in grpc-status-details-bin, if any."""
    for key, value in trailing or ():
        if key != STATUS_DETAILS:
            continue
        status = status_pb2.Status.FromString(value if isinstance(value, bytes) else value.encode())
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToNanoseconds() / 1e9
    return None


class GrpcClient:
    """Raw TraceService/Export calls, so every answer (partial success, status, trailers) is visible."""

    def __init__(self, sidecar: SidecarProcess) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}",
                                             options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self._export = self.channel.unary_unary(
            TRACE_EXPORT,
            request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)

    def export(self, request: trace_service_pb2.ExportTraceServiceRequest, timeout: float = 10.0) -> Answer:
        try:
            # wait_for_ready: /health (what SidecarProcess.start waits for) answers before the
            # receivers listen, so the first call may otherwise meet a refused connection.
            response = self._export(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            call: Any = exc
            return Answer(call.code(), message=call.details() or "",
                          retry_delay=retry_info_delay(call.trailing_metadata()))
        return Answer(grpc.StatusCode.OK, response.partial_success.rejected_spans,
                      response.partial_success.error_message)

    def close(self) -> None:
        self.channel.close()


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def post_traces(sidecar: SidecarProcess, request: trace_service_pb2.ExportTraceServiceRequest) -> HttpAnswer:
    http_request = urllib.request.Request(
        f"{sidecar.http_endpoint}/v1/traces", data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"}, method="POST")
    try:
        with urllib.request.urlopen(http_request, timeout=10) as response:
            return HttpAnswer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(exc.code, dict(exc.headers), exc.read())


def rpc_status_code(body: bytes) -> int:
    return status_pb2.Status.FromString(body).code


def degradation_drops(sidecar: SidecarProcess) -> float:
    return sum(sidecar.metric_value("sidecar_dropped_items_total", signal="traces", reason=reason)
               for reason in DEGRADATION_REASONS)


def restart(sidecar: SidecarProcess) -> SidecarProcess:
    """A new process on the same config file, workdir (storage) and ports; the old one must be gone."""
    assert sidecar.proc is not None and sidecar.proc.poll() is not None, "stop or kill the sidecar first"
    return sidecar.start()


def fast_shutdown(seconds: str) -> Any:
    def edit(config: dict[str, Any]) -> None:
        config["service"]["shutdown_timeout"] = seconds

    return edit


# ---------------------------------------------------------------- 1. crash


def test_sigkill_then_restart_delivers_everything_acknowledged(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    """Acknowledged means committed to disk: a SIGKILL and a restart on the same storage lose nothing."""
    upstream.go_down()
    sidecar = sidecar_factory(upstream.grpc_endpoint, storage=True)
    client = GrpcClient(sidecar)
    acknowledged: set[bytes] = set()
    try:
        for i in range(30):
            request = make_request(make_span(new_id(16), error=i % 5 == 0, name=f"op-{i}-{j}")
                                   for j in range(10))
            answer = client.export(request)
            assert answer.ok and answer.rejected == 0, answer
            acknowledged |= span_ids(request)
    finally:
        client.close()
    assert len(acknowledged) == 300

    sidecar.kill()
    assert sidecar.proc is not None and sidecar.proc.returncode == -9
    restart(sidecar)
    upstream.come_up()
    assert upstream.wait_for(lambda f: acknowledged <= f.span_ids(), timeout=30), (
        f"{len(acknowledged - upstream.span_ids())} acknowledged spans lost\n{sidecar.logs()[-3000:]}")
    assert any(e.get("msg") == "replaying queued requests from disk" for e in sidecar.log_events())



# ---------------------------------------------------------------- 2. overload


# sizer requests: 20 requests of 10 spans. sizer items: 100 spans, requests of 31 spans whose plain
# spans the reduce level always sheds: 0, 31, 62, 93 (reduce: 4 kept), 97 (essential: 2 kept), 99
# (essential: 2 kept do not fit). So one entry is shed and then refused as a whole.
OVERLOAD = {"requests": ({"queue_size": 20, "sizer": "requests"}, 6),
            "items": ({"queue_size": 100, "sizer": "items"}, 27)}


@pytest.mark.parametrize("sizer", list(OVERLOAD))
def test_overload_sheds_non_errors_first_reports_it_and_pushes_back_retryably(
        sizer: str, upstream: FakeCollector, sidecar_factory: SidecarFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream down, a small memory queue, one fast client sending 2 errored traces (an error span and
    its non-error child) + plain spans per request. The ladder walks up: reduce at 80%, essential at
    95%, backpressure when full."""
    queue, plain = OVERLOAD[sizer]
    upstream.go_down()
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=fast_shutdown("1s"),
                              sending_queue={**queue, "num_consumers": 2})
    client = GrpcClient(sidecar)
    accepted: list[tuple[MixedRequest, Answer]] = []
    refused: list[tuple[MixedRequest, Answer]] = []
    try:
        for _ in range(60):
            mixed = mixed_request(plain=plain, sampled_out=sizer == "items")
            answer = client.export(mixed.request)
            (accepted if answer.ok else refused).append((mixed, answer))
            if len(refused) >= 3:
                break
        # Full and nothing left to shed: a status clients retry, with a hint; never RESOURCE_EXHAUSTED.
        assert refused, "the queue never filled"
        for _, answer in refused:
            assert answer.code is grpc.StatusCode.UNAVAILABLE, answer
            assert answer.retry_delay is not None and answer.retry_delay > 0, answer
        http = post_traces(sidecar, mixed_request().request)
        assert http.status == 503, http
        assert int(http.headers["Retry-After"]) >= 1
        assert rpc_status_code(http.body) == code_pb2.UNAVAILABLE
    finally:
        client.close()

    shed_answers = [answer for _, answer in accepted if answer.rejected]
    assert shed_answers, "nothing was shed before the queue filled"
    if sizer == "requests":  # one request per step: every level is met on the way up
        assert any("level 2" in a.message for a in shed_answers), [a.message for a in shed_answers]
        assert any("level 3" in a.message for a in shed_answers), [a.message for a in shed_answers]
    # Shedding is reported honestly: what the answers say was shed is what the counters count.
    reported = sum(answer.rejected for _, answer in accepted)
    assert reported == degradation_drops(sidecar), sidecar.metrics_text()
    pushbacks = [e for e in sidecar.log_events() if e.get("event") == "backpressure"]
    assert pushbacks and all(e["reason"] == "queue_full" for e in pushbacks), pushbacks
    refused_before_sdk = sidecar.metric_value("sidecar_receiver_refused_spans_total")

    # The real SDK against the full queue: refused (retryably) now, its own retries deliver later.
    # Its spans are all error spans so that a retry landing while the queue drains through the
    # reduce/essential levels cannot be shed: this checks the SDK's retry, not the sampling.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sidecar.grpc_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")  # the SDK's total retry time (seconds)
    app = SdkApp("grpc")
    sdk_spans = set(app.send_traces(20, error_every=1))
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(app.tracer_provider.force_flush(45_000)))
    flusher.start()
    try:
        deadline = time.monotonic() + 15
        while sidecar.metric_value("sidecar_receiver_refused_spans_total") < refused_before_sdk + 20:
            assert time.monotonic() < deadline, "the SDK's export was never refused"
            time.sleep(0.05)
        upstream.come_up()
        flusher.join(60)
        assert flushed == [True], "the SDK gave up"
    finally:
        flusher.join(60)
        app.shutdown()

    expected = set(sdk_spans_as_bytes(sdk_spans))
    for mixed, _ in accepted:
        expected |= mixed.error_ids
    assert upstream.wait_for(lambda f: expected <= f.span_ids(), timeout=30), (
        f"{len(expected - upstream.span_ids())} spans missing\n{sidecar.logs()[-3000:]}")
    assert upstream.wait_for(lambda f: sidecar.metric_value("sidecar_exporter_queue_size") == 0, timeout=15)

    arrived = upstream.span_ids()
    for mixed, answer in accepted:
        got = mixed.all_ids & arrived
        # Error spans are never shed; exactly the reported number of the others is missing.
        assert mixed.error_ids <= got
        assert len(mixed.all_ids) - len(got) == answer.rejected, answer
        if "level 2" in answer.message:  # reduce keeps the whole errored trace, samples the rest
            assert mixed.error_sibling_ids <= got
        if "level 3" in answer.message:  # essential keeps error spans only
            assert got == mixed.error_ids
    for mixed, _ in refused:  # refused means refused as a whole: the client retries all of it
        assert not mixed.all_ids & arrived
    # Nothing was counted as shed after the SDK phase either (its spans were all errors).
    assert reported == degradation_drops(sidecar)


def sdk_spans_as_bytes(ids: Iterable[int]) -> Iterable[bytes]:
    return (span_id.to_bytes(8, "big") for span_id in ids)



# ---------------------------------------------------------------- 3. memory limit

# How far above `service.memory_limit_mib` the sidecar's RSS may go while clients keep pushing
# (the headroom operators should leave above the limit). Where it comes from:
# - the exporter reads its RSS at most every 0.25 s, so up to 0.25 s of ingest is accepted above the
#   limit before the ladder sees it: here one client at ~100-150 requests/s of ~0.5 MiB, <= ~20 MiB;
# - the requests being handled at that moment: received bytes + decoded message + enriched
#   re-serialised copy, ~3-4x each request's size;
# - allocator slack (runtime.py sets MALLOC_TRIM_THRESHOLD_=256 MiB, so glibc keeps freed heap).
# Measured peaks: 11-21 MiB over the limit. It scales with the ingest rate, not with time: once
# clients are pushed back, RSS stays flat (refused requests are freed at once, see otlp_grpc.py).
MEMORY_OVERSHOOT_MIB = 40
MEMORY_HEADROOM_MIB = 60  # the limit is the measured baseline RSS + this
LARGE_REQUEST_SPANS = 32
LARGE_SPAN_PADDING = 16 * 1024  # -> ~0.5 MiB requests


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except (OSError, AssertionError):
                return
            self._stop_event.wait(0.01)

    def stop(self) -> float:
        self._stop_event.set()
        self.join(5)
        return self.peak


def large_error_request() -> trace_service_pb2.ExportTraceServiceRequest:
    """Error spans only: the essential level (memory above 80% of the limit) keeps them all."""
    return make_request(make_span(new_id(16), error=True, name=f"op-{i}", padding=LARGE_SPAN_PADDING)
                        for i in range(LARGE_REQUEST_SPANS))


def test_memory_limit_bounds_rss_and_pushes_back(upstream: FakeCollector,
                                                 sidecar_factory: SidecarFactory) -> None:
    # Baseline: the same sidecar after it has handled (and delivered) a few large requests.
    probe = sidecar_factory(upstream.grpc_endpoint)
    client = GrpcClient(probe)
    try:
        for _ in range(20):
            assert client.export(large_error_request()).ok
    finally:
        client.close()
    assert upstream.wait_for_spans(20 * LARGE_REQUEST_SPANS, timeout=20)
    assert probe.proc is not None
    baseline = rss_mib(probe.proc.pid)
    assert probe.stop() == 0
    limit = int(baseline + MEMORY_HEADROOM_MIB)

    def edit(config: dict[str, Any]) -> None:
        config["service"]["memory_limit_mib"] = limit
        config["service"]["shutdown_timeout"] = "1s"

    upstream.go_down()
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=edit,
                              sending_queue={"queue_size": 100_000})  # memory binds, not the queue
    assert sidecar.proc is not None
    sampler = RssSampler(sidecar.proc.pid)
    sampler.start()
    client = GrpcClient(sidecar)
    accepted = refused = 0
    first_refusal: float | None = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = client.export(large_error_request())
            if answer.ok:
                assert answer.rejected == 0, answer  # error spans are never shed
                accepted += 1
            else:
                assert answer.code is grpc.StatusCode.UNAVAILABLE, answer
                assert answer.retry_delay is not None and answer.retry_delay > 0, answer
                refused += 1
                if first_refusal is None:
                    first_refusal = time.monotonic()
            if first_refusal is not None and time.monotonic() - first_refusal > 3:
                break  # keep pushing a while past the first refusal: the process must not grow
        http = post_traces(sidecar, large_error_request())
    finally:
        client.close()
        peak = sampler.stop()
    figures = (f"baseline {baseline:.1f} MiB, limit {limit} MiB, peak {peak:.1f} MiB, "
               f"accepted {accepted}, refused {refused}")
    assert refused, f"never pushed back: {figures}"
    assert http.status == 503, http
    assert int(http.headers["Retry-After"]) >= 1
    assert peak <= limit + MEMORY_OVERSHOOT_MIB, figures
    pushbacks = [e for e in sidecar.log_events() if e.get("event") == "backpressure"]
    assert pushbacks and pushbacks[0]["reason"] == "memory_limit", pushbacks



# ---------------------------------------------------------------- 4. synchronous mode


@pytest.mark.parametrize("exporter", ["otlp_grpc", "otlp_http"])
def test_synchronous_mode_maps_upstream_answers_to_the_client(
        exporter: str, upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    target = upstream.grpc_endpoint if exporter == "otlp_grpc" else upstream.http_endpoint
    sidecar = sidecar_factory(target, exporter, sending_queue={"enabled": False},
                              retry_on_failure={"enabled": False})
    client = GrpcClient(sidecar)
    try:
        # Success is only answered once upstream has it.
        request = mixed_request().request
        assert client.export(request).ok
        assert span_ids(request) <= upstream.span_ids()

        # A permanent upstream answer is a permanent answer to the client: no retry, no pretence.
        upstream.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad span")
        answer = client.export(mixed_request().request)
        assert answer.code is grpc.StatusCode.INVALID_ARGUMENT, answer
        upstream.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad span")
        http = post_traces(sidecar, mixed_request().request)
        assert http.status == 400, http
        assert rpc_status_code(http.body) == code_pb2.INVALID_ARGUMENT

        # A retryable one is retryable for the client, with a hint.
        upstream.fail_next(1, grpc_code=grpc.StatusCode.UNAVAILABLE, message="collector restarting")
        answer = client.export(mixed_request().request)
        assert answer.code is grpc.StatusCode.UNAVAILABLE, answer
        assert answer.retry_delay is not None and answer.retry_delay > 0, answer
        upstream.fail_next(1, grpc_code=grpc.StatusCode.UNAVAILABLE, message="collector restarting")
        http = post_traces(sidecar, mixed_request().request)
        assert http.status == 503, http
        assert int(http.headers["Retry-After"]) >= 1
        assert rpc_status_code(http.body) == code_pb2.UNAVAILABLE

        # And the sidecar is fine afterwards.
        assert upstream.pending_faults() == 0
        request = mixed_request().request
        assert client.export(request).ok
        assert span_ids(request) <= upstream.span_ids()
    finally:
        client.close()



# ---------------------------------------------------------------- 5. graceful shutdown


def queue_traffic(sidecar: SidecarProcess, requests: int = 10) -> set[bytes]:
    """Send `requests` acknowledged requests of 10 spans; the ids that were acknowledged."""
    client = GrpcClient(sidecar)
    ids: set[bytes] = set()
    try:
        for i in range(requests):
            request = make_request(make_span(new_id(16), error=j == 0, name=f"op-{i}-{j}") for j in range(10))
            answer = client.export(request)
            assert answer.ok and answer.rejected == 0, answer
            ids |= span_ids(request)
    finally:
        client.close()
    return ids


SHUTDOWN_TIMEOUT = 2.0
SHUTDOWN_SLACK = 15.0  # process teardown on a loaded CI machine; a bound for the wait, not a timing assertion


def test_sigterm_with_memory_queue_counts_what_is_left_as_dropped(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    upstream.go_down()
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=fast_shutdown(f"{SHUTDOWN_TIMEOUT:g}s"))
    queued = queue_traffic(sidecar)
    assert sidecar.metric_value("sidecar_exporter_queue_size") == 10

    assert sidecar.stop(timeout=SHUTDOWN_TIMEOUT + SHUTDOWN_SLACK) == 0
    drops = [e for e in sidecar.log_events() if e.get("event") == "drop" and e.get("reason") == "shutdown"]
    assert drops, sidecar.logs()[-3000:]
    assert all(e["signal"] == "traces" for e in drops)
    assert sum(e["items_since_last_log"] for e in drops) == len(queued)  # all of it, in the log
    assert not upstream.span_ids() & queued


def test_sigterm_with_disk_queue_persists_and_the_next_start_delivers(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    upstream.go_down()
    sidecar = sidecar_factory(upstream.grpc_endpoint, storage=True,
                              config_edit=fast_shutdown(f"{SHUTDOWN_TIMEOUT:g}s"))
    queued = queue_traffic(sidecar)

    assert sidecar.stop(timeout=SHUTDOWN_TIMEOUT + SHUTDOWN_SLACK) == 0
    events = sidecar.log_events()
    assert not [e for e in events if e.get("event") == "drop"], "the disk queue keeps what is left"
    assert any(e.get("msg", "").startswith("shutdown: requests left in the disk queue") for e in events)

    restart(sidecar)
    upstream.come_up()
    assert upstream.wait_for(lambda f: queued <= f.span_ids(), timeout=30), (
        f"{len(queued - upstream.span_ids())} spans lost\n{sidecar.logs()[-3000:]}")
