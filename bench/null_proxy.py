"""The cheapest possible OTLP/gRPC proxy in Python: the floor under any sidecar built on grpc.aio.

It receives each Export call as raw bytes on grpc.aio + uvloop (like the sidecar's receiver),
optionally parses it with upb (`--parse`, the validation every serious receiver does), and
forwards the same bytes to the upstream on one grpc.aio channel (like the sidecar's exporter),
answering the client with the upstream's answer. No queue, no classification, no retry, no
metrics. Its throughput in the same run as the sidecar's says how much of the sidecar's cost is
the two gRPC hops a Python proxy cannot avoid, and how much is the sidecar's own work.

    python -m bench.null_proxy --port 4319 --upstream 127.0.0.1:4317 [--parse]
"""

from __future__ import annotations

import argparse

import grpc
from grpc import aio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench.sink import SERVER_OPTIONS, SERVICES, serve_until_signalled

CHANNEL_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def handlers(channel: aio.Channel, parse: bool) -> list[grpc.GenericRpcHandler]:
    out: list[grpc.GenericRpcHandler] = []
    for service in SERVICES:
        forward = channel.unary_unary(f"/{service}/Export", request_serializer=None, response_deserializer=None)
        is_traces = service.endswith("TraceService")

        async def export(body: bytes, context: aio.ServicerContext, forward=forward,  # type: ignore[no-untyped-def]
                         is_traces=is_traces) -> bytes:
            if parse and is_traces:
                try:
                    ExportTraceServiceRequest().ParseFromString(body)
                except Exception:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unparsable request")
            try:
                answer: bytes = await forward(body, timeout=10.0)
            except aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return answer

        out.append(grpc.method_handlers_generic_handler(service, {
            "Export": grpc.unary_unary_rpc_method_handler(export)}))
    return out


async def serve(port: int, upstream: str, parse: bool) -> None:
    channel = aio.insecure_channel(upstream, options=CHANNEL_OPTIONS)
    server = aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(tuple(handlers(channel, parse)))
    address = f"127.0.0.1:{port}"
    await serve_until_signalled(server, address, f"null proxy listening on {address} -> {upstream}")
    await channel.close(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the OTLP/gRPC upstream")
    parser.add_argument("--parse", action="store_true", help="parse every trace request with upb first")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.port, args.upstream, args.parse))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
