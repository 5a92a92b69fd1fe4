"""Small HTTP endpoints of the sidecar itself: /health and /ready, and Prometheus /metrics.

Served on asyncio streams with h11 (the sans-I/O HTTP/1.1 state machine behind httpcore/httpx) doing
the parsing, framing and keep-alive bookkeeping, not on aiohttp: these are GETs without a body answered
from memory, and loading aiohttp's server for them cost every sidecar +10 MiB RSS and ~0.27 s of
start-up (bench/notes.md, "Footprint"); h11 is pure Python and costs a fraction of that. The HTTP
protocol itself (request line, headers, chunked or sized bodies, pipelining, HTTP/1.0, Connection:
close) is h11's; this module only moves bytes between it and the socket and routes the requests.
prometheus_client's own start_http_server was the other candidate: it serves on a thread per request,
calls the readiness checks off the event loop (they read state the loop mutates), and every new thread
gets its own malloc arena. What is served: GET and HEAD (405 with Allow for other methods, 404 for other
paths, as aiohttp answered), HTTP/1.1 keep-alive (Prometheus scrapes on one connection); a request's
body is read and discarded so the connection stays usable, and a malformed request is answered 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus

import h11
import orjson

from sidecar.telemetry.prom import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Response]
Route = tuple[str, Handler]

MAX_REQUEST_HEAD = 16 * 1024  # request line + headers; a longer one is answered 400 and closed
MAX_DISCARDED_BODY = 1024 * 1024  # past this much request body, close instead of reading on (no bit sink)
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle connection is kept open (aiohttp's default)
READ_SIZE = 64 * 1024
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class HttpEndpoint:
    """One listening socket on `address` (host:port) serving the given routes."""

    def __init__(self, address: str, routes: list[Route]) -> None:
        self.address = address
        self.routes = dict(routes)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        host, _, port = self.address.rpartition(":")
        try:
            self.server = await asyncio.start_server(self._serve, host.strip("[]") or None, int(port))
        except OSError as exc:
            raise OSError(f"cannot listen on {self.address}: {exc.strerror or exc}") from None
        sockets = self.server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self._connections):  # idle keep-alive connections: Server.close leaves them open
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        conn = h11.Connection(our_role=h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while await self._one_exchange(conn, reader, writer):
                conn.start_next_cycle()
        except h11.RemoteProtocolError:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing answered yet for this request
                with contextlib.suppress(ConnectionError):
                    writer.write(_send(conn, _plain(HTTPStatus.BAD_REQUEST), head_only=False, close=True))
                    await writer.drain()
        except (TimeoutError, ConnectionError):
            return  # idle past the keep-alive timeout, or the client went away: nothing is left to answer
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_exchange(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bool:
        """Answer one request, then read its body to the end; False when the connection is to be closed."""
        request = await _next_event(conn, reader)
        if not isinstance(request, h11.Request):  # ConnectionClosed: the client is done
            return False
        method = request.method.decode("ascii", "replace")
        if request.http_version not in (b"1.0", b"1.1"):  # h11 parses any HTTP/x.y; answer what we speak
            writer.write(_send(conn, _plain(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED), head_only=False, close=True))
            await writer.drain()
            return False
        response = self._answer(method, request.target.decode("latin-1"))
        writer.write(_send(conn, response, head_only=method == "HEAD", close=False))
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE:  # HTTP/1.0 or Connection: close
            return False
        discarded = 0
        while True:  # the rest of the request (its body): read and dropped, so it is not taken for the next one
            event = await _next_event(conn, reader)
            if isinstance(event, h11.EndOfMessage):
                return True
            if isinstance(event, h11.Data):
                discarded += len(event.data)
                if discarded > MAX_DISCARDED_BODY:
                    return False
            else:  # ConnectionClosed before the end of the body
                return False

    def _answer(self, method: str, target: str) -> Response:
        handler = self.routes.get(target.split("?", 1)[0])
        if handler is None:
            return _plain(HTTPStatus.NOT_FOUND)
        if method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED)
        try:
            return handler()
        except Exception:  # a bug in one check must not take the endpoint down
            log.exception("HTTP endpoint %s failed", target)
            return _plain(HTTPStatus.INTERNAL_SERVER_ERROR)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """h11's next event, reading from the socket as it needs; b"" (EOF) becomes ConnectionClosed or an error."""
    async with asyncio.timeout(KEEPALIVE_TIMEOUT):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            size = READ_SIZE
            if conn.their_state is h11.IDLE:  # waiting for a head: h11 refuses one still incomplete past
                # max_incomplete_event_size, so reading no more than one byte past it makes the limit exact
                size = max(1, MAX_REQUEST_HEAD + 1 - len(conn.trailing_data[0]))
            conn.receive_data(await reader.read(size))


def _plain(status: HTTPStatus) -> Response:
    return int(status), _TEXT, f"{int(status)}: {status.phrase}".encode()


def _send(conn: h11.Connection, response: Response, *, head_only: bool, close: bool) -> bytes:
    """The bytes of a whole response; h11 adds Connection: close when the request asked for it (or HTTP/1.0)."""
    status, content_type, body = response
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        headers.append(("Allow", "GET, HEAD"))
    if close:
        headers.append(("Connection", "close"))
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)) or b""
    if not head_only:  # a HEAD answer has GET's Content-Length and no body
        data += conn.send(h11.Data(data=body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


Readiness = Callable[[], tuple[bool, dict[str, object]]]


def health_routes(readiness: Readiness, upstream_readiness: Readiness) -> list[Route]:
    """/health (alive: for liveness probes), /ready (can accept data: for readiness probes) and
    /ready/upstream (the Collector is reachable: for those who gate on it deliberately)."""

    def health() -> Response:
        return 200, _JSON, orjson.dumps({"status": "alive"})

    def answer(check: Readiness) -> Handler:
        def handler() -> Response:
            is_ready, detail = check()
            body = orjson.dumps({"status": "ready" if is_ready else "not_ready", **detail}, default=str)
            return (200 if is_ready else 503), _JSON, body
        return handler

    return [("/health", health), ("/ready", answer(readiness)), ("/ready/upstream", answer(upstream_readiness)),
            ("/", health)]


def metrics_routes(registry: CollectorRegistry) -> list[Route]:
    def metrics() -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return [("/metrics", metrics)]
