"""Wiring and lifecycle: build every component from the config in one place, start, stop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal as os_signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from sidecar import __version__
from sidecar.config import ConfigError, load_config
from sidecar.config.schema import (
    ClassifyProcessorConfig,
    Config,
    DegradationProcessorConfig,
    EnrichProcessorConfig,
    component_kind,
)
from sidecar.core.clock import SYSTEM_CLOCK, Clock
from sidecar.core.errors import ExportFailure
from sidecar.core.signals import Signal
from sidecar.exporters.exporter import Exporter, build_exporter
from sidecar.exporters.sender import Upstream
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.degrade import DegradationLadder
from sidecar.pipeline.router import Pipeline, Router
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.reload import ClassifierHandle, plan_reload
from sidecar.runtime import IdleMemoryRelease
from sidecar.telemetry.anomaly import AnomalySettings
from sidecar.telemetry.events import Events
from sidecar.telemetry.http import HttpEndpoint, health_routes, metrics_routes
from sidecar.telemetry.logs import setup_logging
from sidecar.telemetry.metrics import Metrics, ReloadResult
from sidecar.telemetry.stats import ErrorStats
from sidecar.telemetry.watch import Watch
from sidecar.tls import check_config as check_tls_files

if TYPE_CHECKING:
    from sidecar.admin.server import AdminServer
    from sidecar.fleet.fleet import Fleet
    from sidecar.receivers.otlp_http import OtlpHttpReceiver

log = logging.getLogger("sidecar.service")


# The failures an exporter expects, whose classes start at 0 in sidecar_errors_total and
# sidecar_exporter_send_failed_*: the OTLP spec's retryable answers and the usual client-side errors.
_CLIENT_FAILURES = (ExportFailure(client_error="connection_refused"), ExportFailure(client_error="timeout"))
EXPECTED_GRPC_FAILURES = (*(ExportFailure(grpc_code=code) for code in (
    "CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS", "RESOURCE_EXHAUSTED")),
    *_CLIENT_FAILURES)
EXPECTED_HTTP_FAILURES = (*(ExportFailure(http_status=status) for status in (429, 502, 503, 504)), *_CLIENT_FAILURES)


class StartupError(Exception):
    """The sidecar cannot start (port in use, unreadable queue database, ...): a clear one-line reason."""


class Service:
    def __init__(self, config: Config, clock: Clock = SYSTEM_CLOCK, recover: bool = False) -> None:
        self.config = config
        self.clock = clock
        self.recover = recover
        self.metrics = Metrics()
        self.events = Events(self.metrics, clock)
        self.exporters: dict[str, Exporter] = {}
        self.receivers: list[OtlpGrpcReceiver | OtlpHttpReceiver] = []
        self.endpoints: list[HttpEndpoint] = []
        self.accepting = False
        self.stopping_started = False  # set once shutdown begins: /ready answers 503 "stopping" from then on
        self.stopping = asyncio.Event()
        self.pipelines: dict[str, Pipeline] = {}
        self.classifier_handle = ClassifierHandle(self.export_classifier(config))
        self.started_at = clock.monotonic()
        # Derived figures of the admin API, the recovery ratio gauge and the per-service anomaly scores: fed
        # by the senders, and by the router (item errors, hotspots) when the admin API or the per-service
        # scores read them.
        self.error_stats = ErrorStats(clock)
        self.admin: AdminServer | None = None
        self._reloading: asyncio.Task[bool] | None = None
        self.watch: Watch | None = None
        self.router: Router | None = None
        self.fleet: Fleet | None = None
        self.memory_release = IdleMemoryRelease()  # freed heap back to the OS once quiet after a burst

    # ------------------------------------------------------------------ building

    @staticmethod
    def export_classifier(config: Config) -> Classifier:
        """Export errors are classified with the `classify` processor's rules when one is configured."""
        for name, processor in config.processors.items():
            if component_kind(name) == "classify" and isinstance(processor, ClassifyProcessorConfig):
                return Classifier(processor)
        return Classifier(ClassifyProcessorConfig())

    @staticmethod
    def pipeline_processors(config: Config, pipeline_name: str) -> tuple[
            ClassifyProcessorConfig | None, EnrichProcessorConfig | None, DegradationProcessorConfig | None]:
        classify_cfg = enrich_cfg = degrade_cfg = None
        for processor_name in config.service.pipelines[pipeline_name].processors:
            processor = config.processors[processor_name]
            if isinstance(processor, ClassifyProcessorConfig):
                classify_cfg = processor
            elif isinstance(processor, EnrichProcessorConfig):
                enrich_cfg = processor
            elif isinstance(processor, DegradationProcessorConfig):
                degrade_cfg = processor
        return classify_cfg, enrich_cfg, degrade_cfg

    @staticmethod
    def anomaly_settings(config: Config) -> tuple[AnomalySettings, float]:
        """The detector's settings and its interval in seconds, from `service.telemetry.anomaly`."""
        anomaly = config.service.telemetry.anomaly
        return (AnomalySettings(alpha=anomaly.alpha, threshold=anomaly.threshold, clear=anomaly.clear,
                                warmup=anomaly.warmup, min_std=anomaly.min_std), float(anomaly.interval))

    def _storage_directory(self) -> Path | None:
        file_storage = self.config.extensions.file_storage
        return Path(file_storage.directory) if file_storage is not None else None

    def build(self) -> Router:
        classifier = self.classifier_handle
        storage = self._storage_directory()
        admin = self.config.extensions.admin
        admin_on = admin is not None and "admin" in self.config.service.extensions
        processors = {name: self.pipeline_processors(self.config, name) for name in self.config.service.pipelines}
        # An exporter in several pipelines takes the degradation ladder of the first one that has one.
        ladders: dict[str, DegradationProcessorConfig] = {}
        for pipeline_name, spec in self.config.service.pipelines.items():
            degrade_cfg = processors[pipeline_name][2]
            if degrade_cfg is not None:
                for exporter_name in spec.exporters:
                    ladders.setdefault(exporter_name, degrade_cfg)
        used = {name for p in self.config.service.pipelines.values() for name in p.exporters}
        for name in sorted(used):
            self.exporters[name] = build_exporter(
                name, self.config.exporters[name], storage, classifier, self.events, self.clock,
                memory_limit_mib=self.config.service.memory_limit_mib, recover=self.recover,
                error_stats=self.error_stats, degradation=ladders.get(name))
        pipelines = []
        for pipeline_name, spec in self.config.service.pipelines.items():
            classify_cfg, enrich_cfg, degrade_cfg = processors[pipeline_name]
            pipelines.append(Pipeline(
                name=pipeline_name,
                signal=Signal(component_kind(pipeline_name)),
                receivers=list(spec.receivers),
                exporters=[self.exporters[e] for e in spec.exporters],
                classifier=Classifier(classify_cfg or ClassifyProcessorConfig()) if enrich_cfg else None,
                enrich=enrich_cfg,
                degradation=degrade_cfg,
            ))
        self.pipelines = {p.name: p for p in pipelines}
        # The router's item errors (hotspots, per-service totals) feed the admin API and the per-service
        # anomaly scores; without either, nothing reads them and they are not collected.
        top_services = self.config.service.telemetry.anomaly.top_services
        router = self.router = Router(pipelines, self.events, self.clock,
                                      self.error_stats if admin_on or top_services else None)
        self.watch = Watch(self.events, self.clock, lambda: self.exporters, self.error_stats,
                           *self.anomaly_settings(self.config), top_services=top_services)
        used_receivers = {name for p in self.config.service.pipelines.values() for name in p.receivers}
        for name in sorted(used_receivers):
            receiver = self.config.receivers[name]
            token = receiver.auth.bearer_token if receiver.auth else None
            signals = {p.signal for p in pipelines if name in p.receivers}
            if receiver.protocols.grpc is not None:
                self.receivers.append(OtlpGrpcReceiver(name, receiver.protocols.grpc, router,
                                                       receiver.include_metadata, token))
                self.events.receiver_declared(name, "grpc", signals)
            if receiver.protocols.http is not None:
                from sidecar.receivers.otlp_http import OtlpHttpReceiver  # aiohttp's server only when used

                self.receivers.append(OtlpHttpReceiver(name, receiver.protocols.http, router,
                                                       receiver.include_metadata, token))
                self.events.receiver_declared(name, "http", signals)
        for name in self.exporters:
            self.events.exporter_declared(name, {p.signal for p in pipelines
                                                 if any(e.name == name for e in p.exporters)})
        health = self.config.extensions.health_check
        if health is not None and "health_check" in self.config.service.extensions:
            self.endpoints.append(HttpEndpoint(health.endpoint,
                                               health_routes(self.readiness, self.upstream_readiness)))
        metrics_address = self.config.service.telemetry.metrics.address
        if metrics_address:
            self.endpoints.append(HttpEndpoint(metrics_address, metrics_routes(self.metrics.registry)))
        if admin is not None and admin_on:
            from sidecar.admin.server import AdminServer  # the generated gRPC code only when used

            self.admin = AdminServer(admin, self)
        fleet = self.config.extensions.fleet
        if fleet is not None and "fleet" in self.config.service.extensions:
            from sidecar.fleet.fleet import Fleet  # redis only when fleet mode is on

            self.fleet = Fleet(fleet, self.events, self.clock, self.fleet_snapshot)
            for exporter_name, exporter in self.exporters.items():
                self.fleet.attach(exporter_name, exporter.sender)
                self.fleet.attach_handoff(exporter, {p.signal for p in pipelines if exporter in p.exporters})
        self._start_known_series()
        return router

    def _start_known_series(self) -> None:
        """The export failures an exporter expects start at 0 by class, so every family listed in docs/metrics.md
        has samples from the first scrape (a rate() over a series that appears only with its first increment
        misses that increment). Receivers, exporters and endpoints declare their own series as they are built."""
        for spec_name, spec in self.config.service.pipelines.items():
            signal = Signal(component_kind(spec_name))
            for exporter_name in spec.exporters:
                http = component_kind(exporter_name) == "otlp_http"
                failures = EXPECTED_HTTP_FAILURES if http else EXPECTED_GRPC_FAILURES
                classes = [self.classifier_handle.classify_export(failure) for failure in failures]
                self.events.exporter_route_added(exporter_name, signal, classes)

    def fleet_snapshot(self) -> dict[str, object]:
        """What this sidecar's fleet heartbeat carries (read by `status --fleet`)."""
        exporters: dict[str, object] = {}
        for name, exporter in self.exporters.items():
            health = exporter.health()
            endpoints = health.get("endpoints")
            exporters[name] = {
                "queue_size": health["queue_size"],
                "queue_capacity": health["queue_capacity"],
                "degradation_level": health["degradation_level"],
                "breakers": {str(ep["endpoint"]): ep["breaker"] for ep in endpoints}
                if isinstance(endpoints, list) else {},
            }
        return {"version": __version__, "pid": os.getpid(), "host": socket.gethostname(),
                "uptime": round(self.clock.monotonic() - self.started_at, 1),
                "accepting": self.accepting, "exporters": exporters}

    # ------------------------------------------------------------------ reload

    def reload(self, path: str) -> asyncio.Task[bool]:
        """SIGHUP (a signal handler, so synchronous): run `reload_config` as a task, one reload at a time."""
        previous = self._reloading

        async def run() -> bool:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            return await self.reload_config(path)

        self._reloading = asyncio.get_running_loop().create_task(run(), name="config-reload")
        return self._reloading

    async def reload_config(self, path: str) -> bool:
        """Validate first; apply processors, the log level and exporters' retry, breaker, concurrency,
        timeout, headers and health-probe settings in place; keep the old config on error."""
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.events.config_reloaded("invalid")
            log.error("config reload failed; the running configuration is kept",
                      extra={"event": "config_reload", "result": "invalid", "errors": exc.errors})
            return False
        plan = plan_reload(self.config, new)
        if plan.processors_changed:
            self.classifier_handle.current = self.export_classifier(new)
            for name, pipeline in self.pipelines.items():
                if name not in new.service.pipelines:
                    continue
                classify_cfg, enrich_cfg, degrade_cfg = self.pipeline_processors(new, name)
                pipeline.enrich = enrich_cfg
                pipeline.classifier = Classifier(classify_cfg or ClassifyProcessorConfig()) if enrich_cfg else None
                pipeline.degradation = degrade_cfg
                if degrade_cfg is not None:
                    for exporter in pipeline.exporters:
                        if isinstance(exporter, Exporter):
                            exporter.ladder = DegradationLadder(degrade_cfg)
        if plan.log_level_changed:
            logs = new.service.telemetry.logs
            setup_logging(logs.level, logs.encoding)
        exporters = dict(self.config.exporters)
        not_applied: list[str] = []
        for name, exporter_config in plan.exporters_changed.items():
            try:
                if name in self.exporters:
                    await self.exporters[name].reconfigure(exporter_config)
            except Exception:  # a bug must not take the reload (or the process) down; say what is not applied
                log.exception("reconfiguring an exporter failed", extra={"exporter": name})
                not_applied.append(f"exporters.{name}")
                continue
            exporters[name] = exporter_config
        if plan.anomaly_changed and self.watch is not None:
            settings, interval = self.anomaly_settings(new)
            top_services = new.service.telemetry.anomaly.top_services
            self.watch.reconfigure(settings, interval, top_services)
            if self.router is not None:
                admin_on = self.admin is not None
                self.router.error_stats = self.error_stats if admin_on or top_services else None
        applied = dataclasses.replace(
            self.config, processors=new.processors, exporters=exporters,
            service=msgspec.structs.replace(self.config.service, telemetry=msgspec.structs.replace(
                self.config.service.telemetry, logs=new.service.telemetry.logs,
                anomaly=new.service.telemetry.anomaly)))
        if plan.processors_changed:
            pipelines = {name: msgspec.structs.replace(p, processors=new.service.pipelines[name].processors)
                         if name in new.service.pipelines else p
                         for name, p in self.config.service.pipelines.items()}
            applied = dataclasses.replace(applied, service=msgspec.structs.replace(applied.service,
                                                                                    pipelines=pipelines))
        self.config = applied
        needs_restart = plan.needs_restart + not_applied
        result: ReloadResult = "applied" if not needs_restart else "partial"
        self.events.config_reloaded(result)
        log.info("config reloaded", extra={
            "event": "config_reload", "result": result, "processors_changed": plan.processors_changed,
            "log_level_changed": plan.log_level_changed, "anomaly_changed": plan.anomaly_changed,
            "exporters_reconfigured": sorted(
                name for name in plan.exporters_changed if f"exporters.{name}" not in not_applied),
            "not_applied_need_restart": needs_restart})
        return True

    # ------------------------------------------------------------------ lifecycle

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """/ready: can this sidecar accept data now? Start-up done (the disk queue replayed), receivers
        listening, not shutting down.

        The upstream is deliberately left out. The sidecar runs in the application's pod, and a pod is
        Ready only when all its containers are: gating on the Collector would take every application
        out of its Service during a Collector outage, exactly when the sidecar should be buffering
        (and it still answers clients under backpressure, with a status they retry). The per-exporter
        detail, upstream reachability included, is in the body; /ready/upstream gates on it.
        """
        phase = "stopping" if self.stopping_started else ("running" if self.accepting else "starting")
        ready = phase == "running"
        # A failing disk does not make the sidecar unready: it still accepts (into memory, within
        # memory_limit_mib) and pushes back with a retryable status only when that is full too.
        degraded = {name: reason for name, exporter in self.exporters.items()
                    if (reason := exporter.storage_degraded()) is not None}
        return ready, {"phase": phase, "accepting": self.accepting, "storage_degraded": degraded,
                       "exporters": self._exporter_health()}

    def upstream_readiness(self) -> tuple[bool, dict[str, object]]:
        """/ready/upstream: every exporter has at least one endpoint a probe found healthy (an endpoint
        no probe has answered yet is `unknown`, which is not reachable)."""
        exporters = self._exporter_health()
        ready = bool(exporters) and all(detail["upstream"] == Upstream.REACHABLE for detail in exporters.values())
        return ready, {"exporters": exporters}

    def _exporter_health(self) -> dict[str, dict[str, object]]:
        return {name: exporter.health() for name, exporter in self.exporters.items()}

    async def start(self) -> None:
        tls_errors = check_tls_files(self.config)  # an expired or mismatched certificate: refuse now, not per handshake
        if tls_errors:
            raise StartupError("\n  ".join(tls_errors))
        self.build()
        try:
            # Health endpoints first: /health is alive and /ready answers 503 "starting" while a large
            # disk queue is replayed, instead of refusing connections (a probe that cannot connect
            # looks like a dead process).
            for endpoint in self.endpoints:
                await endpoint.start()
            for exporter in self.exporters.values():
                await exporter.start()
            for receiver in self.receivers:
                await receiver.start()
            if self.admin is not None:
                await self.admin.start()
            if self.fleet is not None:
                self.fleet.start()
        except OSError as exc:
            await self.shutdown()
            raise StartupError(str(exc)) from None
        self.accepting = True
        if self.watch is not None:
            self.watch.start()
        self.memory_release.start()
        log.info("sidecar started", extra={"receivers": [r.config.endpoint for r in self.receivers],
                                          "exporters": list(self.exporters)})

    async def shutdown(self) -> None:
        """Readiness false, receivers stop, queues drain for up to shutdown_timeout, the rest is accounted."""
        self.stopping_started = True
        self.accepting = False
        timeout = float(self.config.service.shutdown_timeout)
        for receiver in self.receivers:
            await receiver.stop(grace=min(5.0, timeout))
        if self.fleet is not None:
            await self.fleet.stop_claiming()  # a departing sidecar takes no more of the fleet's handoff
        await asyncio.gather(*(e.shutdown(timeout) for e in self.exporters.values()))
        if self.watch is not None:
            await self.watch.stop()
        await self.memory_release.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        for endpoint in self.endpoints:
            await endpoint.stop()
        if self.admin is not None:
            await self.admin.stop()
        log.info("sidecar stopped")


async def run_service(config: Config, recover: bool = False, config_path: str | None = None) -> int:
    service = Service(config, recover=recover)
    try:
        await service.start()
    except Exception as exc:
        if isinstance(exc, StartupError):
            raise
        raise StartupError(str(exc)) from exc
    loop = asyncio.get_running_loop()
    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        loop.add_signal_handler(sig, service.stopping.set)
    if config_path is not None:
        loop.add_signal_handler(os_signal.SIGHUP, service.reload, config_path)
    await service.stopping.wait()
    log.info("shutdown requested")
    await service.shutdown()
    # Everything is drained or persisted: a further SIGTERM/SIGINT (a supervisor asking again) must not meet
    # the default handler once the loop has closed, and turn a clean exit into "killed by signal".
    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        loop.remove_signal_handler(sig)
        os_signal.signal(sig, os_signal.SIG_IGN)
    return 0
