"""The benchmark's upstream: an OTLP/gRPC server that parses every request (upb) and counts.

Runs as its own process (`python -m bench.sink --port 4317`), on grpc.aio and uvloop like the
sidecar. Every Export request is parsed with the upb backend (as a Collector's receiver would
decode it) and its items counted; spans carrying the sidecar's enrichment attributes are counted
too. `/bench.Sink/Stats` answers the counters as JSON (see `sink_stats`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import grpc
import orjson
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.payload import ENRICHED_MARKER

STATS_METHOD = "/bench.Sink/Stats"
SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": "traces",
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "metrics",
    "opentelemetry.proto.collector.logs.v1.LogsService": "logs",
}


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.enriched_spans = 0
        self.log_records = 0
        self.metric_points = 0
        self.parse_errors = 0

    def as_json(self) -> bytes:
        return orjson.dumps({**vars(self), "time": time.time()})


def _count_traces(counters: Counters, body: bytes) -> None:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    counters.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    counters.enriched_spans += body.count(ENRICHED_MARKER)


def _count_logs(counters: Counters, body: bytes) -> None:
    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    counters.log_records += sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


def _count_metrics(counters: Counters, body: bytes) -> None:
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    counters.metric_points += len(getattr(metric, kind).data_points)


_COUNTERS = {"traces": _count_traces, "logs": _count_logs, "metrics": _count_metrics}


def handlers(counters: Counters) -> list[grpc.GenericRpcHandler]:
    out: list[grpc.GenericRpcHandler] = []
    for service, signal_name in SERVICES.items():
        count = _COUNTERS[signal_name]

        async def export(body: bytes, context: aio.ServicerContext, count=count) -> bytes:  # type: ignore[no-untyped-def]
            counters.requests += 1
            counters.bytes += len(body)
            try:
                count(counters, body)
            except Exception:
                counters.parse_errors += 1
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unparsable request")
            return b""  # an empty Export*ServiceResponse: full success

        out.append(grpc.method_handlers_generic_handler(service, {
            "Export": grpc.unary_unary_rpc_method_handler(export)}))

    async def stats(_body: bytes, _context: aio.ServicerContext) -> bytes:
        return counters.as_json()

    out.append(grpc.method_handlers_generic_handler("bench.Sink", {
        "Stats": grpc.unary_unary_rpc_method_handler(stats)}))
    return out


SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def parse_options(pairs: list[str]) -> list[tuple[str, str | int]]:
    """`--grpc-option key=value` arguments as grpc channel arguments (integers where they parse)."""
    out: list[tuple[str, str | int]] = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        out.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return out


async def serve_until_signalled(server: aio.Server, address: str, banner: str) -> None:
    """Listen on `address`, print `banner` (what the bench runner waits for), stop on SIGTERM/SIGINT."""
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot listen on {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(banner, flush=True)
    await stop.wait()
    await server.stop(0.5)


async def serve(host: str, port: int, options: list[tuple[str, str | int]] | None = None) -> None:
    server = aio.server(options=SERVER_OPTIONS + (options or []))
    server.add_generic_rpc_handlers(tuple(handlers(Counters())))
    await serve_until_signalled(server, f"{host}:{port}", f"sink listening on {host}:{port}")


def sink_stats(target: str, timeout: float = 5.0) -> dict[str, float]:
    """The sink's counters (a blocking call, for the scenario runner)."""
    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary(STATS_METHOD)(b"", timeout=timeout, wait_for_ready=True)
    result: dict[str, float] = orjson.loads(raw)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--grpc-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra grpc server option (repeatable)")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.host, args.port, parse_options(args.grpc_option)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
