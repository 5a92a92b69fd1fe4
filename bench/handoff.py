"""Handoff (issue 25): a departing sidecar's 10,000 queued requests, fleet mode with and without handoff.

Three sidecars with disk queues in fleet mode on one real redis-server, in front of a fake Collector that
answers UNAVAILABLE. Sidecar s0 acknowledges REQUESTS requests of SPANS spans (its breaker is open: they
stay queued). Then, per mode:

* `handoff off, pod kept`: s0 keeps running; the reference for delivery speed after recovery;
* `handoff off, pod deleted`: s0 gets SIGTERM (shutdown_timeout 20 s), exits, its volume is deleted;
* `handoff on, pod deleted`: the same, with extensions.fleet.handoff on (its default).

Measured: the handoff's own duration (the `handoff` log event's `seconds`), SIGTERM to exit, Redis's
used_memory after the exit less before it (INFO memory), and, once the Collector recovers, the time
until every span s0 acknowledged arrived (or how many never did within 120 s).

Run (under the bench lock): `flock /work/.bench.lock python -m bench.handoff --results bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import redis
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from bench.run import bench_exporter, start_sidecar, table
from tests.fakes.collector import FakeCollector
from tests.fakes.redis_server import RedisServer
from tests.sidecar_process import SidecarPorts, SidecarProcess

REQUESTS = 10_000
SPANS = 10
SENDERS = 8  # client threads filling s0
WAIT = 120.0  # seconds after recovery to wait for every span
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass(frozen=True)
class Mode:
    name: str
    handoff: bool
    stop: bool


MODES = (Mode("handoff off, pod kept", handoff=False, stop=False),
         Mode("handoff off, pod deleted", handoff=False, stop=True),
         Mode("handoff on, pod deleted", handoff=True, stop=True))


def fill(sidecar: SidecarProcess, requests: int) -> set[bytes]:
    """Send `requests` requests of SPANS spans from SENDERS threads; the span ids acknowledged."""
    acknowledged: set[bytes] = set()
    lock = threading.Lock()

    def send(first: int, count: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
        export = channel.unary_unary(
            TRACE_EXPORT, request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        now = time.time_ns()
        for n in range(count):
            request = trace_service_pb2.ExportTraceServiceRequest()
            spans = request.resource_spans.add().scope_spans.add().spans
            ids = []
            for k in range(SPANS):
                ident = first + n * SPANS + k
                ids.append(ident.to_bytes(8, "big"))
                spans.add(trace_id=ident.to_bytes(16, "big"), span_id=ident.to_bytes(8, "big"), name="GET /orders",
                          kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=now,
                          end_time_unix_nano=now + 1000)
            with contextlib.suppress(grpc.RpcError):
                export(request, timeout=30)
                with lock:
                    acknowledged.update(ids)
        channel.close()

    share = requests // SENDERS
    threads = [threading.Thread(target=send, args=(1_000_000 + i * share * SPANS, share)) for i in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acknowledged


@contextlib.contextmanager
def members(upstream: FakeCollector, redis_server: RedisServer, mode: Mode,
            workdir: Path) -> Iterator[list[SidecarProcess]]:
    sidecars: list[SidecarProcess] = []
    try:
        for i in range(3):
            ports = SidecarPorts()
            config = bench_exporter(upstream.grpc_endpoint, ports, storage=workdir / f"s{i}" / "queue",
                                    headers={"x-sidecar": f"s{i}"},
                                    circuit_breaker={"recovery_timeout": "1s", "max_recovery_timeout": "2s"},
                                    sending_queue={"num_consumers": 10, "queue_size": 4 * REQUESTS})
            config["extensions"]["fleet"] = {"endpoint": redis_server.url, "instance_id": f"s{i}",
                                             "handoff": {"enabled": mode.handoff, "timeout": "10s"}}
            config["service"]["extensions"].append("fleet")
            config["service"]["shutdown_timeout"] = "20s"
            config["service"]["telemetry"]["logs"]["level"] = "info"
            sidecars.append(start_sidecar(config, f"s{i}", ports, workdir))
        yield sidecars
    finally:
        for sidecar in sidecars:
            with contextlib.suppress(Exception):
                sidecar.stop(60)
            sidecar.kill()


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run_mode(mode: Mode, root: Path) -> dict[str, Any]:
    print(f"handoff bench: {mode.name}", file=sys.stderr, flush=True)
    workdir = root / re.sub(r"\W+", "-", mode.name)
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(FakeCollector())
        redis_server = stack.enter_context(RedisServer(workdir / "redis"))
        sidecars = stack.enter_context(members(upstream, redis_server, mode, workdir))
        client = redis.Redis(port=redis_server.port)
        stack.callback(client.close)
        upstream.fail_always(grpc_code=grpc.StatusCode.UNAVAILABLE)
        s0 = sidecars[0]
        started = time.monotonic()
        acknowledged = fill(s0, REQUESTS)
        filled = time.monotonic() - started
        before = used_memory(client)
        result: dict[str, Any] = {"acknowledged": len(acknowledged), "fill_seconds": filled}
        if mode.stop:
            stopping = time.monotonic()
            code = s0.stop(90)
            result["exit_seconds"] = time.monotonic() - stopping
            result["exit_code"] = code
            events = [e for e in s0.log_events() if e.get("event") == "handoff"]
            result["handoff"] = events[-1] if events else None
            shutil.rmtree(s0.workdir / "queue")
        result["redis_extra_bytes"] = used_memory(client) - before
        upstream.clear_faults()
        recovered = time.monotonic()
        deadline = recovered + WAIT
        while time.monotonic() < deadline and not acknowledged <= upstream.span_ids():
            time.sleep(0.1)
        arrived = acknowledged & upstream.span_ids()
        result["delivered_seconds"] = time.monotonic() - recovered if arrived == acknowledged else None
        result["lost"] = len(acknowledged - arrived)
        live = sidecars[1:] if mode.stop else sidecars
        result["handoff_delivered_items"] = sum(s.metric_value("sidecar_handoff_delivered_items_total")
                                                for s in live)
        return result


def report(runs: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, r in runs.items():
        event = r.get("handoff") or {}
        rows.append([
            name,
            f"{event['seconds']:.2f} s ({event['handed_off_requests']} requests)" if event else "-",
            f"{r['exit_seconds']:.1f} s" if "exit_seconds" in r else "-",
            f"{r['redis_extra_bytes'] / 2**20:.1f} MiB" if r["redis_extra_bytes"] > 2**20 else
            f"{r['redis_extra_bytes'] / 1024:.0f} KiB",
            f"{r['delivered_seconds']:.1f} s" if r["delivered_seconds"] is not None else f"not within {WAIT:g} s",
            f"{r['lost']} of {r['acknowledged']}",
        ])
    return (f"Three sidecars with disk queues in fleet mode on one redis-server, the fake Collector answering "
            f"UNAVAILABLE. s0 acknowledged {REQUESTS:,} requests of {SPANS} spans (filled by {SENDERS} client "
            "threads); then it kept running, or got SIGTERM (shutdown_timeout 20 s, handoff.timeout 10 s: the "
            "drain stops at once since every breaker is open, so the handoff may use the rest) and its volume was "
            "deleted. Redis memory is INFO used_memory after s0 exited less before (a few KiB either way is noise: "
            "heartbeats, breaker state). Delivery time runs from the "
            "Collector's recovery until every span s0 acknowledged arrived (the two other members deliver the "
            "handed-off requests through their own exporters; 10 consumers each).\n\n"
            + table(["mode", "handoff (its own duration)", "SIGTERM -> exit", "extra Redis memory",
                     "recovery -> every span of s0 delivered", "spans of s0 lost"], rows)
            + "\n\nCommand: `flock /work/.bench.lock python -m bench.handoff --results bench/RESULTS.md`.\n")


def write_results(path: Path, markdown: str) -> None:
    """Replace the '## Handoff' section of RESULTS.md (or append it); other sections are left as they are."""
    text = path.read_text() if path.exists() else ""
    section = "## Handoff: a departing pod's 10,000 queued requests (issue 25)\n\n" + markdown
    match = re.search(r"^## Handoff.*?\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    text = text[:match.start()] + section + "\n" + text[match.end():] if match else \
        text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, help="write the table into this RESULTS.md under '## Handoff'")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-handoff-"))
    try:
        runs = {mode.name: run_mode(mode, root) for mode in MODES}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    markdown = report(runs)
    print(markdown)
    for name, r in runs.items():
        print(name, {k: v for k, v in r.items() if k != "handoff"}, file=sys.stderr)
    if args.results:
        write_results(args.results, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
