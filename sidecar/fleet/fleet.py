"""Fleet mode assembled: one connection, one shared breaker and budget per upstream endpoint, the
pub/sub listener, the heartbeat. The service attaches its senders and starts/stops it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from sidecar.config.schema import FleetConfig
from sidecar.core.clock import Clock
from sidecar.core.signals import Signal
from sidecar.core.tasks import cancel_and_wait
from sidecar.exporters.sender import Sender
from sidecar.fleet.breaker import FleetScripts, SharedBreaker, parse_message
from sidecar.fleet.budget import FleetRetryBudget
from sidecar.fleet.connection import BACKGROUND_TIMEOUT, FAILURES, FleetConnection
from sidecar.fleet.keys import Keys
from sidecar.fleet.membership import Heartbeat, Snapshot
from sidecar.fleet.view import EvidenceRule
from sidecar.telemetry.events import Events

if TYPE_CHECKING:
    from sidecar.exporters.exporter import Exporter
    from sidecar.fleet.handoff import Handoff

log = logging.getLogger(__name__)

# The pub/sub listener waits this long for a message before it looks at the connection's state again. A
# broken connection raises at once; this only bounds how long a subscription outlives Redis being marked
# down for slowness (harmless: messages are applied by generation). Each wake-up costs a member ~0.1 ms,
# which adds up when one machine hosts many members (bench/fleet_scale.py).
LISTEN_POLL = 2.0


# A heartbeat that no refresh carried for this many intervals goes on its own (3 missed make a member gone).
HEARTBEAT_LATE = 1.5


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def evidence_rule(config: FleetConfig) -> EvidenceRule:
    return EvidenceRule(failure_ratio=float(config.failure_ratio), minimum_calls=int(config.minimum_calls))


class Fleet:
    def __init__(self, config: FleetConfig, events: Events, clock: Clock, snapshot: Snapshot) -> None:
        self.config = config
        self.instance = config.instance_id or default_instance_id()
        self.keys = Keys(config.key_prefix)
        self.conn = FleetConnection(config, events, clock)
        self.scripts = FleetScripts(self.conn)
        self._events = events
        self._clock = clock
        self.breakers: dict[str, SharedBreaker] = {}
        self.budgets: dict[str, FleetRetryBudget] = {}
        self.heartbeat = Heartbeat(self.instance, float(config.heartbeat_interval), self.conn, self.scripts,
                                   self.keys, events, snapshot, endpoints=lambda: list(self.breakers))
        self._tasks: list[asyncio.Task[None]] = []
        self.conn.on_connected.append(self._resync)
        self.handoff: Handoff | None = None
        if config.handoff.enabled:
            from sidecar.fleet.handoff import Handoff

            self.handoff = Handoff(config, self.conn, self.keys, self.instance, events, clock)
        events.fleet_members(0)

    def attach(self, exporter: str, sender: Sender) -> None:
        """Share the breakers, probing and retry budget of every endpoint of one exporter."""
        for chain in sender.endpoints.values():
            shared = self.breakers.get(chain.name)
            if shared is None:
                shared = SharedBreaker(chain.name, self.conn, self.scripts, self.keys, self.instance,
                                       self._events, self._clock, evidence_rule(self.config),
                                       float(self.config.probe_interval))
                self.breakers[chain.name] = shared
                self.conn.on_disconnected.append(shared.disconnected)
            shared.attach(chain.breaker, chain.prober)
            budget = self.budgets.get(chain.name)
            if budget is None:
                budget = FleetRetryBudget(chain.name, sender.config.retry_on_failure.budget, self.conn,
                                          self.scripts, self.keys)
                self.budgets[chain.name] = budget
            chain.shared_budget = budget
            shared.budget = budget  # its deposits ride on the breaker's refresh
            if not any(b.rider is not None for b in self.breakers.values()):
                shared.rider = self.heartbeat  # so does the heartbeat, on one endpoint's
            self._events.fleet_endpoint_added(exporter, chain.name)

    def attach_handoff(self, exporter: Exporter, signals: set[Signal]) -> None:
        """The exporter hands its backlog to the fleet when it stops, and delivers others' (handoff on)."""
        if self.handoff is not None:
            self.handoff.attach(exporter, signals)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.conn.start()
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("fleet-pubsub", self._listen), ("fleet-heartbeat", self._heartbeats)]
        loops += [(f"fleet-breaker {name}", shared.run) for name, shared in self.breakers.items()]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(run(), name=name) for name, run in loops]
        if self.handoff is not None:
            self.handoff.start()

    async def stop_claiming(self) -> None:
        """Shutdown begins: claim no more handed-off entries (the exporters stop next)."""
        if self.handoff is not None:
            await self.handoff.stop_claiming()

    async def stop(self) -> None:
        """Leave the fleet (free leases, drop the heartbeat) while Redis answers, then stop everything."""
        try:
            for shared in self.breakers.values():
                await shared.release()
            await self.heartbeat.leave()
        except Exception:  # leaving is a courtesy; the TTLs clean up after a sidecar that could not
            log.exception("leaving the fleet failed")
        await cancel_and_wait(self._tasks)
        if self.handoff is not None:
            await self.handoff.close()
        for shared in self.breakers.values():
            await shared.stop()
        await self.conn.stop()

    async def _resync(self) -> None:
        for shared in self.breakers.values():
            await shared.resync()
        await self.heartbeat.beat(self._clock.monotonic())

    # ------------------------------------------------------------ loops

    async def _listen(self) -> None:
        """Breaker changes by pub/sub; a fresh subscription after every reconnect."""
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet pub/sub listener failed; restarting it")
                await self._clock.sleep(0.1)

    async def _listen_once(self) -> None:
        while True:
            if not self.conn.connected:
                await self._clock.sleep(0.05)
                continue
            pubsub = self.conn.client.pubsub()
            try:
                async with asyncio.timeout(BACKGROUND_TIMEOUT):
                    await pubsub.subscribe(self.keys.channel)
                while self.conn.connected:
                    async with asyncio.timeout(LISTEN_POLL + BACKGROUND_TIMEOUT):
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(str(message.get("data", "")))
            except FAILURES as exc:
                self.conn.mark_down(f"pub/sub: {type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(*FAILURES):
                    await pubsub.aclose()

    def _dispatch(self, data: str) -> None:
        parsed = parse_message(data)
        if parsed is None:
            log.warning("unreadable fleet message %r", data[:200])
            return
        endpoint, record = parsed
        shared = self.breakers.get(endpoint)
        if shared is not None:
            shared.on_message(record)

    async def _heartbeats(self) -> None:
        """The heartbeat rides on an endpoint's refresh; it goes on its own when nothing carried it for
        HEARTBEAT_LATE intervals (a loop that fell behind), or every interval in a fleet with no endpoint."""
        interval = float(self.config.heartbeat_interval)
        while True:
            late = HEARTBEAT_LATE if self.breakers else 1.0
            now = self._clock.monotonic()
            wait = self.heartbeat.sent_at + late * interval - now
            if wait <= 0:
                try:
                    await self.heartbeat.beat(now)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("fleet heartbeat failed")
                wait = interval
            await self._clock.sleep(wait)
