"""A fault-injecting fake upstream OpenTelemetry Collector (OTLP/gRPC and OTLP/HTTP).

The fake runs its own asyncio event loop in a background daemon thread; its public API is
synchronous and thread-safe, so synchronous pytest code and demo scripts can drive it.

Layout::

    client --TCP--> proxy (public grpc port) --TCP--> grpc.aio server   (internal, 127.0.0.1:ephemeral)
    client --TCP--> proxy (public http port) --TCP--> aiohttp server    (internal, 127.0.0.1:ephemeral)

The tiny TCP proxies in front of the real servers make connection-level faults real for both
protocols: ``go_down`` closes the public listening sockets and resets every proxied connection
(clients then see "connection refused"), ``come_up`` binds the same public ports again, and
``reset_next`` resets (TCP RST) the connection that carried a request without answering it.

Fault script semantics
----------------------
* ``fail_next``, ``delay_next``, ``partial_success_next`` and ``reset_next`` append an action to one
  FIFO script. Each Export call that reaches a handler consumes one unit of the *first* scripted
  action whose ``signal`` filter matches it (``signal=None`` matches every signal). When nothing
  in the script matches, the ``fail_always`` fault (if set) applies; otherwise the call succeeds.
* ``set_delay`` delays every answer (success or failure), on top of any ``delay_next`` delay.
* ``set_max_message_bytes`` is checked before the script (as grpc-go / confighttp reject an
  oversized message before the handler runs), so an oversized request consumes no scripted fault.
* ``clear_faults`` returns the fake to a healthy collector: script, ``fail_always``, ``set_delay``
  and ``set_max_message_bytes`` are all cleared. It does not bring a downed collector back up.

Every request that reaches a handler is recorded (``attempts``) at the time it is received,
whatever the outcome; ``accepted`` ones are those answered with success (a partial success
counts as accepted, with ``rejected`` set).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import json
import math
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import zstandard
from aiohttp import web
from google.protobuf import duration_pb2, json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = [
    "GRPC_STATUS_DETAILS_KEY",
    "SIGNALS",
    "FakeCollector",
    "FakeTLS",
    "ReceivedRequest",
    "SignalInfo",
    "grpc_code_for_http_status",
    "http_status_for_grpc_code",
    "message_to_otlp_json",
    "metric_point_count",
    "otlp_json_to_message",
    "request_item_count",
]

GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_MAX_INTERNAL_MESSAGE = 256 * 1024 * 1024
_CALL_TIMEOUT_S = 15.0
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_PARSE_ERRORS = (ValueError, DecodeError, UnicodeDecodeError, TypeError, binascii.Error)

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalInfo:
    signal: str
    grpc_service: str
    http_path: str
    request_type: type[Message]
    response_type: type[Message]
    rejected_field: str  # field of the response's partial_success


SIGNALS: dict[str, SignalInfo] = {
    "traces": SignalInfo(
        "traces",
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "/v1/traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "rejected_spans",
    ),
    "metrics": SignalInfo(
        "metrics",
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "rejected_data_points",
    ),
    "logs": SignalInfo(
        "logs",
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "/v1/logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "rejected_log_records",
    ),
}


def _check_signal(signal: str | None) -> None:
    if signal is not None and signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; expected one of {sorted(SIGNALS)}")


# --------------------------------------------------------------------------------------------------
# Item counting
# --------------------------------------------------------------------------------------------------

_METRIC_DATA_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def metric_point_count(metric: Metric) -> int:
    """Data points of one metric, whatever its data kind."""
    kind = metric.WhichOneof("data")
    if kind is None:
        return 0
    return len(getattr(metric, kind).data_points)


def _iter_spans(message: Message) -> list[Span]:
    req = cast(trace_service_pb2.ExportTraceServiceRequest, message)
    return [span for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans]


def _iter_log_records(message: Message) -> list[LogRecord]:
    req = cast(logs_service_pb2.ExportLogsServiceRequest, message)
    return [lr for rl in req.resource_logs for sl in rl.scope_logs for lr in sl.log_records]


def _iter_metrics(message: Message) -> list[Metric]:
    req = cast(metrics_service_pb2.ExportMetricsServiceRequest, message)
    return [m for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


def request_item_count(signal: str, message: Message) -> int:
    """Spans, metric data points or log records in an Export*ServiceRequest."""
    if signal == "traces":
        return len(_iter_spans(message))
    if signal == "logs":
        return len(_iter_log_records(message))
    if signal == "metrics":
        return sum(metric_point_count(m) for m in _iter_metrics(message))
    raise ValueError(f"unknown signal {signal!r}")


# --------------------------------------------------------------------------------------------------
# OTLP/JSON (hex ids) helpers
# --------------------------------------------------------------------------------------------------

# In OTLP/JSON these bytes fields are hex strings; protobuf's JSON mapping uses base64.
# These names occur only as bytes fields in OTLP (spans, span links, log records, exemplars).
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _convert_ids(obj: Any, convert: Callable[[str], str]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in _ID_KEYS and isinstance(value, str):
                obj[key] = convert(value)
            else:
                _convert_ids(value, convert)
    elif isinstance(obj, list):
        for item in obj:
            _convert_ids(item, convert)


def _hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def otlp_json_to_message(data: bytes | str, message_type: type[_M]) -> _M:
    """Parse OTLP/JSON (hex trace/span ids, unknown fields ignored) into a protobuf message.

    Raises ValueError (or json_format.ParseError, a ValueError subclass) on bad input.
    """
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("OTLP/JSON body must be a JSON object")
    _convert_ids(obj, _hex_to_b64)
    message = message_type()
    json_format.ParseDict(obj, message, ignore_unknown_fields=True)
    return message


def message_to_otlp_json(message: Message) -> bytes:
    """Serialise a protobuf message as OTLP/JSON: lowerCamelCase keys, integer enums, hex ids."""
    obj = json_format.MessageToDict(message, use_integers_for_enums=True)
    _convert_ids(obj, _b64_to_hex)
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Status code mapping (as the Collector does it)
# --------------------------------------------------------------------------------------------------


def http_status_for_grpc_code(code: grpc.StatusCode) -> int:
    """The Collector's otlpreceiver mapping (GetHTTPStatusCodeFromStatus)."""
    if code == grpc.StatusCode.OK:
        return 200
    if code in (
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    ):
        return 503
    return {
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNIMPLEMENTED: 404,
    }.get(code, 500)


def grpc_code_for_http_status(status: int) -> grpc.StatusCode:
    """The usual HTTP -> gRPC mapping (grpc's http-grpc-status-mapping plus the OTLP specifics)."""
    mapping = {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        404: grpc.StatusCode.UNIMPLEMENTED,
        405: grpc.StatusCode.UNIMPLEMENTED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        415: grpc.StatusCode.INVALID_ARGUMENT,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        499: grpc.StatusCode.CANCELLED,
        500: grpc.StatusCode.INTERNAL,
        501: grpc.StatusCode.UNIMPLEMENTED,
        502: grpc.StatusCode.UNAVAILABLE,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.UNAVAILABLE,
    }
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    return mapping.get(status, grpc.StatusCode.UNKNOWN)


def _code_value(code: grpc.StatusCode) -> int:
    value = code.value[0]
    assert isinstance(value, int)
    return value


def _rpc_status(code: grpc.StatusCode, message: str, retry_after_s: float | None) -> status_pb2.Status:
    status = status_pb2.Status(code=_code_value(code), message=message)
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(0.0, retry_after_s) * 1e9))
        detail = AnyProto()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    return status


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    signal: str  # "traces" | "metrics" | "logs"
    protocol: str  # "grpc" | "http"
    metadata: dict[str, str]  # gRPC invocation metadata or HTTP headers, keys lower-cased
    raw: bytes  # the request bytes as received (after gzip inflate)
    message: Message  # the parsed Export*ServiceRequest (empty when it could not be parsed)
    received_at: float  # time.monotonic()
    accepted: bool  # False when a fault was injected for it
    # What the fake did instead of a plain success: None, "fail", "reset", "too_large",
    # "invalid" (not parseable), "partial", "delay".
    fault: str | None = None
    rejected: int = 0  # partial success: items reported as rejected
    content_type: str = ""  # HTTP: the request's media type; gRPC: "application/grpc"

    @property
    def is_probe(self) -> bool:
        """An empty Export request: the sidecar's health probe, which carries no data."""
        return not self.raw

    @property
    def item_count(self) -> int:
        return request_item_count(self.signal, self.message)


# --------------------------------------------------------------------------------------------------
# Fault script
# --------------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    kind: str  # "fail" | "delay" | "partial" | "reset"
    remaining: int  # -1: forever
    signal: str | None
    grpc_code: grpc.StatusCode | None = None
    http_status: int | None = None
    message: str = "injected"
    retry_after_s: float | None = None
    delay_s: float = 0.0
    rejected: int = 0
    data_only: bool = False  # skip requests with no items (the sidecar's health probes)

    def matches(self, signal: str, empty: bool = False) -> bool:
        return (self.signal is None or self.signal == signal) and not (self.data_only and empty)

    def effective_grpc_code(self) -> grpc.StatusCode:
        if self.grpc_code is not None:
            return self.grpc_code
        if self.http_status is not None:
            return grpc_code_for_http_status(self.http_status)
        return grpc.StatusCode.UNAVAILABLE

    def effective_http_status(self) -> int:
        if self.http_status is not None:
            return self.http_status
        if self.grpc_code is not None:
            return http_status_for_grpc_code(self.grpc_code)
        return 503


@dataclass
class _Outcome:
    kind: str  # "ok" | "partial" | "fail" | "reset" | "too_large" | "invalid"
    response: Message | None = None
    grpc_code: grpc.StatusCode = grpc.StatusCode.OK
    http_status: int = 200
    message: str = ""
    retry_after_s: float | None = None


# --------------------------------------------------------------------------------------------------
# TCP proxy
# --------------------------------------------------------------------------------------------------


def _rst(transport: asyncio.Transport | None) -> None:
    """Close a transport so that the peer sees a TCP RST (SO_LINGER 0), dropping unsent data."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _bind(host: str, port: int, what: str) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"fake collector: cannot resolve {what} listen host {host!r}: {exc}") from exc
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(512)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"fake collector: cannot listen for {what} on {host}:{port}: {exc.strerror}"
        ) from exc
    return sock


class _ProxySide(asyncio.Protocol):
    """One end of a proxied connection: the client side or the upstream (internal server) side."""

    def __init__(self, proxy: _TcpProxy, is_client: bool) -> None:
        self._proxy = proxy
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.peer: _ProxySide | None = None
        self.upstream_port: int | None = None  # client side: local port of the upstream connection
        self.lost = False
        self._eof = False
        self._pending: list[bytes] = []

    # asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.is_client:
            self._proxy.client_connected(self)

    def data_received(self, data: bytes) -> None:
        if self.is_client and self._proxy.black_hole:
            return  # accepted, read, never forwarded, never answered
        peer = self.peer
        if peer is None or peer.transport is None:
            self._pending.append(data)
        elif not peer.lost:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self._eof = True
        peer = self.peer
        if peer is None or peer.transport is None:
            return True  # forwarded on link
        return self._forward_eof(peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pending.clear()
        self._proxy.side_lost(self)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is None:
                peer.transport.close()
            else:
                _rst(peer.transport)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # proxy plumbing -----------------------------------------------------------------------------
    def link(self, peer: _ProxySide) -> None:
        """Connect this side to its peer and forward whatever arrived before the link existed."""
        self.peer = peer
        assert peer.transport is not None
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            peer.transport.write(data)
        if self._eof:
            self._forward_eof(peer)

    def _forward_eof(self, peer: _ProxySide) -> bool:
        assert peer.transport is not None
        if peer.lost or peer.transport.is_closing():
            return False
        if peer._eof or not peer.transport.can_write_eof():
            peer.transport.close()
            return False
        peer.transport.write_eof()
        return True  # keep our write direction open (half-close)

    def reset(self) -> None:
        _rst(self.transport)
        if self.peer is not None:
            _rst(self.peer.transport)


class _TcpProxy:
    """Listens on the public port and pipes every connection to an internal server."""

    def __init__(self, what: str, host: str, port: int, target_port: int) -> None:
        self.what = what
        self.host = host
        self.port = port
        self.target_port = target_port
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[_ProxySide] = set()
        self._by_upstream_port: dict[int, _ProxySide] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.black_hole = False  # accept connections and swallow their bytes (see FakeCollector.black_hole)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def listen(self) -> None:
        if self._server is not None:
            return
        sock = _bind(self.host, self.port, self.what)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _ProxySide(self, True), sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        """Stop listening and reset every proxied connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.reset_all()
        for task in list(self._tasks):
            task.cancel()
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=2.0)

    def client_connected(self, side: _ProxySide) -> None:
        self._clients.add(side)
        if self.black_hole:
            return  # never connected to the server: nothing the client sends gets an answer
        task = asyncio.get_running_loop().create_task(self._connect_upstream(side))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_upstream(self, client: _ProxySide) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, upstream = await loop.create_connection(
                lambda: _ProxySide(self, False), "127.0.0.1", self.target_port
            )
        except OSError:
            _rst(client.transport)
            return
        if client.lost:
            _rst(transport)
            return
        port = transport.get_extra_info("sockname")[1]
        client.upstream_port = port
        self._by_upstream_port[port] = client
        upstream.link(client)
        client.link(upstream)

    def side_lost(self, side: _ProxySide) -> None:
        if not side.is_client:
            return
        self._clients.discard(side)
        if side.upstream_port is not None and self._by_upstream_port.get(side.upstream_port) is side:
            del self._by_upstream_port[side.upstream_port]

    def reset_upstream_port(self, port: int | None) -> bool:
        """Reset the client connection whose upstream connection has local port `port`."""
        if port is None:
            return False
        client = self._by_upstream_port.get(port)
        if client is None:
            return False
        client.reset()
        return True

    def reset_all(self) -> None:
        for client in list(self._clients):
            client.reset()


# --------------------------------------------------------------------------------------------------
# The fake collector
# --------------------------------------------------------------------------------------------------


def _peer_port_from_grpc(peer: str) -> int | None:
    # "ipv4:127.0.0.1:54321" / "ipv6:[::1]:54321"
    _, _, port = peer.rpartition(":")
    return int(port) if port.isdigit() else None


def _connect_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host:
        return f"[{host}]"
    return host


@dataclass(frozen=True)
class FakeTLS:
    """Optional TLS for both servers (PEM files); with `client_ca_file` clients must present a certificate."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        with open(self.key_file, "rb") as key, open(self.cert_file, "rb") as cert:
            pair = (key.read(), cert.read())
        ca = None
        if self.client_ca_file is not None:
            with open(self.client_ca_file, "rb") as file:
                ca = file.read()
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class FakeCollector:
    """A fault-injecting OTLP upstream. See the module docstring for the fault semantics.

    With `tls`, both servers speak TLS (the proxies pass the encrypted bytes through unchanged) and
    `http_endpoint` is an https:// URL.
    """

    def __init__(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0,
                 tls: FakeTLS | None = None) -> None:
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.tls = tls

        self._lock = threading.Lock()
        self._records: list[ReceivedRequest] = []
        self._script: list[_Fault] = []
        self._always: _Fault | None = None
        self._delay_s = 0.0
        self._max_message_bytes: int | None = None
        self._open_data_calls = 0  # data (non-empty) requests received and not answered yet
        self._max_open_data_calls = 0

        self._lifecycle = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._http_runner: web.AppRunner | None = None
        self._proxies: dict[str, _TcpProxy] = {}

    # ---- endpoints -----------------------------------------------------------------------------
    @property
    def grpc_endpoint(self) -> str:
        return f"{_connect_host(self.host)}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{_connect_host(self.host)}:{self.http_port}"

    def http_url(self, signal: str) -> str:
        """The full OTLP/HTTP URL of a signal, e.g. http://127.0.0.1:PORT/v1/traces."""
        return self.http_endpoint + SIGNALS[signal].http_path

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def is_up(self) -> bool:
        """Started and listening on the public ports (not go_down())."""
        return self.running and all(p.listening for p in self._proxies.values())

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeCollector:
        """Start both servers; blocks until both public ports listen. Raises OSError if a port is busy."""
        with self._lifecycle:
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._run_loop, args=(loop,), name="fake-collector-loop", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=_CALL_TIMEOUT_S)
            except BaseException:
                self._shutdown_loop()
                raise
            return self

    def stop(self) -> None:
        """Stop everything and join the loop thread. Idempotent."""
        with self._lifecycle:
            loop = self._loop
            if loop is None:
                return
            if threading.current_thread() is self._thread:
                raise RuntimeError("FakeCollector.stop() called from its own event loop thread")
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=_CALL_TIMEOUT_S)
            self._shutdown_loop()

    def __enter__(self) -> FakeCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def black_hole(self, on: bool = True) -> None:
        """TCP black hole: connections are accepted and their bytes read, but nothing ever reaches
        the servers and nothing is ever answered (not even the HTTP/2 handshake). Open connections
        are reset when it starts, so clients reconnect into it. `black_hole(False)` ends it for new
        connections and resets the swallowed ones."""
        self._call(self._ablack_hole(on))

    def go_down(self) -> None:
        """Stop listening on both public ports and reset every open connection."""
        self._call(self._ago_down())

    def come_up(self) -> None:
        """Listen again on the same public ports."""
        self._call(self._acome_up())

    # ---- fault injection --------------------------------------------------------------------------
    def fail_next(
        self,
        n: int,
        *,
        grpc_code: grpc.StatusCode | None = None,
        http_status: int | None = None,
        message: str = "injected",
        retry_after_s: float | None = None,
        signal: str | None = None,
        data_only: bool = False,
    ) -> None:
        """The next n Export calls (optionally of one signal; with `data_only`, only those carrying
        items, so an empty health-probe request does not take the fault) fail.

        gRPC: abort with grpc_code (default UNAVAILABLE, or mapped from http_status) and message;
        with retry_after_s, a google.rpc.Status carrying RetryInfo in grpc-status-details-bin.
        HTTP: http_status (default 503, or mapped from grpc_code) with a google.rpc.Status body in
        the request's content type, and Retry-After: ceil(retry_after_s) when set.
        """
        self._add(
            _Fault(
                "fail",
                self._count(n),
                signal,
                grpc_code=grpc_code,
                http_status=http_status,
                message=message,
                retry_after_s=retry_after_s,
                data_only=data_only,
            )
        )

    def fail_always(
        self,
        *,
        grpc_code: grpc.StatusCode | None = None,
        http_status: int | None = None,
        message: str = "injected",
        retry_after_s: float | None = None,
        signal: str | None = None,
    ) -> None:
        """Every Export call (optionally of one signal) not taken by the script fails, until cleared."""
        _check_signal(signal)
        fault = _Fault(
            "fail",
            -1,
            signal,
            grpc_code=grpc_code,
            http_status=http_status,
            message=message,
            retry_after_s=retry_after_s,
        )
        with self._lock:
            self._always = fault

    def clear_faults(self) -> None:
        """Healthy again: clears the script, fail_always, set_delay and set_max_message_bytes."""
        with self._lock:
            self._script.clear()
            self._always = None
            self._delay_s = 0.0
            self._max_message_bytes = None

    def delay_next(self, n: int, seconds: float, *, signal: str | None = None) -> None:
        """The next n Export calls are answered `seconds` late (then succeed)."""
        self._add(_Fault("delay", self._count(n), signal, delay_s=float(seconds)))

    def set_delay(self, seconds: float) -> None:
        """Every answer (success or failure) is `seconds` late; 0 turns it off."""
        with self._lock:
            self._delay_s = max(0.0, float(seconds))

    def partial_success_next(
        self, n: int, rejected: int, message: str = "rejected by fake", *, signal: str | None = None,
        data_only: bool = False,
    ) -> None:
        """The next n Export calls are accepted with partial_success.rejected_* = rejected
        (with `data_only`, only calls carrying items take it)."""
        self._add(_Fault("partial", self._count(n), signal, rejected=rejected, message=message,
                         data_only=data_only))

    def reset_next(self, n: int, *, signal: str | None = None) -> None:
        """The next n Export calls: their TCP connection is reset (RST) and never answered."""
        self._add(_Fault("reset", self._count(n), signal))

    def set_max_message_bytes(self, n: int | None) -> None:
        """Larger requests get gRPC RESOURCE_EXHAUSTED (grpc-go's message) / HTTP 413. None: no limit."""
        with self._lock:
            self._max_message_bytes = n

    def pending_faults(self) -> int:
        """Units of scripted faults not yet consumed (fail_always not counted)."""
        with self._lock:
            return sum(f.remaining for f in self._script)

    # ---- records ----------------------------------------------------------------------------------
    @property
    def requests(self) -> list[ReceivedRequest]:
        """Snapshot of every recorded request (same as received())."""
        return self.received()

    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._records)

    def attempts(self, signal: str | None = None) -> list[ReceivedRequest]:
        """Everything that reached a handler, failed or not."""
        _check_signal(signal)
        with self._lock:
            return [r for r in self._records if signal is None or r.signal == signal]

    def accepted(self, signal: str | None = None) -> list[ReceivedRequest]:
        """Requests with data answered with success (health probes, empty requests, are left out)."""
        _check_signal(signal)
        with self._lock:
            return [r for r in self._records
                    if r.accepted and not r.is_probe and (signal is None or r.signal == signal)]

    def data_attempts(self, signal: str | None = None) -> list[ReceivedRequest]:
        """`attempts` without the health probes."""
        return [r for r in self.attempts(signal) if not r.is_probe]

    def probes(self) -> list[ReceivedRequest]:
        """The health probes (empty Export requests) that reached a handler, failed or not."""
        return [r for r in self.attempts() if r.is_probe]

    def spans(self) -> list[Span]:
        """All spans of all accepted trace requests (partial successes included)."""
        return [s for r in self.accepted("traces") for s in _iter_spans(r.message)]

    def span_ids(self) -> set[bytes]:
        return {s.span_id for s in self.spans()}

    def log_records(self) -> list[LogRecord]:
        return [lr for r in self.accepted("logs") for lr in _iter_log_records(r.message)]

    def metrics(self) -> list[Metric]:
        return [m for r in self.accepted("metrics") for m in _iter_metrics(r.message)]

    def metric_point_count(self) -> int:
        """Data points across gauge/sum/histogram/exponential histogram/summary of accepted requests."""
        return sum(metric_point_count(m) for m in self.metrics())

    def wait_for(self, predicate: Callable[[FakeCollector], bool], timeout: float) -> bool:
        """Poll predicate(self) until it is true (True) or timeout seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def wait_for_spans(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least n distinct span ids were accepted."""
        return self.wait_for(lambda c: len(c.span_ids()) >= n, timeout)

    def wait_for_attempts(self, n: int, signal: str | None = None, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda c: len(c.attempts(signal)) >= n, timeout)

    @property
    def max_concurrent_data_calls(self) -> int:
        """The most data requests (with items: not health probes) ever open at once, i.e.
        received and not yet answered (or abandoned by the client); see reset_concurrency."""
        with self._lock:
            return self._max_open_data_calls

    def reset_concurrency(self) -> None:
        with self._lock:
            self._max_open_data_calls = self._open_data_calls

    def reset_records(self) -> None:
        with self._lock:
            self._records.clear()

    # ---- internals: fault script --------------------------------------------------------------------
    @staticmethod
    def _count(n: int) -> int:
        if n < 0:
            raise ValueError("n must be >= 0")
        return n

    def _add(self, fault: _Fault) -> None:
        _check_signal(fault.signal)
        if fault.remaining == 0:
            return
        with self._lock:
            self._script.append(fault)

    def _take(self, signal: str, empty: bool = False) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._script):
                if fault.matches(signal, empty):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._script[i]
                    return replace(fault)
            if self._always is not None and self._always.matches(signal, empty):
                return self._always
            return None

    # ---- internals: loop / thread -----------------------------------------------------------------------
    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._grpc_server = None
        self._http_runner = None
        self._proxies = {}
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=_CALL_TIMEOUT_S)

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("FakeCollector is not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FakeCollector's sync API called from its own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=_CALL_TIMEOUT_S)

    async def _astart(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 0),
                    ("grpc.max_receive_message_length", _MAX_INTERNAL_MESSAGE),
                    ("grpc.max_send_message_length", _MAX_INTERNAL_MESSAGE),
                ]
            )
            for info in SIGNALS.values():
                handler = grpc.unary_unary_rpc_method_handler(
                    self._grpc_handler(info), request_deserializer=None, response_serializer=None
                )
                server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(info.grpc_service, {"Export": handler}),)
                )
            if self.tls is None:
                grpc_internal = server.add_insecure_port("127.0.0.1:0")
            else:
                grpc_internal = server.add_secure_port("127.0.0.1:0", self.tls.grpc_credentials())
            self._grpc_server = server
            await server.start()

            app = web.Application(client_max_size=_MAX_INTERNAL_MESSAGE)
            for info in SIGNALS.values():
                app.router.add_post(info.http_path, self._http_handler(info))
            runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=1.0)
            await runner.setup()
            self._http_runner = runner
            site = web.TCPSite(runner, "127.0.0.1", 0,
                               ssl_context=self.tls.ssl_context() if self.tls is not None else None)
            await site.start()
            http_internal = runner.addresses[0][1]

            self._proxies = {
                "grpc": _TcpProxy("OTLP/gRPC", self.host, self.grpc_port, grpc_internal),
                "http": _TcpProxy("OTLP/HTTP", self.host, self.http_port, http_internal),
            }
            for proxy in self._proxies.values():
                await proxy.listen()
            self.grpc_port = self._proxies["grpc"].port
            self.http_port = self._proxies["http"].port
        except BaseException:
            await self._astop()
            raise

    async def _astop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        for proxy in self._proxies.values():
            await proxy.close()
        if self._grpc_server is not None:
            await self._grpc_server.stop(0)
        if self._http_runner is not None:
            await self._http_runner.cleanup()

    async def _ablack_hole(self, on: bool) -> None:
        for proxy in self._proxies.values():
            proxy.black_hole = on
            proxy.reset_all()

    async def _ago_down(self) -> None:
        for proxy in self._proxies.values():
            await proxy.close()

    async def _acome_up(self) -> None:
        for proxy in self._proxies.values():
            await proxy.listen()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when the collector stops."""
        if seconds <= 0:
            return
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _hang(self) -> None:
        """Never answer (until the collector stops)."""
        assert self._stopping is not None
        await self._stopping.wait()

    def _reset_connection(self, protocol: str, upstream_port: int | None) -> None:
        proxy = self._proxies.get(protocol)
        if proxy is None:
            return
        if not proxy.reset_upstream_port(upstream_port):
            proxy.reset_all()

    # ---- internals: request handling -------------------------------------------------------------
    async def _process(
        self,
        info: SignalInfo,
        protocol: str,
        raw: bytes,
        metadata: dict[str, str],
        content_type: str,
        parse: Callable[[], Message],
        upstream_port: int | None,
    ) -> _Outcome:
        received_at = time.monotonic()
        with self._lock:
            max_bytes = self._max_message_bytes
            delay = self._delay_s

        def record(message: Message, accepted: bool, fault: str | None, rejected: int = 0) -> None:
            rec = ReceivedRequest(
                signal=info.signal,
                protocol=protocol,
                metadata=metadata,
                raw=raw,
                message=message,
                received_at=received_at,
                accepted=accepted,
                fault=fault,
                rejected=rejected,
                content_type=content_type,
            )
            with self._lock:
                self._records.append(rec)

        if max_bytes is not None and len(raw) > max_bytes:
            try:
                oversized = parse()
            except _PARSE_ERRORS:
                oversized = info.request_type()
            record(oversized, False, "too_large")
            await self._sleep(delay)
            if protocol == "grpc":
                text = f"grpc: received message larger than max ({len(raw)} vs. {max_bytes})"
            else:
                text = f"http: request body too large ({len(raw)} vs. {max_bytes})"
            return _Outcome(
                "too_large", grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, http_status=413, message=text
            )

        try:
            message = parse()
        except _PARSE_ERRORS as exc:
            record(info.request_type(), False, "invalid")
            await self._sleep(delay)
            return _Outcome(
                "invalid",
                grpc_code=grpc.StatusCode.INVALID_ARGUMENT,
                http_status=400,
                message=f"cannot decode request: {exc}",
            )

        empty = request_item_count(info.signal, message) == 0
        fault = self._take(info.signal, empty=empty)
        kind = fault.kind if fault is not None else None
        rejected = fault.rejected if fault is not None and kind == "partial" else 0
        record(message, kind in (None, "delay", "partial"), kind, rejected)

        if fault is not None and kind == "delay":
            delay += fault.delay_s
        if not empty:
            with self._lock:
                self._open_data_calls += 1
                self._max_open_data_calls = max(self._max_open_data_calls, self._open_data_calls)
        try:
            await self._sleep(delay)  # a client that gives up cancels this: the call is closed then
        finally:
            if not empty:
                with self._lock:
                    self._open_data_calls -= 1

        response = info.response_type()
        if fault is None or kind == "delay":
            return _Outcome("ok", response=response)
        if kind == "partial":
            partial = getattr(response, "partial_success")  # noqa: B009 - typed as Message
            setattr(partial, info.rejected_field, fault.rejected)
            partial.error_message = fault.message
            return _Outcome("partial", response=response)
        if kind == "reset":
            self._reset_connection(protocol, upstream_port)
            return _Outcome("reset", grpc_code=grpc.StatusCode.UNAVAILABLE, http_status=503)
        return _Outcome(
            "fail",
            grpc_code=fault.effective_grpc_code(),
            http_status=fault.effective_http_status(),
            message=fault.message,
            retry_after_s=fault.retry_after_s,
        )

    def _grpc_handler(
        self, info: SignalInfo
    ) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]:
        async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            metadata: dict[str, str] = {}
            for key, value in context.invocation_metadata() or ():
                k = key.lower()
                metadata[k] = (
                    base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)
                )
            outcome = await self._process(
                info,
                "grpc",
                request,
                metadata,
                "application/grpc",
                lambda: info.request_type.FromString(request),
                _peer_port_from_grpc(context.peer()),
            )
            if outcome.response is not None:
                return outcome.response.SerializeToString()
            if outcome.kind == "reset":
                await self._hang()
                await context.abort(grpc.StatusCode.UNAVAILABLE, "fake collector stopped")
            trailing: tuple[tuple[str, bytes], ...] = ()
            if outcome.retry_after_s is not None:
                status = _rpc_status(outcome.grpc_code, outcome.message, outcome.retry_after_s)
                trailing = ((GRPC_STATUS_DETAILS_KEY, status.SerializeToString()),)
            await context.abort(outcome.grpc_code, outcome.message, trailing_metadata=trailing)
            raise AssertionError("unreachable")  # context.abort raises

        return export

    def _http_handler(self, info: SignalInfo) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def export(request: web.Request) -> web.StreamResponse:
            content_type = request.content_type
            is_json = content_type == _JSON
            if content_type not in (_PROTOBUF, _JSON):
                return _status_response(
                    415,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unsupported content type {content_type!r}",
                    None,
                    json_body=True,
                )
            body = await request.read()
            encoding = request.headers.get("Content-Encoding", "").strip().lower()
            try:
                raw = _inflate(body, encoding)
            except ValueError as exc:
                return _status_response(400, grpc.StatusCode.INVALID_ARGUMENT, str(exc), None, is_json)

            metadata: dict[str, str] = {}
            for key, value in request.headers.items():
                k = key.lower()
                metadata[k] = f"{metadata[k]}, {value}" if k in metadata else value
            peername = request.transport.get_extra_info("peername") if request.transport else None
            upstream_port = peername[1] if isinstance(peername, tuple) and len(peername) >= 2 else None

            def parse() -> Message:
                if is_json:
                    return otlp_json_to_message(raw, info.request_type)
                return info.request_type.FromString(raw)

            outcome = await self._process(info, "http", raw, metadata, content_type, parse, upstream_port)
            if outcome.response is not None:
                response = outcome.response
                body_out = message_to_otlp_json(response) if is_json else response.SerializeToString()
                return web.Response(status=200, body=body_out, content_type=content_type)
            if outcome.kind == "reset":
                await self._hang()
            return _status_response(
                outcome.http_status, outcome.grpc_code, outcome.message, outcome.retry_after_s, is_json
            )

        return export


def _inflate(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "zstd":  # the Collector's otlphttp exporter can send it
            return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise ValueError(f"cannot decode {encoding} body: {exc}") from exc
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _status_response(
    http_status: int,
    code: grpc.StatusCode,
    message: str,
    retry_after_s: float | None,
    json_body: bool,
) -> web.Response:
    status = _rpc_status(code, message, retry_after_s)
    headers: dict[str, str] = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(0, math.ceil(retry_after_s)))
    if json_body:
        body = json.dumps(json_format.MessageToDict(status)).encode("utf-8")
        return web.Response(status=http_status, body=body, content_type=_JSON, headers=headers)
    return web.Response(
        status=http_status, body=status.SerializeToString(), content_type=_PROTOBUF, headers=headers
    )
