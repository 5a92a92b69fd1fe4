"""OTLP/gRPC receiver on grpc.aio, with raw-bytes handlers so unchanged requests are forwarded as-is."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from sidecar.config.schema import GrpcReceiverConfig
from sidecar.config.units import mib_to_bytes
from sidecar.receivers import codec
from sidecar.receivers.ingest import Backpressure, Ingest, UpstreamRefused
from sidecar.signals import SPECS, Signal, partial_success_response
from sidecar.telemetry.metrics import Metrics

log = logging.getLogger("sidecar.receiver.grpc")

Handler = Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]


def server_options(max_recv_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),  # two sidecars must not silently share a port
        ("grpc.max_receive_message_length", max_recv_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


class OtlpGrpcReceiver:
    def __init__(self, name: str, config: GrpcReceiverConfig, ingest: Ingest, metrics: Metrics,
                 include_metadata: list[str], bearer_token: str | None) -> None:
        self.name = name
        self.config = config
        self.ingest = ingest
        self.metrics = metrics
        self.include_metadata = frozenset(include_metadata)
        self.bearer_token = bearer_token
        self.server: aio.Server | None = None
        self.port: int = 0

    def _handler(self, signal: Signal) -> Handler:
        async def export(request: bytes, context: aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            if self.bearer_token is not None and not _authorized(metadata, self.bearer_token):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            if not self.ingest.accepts(self.name, signal):
                await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                    f"no {signal.value} pipeline uses receiver {self.name}")
            try:
                message = codec.decode_protobuf(signal, request)
            except codec.BadRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise  # unreachable: abort raises
            passed = tuple((k, v) for k, v in metadata
                           if k in self.include_metadata and isinstance(v, str))
            try:
                result = await self.ingest.ingest(self.name, signal, request, message, passed, "grpc")
            except Backpressure as exc:
                status = codec.rpc_status(codec.GRPC_CODE["UNAVAILABLE"], str(exc), exc.retry_after)
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc),
                                    trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))
                raise
            except UpstreamRefused as exc:
                code = grpc.StatusCode.UNAVAILABLE if exc.retryable else grpc.StatusCode[exc.grpc_code]
                trailing: tuple[tuple[str, str | bytes], ...] = ()
                if exc.retryable:
                    status = codec.rpc_status(code.value[0], str(exc), exc.retry_after or 1.0)
                    trailing = (("grpc-status-details-bin", status.SerializeToString()),)
                await context.abort(code, str(exc), trailing_metadata=trailing)
                raise
            return partial_success_response(signal, result.rejected, result.message).SerializeToString()

        return export

    async def start(self) -> None:
        max_bytes = mib_to_bytes(self.config.max_recv_msg_size_mib)
        server = aio.server(options=server_options(max_bytes), maximum_concurrent_rpcs=None)
        handlers = {}
        for signal in Signal:
            spec = SPECS[signal]
            handler = grpc.unary_unary_rpc_method_handler(
                self._handler(signal), request_deserializer=None, response_serializer=None)
            handlers[spec.grpc_service] = grpc.method_handlers_generic_handler(
                spec.grpc_service, {"Export": handler})
        server.add_generic_rpc_handlers(tuple(handlers.values()))
        address = self.config.endpoint
        if self.config.tls is not None:
            credentials = _server_credentials(self.config.tls.cert_file, self.config.tls.key_file,
                                              self.config.tls.client_ca_file)
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"receivers.{self.name}.protocols.grpc: cannot listen on {address} "
                          "(address in use or not available)")
        await server.start()
        self.server = server
        log.info("grpc receiver listening", extra={"receiver": self.name, "endpoint": address})

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None


def _authorized(metadata: Any, token: str) -> bool:
    expected = f"Bearer {token}".encode()
    for key, value in metadata:
        if key == "authorization":
            given = value.encode() if isinstance(value, str) else value
            return hmac.compare_digest(given, expected)
    return False


def _server_credentials(cert_file: str, key_file: str, client_ca_file: str | None) -> grpc.ServerCredentials:
    key = Path(key_file).read_bytes()
    cert = Path(cert_file).read_bytes()
    ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)
