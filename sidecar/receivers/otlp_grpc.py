"""OTLP/gRPC receiver on grpc.aio, with raw-bytes handlers so unchanged requests are forwarded as-is."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc import aio

from sidecar.config.schema import GrpcReceiverConfig
from sidecar.config.units import mib_to_bytes
from sidecar.core.ingest import Backpressure, Ingest, UpstreamRefused
from sidecar.core.signals import SPECS, Signal, partial_success_response
from sidecar.receivers import codec

log = logging.getLogger("sidecar.receiver.grpc")

Handler = Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]
Refusal = tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]  # code, details, trailing metadata


def server_options(max_recv_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),  # two sidecars must not silently share a port
        ("grpc.max_receive_message_length", max_recv_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


def retry_trailers(message: str, retry_after: float) -> tuple[tuple[str, str | bytes], ...]:
    """UNAVAILABLE with a retry hint, in both places clients look for it.

    The standard place is a RetryInfo detail in `grpc-status-details-bin`; the OpenTelemetry
    Python SDK reads a bare RetryInfo from `google.rpc.retryinfo-bin` instead.
    """
    status = codec.rpc_status(codec.GRPC_CODE["UNAVAILABLE"], message, retry_after)
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(retry_after * 1e9))
    return (("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", info.SerializeToString()))


class OtlpGrpcReceiver:
    def __init__(self, name: str, config: GrpcReceiverConfig, ingest: Ingest,
                 include_metadata: list[str], bearer_token: str | None) -> None:
        self.name = name
        self.config = config
        self.ingest = ingest
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
            outcome = await self._export(signal, request, metadata)
            if isinstance(outcome, bytes):
                return outcome
            # Abort with nothing of the request left in this frame and outside any `except`: grpc's
            # abort raises an exception that ends in a reference cycle with this frame (and, through
            # an implicit exception context, with the pipeline's frames), so what they hold stays in
            # memory until the cyclic GC runs: under backpressure, every refused request.
            del request
            code, details, trailing = outcome
            await context.abort(code, details, trailing_metadata=trailing)
            raise AssertionError("unreachable: abort raises")

        return export

    async def _export(self, signal: Signal, request: bytes, metadata: Any) -> bytes | Refusal:
        """The response bytes, or how to refuse; never raises for a refusal (see `export`)."""
        try:
            message = codec.decode_protobuf(signal, request)
        except codec.BadRequest as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
        passed = tuple((k, v) for k, v in metadata if k in self.include_metadata and isinstance(v, str))
        try:
            result = await self.ingest.ingest(self.name, signal, request, message, passed, "grpc")
        except Backpressure as exc:
            return grpc.StatusCode.UNAVAILABLE, str(exc), retry_trailers(str(exc), exc.retry_after)
        except UpstreamRefused as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.retryable else grpc.StatusCode[exc.grpc_code]
            trailing: tuple[tuple[str, str | bytes], ...] = ()
            if exc.retryable:
                trailing = retry_trailers(str(exc), exc.retry_after or 1.0)
            return code, str(exc), trailing
        return partial_success_response(signal, result.rejected, result.message).SerializeToString()

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
