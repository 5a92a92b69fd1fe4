"""Small HTTP endpoints of the sidecar itself: /health and /ready, and Prometheus /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HttpEndpoint:
    """One aiohttp site on `address` (host:port) serving the given routes."""

    def __init__(self, address: str, routes: list[web.RouteDef]) -> None:
        self.address = address
        self.routes = routes
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(self.routes)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, _, port = self.address.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]") or None, int(port), reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self.address}: {exc.strerror or exc}") from None
        self.port = int(runner.addresses[0][1]) if runner.addresses else int(port)
        self.runner = runner

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


Readiness = Callable[[], tuple[bool, dict[str, object]]]


def health_routes(readiness: Readiness, upstream_readiness: Readiness) -> list[web.RouteDef]:
    """/health (alive: for liveness probes), /ready (can accept data: for readiness probes) and
    /ready/upstream (the Collector is reachable: for those who gate on it deliberately)."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"status": "alive"}), content_type="application/json")

    def answer(check: Readiness) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            is_ready, detail = check()
            body = orjson.dumps({"status": "ready" if is_ready else "not_ready", **detail}, default=str)
            return web.Response(status=200 if is_ready else 503, body=body, content_type="application/json")
        return handler

    return [web.get("/health", health), web.get("/ready", answer(readiness)),
            web.get("/ready/upstream", answer(upstream_readiness)), web.get("/", health)]


def metrics_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return [web.get("/metrics", metrics)]
