"""Issue 7 (admin): the admin gRPC API and the `status` / `deadletters` / `breaker` / `drain` commands
against a sidecar process whose upstream fails on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.admin.v1 import admin_pb2 as pb
from sidecar.admin.v1 import admin_pb2_grpc as pb_grpc
from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.polling import wait_until
from tests.sidecar_process import ROOT, SidecarProcess, free_port

EXPORTER = "otlp_grpc"
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def with_admin(port: int, token: str | None = None, listed: bool = True) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["extensions"]["admin"] = {"endpoint": f"127.0.0.1:{port}", **({"token": token} if token else {})}
        if listed:
            config["service"]["extensions"].append("admin")
    return edit


def traces(*spans: tuple[str, str, bool]) -> trace_service_pb2.ExportTraceServiceRequest:
    """(service.name, span name, error) per span; one resource per service."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resources: dict[str, Any] = {}
    for n, (service, name, error) in enumerate(spans):
        if service not in resources:
            rs = request.resource_spans.add()
            rs.resource.attributes.add(key="service.name").value.string_value = service
            scope = rs.scope_spans.add()
            scope.scope.name = "test"
            resources[service] = scope
        span = resources[service].spans.add(name=name, trace_id=os.urandom(16), span_id=os.urandom(8),
                                             kind=trace_pb2.Span.SPAN_KIND_SERVER,
                                             start_time_unix_nano=1_000 + n, end_time_unix_nano=2_000 + n)
        if error:
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    return request


def logs(count: int, marker: str) -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "billing"
    scope = rl.scope_logs.add()
    for i in range(count):
        record = scope.log_records.add(severity_number=9)
        record.body.string_value = f"{marker} {i}"
        record.attributes.add(key="marker").value.string_value = marker
    return request


def export(sidecar: SidecarProcess, method: str, request: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}") as channel:
        call = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=lambda b: b)
        call(request, timeout=10)


def admin_stub(port: int) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.AdminStub(channel)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("SIDECAR_ADMIN_TOKEN", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def test_status_dead_letters_replay_reset_and_drain(upstream: FakeCollector,
                                                     sidecar_factory: SidecarFactory) -> None:
    port = free_port()
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=with_admin(port),
                              circuit_breaker={"recovery_timeout": "60s", "max_recovery_timeout": "60s"})
    channel, admin = admin_stub(port)
    endpoint = f"127.0.0.1:{port}"
    with channel:
        # Error spans from two services and span names, delivered normally.
        export(sidecar, TRACES, traces(("checkout", "POST /pay", True), ("checkout", "POST /pay", True),
                                       ("checkout", "GET /cart", False), ("inventory", "reserve", True)))
        export(sidecar, TRACES, traces(("checkout", "POST /pay", True), ("inventory", "reserve", True)))
        assert upstream.wait_for_spans(6, timeout=10)
        classes = {}
        for span in upstream.spans():
            attributes = {a.key: a.value.string_value for a in span.attributes}
            if "sidecar.error.category" in attributes:
                classes[span.name] = (attributes["sidecar.error.category"], attributes["error.type"])

        # A permanent upstream answer: one dead letter.
        upstream.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message="bad data", signal="logs")
        export(sidecar, LOGS, logs(4, "dead-letter-me"))
        listed = wait_until(lambda: admin.ListDeadLetters(pb.ListDeadLettersRequest()).dead_letters, 15,
                            "the dead letter")
        assert len(listed) == 1
        dead = listed[0]
        assert (dead.exporter, dead.signal, dead.items, dead.category, dead.recoverability, dead.error_type) == (
            EXPORTER, "logs", 4, "serialization", "permanent", "INVALID_ARGUMENT")
        assert dead.bytes > 0 and abs(dead.dead_at - time.time()) < 60

        # An outage: the breaker opens, the queue holds what arrives.
        upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
        for i in range(3):
            export(sidecar, TRACES, traces(("checkout", f"held {i}", False)))

        def opened() -> pb.GetStatusResponse | None:
            status = admin.GetStatus(pb.GetStatusRequest())
            ep = status.exporters[0].endpoints[0]
            return status if ep.breaker_state == "open" and status.exporters[0].queue.requests == 3 else None

        status = wait_until(opened, 20, "the breaker to open with 3 requests queued")
        exporter = status.exporters[0]
        assert exporter.name == EXPORTER
        assert (exporter.queue.enabled, exporter.queue.sizer, exporter.queue.size, exporter.queue.capacity) == (
            True, "requests", 3, 1000)
        assert exporter.queue.bytes > 0
        assert exporter.dead_letters.count == 1
        ep = exporter.endpoints[0]
        assert ep.endpoint == upstream.grpc_endpoint.removeprefix("http://")
        assert ep.breaker_trips >= 1 and ep.breaker_seconds_in_state >= 0
        assert ep.concurrency_limit >= 1 and ep.in_flight == 0
        assert ep.retry_budget_tokens >= 0 and ep.health in ("healthy", "unhealthy")
        hotspots = {(h.service, h.name, h.signal): h for h in status.hotspots}
        assert hotspots[("checkout", "POST /pay", "traces")].count == 3
        assert hotspots[("inventory", "reserve", "traces")].count == 2
        assert not any(name == "GET /cart" for _, name, _ in hotspots)
        pay = hotspots[("checkout", "POST /pay", "traces")]
        assert (pay.category, pay.error_type) == classes["POST /pay"]  # the class written onto the spans
        assert [h.count for h in status.hotspots] == sorted((h.count for h in status.hotspots), reverse=True)
        rates = {r.window_minutes: r for r in status.error_rates}
        assert set(rates) == {1, 5, 15}
        assert rates[1].item_errors == 5
        assert rates[1].export_errors >= 2  # UNAVAILABLE attempts (failed probes also trip it), the dead letter
        assert rates[1].per_minute == pytest.approx(rates[1].errors)  # younger than a minute: divided by 1
        assert status.recovery.outages >= 1 and status.recovery.ongoing == 1
        assert status.accepting  # (ready turns false only once the health probe gave up: 3 probes later)

        # The same through the CLI: JSON and the table.
        result = cli("status", "--endpoint", endpoint, "--json")
        assert result.returncode == 0, result.stderr
        plain = json.loads(result.stdout)
        assert plain["exporters"][0]["endpoints"][0]["breaker_state"] == "open"
        assert plain["exporters"][0]["queue"]["requests"] == 3
        assert {(h["service"], h["name"], h["count"]) for h in plain["hotspots"]} >= {
            ("checkout", "POST /pay", 3), ("inventory", "reserve", 2)}
        table = cli("status", "--endpoint", endpoint)
        assert table.returncode == 0, table.stderr
        assert table.stdout.startswith("sidecar  ")
        assert any(line.startswith(EXPORTER) and "3/1000 requests" in line for line in table.stdout.splitlines())
        assert any(" open " in line and ep.endpoint in line for line in table.stdout.splitlines())
        assert any(line.split()[:3] == ["3", "checkout", "POST"] for line in table.stdout.splitlines())
        listing = cli("deadletters", "list", "--endpoint", endpoint, "--json")
        assert listing.returncode == 0, listing.stderr
        assert json.loads(listing.stdout)["dead_letters"][0]["id"] == dead.id

        # Drain cannot finish while the breaker is open.
        drain = admin.Drain(pb.DrainRequest(timeout_seconds=0.5), timeout=10)
        assert not drain.drained and drain.remaining[0].requests == 3 and drain.waited_seconds >= 0.4
        assert cli("drain", "--endpoint", endpoint, "--timeout", "0.3").returncode == 1

        # Upstream is back: reset the breaker instead of waiting 60 s, drain, replay the dead letter.
        upstream.clear_faults()
        reset = admin.ResetBreaker(pb.ResetBreakerRequest(exporter=EXPORTER))
        assert [(r.exporter, r.endpoint) for r in reset.reset] == [(EXPORTER, ep.endpoint)]
        assert reset.reset[0].previous_state in ("open", "half_open")
        drained = admin.Drain(pb.DrainRequest(exporter=EXPORTER, timeout_seconds=20), timeout=30)
        assert drained.drained and drained.remaining[0].requests == 0
        assert {s.name for s in upstream.spans()} >= {"held 0", "held 1", "held 2"}

        replay = admin.ReplayDeadLetters(pb.ReplayDeadLettersRequest(exporter=EXPORTER, ids=[dead.id, 999]))
        assert (replay.replayed, replay.replayed_items, replay.remaining, list(replay.missing_ids)) == (
            1, 4, 0, [999])
        assert upstream.wait_for(lambda f: sum(1 for r in f.log_records()
                                               if r.attributes and r.attributes[0].value.string_value
                                               == "dead-letter-me") == 4, timeout=15)
        assert admin.ListDeadLetters(pb.ListDeadLettersRequest()).total == 0

        status = wait_until(lambda: (s := admin.GetStatus(pb.GetStatusRequest())).recovery.recovered and s, 10,
                            "the recovery")
        assert status.exporters[0].endpoints[0].breaker_state == "closed"
        assert status.recovery.ongoing == 0 and status.recovery.success_rate == pytest.approx(1.0)
        assert status.recovery.HasField("mean_recovery_seconds") and status.recovery.mean_recovery_seconds > 0
        assert status.exporters[0].dead_letters.count == 0

        # Errors the API refuses: one line, exit 1.
        for args in (["deadletters", "list", "--exporter", "nope"], ["breaker", "reset", "--upstream", "x:1"]):
            result = cli(*args, "--endpoint", endpoint)
            assert result.returncode == 1 and result.stdout == ""
            assert result.stderr.count("\n") == 1 and "not_found" in result.stderr, result.stderr


def test_token_watch_and_disabled_admin(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    port = free_port()
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=with_admin(port, token="s3cret"))
    endpoint = f"127.0.0.1:{port}"
    channel, admin = admin_stub(port)
    with channel:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.RpcError) as refused:
                admin.GetStatus(pb.GetStatusRequest(), metadata=metadata, timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        for call in (lambda md: admin.Drain(pb.DrainRequest(timeout_seconds=0.1), metadata=md, timeout=5),
                     lambda md: admin.ResetBreaker(pb.ResetBreakerRequest(), metadata=md, timeout=5)):
            with pytest.raises(grpc.RpcError) as refused:
                call(())
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        status = admin.GetStatus(pb.GetStatusRequest(), metadata=(("authorization", "Bearer s3cret"),), timeout=5)
        assert status.ready and status.exporters[0].endpoints[0].breaker_state == "closed"

    denied = cli("status", "--endpoint", endpoint)
    assert denied.returncode == 1 and denied.stdout == ""
    assert denied.stderr.count("\n") == 1 and "refused the call" in denied.stderr
    assert cli("status", "--endpoint", endpoint, "--token", "s3cret").returncode == 0
    assert cli("status", "--endpoint", endpoint, env={"SIDECAR_ADMIN_TOKEN": "s3cret"}).returncode == 0
    from_config = cli("status", "--config", str(sidecar.config_path), "--json")  # endpoint and token from it
    assert from_config.returncode == 0, from_config.stderr
    assert json.loads(from_config.stdout)["exporters"][0]["name"] == EXPORTER

    replayed = cli("deadletters", "replay", "--endpoint", endpoint, "--token", "s3cret")
    assert replayed.returncode == 0 and replayed.stdout.startswith("replayed 0 dead letters"), replayed.stderr
    reset = cli("breaker", "reset", "--endpoint", endpoint, "--token", "s3cret", "--exporter", EXPORTER)
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.splitlines()[1].split()[2:] == ["closed", "closed"]
    drained = cli("drain", "--endpoint", endpoint, "--token", "s3cret", "--timeout", "5")
    assert drained.returncode == 0 and drained.stdout.startswith("drained after"), drained.stderr

    watched = cli("status", "--config", str(sidecar.config_path), "--watch", "0.2", "--count", "3")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("sidecar  ready") == 3

    # `admin` configured but not listed in service.extensions: nothing listens.
    other = free_port()
    sidecar_factory(upstream.grpc_endpoint, config_edit=with_admin(other, listed=False))
    off = cli("status", "--endpoint", f"127.0.0.1:{other}")
    assert off.returncode == 1 and off.stderr.startswith("otlp-sidecar: cannot reach the admin API")
