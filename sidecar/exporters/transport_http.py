"""OTLP/HTTP upstream transport on aiohttp (protobuf, optional gzip)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping

import aiohttp
from google.rpc import status_pb2

from sidecar.config.schema import ExporterConfig
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.signals import SPECS, Signal, rejected_count
from sidecar.exporters.compression import Compression, compress, resolve_compression
from sidecar.exporters.hints import parse_retry_after
from sidecar.exporters.transport import SendOutcome


def client_ssl_context(config: ExporterConfig) -> ssl.SSLContext | bool:
    """TLS for https:// endpoints (http:// ones are plaintext whatever this says).

    As in the Collector, `insecure` does not turn certificate verification off for an https:// endpoint;
    only `insecure_skip_verify` does. (aiohttp's `ssl=False` would skip verification.)
    """
    tls = config.tls
    if not (tls.ca_file or tls.cert_file or tls.insecure_skip_verify):
        return True  # aiohttp's default: verify against the system's roots
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def observe_client_error(exc: BaseException) -> ExportFailure:
    """The only place an aiohttp/OS exception becomes an ExportFailure."""
    text = str(exc)[:512]
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError)):
        return ExportFailure(message=text, client_error="tls_handshake")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ExportFailure(message=text, client_error="dns")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return ExportFailure(message=text, client_error="connection_refused")
        if "Name or service not known" in text or "nodename nor servname" in text:
            return ExportFailure(message=text, client_error="dns")
        return ExportFailure(message=text, client_error="connection_refused")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ExportFailure(message=text or "timed out", client_error="timeout")
    return ExportFailure(message=text or type(exc).__name__, client_error="connection_reset")


class HttpTransport:
    def __init__(self, endpoint: str, config: ExporterConfig) -> None:
        self.endpoint = endpoint
        base = endpoint.rstrip("/")
        self.urls = {signal: base + SPECS[signal].http_path for signal in Signal}
        self.compression = resolve_compression(config.compression, endpoint)
        self.headers = dict(config.headers)
        self.ssl = client_ssl_context(config)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl, limit=0, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    async def _post(self, signal: Signal, payload: bytes, metadata: tuple[tuple[str, str], ...],
                    timeout: float) -> bytes:
        headers = {**self.headers, "Content-Type": "application/x-protobuf"}
        for key, value in metadata:
            headers[key] = value
        body = payload
        if payload and self.compression is not Compression.NONE:
            body = compress(payload, self.compression)
            headers["Content-Encoding"] = self.compression.value
        try:
            async with self.session.post(self.urls[signal], data=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                content = await response.read()
                if response.status < 300:
                    return content
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                raise ExportError(ExportFailure(
                    http_status=response.status, message=_status_message(content, response.reason),
                    retry_after=retry_after, has_retry_info=retry_after is not None))
        except ExportError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ExportError(observe_client_error(exc)) from None

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome:
        content = await self._post(entry.signal, entry.payload, entry.metadata, timeout)
        response = SPECS[entry.signal].response_type()
        try:
            response.ParseFromString(content)
        except Exception:  # a success with an unparsable body still delivered the data
            return SendOutcome()
        rejected, message = rejected_count(entry.signal, response)
        return SendOutcome(rejected=rejected, rejected_message=message)

    async def probe(self, timeout: float) -> None:
        await self._post(Signal.TRACES, b"", (), timeout)

    def set_headers(self, headers: Mapping[str, str]) -> None:
        self.headers = dict(headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _status_message(content: bytes, reason: str | None) -> str:
    status = status_pb2.Status()
    try:
        status.ParseFromString(content)
    except Exception:
        return (reason or "")[:512]
    return (status.message or reason or "")[:512]
