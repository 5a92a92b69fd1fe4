"""Active health probing of one endpoint (DESIGN.md §4).

The prober calls ``transport.probe(timeout)`` (an empty Export request) or, when
`health_check_url` is set, GETs the Collector's health_check extension (health_url.py), once at
start-up and then every `interval`. The endpoint is `unknown` until its first probe answers, never
healthy by assumption: an operator gating on /ready/upstream must not be told a Collector that never answered is there.
The first answer decides directly; after that it becomes unhealthy after `unhealthy_threshold`
consecutive failed probes and healthy again after `healthy_threshold` consecutive successful ones.
(Readiness of the sidecar itself, /ready, does not look at this: buffering through an upstream
outage is the sidecar's job, see service.readiness.)

It feeds the endpoint's breaker: a successful probe while the breaker is open lets it go
half-open at once (real traffic then decides), and every failed probe records a failure, except
that when a classifier is given only transient (retryable/temporary) failures do, as for real
calls. `state` is what /ready/upstream looks at; `on_change(endpoint, healthy)` is called on every change.

Fleet mode sets `may_probe`: while the fleet has the endpoint open, scheduled probes are skipped and
only the holder of the fleet's probe lease probes (it calls `probe_once` itself, at the fleet's
pace). Without it the prober behaves exactly as before.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.config.schema import HealthProbeConfig
from sidecar.core.clock import Clock
from sidecar.core.errors import ExportError, ExportFailure
from sidecar.core.tasks import cancel_and_wait
from sidecar.exporters.breaker import EndpointBreaker
from sidecar.exporters.retry import ExportClassifier
from sidecar.exporters.transport import Transport

if TYPE_CHECKING:
    from sidecar.exporters.health_url import HealthCheckUrl

log = logging.getLogger(__name__)


class EndpointHealth(enum.StrEnum):
    UNKNOWN = "unknown"  # no probe has answered yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class HealthProber:
    def __init__(
        self,
        transport: Transport,
        config: HealthProbeConfig,
        clock: Clock,
        breaker: EndpointBreaker | None = None,
        on_change: Callable[[str, bool], None] | None = None,
        classifier: ExportClassifier | None = None,
    ) -> None:
        self.transport = transport
        self.endpoint = transport.endpoint
        self.config = config
        self.url_check = self._url_check(config)
        self._clock = clock
        self._breaker = breaker
        self._on_change = on_change
        self._classifier = classifier
        self.state = EndpointHealth.UNKNOWN
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.probes = 0
        self.last_error: str | None = None
        self.last_probe_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.may_probe: Callable[[], bool] | None = None
        self.skipped = 0  # scheduled probes left to the fleet's prober

    @property
    def healthy(self) -> bool:
        return self.state is EndpointHealth.HEALTHY

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def probe_once(self) -> bool:
        """Probe now; returns whether the probe succeeded. Updates health and the breaker."""
        self.probes += 1
        self.last_probe_at = self._clock.monotonic()
        timeout = float(self.config.timeout)
        failure: ExportFailure | None = None
        try:
            async with asyncio.timeout(timeout):
                if self.url_check is not None:
                    await self.url_check.check(timeout)
                else:
                    await self.transport.probe(timeout)
        except TimeoutError:
            failure = ExportFailure(client_error="timeout", message=f"probe timed out after {timeout}s")
        except ExportError as exc:
            failure = exc.failure
        except Exception as exc:  # a broken transport must not kill the probe loop
            log.warning("health probe of %s raised %r", self.endpoint, exc)
            failure = ExportFailure(client_error="internal", message=repr(exc)[:200])
        if failure is None:
            self._succeeded()
            return True
        self._failed(failure)
        return False

    def _url_check(self, config: HealthProbeConfig) -> HealthCheckUrl | None:
        if not config.health_check_url:
            return None
        from sidecar.exporters.health_url import HealthCheckUrl, health_url_for  # aiohttp only when a URL is set

        return HealthCheckUrl(health_url_for(config.health_check_url, self.endpoint))

    async def reconfigure(self, config: HealthProbeConfig) -> None:
        """New settings in place (a SIGHUP reload). The health found so far stays; a running loop
        restarts on the new settings (probing at once), or stays stopped when `enabled` turned false."""
        if config == self.config:
            return
        was_running = self.running
        await self.stop()  # also closes the old URL check's session
        self.config = config
        self.url_check = self._url_check(config)
        if was_running:
            self.start()

    def start(self) -> None:
        if not self.config.enabled or self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"health-probe {self.endpoint}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if self.url_check is not None:
            await self.url_check.close()

    async def _run(self) -> None:
        interval = float(self.config.interval)
        while True:
            try:
                if self._probe_allowed():
                    await self.probe_once()
                else:
                    self.skipped += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # keep probing whatever happens
                log.exception("health probe of %s failed unexpectedly", self.endpoint)
            await self._clock.sleep(interval)

    def _probe_allowed(self) -> bool:
        if self.may_probe is None:
            return True
        try:
            return self.may_probe()
        except Exception:  # fleet mode is an accelerator: a bug there must not stop probing
            log.exception("probe gate failed; probing anyway")
            return True

    def _succeeded(self) -> None:
        self.consecutive_successes += 1
        self.consecutive_failures = 0
        self.last_error = None
        if self._breaker is not None:
            self._breaker.probe_succeeded()
        if self.state is EndpointHealth.UNKNOWN or (
                self.state is EndpointHealth.UNHEALTHY
                and self.consecutive_successes >= self.config.healthy_threshold):
            self._set(EndpointHealth.HEALTHY)

    def _failed(self, failure: ExportFailure) -> None:
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        self.last_error = ExportError(failure).describe()
        if self._breaker is not None:
            classification = self._classifier.classify_export(failure) if self._classifier is not None else None
            if classification is None or classification.retryable:
                self._breaker.record_failure(classification)
        if self.state is EndpointHealth.UNKNOWN or (
                self.state is EndpointHealth.HEALTHY
                and self.consecutive_failures >= self.config.unhealthy_threshold):
            self._set(EndpointHealth.UNHEALTHY)

    def _set(self, state: EndpointHealth) -> None:
        self.state = state
        if self._on_change is not None:
            try:
                self._on_change(self.endpoint, state is EndpointHealth.HEALTHY)
            except Exception:
                log.exception("health change listener failed")
