"""OTLP/HTTP receiver on aiohttp: protobuf and JSON, gzip, answers in the request's content type."""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.rpc import code_pb2

from sidecar.config.schema import HttpReceiverConfig
from sidecar.config.units import mib_to_bytes
from sidecar.core.ingest import Backpressure, Ingest, UpstreamRefused
from sidecar.core.signals import SPECS, Signal, partial_success_response
from sidecar.receivers import codec

log = logging.getLogger("sidecar.receiver.http")

_GRPC_FOR_HTTP = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 404: code_pb2.NOT_FOUND,
                  405: code_pb2.UNIMPLEMENTED, 408: code_pb2.DEADLINE_EXCEEDED,
                  413: code_pb2.RESOURCE_EXHAUSTED, 415: code_pb2.INVALID_ARGUMENT,
                  503: code_pb2.UNAVAILABLE, 500: code_pb2.INTERNAL}


def error_response(status: int, message: str, content_type: str,
                   retry_after: float | None = None) -> web.Response:
    """A google.rpc.Status body in the request's content type (protobuf unless it asked for JSON)."""
    body_type = codec.JSON if content_type == codec.JSON else codec.PROTOBUF
    rpc = codec.rpc_status(_GRPC_FOR_HTTP.get(status, code_pb2.UNKNOWN), message)
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return web.Response(status=status, body=codec.encode_message(rpc, body_type),
                        content_type=body_type, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(404, f"unknown path {request.path} (OTLP paths: /v1/traces, "
                              "/v1/metrics, /v1/logs)", request.content_type)


class OtlpHttpReceiver:
    def __init__(self, name: str, config: HttpReceiverConfig, ingest: Ingest,
                 include_metadata: list[str], bearer_token: str | None) -> None:
        self.name = name
        self.config = config
        self.ingest = ingest
        self.include_metadata = tuple(include_metadata)
        self.bearer_token = bearer_token
        self.max_body = mib_to_bytes(config.max_request_body_size_mib)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        # client_max_size is ours to enforce (with a precise Status body), so lift aiohttp's own.
        # auto_decompress off: we inflate ourselves, bounded by the limit, so a gzip bomb never inflates fully.
        # keepalive_timeout = read_timeout (as Go's IdleTimeout defaults to ReadTimeout): an idle connection,
        # or one whose request headers never complete, is closed then instead of after aiohttp's hour.
        app = web.Application(client_max_size=self.max_body + 1,
                              handler_args={"max_field_size": 16384, "auto_decompress": False,
                                            "keepalive_timeout": float(self.config.read_timeout)})
        for signal in Signal:
            app.router.add_route("POST", SPECS[signal].http_path, self._handler(signal))
            app.router.add_route("*", SPECS[signal].http_path, self._method_not_allowed)
        app.middlewares.append(_not_found)
        return app

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        response = error_response(405, f"method {request.method} not allowed, use POST", request.content_type)
        response.headers["Allow"] = "POST"
        return response

    def _handler(self, signal: Signal) -> Handler:
        async def export(request: web.Request) -> web.StreamResponse:
            content_type = request.content_type
            if self.bearer_token is not None and not hmac.compare_digest(
                    request.headers.get("Authorization", "").encode(), f"Bearer {self.bearer_token}".encode()):
                return error_response(401, "missing or invalid bearer token", content_type)
            if content_type not in (codec.PROTOBUF, codec.JSON):
                return error_response(415, f"unsupported content type {content_type!r}; use "
                                      f"{codec.PROTOBUF} or {codec.JSON}", codec.PROTOBUF)
            if not self.ingest.accepts(self.name, signal):
                return error_response(404, f"no {signal.value} pipeline uses receiver {self.name}",
                                      content_type)
            try:
                body = await self._read_body(request)
                message = codec.decode_request(signal, body, content_type)
            except codec.PayloadTooLarge as exc:
                return error_response(413, str(exc), content_type)
            except codec.BadRequest as exc:
                return error_response(400, str(exc), content_type)
            except TimeoutError:
                return error_response(408, "request body not received within "
                                      f"{self.config.read_timeout:g}s", content_type)
            except ConnectionResetError:
                # The client went away mid-body: nothing to answer, and not the server's error to log.
                log.debug("client closed the connection before the whole body arrived",
                          extra={"receiver": self.name, "signal": signal.value})
                return error_response(400, "connection closed before the whole body arrived", content_type)
            payload = body if content_type == codec.PROTOBUF else message.SerializeToString()
            passed = tuple((k, request.headers[k]) for k in self.include_metadata if k in request.headers)
            try:
                result = await self.ingest.ingest(self.name, signal, payload, message, passed, "http")
            except Backpressure as exc:
                return error_response(503, str(exc), content_type, exc.retry_after)
            except UpstreamRefused as exc:
                if exc.retryable:
                    return error_response(503, str(exc), content_type, exc.retry_after or 1.0)
                return error_response(exc.http_status, str(exc), content_type)
            response = partial_success_response(signal, result.rejected, result.message)
            return web.Response(body=codec.encode_message(response, content_type), content_type=content_type)

        return export

    async def _read_body(self, request: web.Request) -> bytes:
        """Read within the read timeout and the size limit; a gzip body is limited by its inflated size."""
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            raise codec.PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.config.read_timeout):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_body:
                    raise codec.PayloadTooLarge(f"body exceeds the limit of {self.max_body} bytes")
                chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        return codec.inflate(body, encoding, self.max_body)

    async def start(self) -> None:
        host, _, port = self.config.endpoint.rpartition(":")
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        ssl_context = None
        if self.config.tls is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self.config.tls.cert_file, self.config.tls.key_file)
            if self.config.tls.client_ca_file:
                ssl_context.load_verify_locations(self.config.tls.client_ca_file)
                ssl_context.verify_mode = ssl.CERT_REQUIRED
        site = web.TCPSite(runner, host.strip("[]") or None, int(port), ssl_context=ssl_context,
                           reuse_port=False, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"receivers.{self.name}.protocols.http: cannot listen on "
                          f"{self.config.endpoint}: {exc.strerror or exc}") from None
        self.runner = runner
        self.port = int(runner.addresses[0][1]) if runner.addresses else int(port)
        log.info("http receiver listening", extra={"receiver": self.name, "endpoint": self.config.endpoint})

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            await self.runner.shutdown()
            await self.runner.cleanup()
            self.runner = None
