"""Small HTTP endpoints of the sidecar itself: /health and /ready, and Prometheus /metrics.

Served straight on asyncio streams, not on aiohttp: these are GETs without a body answered from memory,
and loading aiohttp's server for them cost every sidecar +10 MiB RSS and ~0.27 s of start-up, the
biggest single item once the receivers and exporters load only what their config uses (bench/notes.md,
"Footprint"). prometheus_client's own start_http_server was the other candidate: it serves on a thread
per request, calls the readiness checks off the event loop (they read state the loop mutates), and
every new thread gets its own malloc arena. What is served: GET and HEAD (405 for other methods, 404
for other paths, as aiohttp answered), HTTP/1.1 keep-alive (Prometheus scrapes on one connection);
a request with a body is answered and its connection closed instead of reading the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Handler = Callable[[], Response]
Route = tuple[str, Handler]

MAX_REQUEST_HEAD = 16 * 1024  # request line + headers; a longer one is answered 400 and closed
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle connection is kept open (aiohttp's default)
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
            self.server = await asyncio.start_server(self._serve, host.strip("[]") or None, int(port),
                                                     limit=MAX_REQUEST_HEAD)
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
        try:
            keep_alive = True
            while keep_alive:
                try:
                    async with asyncio.timeout(KEEPALIVE_TIMEOUT):
                        head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(_encode(*_plain(HTTPStatus.BAD_REQUEST), keep_alive=False, head_only=False))
                    break
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                response, keep_alive, head_only = self._answer(head)
                writer.write(_encode(*response, keep_alive=keep_alive, head_only=head_only))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[Response, bool, bool]:
        """(response, keep the connection open, answer without the body) for one request head."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _plain(HTTPStatus.BAD_REQUEST), False, False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            keep_alive = False  # the body is not read: it must not be taken for the next request
        handler = self.routes.get(target.split("?", 1)[0])
        if handler is None:
            return _plain(HTTPStatus.NOT_FOUND), keep_alive, method == "HEAD"
        if method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED), keep_alive, False
        try:
            return handler(), keep_alive, method == "HEAD"
        except Exception:  # a bug in one check must not take the endpoint down
            log.exception("HTTP endpoint %s failed", target)
            return _plain(HTTPStatus.INTERNAL_SERVER_ERROR), keep_alive, method == "HEAD"


def _plain(status: HTTPStatus) -> Response:
    return int(status), _TEXT, f"{int(status)}: {status.phrase}".encode()


def _encode(status: int, content_type: str, body: bytes, *, keep_alive: bool, head_only: bool) -> bytes:
    phrase = HTTPStatus(status).phrase
    allow = "Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else ""
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{allow}Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


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
