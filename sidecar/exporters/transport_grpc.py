"""OTLP/gRPC upstream transport: raw bytes out, failures observed as ExportFailure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from sidecar.config.schema import ExporterConfig
from sidecar.config.units import mib_to_bytes
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.signals import SPECS, Signal, rejected_count
from sidecar.exporters.compression import Compression, resolve_compression
from sidecar.exporters.hints import retry_info_from_status_details
from sidecar.exporters.transport import SendOutcome


def observe_rpc_error(exc: aio.AioRpcError) -> ExportFailure:
    """The only place a grpc exception becomes an ExportFailure."""
    code = exc.code()
    details = exc.details() or ""
    status_details: bytes | None = None
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status_details = value
    retry_after = retry_info_from_status_details(status_details)
    client_error = None
    if code is grpc.StatusCode.UNAVAILABLE:
        client_error = _client_error_from_details(details)
    return ExportFailure(grpc_code=code.name, message=details[:512], retry_after=retry_after,
                         has_retry_info=retry_after is not None, client_error=client_error)


def _client_error_from_details(details: str) -> str | None:
    lowered = details.lower()
    if "dns resolution failed" in lowered or "name or service not known" in lowered \
            or "could not resolve" in lowered:
        return "dns"
    if "handshake" in lowered or "ssl" in lowered or "certificate" in lowered \
            or "verification check failed" in lowered:  # grpc's hostname check: "Hostname Verification Check failed"
        return "tls_handshake"
    if "connection refused" in lowered or "failed to connect" in lowered:
        return "connection_refused"
    if "connection reset" in lowered or "socket closed" in lowered or "broken pipe" in lowered \
            or "eof" in lowered:
        return "connection_reset"
    return None


def grpc_target(endpoint: str) -> tuple[str, bool | None]:
    """Strip a scheme; http:// forces plaintext and https:// forces TLS, as in the Collector."""
    match = re.match(r"^(https?)://(.*)$", endpoint)
    if match is None:
        return endpoint.rstrip("/"), None
    return match.group(2).rstrip("/"), match.group(1) == "http"


def channel_credentials(config: ExporterConfig) -> grpc.ChannelCredentials:
    tls = config.tls
    root = Path(tls.ca_file).read_bytes() if tls.ca_file else None
    key = Path(tls.key_file).read_bytes() if tls.key_file else None
    cert = Path(tls.cert_file).read_bytes() if tls.cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


class GrpcTransport:
    def __init__(self, endpoint: str, config: ExporterConfig) -> None:
        self.endpoint = endpoint
        target, plaintext = grpc_target(endpoint)
        insecure = config.tls.insecure if plaintext is None else plaintext
        options: list[tuple[str, str | int]] = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30000),
            ("grpc.keepalive_timeout_ms", 10000),
            # Reconnect quickly after an upstream restart: the retry policy owns the pacing.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ]
        if config.tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
        if insecure:
            self.channel = aio.insecure_channel(target, options=options)
        else:
            self.channel = aio.secure_channel(target, channel_credentials(config), options=options)
        # zstd is refused for otlp_grpc by config validation: grpcio cannot send it.
        wire = resolve_compression(config.compression, endpoint)
        self.compression = grpc.Compression.Gzip if wire is Compression.GZIP else grpc.Compression.NoCompression
        self.headers: tuple[tuple[str, str], ...] = ()
        self.set_headers(config.headers)
        self.max_request_bytes = mib_to_bytes(config.max_request_size_mib) if config.max_request_size_mib else None
        self.calls = {
            signal: self.channel.unary_unary(SPECS[signal].grpc_method, request_serializer=None,
                                             response_deserializer=None)
            for signal in Signal
        }

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome:
        metadata = self.headers + entry.metadata
        try:
            raw = await self.calls[entry.signal](entry.payload, timeout=timeout, metadata=metadata or None,
                                                 compression=self.compression, wait_for_ready=False)
        except aio.AioRpcError as exc:
            raise ExportError(observe_rpc_error(exc)) from None
        response = SPECS[entry.signal].response_type()
        try:
            response.ParseFromString(raw)
        except Exception:  # an unparsable success answer is still a success; nothing to count
            return SendOutcome()
        rejected, message = rejected_count(entry.signal, response)
        return SendOutcome(rejected=rejected, rejected_message=message)

    async def probe(self, timeout: float) -> None:
        try:
            await self.calls[Signal.TRACES](b"", timeout=timeout, metadata=self.headers or None)
        except aio.AioRpcError as exc:
            raise ExportError(observe_rpc_error(exc)) from None

    def set_headers(self, headers: Mapping[str, str]) -> None:
        self.headers = tuple((k.lower(), v) for k, v in headers.items())

    async def close(self) -> None:
        await self.channel.close(grace=None)
