"""Scenario 6 of bench/run.py: a fleet of sidecars in front of an upstream that fails (issue 13).

N sidecars (4), each with its own client sending 10 requests/s, in front of one fake Collector that
answers UNAVAILABLE for 20 s. Measured per mode: the Export calls that hit the failing upstream (data
and probes), the time from recovery to the first delivered export, and the spans lost (acknowledged
by a sidecar, never delivered). Modes:

* local, the bench's breaker (recovery 2 s, growing to 5 s): every sidecar on its own, as today;
* local, short breaker (1 s to 2 s): what a short recovery timeout costs without a fleet;
* fleet, short breaker: the same sidecars sharing breaker, probe lease and retry budget in Redis;
* fleet, short breaker, redis-server killed 7 s into the failure and restarted 7 s later.

The fake Collector and the clients run in this process; the sidecars and redis-server are their own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from bench.run import Section, Settings, bench_exporter, log, start_sidecar, table
from tests.fakes.collector import FakeCollector
from tests.fakes.redis_server import RedisServer
from tests.sidecar_process import SidecarPorts, SidecarProcess

SIDECARS = 4
RATE = 10.0  # requests/s per sidecar
SPANS_PER_REQUEST = 10
BEFORE, FAILURE, AFTER = 3.0, 20.0, 5.0
REDIS_DOWN_AT, REDIS_UP_AT = 7.0, 14.0  # seconds into the failure
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SHORT_BREAKER = {"recovery_timeout": "1s", "max_recovery_timeout": "2s"}


@dataclass(frozen=True)
class Mode:
    name: str
    fleet: bool
    breaker: dict[str, str] | None  # None: the bench's own (bench_exporter)
    kill_redis: bool = False


MODES = (
    Mode("local, breaker 2 s -> 5 s", fleet=False, breaker=None),
    Mode("local, breaker 1 s -> 2 s", fleet=False, breaker=SHORT_BREAKER),
    Mode("fleet, breaker 1 s -> 2 s", fleet=True, breaker=SHORT_BREAKER),
    Mode("fleet, breaker 1 s -> 2 s, Redis killed mid-failure", fleet=True, breaker=SHORT_BREAKER, kill_redis=True),
)


class Client(threading.Thread):
    """Sends RATE requests/s of SPANS_PER_REQUEST spans to one sidecar; remembers what was acknowledged."""

    def __init__(self, sidecar: SidecarProcess, index: int) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
        self.export = self.channel.unary_unary(
            TRACE_EXPORT, request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        self.next_id = (index + 1) * 100_000_000
        self.acknowledged: set[bytes] = set()
        self.refused = 0
        self.stopping = threading.Event()

    def request(self) -> tuple[trace_service_pb2.ExportTraceServiceRequest, set[bytes]]:
        request = trace_service_pb2.ExportTraceServiceRequest()
        spans = request.resource_spans.add().scope_spans.add().spans
        now = time.time_ns()
        ids = set()
        for _ in range(SPANS_PER_REQUEST):
            ident = self.next_id
            self.next_id += 1
            ids.add(ident.to_bytes(8, "big"))
            spans.add(trace_id=ident.to_bytes(16, "big"), span_id=ident.to_bytes(8, "big"), name="GET /orders",
                      kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=now, end_time_unix_nano=now + 1000)
        return request, ids

    def run(self) -> None:
        period = 1.0 / RATE
        deadline = time.monotonic()
        while not self.stopping.is_set():
            request, ids = self.request()
            try:
                self.export(request, timeout=10)
                self.acknowledged |= ids
            except grpc.RpcError:
                self.refused += 1
            deadline += period
            self.stopping.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)
        self.channel.close()


@contextlib.contextmanager
def fleet_of(mode: Mode, upstream: FakeCollector, redis: RedisServer | None,
             settings: Settings) -> Iterator[list[SidecarProcess]]:
    sidecars: list[SidecarProcess] = []
    try:
        for i in range(SIDECARS):
            ports = SidecarPorts()
            overrides: dict[str, Any] = {"headers": {"x-sidecar": f"s{i}"}}
            if mode.breaker is not None:
                overrides["circuit_breaker"] = mode.breaker
            config = bench_exporter(upstream.grpc_endpoint, ports, **overrides)
            if mode.fleet:
                assert redis is not None
                config["extensions"]["fleet"] = {"endpoint": redis.url, "instance_id": f"s{i}"}
                config["service"]["extensions"].append("fleet")
            sidecars.append(start_sidecar(config, f"fleet-{mode.fleet}-{mode.kill_redis}-{i}", ports,
                                          settings.workdir))
        if mode.fleet:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(
                    s.metric_value("sidecar_fleet_members") >= SIDECARS for s in sidecars):
                time.sleep(0.1)
        yield sidecars
    finally:
        for sidecar in sidecars:
            with contextlib.suppress(Exception):
                sidecar.stop()
            sidecar.kill()


def run_mode(mode: Mode, settings: Settings) -> dict[str, Any]:
    log(f"fleet: {mode.name}")
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(FakeCollector())
        redis = stack.enter_context(RedisServer(settings.workdir / f"redis-{time.time_ns()}")) if mode.fleet else None
        sidecars = stack.enter_context(fleet_of(mode, upstream, redis, settings))
        clients = [Client(s, i) for i, s in enumerate(sidecars)]
        for client in clients:
            client.start()
        time.sleep(BEFORE)
        failed_at = time.monotonic()
        upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
        if mode.kill_redis and redis is not None:
            time.sleep(REDIS_DOWN_AT)
            redis.kill()
            time.sleep(REDIS_UP_AT - REDIS_DOWN_AT)
            redis.start()
            time.sleep(max(0.0, failed_at + FAILURE - time.monotonic()))
        else:
            time.sleep(FAILURE)
        upstream.clear_faults()
        recovered_at = time.monotonic()
        time.sleep(AFTER)
        for client in clients:
            client.stop()
        acknowledged = set().union(*(c.acknowledged for c in clients))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not acknowledged <= upstream.span_ids():
            time.sleep(0.2)
        attempts = upstream.attempts()
        during = [r for r in attempts if failed_at <= r.received_at < recovered_at]
        after = [r for r in attempts if r.received_at >= recovered_at and r.accepted and not r.is_probe]
        per_sidecar = {f"s{i}": sum(1 for r in during if r.metadata.get("x-sidecar") == f"s{i}")
                       for i in range(SIDECARS)}
        leases = sum(s.metric_value("sidecar_fleet_probe_leases_won_total") for s in sidecars) if mode.fleet else 0
        return {
            "calls_during_failure": len(during),
            "data_calls": sum(1 for r in during if not r.is_probe),
            "probe_calls": sum(1 for r in during if r.is_probe),
            "per_sidecar": per_sidecar,
            "recovery_to_first_export": (min(r.received_at for r in after) - recovered_at) if after else None,
            "acknowledged": len(acknowledged),
            "lost": len(acknowledged - upstream.span_ids()),
            "refused_by_sidecars": sum(c.refused for c in clients),
            "leases_won": leases,
            "fleet_budget_refused": sum(s.metric_value("sidecar_fleet_budget_refused_retries_total")
                                        for s in sidecars) if mode.fleet else 0,
        }


def scenario_fleet(settings: Settings) -> Section:
    runs = {mode.name: run_mode(mode, settings) for mode in MODES}
    rows = []
    for name, r in runs.items():
        first = r["recovery_to_first_export"]
        rows.append([name, r["calls_during_failure"], f"{r['data_calls']} / {r['probe_calls']}",
                     " ".join(str(v) for v in r["per_sidecar"].values()),
                     f"{first:.2f} s" if first is not None else "-", f"{r['lost']} of {r['acknowledged']}",
                     r["leases_won"]])
    body = (f"{SIDECARS} sidecars, each sent {RATE:g} requests/s of {SPANS_PER_REQUEST} spans by its own client; "
            f"the fake Collector answered UNAVAILABLE for {FAILURE:g} s (after {BEFORE:g} s of health) and was "
            f"healthy for {AFTER:g} s more; then every acknowledged span was awaited (up to 90 s). Health "
            "probes every 1 s, retries from 500 ms (bench_exporter). Calls during the failure count every Export "
            "that reached the failing upstream, probes (empty Exports) included.\n\n"
            + table(["mode", "calls hitting the failing upstream", "data / probes", "per sidecar",
                     "recovery -> first delivered export", "spans lost", "probe leases won"], rows)
            + "\n\nTargets (issue 13): fleet mode <= 21 calls during the failure (about 1.5 sidecars' worth), "
              "the first export <= 2 s after recovery, 0 spans lost, Redis killed or not.\n\n"
              "How to read it. Locally, every sidecar's active probe runs every second whatever its breaker "
              "says, and a successful probe lets its breaker go half-open at once: recovery is fast (some "
              "sidecar probes within a second of it), paid for with 4 probes/s on the failing upstream plus "
              "each sidecar's own half-open calls. In fleet mode the others skip their probes while the fleet "
              "has the endpoint open and one lease holder probes at the end of each fleet-wide open period (1 s, "
              "then 2 s): the probes drop to about one per 2 s, and recovery waits for the holder's next probe "
              "(at most one open period) plus the pub/sub hop. What is left is the burst at the start: every "
              "sidecar sends (and retries) until the fleet has evidence. A sidecar that sees 2 failures in a row "
              "reports it to Redis, and the endpoint opens fleet-wide once a quorum of its members (half, at least "
              "2: here 2 of 4) reports, before any breaker reaches its own 5 consecutive failures; the others "
              "follow by pub/sub. With Redis killed for 7 s the sidecars run locally meanwhile, which costs "
              "what local mode costs for those seconds, and nothing acknowledged is lost. The 56 calls and "
              "6.8 s quoted in issue 13 for local mode came from other settings; the local rows here are "
              "measured in the same run and with the same settings as the fleet rows.")
    return Section("fleet", f"6. Fleet: {SIDECARS} sidecars, upstream UNAVAILABLE for {FAILURE:g} s", body,
                   {"modes": runs})
