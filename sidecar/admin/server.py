"""The admin gRPC API (protos/sidecar/v1/admin.proto): status, dead letters, breakers, drain.

Served with grpc.aio on `extensions.admin.endpoint` when `admin` is listed in
`service.extensions`. With `extensions.admin.token` set, every call needs the metadata
`authorization: Bearer <token>` (compared in constant time); anything else is UNAUTHENTICATED.

The handlers only read the running service's objects (exporters, their queues, dead-letter
stores and sender chains, the derived `ErrorStats`) and call their public operations
(`replay_dead_letters`, `EndpointBreaker.reset`, `wait_empty`). Operator actions are logged
(`"event": "admin_action"`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc import aio

from sidecar.admin.v1 import admin_pb2 as pb
from sidecar.admin.v1 import admin_pb2_grpc as pb_grpc
from sidecar.config.schema import AdminConfig
from sidecar.exporters.sender import Upstream, Verdict
from sidecar.queue.base import QueueClosed
from sidecar.queue.deadletter import DeadLetter, ReplayResult, replay_dead_letters
from sidecar.telemetry.watch import HISTORY_STEP, QueueLag, Watch

if TYPE_CHECKING:
    from sidecar.core.clock import Clock
    from sidecar.exporters.exporter import Exporter
    from sidecar.telemetry.stats import ErrorStats

log = logging.getLogger("sidecar.admin")



class AdminView(Protocol):
    """The part of the running service the admin API reads; the service satisfies it without the admin
    package importing the service (which would make a circle)."""

    exporters: dict[str, Exporter]
    clock: Clock
    started_at: float
    accepting: bool
    error_stats: ErrorStats
    watch: Watch | None

    def readiness(self) -> tuple[bool, dict[str, object]]: ...


DEFAULT_HOTSPOTS = 10
DEFAULT_HOTSPOT_WINDOW = 5
MAX_HOTSPOT_WINDOW = 15
DEFAULT_PAGE = 100
MAX_PAGE = 10_000
DEFAULT_DRAIN_TIMEOUT = 30.0
MAX_DRAIN_TIMEOUT = 3600.0
SKIPPED_PARTIAL_REASON = ("partial successes: the upstream already accepted their other items, so a replay would "
                          "deliver those a second time; set include_partial to replay them anyway")


class _Refused(Exception):
    """A request the API refuses with a status code (turned into `context.abort`)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


# ------------------------------------------------------------------ status


def _endpoint_status(exporter: Exporter) -> list[pb.EndpointStatus]:
    sender = exporter.sender
    out = []
    for ep in sender.endpoints.values():
        balance = max(0.0, ep.budget.balance)
        floor = ep.budget.floor_tokens
        stats = sender.balancer.stats(ep.name)
        health = sender.endpoint_health(ep).value if ep.prober is not None else "unprobed"
        status = pb.EndpointStatus(
            endpoint=ep.name,
            breaker_state=ep.breaker.state.value,
            breaker_seconds_in_state=max(0.0, ep.breaker.time_in_state),
            breaker_recovery_timeout_seconds=ep.breaker.recovery_timeout,
            breaker_trips=ep.breaker.trips,
            consecutive_failures=max(0, int(ep.breaker.consecutive_failures)),
            concurrency_limit=ep.limiter.limit,
            in_flight=max(0, ep.limiter.in_flight),
            retry_budget_tokens=balance + floor,
            retry_budget_deposit_tokens=balance,
            retry_budget_floor_tokens=floor,
            health=health,
            outstanding=max(0, stats.outstanding),
            backoff_base_seconds=float(ep.base.base),
        )
        if stats.ewma_latency is not None:
            status.ewma_latency_seconds = stats.ewma_latency
        out.append(status)
    return out


def _lag_status(lag: QueueLag) -> pb.QueueLag:
    message = pb.QueueLag(size_history=lag.size_history, size_history_step_seconds=HISTORY_STEP)
    if lag.oldest_age is not None:
        message.oldest_age_seconds = lag.oldest_age
    if math.isfinite(lag.time_to_full):
        message.time_to_full_seconds = lag.time_to_full
    if lag.net_rate is not None:
        message.net_fill_rate_per_second = lag.net_rate
    return message


def exporter_status(exporter: Exporter, watch: Watch | None = None) -> pb.ExporterStatus:
    queue = exporter.queue
    queue_cfg = exporter.config.sending_queue
    queue_status = pb.QueueStatus(
        enabled=queue_cfg.enabled,
        storage="file_storage" if queue_cfg.storage else "memory",
        sizer=queue.sizer.value if queue is not None else str(queue_cfg.sizer),
        size=max(0, queue.size) if queue is not None else 0,
        capacity=queue.capacity if queue is not None else int(queue_cfg.queue_size),
        requests=max(0, queue.count) if queue is not None else 0,
        bytes=max(0, queue.bytes) if queue is not None else 0,
        in_flight=max(0, queue.leased) if queue is not None else 0,
    )
    dead = exporter.dead_letters
    dead_summary = pb.DeadLetterSummary(
        count=dead.count if dead is not None else 0,
        bytes=dead.bytes if dead is not None else 0,
        evicted=dead.evicted if dead is not None else 0,
    )
    ladder = exporter.ladder
    status = pb.ExporterStatus(
        name=exporter.name,
        queue=queue_status,
        degradation_level=int(ladder.level) if ladder is not None else 0,
        degradation_cause=ladder.cause if ladder is not None else "normal",
        reachable=exporter.sender.upstream() is Upstream.REACHABLE,
        endpoints=_endpoint_status(exporter),
        dead_letters=dead_summary,
        worsening=_worsening(exporter),
    )
    lag = watch.lag(exporter.name) if watch is not None and queue is not None else None
    if lag is not None:
        status.lag.CopyFrom(_lag_status(lag))
    return status


def _worsening(exporter: Exporter) -> list[pb.Worsening]:
    escalation = exporter.sender.escalation
    return [pb.Worsening(category=w.category, error_type=w.error_type, base_severity=w.base_severity,
                         severity=w.severity, occurrences=w.occurrences, window_seconds=escalation.window)
            for w in escalation.worsening(exporter.clock.monotonic())]


def build_status(service: AdminView, top_hotspots: int = DEFAULT_HOTSPOTS,
                 hotspot_window_minutes: int = DEFAULT_HOTSPOT_WINDOW) -> pb.GetStatusResponse:
    ready, _ = service.readiness()
    watch = service.watch
    response = pb.GetStatusResponse(
        uptime_seconds=max(0.0, service.clock.monotonic() - service.started_at),
        accepting=service.accepting,
        ready=ready,
        exporters=[exporter_status(service.exporters[name], watch) for name in sorted(service.exporters)],
        hotspot_window_minutes=hotspot_window_minutes,
    )
    if watch is not None:
        for anomaly in watch.anomalies():
            item = response.anomalies.add(category=anomaly.category, service=anomaly.service, score=anomaly.score,
                                          active=anomaly.active, errors_per_minute=anomaly.rate_per_minute,
                                          baseline_per_minute=anomaly.baseline_per_minute)
            if anomaly.since is not None:
                item.since = anomaly.since
    response.error_rate_history.extend(service.error_stats.minute_history())
    stats = service.error_stats
    response.stats_since = stats.started_wall
    for rate in stats.error_rates():
        response.error_rates.add(window_minutes=rate.window_minutes, per_minute=rate.per_minute,
                                 errors=rate.errors, export_errors=rate.export_errors,
                                 item_errors=rate.item_errors)
    recovery = stats.recovery()
    response.recovery.outages = recovery.outages
    response.recovery.recovered = recovery.recovered
    response.recovery.ongoing = recovery.ongoing
    if recovery.success_rate is not None:
        response.recovery.success_rate = recovery.success_rate
    if recovery.mean_seconds is not None:
        response.recovery.mean_recovery_seconds = recovery.mean_seconds
    if recovery.max_seconds is not None:
        response.recovery.max_recovery_seconds = recovery.max_seconds
    if recovery.last_seconds is not None:
        response.recovery.last_recovery_seconds = recovery.last_seconds
    for hotspot in stats.top_hotspots(top_hotspots, hotspot_window_minutes):
        key = hotspot.key
        response.hotspots.add(service=key.service, name=key.name, signal=key.signal, category=key.category,
                              error_type=key.error_type, count=hotspot.count, last_seen=hotspot.last_seen)
    response.hotspot_keys_evicted = stats.hotspot_keys_evicted
    return response


def _dead_letter_message(exporter: str, dl: DeadLetter) -> pb.DeadLetter:
    return pb.DeadLetter(
        exporter=exporter, id=dl.id, signal=dl.entry.signal.value, items=dl.entry.items,
        bytes=len(dl.entry.payload), category=dl.category.value, severity=dl.severity.value,
        recoverability=dl.recoverability.value, recovery=dl.recovery.value, error_type=dl.error_type,
        message=dl.message, dead_at=dl.dead_at, accepted_at=dl.entry.accepted_at,
        rejected_items=dl.rejected_items, partial_success=dl.partial)


# ------------------------------------------------------------------ the servicer


class AdminServicer(pb_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, service: AdminView) -> None:
        self.service = service

    def _select(self, name: str) -> list[Exporter]:
        exporters = self.service.exporters
        if not name:
            return [exporters[n] for n in sorted(exporters)]
        if name not in exporters:
            known = ", ".join(sorted(exporters)) or "none"
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"no exporter {name!r} (exporters: {known})")
        return [exporters[name]]

    async def GetStatus(self, request: pb.GetStatusRequest, context: aio.ServicerContext) -> pb.GetStatusResponse:
        window = request.hotspot_window_minutes or DEFAULT_HOTSPOT_WINDOW
        if window > MAX_HOTSPOT_WINDOW:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"hotspot_window_minutes must be 1..{MAX_HOTSPOT_WINDOW} (0 means 5)")
        return build_status(self.service, request.top_hotspots or DEFAULT_HOTSPOTS, window)

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest,
                              context: aio.ServicerContext) -> pb.ListDeadLettersResponse:
        return await _guard(context, self._list(request))

    async def _list(self, request: pb.ListDeadLettersRequest) -> pb.ListDeadLettersResponse:
        limit = min(request.limit or DEFAULT_PAGE, MAX_PAGE)
        skip = request.offset
        response = pb.ListDeadLettersResponse()
        for exporter in self._select(request.exporter):
            store = exporter.dead_letters
            if store is None:
                continue
            response.total += store.count
            if limit <= 0 or skip >= store.count:
                skip = max(0, skip - store.count)
                continue
            page = await store.list(limit=limit, offset=skip)
            skip = 0
            limit -= len(page)
            response.dead_letters.extend(_dead_letter_message(exporter.name, dl) for dl in page)
        return response

    async def ReplayDeadLetters(self, request: pb.ReplayDeadLettersRequest,
                                context: aio.ServicerContext) -> pb.ReplayDeadLettersResponse:
        return await _guard(context, self._replay(request))

    async def _replay(self, request: pb.ReplayDeadLettersRequest) -> pb.ReplayDeadLettersResponse:
        exporters = self._select(request.exporter)
        ids = sorted(set(request.ids))
        if ids and len(exporters) > 1:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           "dead-letter ids are per exporter: name the exporter")
        response = pb.ReplayDeadLettersResponse()
        for exporter in exporters:
            store = exporter.dead_letters
            if store is None:
                continue
            wanted: list[int] | None = None
            if ids:
                present = {dl.id for dl in await store.get(ids)}
                response.missing_ids.extend(i for i in ids if i not in present)
                wanted = sorted(present)
                if not wanted:
                    continue
            if exporter.queue is not None:
                try:
                    result = await replay_dead_letters(store, exporter.queue, wanted,
                                                       include_partial=request.include_partial)
                except QueueClosed:
                    raise _Refused(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"exporter {exporter.name} is shutting down") from None
                exporter.update_queue_gauges()
            else:
                result = await _replay_synchronously(exporter, wanted, request.include_partial)
            response.replayed += result.replayed
            response.replayed_items += result.items
            response.remaining += result.remaining
            response.skipped_partial += result.skipped_partial
            response.skipped_partial_items += result.skipped_partial_items
            log.info("dead letters replayed", extra={
                "event": "admin_action", "action": "replay_dead_letters", "exporter": exporter.name,
                "replayed": result.replayed, "items": result.items, "remaining": result.remaining,
                "skipped_partial": result.skipped_partial, "include_partial": request.include_partial})
        if response.skipped_partial:
            response.skipped_reason = SKIPPED_PARTIAL_REASON
        return response

    async def ResetBreaker(self, request: pb.ResetBreakerRequest,
                           context: aio.ServicerContext) -> pb.ResetBreakerResponse:
        return await _guard(context, self._reset(request))

    async def _reset(self, request: pb.ResetBreakerRequest) -> pb.ResetBreakerResponse:
        response = pb.ResetBreakerResponse()
        for exporter in self._select(request.exporter):
            for ep in exporter.sender.endpoints.values():
                if request.endpoint and ep.name != request.endpoint:
                    continue
                previous = ep.breaker.state.value
                ep.breaker.reset()
                response.reset.add(exporter=exporter.name, endpoint=ep.name, previous_state=previous)
                log.warning("circuit breaker reset by an operator", extra={
                    "event": "admin_action", "action": "reset_breaker", "exporter": exporter.name,
                    "endpoint": ep.name, "from_state": previous})
        if request.endpoint and not response.reset:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"no endpoint {request.endpoint!r}")
        return response

    async def Drain(self, request: pb.DrainRequest, context: aio.ServicerContext) -> pb.DrainResponse:
        return await _guard(context, self._drain(request))

    async def _drain(self, request: pb.DrainRequest) -> pb.DrainResponse:
        exporters = self._select(request.exporter)
        timeout = request.timeout_seconds if request.timeout_seconds > 0 else DEFAULT_DRAIN_TIMEOUT
        timeout = min(timeout, MAX_DRAIN_TIMEOUT)
        clock = self.service.clock
        started = clock.monotonic()
        queues = [(e.name, e.queue) for e in exporters if e.queue is not None]
        results = await asyncio.gather(*(queue.wait_empty(timeout) for _, queue in queues))
        response = pb.DrainResponse(drained=all(results), waited_seconds=max(0.0, clock.monotonic() - started))
        for name, queue in queues:
            response.remaining.add(exporter=name, requests=max(0, queue.count), size=max(0, queue.size),
                                   bytes=max(0, queue.bytes))
        log.info("drain requested", extra={
            "event": "admin_action", "action": "drain", "exporters": [name for name, _ in queues],
            "drained": response.drained, "waited_seconds": round(response.waited_seconds, 3)})
        return response


async def _replay_synchronously(exporter: Exporter, ids: Sequence[int] | None,
                                include_partial: bool) -> ReplayResult:
    """Without a sending queue: send each dead letter now; delivered ones are removed, the first
    failure stops (it and the rest stay dead letters). Partial successes are skipped unless included,
    as `replay_dead_letters` does."""
    store = exporter.dead_letters
    assert store is not None
    letters = await store.get(ids) if ids is not None else await store.list(limit=max(store.count, 1))
    skipped = [dl for dl in letters if dl.partial and not include_partial]
    letters = [dl for dl in letters if include_partial or not dl.partial]
    replayed = items = 0
    for dl in letters:
        report = await exporter.sender.send(dl.entry)
        if report.verdict is not Verdict.DELIVERED:
            break
        await store.remove([dl.id])
        replayed += 1
        items += dl.entry.items
    return ReplayResult(replayed, items, len(letters) - replayed, len(skipped), sum(dl.items for dl in skipped))


async def _guard(context: aio.ServicerContext, work: Awaitable[Any]) -> Any:
    try:
        return await work
    except _Refused as exc:
        code, details = exc.code, exc.details
    await context.abort(code, details)  # outside the `except`: no exception chain kept alive
    raise AssertionError("unreachable: abort raises")


# ------------------------------------------------------------------ auth and the server


def authorized(metadata: Sequence[tuple[str, str | bytes]] | None, token: str) -> bool:
    """Whether the call carries `authorization: Bearer <token>` (constant-time comparison)."""
    expected = f"Bearer {token}".encode()
    for key, value in metadata or ():
        if key.lower() == "authorization":
            given = value.encode() if isinstance(value, str) else bytes(value)
            return hmac.compare_digest(given, expected)
    return False


class BearerTokenInterceptor(aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

        async def deny(request: bytes, context: aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            raise AssertionError("unreachable: abort raises")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        if authorized(metadata, self._token):
            return await continuation(handler_call_details)
        return self._deny


class AdminServer:
    """The grpc.aio server of the admin API; `start()` raises OSError when it cannot listen."""

    def __init__(self, config: AdminConfig, service: AdminView) -> None:
        self.config = config
        self.service = service
        self.server: aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        interceptors = [BearerTokenInterceptor(self.config.token)] if self.config.token else []
        server = aio.server(options=[("grpc.so_reuseport", 0)], interceptors=interceptors)
        pb_grpc.add_AdminServicer_to_server(AdminServicer(self.service), server)
        try:
            self.port = server.add_insecure_port(self.config.endpoint)
        except RuntimeError:  # newer grpcio raise instead of returning 0
            self.port = 0
        if self.port == 0:
            raise OSError(f"extensions.admin.endpoint: cannot listen on {self.config.endpoint} "
                          "(address in use or not available)")
        await server.start()
        self.server = server
        log.info("admin API listening", extra={"endpoint": self.config.endpoint,
                                               "token_required": bool(self.config.token)})

    async def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
