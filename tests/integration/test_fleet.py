"""Fleet mode end to end (issue 13, DESIGN.md §9): several sidecar processes share one real redis-server
in front of one fake Collector.

Each sidecar sends its own header (x-sidecar), so the fake Collector tells who called. No assertion
bounds wall-clock time from above beyond generous waits: a slow machine makes a test wait longer.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.fakes.collector import FakeCollector, ReceivedRequest
from tests.fakes.redis_server import RedisServer
from tests.integration.conftest import SidecarFactory
from tests.polling import eventually, holds_for, wait_until
from tests.sidecar_process import ROOT, SidecarProcess

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SIDECARS = 3


def request_with_spans(first_id: int, count: int) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for n in range(count):
        ident = first_id + n
        scope_spans.spans.add(trace_id=ident.to_bytes(16, "big"), span_id=ident.to_bytes(8, "big"),
                              name=f"op {n}", kind=trace_pb2.Span.SPAN_KIND_SERVER,
                              start_time_unix_nano=now, end_time_unix_nano=now + 1000)
    return request


class Client:
    """A raw OTLP/gRPC trace client of one sidecar that remembers the span ids the sidecar acknowledged."""

    def __init__(self, sidecar: SidecarProcess) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
        self.export = self.channel.unary_unary(
            TRACE_EXPORT, request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        self.acknowledged: set[bytes] = set()

    def send(self, first_id: int, count: int = 2) -> bool:
        try:
            self.export(request_with_spans(first_id, count), timeout=10)
        except grpc.RpcError:
            return False
        self.acknowledged |= {(first_id + n).to_bytes(8, "big") for n in range(count)}
        return True

    def close(self) -> None:
        self.channel.close()


def caller(request: ReceivedRequest) -> str:
    return request.metadata.get("x-sidecar", "?")


def fleet_edit(redis_url: str, name: str, **fleet: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["extensions"]["fleet"] = {"endpoint": redis_url, "instance_id": name,
                                         "heartbeat_interval": "500ms", "command_timeout": "200ms", **fleet}
        config["service"]["extensions"].append("fleet")
    return edit


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


FAST_BREAKER = {"failure_threshold": 3, "recovery_timeout": "1s", "max_recovery_timeout": "2s"}


def start_fleet(factory: SidecarFactory, upstream: FakeCollector, redis: RedisServer, n: int = SIDECARS,
                **overrides: Any) -> list[SidecarProcess]:
    overrides.setdefault("circuit_breaker", FAST_BREAKER)
    overrides.setdefault("health_probe", {"interval": "1s", "timeout": "1s"})
    sidecars = []
    for i in range(n):
        name = f"s{i}"
        sidecars.append(factory(upstream.grpc_endpoint, config_edit=fleet_edit(redis.url, name),
                                headers={"x-sidecar": name}, **overrides))
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_connected") == 1 for s in sidecars), 15)
    return sidecars


def transitions(sidecar: SidecarProcess, to_state: str, source: str) -> float:
    return sidecar.metric_value("sidecar_breaker_transitions_total", to_state=to_state, source=source)


class Traffic:
    """Every client sends 2 spans every `period` seconds from a thread until stopped."""

    def __init__(self, clients: list[Client], period: float = 0.1) -> None:
        self.clients = clients
        self.period = period
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, c), daemon=True) for i, c in enumerate(clients)]
        self.sent = 0

    def _run(self, index: int, client: Client) -> None:
        ident = (index + 1) * 10_000_000
        while not self._stop.is_set():
            client.send(ident)
            ident += 2
            self._stop.wait(self.period)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def acknowledged(clients: list[Client]) -> set[bytes]:
    return set().union(*(c.acknowledged for c in clients))


@contextlib.contextmanager
def clients_of(sidecars: list[SidecarProcess]) -> Iterator[list[Client]]:
    clients = [Client(s) for s in sidecars]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


def test_the_config_of_the_issue_works_as_written(tmp_path: Path, redis_server: RedisServer) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(f"""
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}
exporters:
  otlp_grpc: {{endpoint: "127.0.0.1:4317", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:0"}}
  fleet: {{endpoint: "redis://127.0.0.1:{redis_server.port}/0"}}
service:
  extensions: [health_check, fleet]
  pipelines: {{traces: {{receivers: [otlp], exporters: [otlp_grpc]}}}}
""")
    result = subprocess.run([sys.executable, "-m", "sidecar", "validate", "--config", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_one_sidecars_own_trip_holds_no_one_else_then_pooled_failures_open_it_and_one_prober_keeps_a_cadence(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    # Scheduled probes at their default (30 s): after the one at start-up, only the fleet's prober probes.
    sidecars = start_fleet(sidecar_factory, upstream, redis_server, health_probe={"interval": "30s", "timeout": "1s"})
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_members") == SIDECARS for s in sidecars), 10)
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    store = redis.Redis(port=redis_server.port, decode_responses=True)
    key = f"otlp-sidecar:breaker:{upstream.grpc_endpoint}"
    with clients_of(sidecars) as clients:
        # Only s0 has traffic: its breaker opens on its own failures, and that is its own business (its
        # network, its data): the fleet's record stays closed and nobody else is held.
        for n in range(6):
            clients[0].send(1000 + 2 * n)
        assert eventually(lambda: transitions(sidecars[0], "open", "local") >= 1, 15), sidecars[0].logs()[-3000:]
        assert holds_for(lambda: store.hget(key, "state") != "open" and
                         all(transitions(s, "open", "fleet") == 0 for s in sidecars[1:]), 2.0)
        # Everyone has traffic now: the failures of several sidecars open it for all.
        with Traffic(clients):
            assert eventually(lambda: store.hget(key, "state") == "open", 15)
            assert store.hget(key, "cause") == "evidence"
            assert eventually(lambda: all(transitions(s, "open", "fleet") >= 1 for s in sidecars[1:]), 15)
            opened_at = time.monotonic()
            # None of those who saw it open sends data, and the recovery probes come from one sidecar, on the
            # fleet's cadence (probe_interval, 1.5 s by default), however long the open period has grown.
            assert holds_for(lambda: not any(not r.is_probe for r in upstream.attempts()
                                             if r.received_at >= opened_at + 0.5), 5.0), \
                "ordinary traffic reached the open endpoint"
        during = [r for r in upstream.attempts() if r.received_at >= opened_at + 0.5]
        probes = [r.received_at for r in during if r.is_probe]
        probers = {caller(r) for r in during if r.is_probe}
        assert len(probers) == 1, f"probes from {probers}"
        assert len(probes) >= 2, "the prober did not probe again while the fleet held the endpoint open"
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(probes)), f"probes at {probes}"
        # Recovery: the prober's success closes every breaker, and every acknowledged span arrives.
        upstream.clear_faults()
        assert eventually(lambda: all(transitions(s, "closed", "fleet") >= 1 for s in sidecars
                                      if caller_name(s) not in probers) and
                          acknowledged(clients) <= upstream.span_ids(), 20)
        assert acknowledged(clients) <= upstream.span_ids()
    store.close()


def only_fleet_added(redis_url: str, name: str) -> Callable[[dict[str, Any]], None]:
    """A user's config: no breaker or probe settings at all, and extensions.fleet with its endpoint only."""
    def edit(config: dict[str, Any]) -> None:
        exporter = config["exporters"]["otlp_grpc"]
        exporter.pop("circuit_breaker")
        exporter.pop("health_probe")
        config["extensions"]["fleet"] = {"endpoint": redis_url, "instance_id": name}
        config["service"]["extensions"].append("fleet")
    return edit


def test_with_the_shipped_defaults_the_fleet_recovers_at_once_and_every_member_escalates_the_outage(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    # Defaults: recovery_timeout 60 s, a scheduled probe every 30 s. Without the fleet's probe cadence the
    # breakers would stay open about a minute after the upstream is back; the waits below are far shorter.
    sidecars = [sidecar_factory(upstream.grpc_endpoint, config_edit=only_fleet_added(redis_server.url, f"s{i}"),
                                headers={"x-sidecar": f"s{i}"}) for i in range(SIDECARS)]
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_members") == SIDECARS for s in sidecars), 15)
    config = sidecars[0].config["exporters"]["otlp_grpc"]
    assert "circuit_breaker" not in config and "health_probe" not in config
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    with clients_of(sidecars) as clients:
        with Traffic(clients):
            assert eventually(lambda: all(s.metric_value("sidecar_breaker_state") == 2 for s in sidecars), 15)
            time.sleep(3.0)  # the outage goes on; requests keep arriving and are held
            # Severity escalation counts what the outage holds back: every member escalated UNAVAILABLE,
            # those that never saw a failure included, and none reported it easing while it lasts.
            for sidecar in sidecars:
                events = [e for e in sidecar.log_events() if e.get("event") == "error_escalation"
                          and e.get("error_type") == "UNAVAILABLE"]
                assert events and all(e["from_severity"] == e["base_severity"] != e["to_severity"]
                                      for e in events), (caller_name(sidecar), events)
            upstream.clear_faults()
            recovered_at = time.monotonic()
            # Back within a few seconds (one probe interval, 1.5 s, plus the pub/sub hop), not a minute.
            assert eventually(lambda: all(s.metric_value("sidecar_breaker_state") == 0 for s in sidecars), 15)
            assert any(not r.is_probe and r.accepted for r in upstream.attempts() if r.received_at >= recovered_at)
        assert eventually(lambda: acknowledged(clients) <= upstream.span_ids(), 30)


def fleet_status(sidecar: SidecarProcess) -> dict[str, Any]:
    """`python -m sidecar status --fleet --json`, as an operator runs it with the sidecar's config."""
    result = subprocess.run([sys.executable, "-m", "sidecar", "status", "--fleet", "--json",
                             "--config", str(sidecar.config_path)], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    listing: dict[str, Any] = json.loads(result.stdout)
    return listing


def caller_name(sidecar: SidecarProcess) -> str:
    return str(sidecar.config["exporters"]["otlp_grpc"]["headers"]["x-sidecar"])


def test_the_fleet_retry_budget_holds_across_sidecars(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    # No breaker (it would stop the retries first) and no probes: only the budget limits the retries.
    budget = {"ratio": 0.1, "min_per_second": 1.0}
    sidecars = start_fleet(sidecar_factory, upstream, redis_server,
                           retry_on_failure={"initial_interval": "50ms", "max_interval": "100ms",
                                             "budget": budget},
                           circuit_breaker={"enabled": False}, health_probe={"enabled": False})
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    started = time.monotonic()
    with clients_of(sidecars) as clients, Traffic(clients, period=0.1):
        time.sleep(5.0)
    elapsed = time.monotonic() - started
    refused = sum(s.metric_value("sidecar_fleet_budget_refused_retries_total") for s in sidecars)
    assert refused > 0, "the fleet budget never refused a retry"
    data = [r for r in upstream.attempts() if not r.is_probe]
    retries = sum(s.metric_value("sidecar_exporter_retries_total") for s in sidecars)
    first_attempts = len(data) - retries
    # retries <= ratio x first attempts + floor x seconds (+ the floor's capacity, + one TTL window of
    # deposits that a breaker-free sidecar makes while requeued entries come back)
    bound = budget["ratio"] * first_attempts + budget["min_per_second"] * (elapsed + 2) + 1
    assert retries <= bound, f"{retries} retries over the fleet, bound {bound:.1f}"
    upstream.clear_faults()


def test_redis_killed_mid_outage_everyone_goes_on_locally_then_resyncs(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    sidecars = start_fleet(sidecar_factory, upstream, redis_server)
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    with clients_of(sidecars) as clients:
        with Traffic(clients):
            # The fleet sees the outage (a breaker trips, or the pooled evidence opens it for all).
            assert eventually(lambda: all(transitions(s, "open", "local") + transitions(s, "open", "fleet") >= 1
                                          for s in sidecars), 15)
            redis_server.kill()
            assert eventually(lambda: all(s.metric_value("sidecar_fleet_connected") == 0 for s in sidecars), 15)
            time.sleep(2.0)  # the outage goes on without Redis; clients keep sending
            redis_server.start()
            assert eventually(lambda: all(s.metric_value("sidecar_fleet_connected") == 1 for s in sidecars), 15)
            # Resync: the restarted Redis came back empty; the sidecars tell it the endpoint is open.
            store = redis.Redis(port=redis_server.port, decode_responses=True)
            key = f"otlp-sidecar:breaker:{upstream.grpc_endpoint}"
            assert eventually(lambda: store.hget(key, "state") == "open", 10)
            store.close()
        assert all(c.acknowledged for c in clients), "a sidecar stopped accepting data"
        upstream.clear_faults()
        assert eventually(lambda: acknowledged(clients) <= upstream.span_ids(), 30), (
            f"{len(acknowledged(clients) - upstream.span_ids())} acknowledged spans lost")
        assert eventually(lambda: all(s.metric_value("sidecar_fleet_members") == SIDECARS for s in sidecars), 10)


def test_status_fleet_lists_the_members(sidecar_factory: SidecarFactory, upstream: FakeCollector,
                                        redis_server: RedisServer) -> None:
    sidecars = start_fleet(sidecar_factory, upstream, redis_server)
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_members") == SIDECARS for s in sidecars), 10)
    # The fleet's labelled counters are there from the first scrape, at 0.
    scrape = sidecars[0].metrics_text()
    assert f'sidecar_fleet_probe_leases_won_total{{endpoint="{upstream.grpc_endpoint}"}} 0.0' in scrape
    endpoint = upstream.grpc_endpoint
    assert f'sidecar_fleet_budget_refused_retries_total{{endpoint="{endpoint}",exporter="otlp_grpc"}} 0.0' in scrape
    listing = fleet_status(sidecars[0])
    assert [m["instance"] for m in listing["members"]] == ["s0", "s1", "s2"]
    member = listing["members"][0]
    assert member["heartbeat_age"] < 5
    assert member["exporters"]["otlp_grpc"]["breakers"] == {upstream.grpc_endpoint: "closed"}
    assert "queue_size" in member["exporters"]["otlp_grpc"]
    seen = listing["endpoints"][upstream.grpc_endpoint]
    window = seen.pop("window")
    assert seen == {
        "state": "closed", "open_for": 0.0, "open_period": 0.0, "opened_by": "", "cause": "", "prober": "",
        "failing": [], "members": 3, "failures": 0, "needed": 5}
    assert 0.05 <= window <= 5.0
    table = subprocess.run([sys.executable, "-m", "sidecar", "status", "--fleet",
                            "--config", str(sidecars[0].config_path)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert table.returncode == 0, table.stderr
    assert all(name in table.stdout for name in ("s0", "s1", "s2"))
    sidecars[2].stop()
    assert [m["instance"] for m in fleet_status(sidecars[0])["members"]] == ["s0", "s1"]


def test_a_sidecar_starts_and_delivers_without_redis_and_joins_when_it_comes(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, tmp_path: Path) -> None:
    absent = RedisServer(tmp_path / "late-redis")  # its port is free: nothing listens yet
    sidecar = sidecar_factory(upstream.grpc_endpoint, config_edit=fleet_edit(absent.url, "alone"),
                              headers={"x-sidecar": "alone"})
    with clients_of([sidecar]) as (client,):
        assert client.send(5000, 3)
        assert eventually(lambda: client.acknowledged <= upstream.span_ids(), 15)
    assert sidecar.metric_value("sidecar_fleet_connected") == 0
    assert '"event":"fleet_connection"' in sidecar.logs()  # "fleet store not reachable yet"
    with absent:  # starts it now, on the port the sidecar was given
        assert eventually(lambda: sidecar.metric_value("sidecar_fleet_connected") == 1, 15)
        assert eventually(lambda: sidecar.metric_value("sidecar_fleet_members") == 1, 10)


def test_when_the_prober_dies_another_sidecar_takes_the_lease_over(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    sidecars = start_fleet(sidecar_factory, upstream, redis_server)
    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    with clients_of(sidecars) as clients:
        for n in range(6):
            clients[0].send(2000 + 2 * n)
    leases = "sidecar_fleet_probe_leases_won_total"
    holder = wait_until(lambda: next((s for s in sidecars if s.metric_value(leases) >= 1), None), 20,
                        "a sidecar to win the probe lease")
    holder.kill()
    killed_at = time.monotonic()
    others = [s for s in sidecars if s is not holder]
    successor = wait_until(lambda: next((s for s in others if s.metric_value(leases) >= 1), None), 20,
                           "another sidecar to take the lease over")
    assert eventually(lambda: any(r.is_probe and r.received_at > killed_at and caller(r) == caller_name(successor)
                                  for r in upstream.attempts()), 10)
    upstream.clear_faults()
    assert eventually(lambda: all(s.metric_value("sidecar_breaker_state") == 0 for s in others), 20)


PATIENT_BREAKER = {"failure_threshold": 1000, "minimum_calls": 100000, "recovery_timeout": "1s",
                   "max_recovery_timeout": "2s"}


def test_pooled_failures_open_the_fleet_before_any_breaker_trips_but_one_sidecar_alone_does_not(
        sidecar_factory: SidecarFactory, upstream: FakeCollector, redis_server: RedisServer) -> None:
    # No breaker here can trip on its own (1000 consecutive failures, a rate trigger out of reach): any
    # open must come from the fleet's pooled evidence. No health probes: a failed probe is evidence too,
    # and here only client traffic decides who sees the upstream fail.
    sidecars = start_fleet(sidecar_factory, upstream, redis_server, circuit_breaker=PATIENT_BREAKER,
                           health_probe={"enabled": False})
    assert eventually(lambda: all(s.metric_value("sidecar_fleet_members") == SIDECARS for s in sidecars), 10)
    evidence_key = f"otlp-sidecar:failures:{upstream.grpc_endpoint}"
    store = redis.Redis(port=redis_server.port, decode_responses=True)

    def evidence_opens() -> float:
        return sum(s.metric_value("sidecar_fleet_evidence_opens_total", endpoint=upstream.grpc_endpoint)
                   for s in sidecars)

    def reporters() -> set[str]:
        return {entry.split("\n")[0] for entry in store.zrange(evidence_key, 0, -1)}

    upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
    with clients_of(sidecars) as clients:
        # s0 alone fails again and again: it reports, but one sidecar never opens it for the others.
        with Traffic(clients[:1]):
            assert eventually(lambda: reporters() == {"s0"}, 15)
            assert holds_for(lambda: evidence_opens() == 0 and
                             all(transitions(s, "open", "fleet") == 0 for s in sidecars), 2.0)
            # An operator sees why it is still closed: s0's failures, counted, but from one member.
            seen = fleet_status(sidecars[0])["endpoints"][upstream.grpc_endpoint]
            assert (seen["state"], seen["failing"], seen["members"], seen["needed"]) == ("closed", ["s0"], 3, 5)
            assert seen["failures"] >= 1
        assert sidecars[0].metric_value("sidecar_breaker_state", endpoint=upstream.grpc_endpoint) == 0
        # s1 fails too: two members see it failing, and the endpoint opens for the whole fleet.
        with Traffic(clients[:2]):
            assert eventually(lambda: evidence_opens() == 1, 15), sidecars[1].logs()[-3000:]
            assert eventually(lambda: all(transitions(s, "open", "fleet") >= 1 for s in sidecars), 15)
        # No breaker tripped on its own (the lease holder's failed half-open probes re-open it locally: those
        # start from half_open, not closed).
        assert all(s.metric_value("sidecar_breaker_transitions_total", from_state="closed", to_state="open",
                                  source="local") == 0 for s in sidecars)
        assert any(e.get("event") == "fleet_evidence_open" for s in sidecars for e in s.log_events())
        seen = fleet_status(sidecars[0])["endpoints"][upstream.grpc_endpoint]
        assert seen["state"] == "open" and seen["cause"] in ("evidence", "probe"), seen
        assert seen["opened_by"] in ("s0", "s1"), seen
        # Recovery closes it for all, and nothing acknowledged is lost.
        upstream.clear_faults()
        assert eventually(lambda: acknowledged(clients) <= upstream.span_ids(), 30)
        assert eventually(lambda: all(
            s.metric_value("sidecar_breaker_state", endpoint=upstream.grpc_endpoint) == 0 for s in sidecars), 15)
    store.close()
