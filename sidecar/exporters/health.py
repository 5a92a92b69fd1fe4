"""Active health probing of one endpoint (DESIGN.md §4).

Every `interval` the prober calls ``transport.probe(timeout)`` (an empty Export request, or the
Collector's health_check URL when the transport was configured with one). The endpoint becomes
unhealthy after `unhealthy_threshold` consecutive failed probes and healthy again after
`healthy_threshold` consecutive successful ones; it starts healthy (a sidecar that just started
buffers happily, it need not wait for a probe to be ready).

It feeds the endpoint's breaker: a successful probe while the breaker is open lets it go
half-open at once (real traffic then decides), and every failed probe records a failure, except
that when a classifier is given only transient (retryable/temporary) failures do, as for real
calls. `healthy` is what /ready looks at; `on_change(endpoint, healthy)` is called on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sidecar.clock import Clock
from sidecar.config.schema import HealthProbeConfig
from sidecar.exporters.breaker import EndpointBreaker
from sidecar.exporters.errors import ExportError, ExportFailure
from sidecar.exporters.retry import ExportClassifier
from sidecar.exporters.transport import Transport

log = logging.getLogger(__name__)


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
        self._clock = clock
        self._breaker = breaker
        self._on_change = on_change
        self._classifier = classifier
        self.healthy = True
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.probes = 0
        self.last_error: str | None = None
        self.last_probe_at: float | None = None
        self._task: asyncio.Task[None] | None = None

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

    def start(self) -> None:
        if not self.config.enabled or self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"health-probe {self.endpoint}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        interval = float(self.config.interval)
        while True:
            await self._clock.sleep(interval)
            try:
                await self.probe_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep probing whatever happens
                log.exception("health probe of %s failed unexpectedly", self.endpoint)

    def _succeeded(self) -> None:
        self.consecutive_successes += 1
        self.consecutive_failures = 0
        self.last_error = None
        if self._breaker is not None:
            self._breaker.probe_succeeded()
        if not self.healthy and self.consecutive_successes >= self.config.healthy_threshold:
            self._set(True)

    def _failed(self, failure: ExportFailure) -> None:
        self.consecutive_failures += 1
        self.consecutive_successes = 0
        self.last_error = ExportError(failure).describe()
        if self._breaker is not None:
            transient = True
            if self._classifier is not None:
                transient = self._classifier.classify_export(failure).retryable
            if transient:
                self._breaker.record_failure()
        if self.healthy and self.consecutive_failures >= self.config.unhealthy_threshold:
            self._set(False)

    def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        log.info("endpoint %s is %s", self.endpoint, "healthy" if healthy else "unhealthy")
        if self._on_change is not None:
            try:
                self._on_change(self.endpoint, healthy)
            except Exception:
                log.exception("health change listener failed")
