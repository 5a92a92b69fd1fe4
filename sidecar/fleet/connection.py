"""The fleet's Redis connection: commands bounded by a short timeout, and an up/down state.

While Redis answers, `connected` is True. Background commands (refreshes, leases, heartbeats, the
supervisor's ping) are bounded by `BACKGROUND_TIMEOUT`; one that fails or times out marks Redis down at
once (sidecar_fleet_connected 0 and a log event). From then on `call` returns None *without* touching
the network: nothing ever waits on a dead Redis, and every user of the fleet falls back to its local
state. Each shared breaker reads Redis every second (every 0.5 s while its endpoint is open), so a dead or
slow Redis is noticed within 1 s + BACKGROUND_TIMEOUT = 1.5 s. The supervisor pings only when no command
answered for `PING_IDLE` (a connection with nothing else to do: then it is noticed within PING_IDLE +
BACKGROUND_TIMEOUT), and sleeps until then. The refreshes already prove Redis alive, and an unconditional
ping every 0.25 s was 4 of the ~10 commands/s each member sent (bench/RESULTS.md, "Fleet scale").
`PING_IDLE` is two refresh intervals: when it was 0.6 s against refreshes every 0.5 s, a refresh only 0.1 s
late (a busy event loop) already drew a ping, adding work exactly when the process had least to spare. The
one command on the data path (a retry asking the fleet budget) is bounded by the configured
`command_timeout` and, when only too slow, returns None (decide locally) without marking Redis down. While
down the supervisor reconnects with exponential backoff and full jitter; when Redis answers again, the
`on_connected` callbacks resync the shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisClusterException, RedisError

from sidecar.config.schema import FleetConfig
from sidecar.core.clock import Clock
from sidecar.core.tasks import cancel_and_wait
from sidecar.fleet.client import SENTINEL_CHECK_INTERVAL, close, describe, make_client, moved_primary, ping
from sidecar.telemetry.events import Events

log = logging.getLogger(__name__)

T = TypeVar("T")

PING_INTERVAL = 0.25  # the supervisor looks at most this often
PING_IDLE = 2.0  # it pings only when no command answered for this long (two 1 s breaker refreshes)
BACKGROUND_TIMEOUT = 0.5  # nobody waits on these; the 1 s refresh + this keeps the promised 1.5 s
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0

# What a Redis command may raise when Redis or the link goes away. RuntimeError included: redis-py can
# write to a transport uvloop already closed ("the handler is closed") while reconnecting.
# RedisClusterException too (no RedisError): a cluster client whose topology refresh reaches no node raises
# RedisClusterUnreachableError, and SlotNotCoveredError while a slot has no node; both mean "down for now".
FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError, TimeoutError,
                                         ConnectionError, RuntimeError)


class FleetConnection:
    def __init__(self, config: FleetConfig, events: Events, clock: Clock,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.timeout = float(config.command_timeout)
        self.endpoint = describe(config)
        self._events = events
        self._clock = clock
        self._rng = rng or random.Random()
        # Commands on the data path use the short timeout; the supervisor's reconnect a longer one.
        self.client = make_client(config, BACKGROUND_TIMEOUT)
        self.connected = False
        self.ever_connected = False
        self.on_connected: list[Callable[[], Awaitable[None]]] = []
        self.on_disconnected: list[Callable[[], None]] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        self._next_primary_check = 0.0
        self._answered_at = float("-inf")  # local monotonic time of the last command Redis answered

    # ------------------------------------------------------------ commands

    async def call(self, command: Callable[[], Awaitable[T]]) -> T | None:
        """A background command: None when Redis is down, or it failed or was slow (Redis is then down)."""
        if not self.connected:
            return None
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT):
                reply = await command()
        except FAILURES as exc:
            self.mark_down(f"{type(exc).__name__}: {exc}")
            return None
        self._answered_at = self._clock.monotonic()
        return reply

    async def call_fast(self, command: Callable[[], Awaitable[T]]) -> T | None:
        """A command on the data path, bounded by `command_timeout`: None when Redis is down or the command
        failed (Redis is then down) or was too slow (not a verdict on Redis: the supervisor decides that)."""
        if not self.connected:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                reply = await command()
        except TimeoutError:
            return None
        except FAILURES as exc:
            self.mark_down(f"{type(exc).__name__}: {exc}")
            return None
        self._answered_at = self._clock.monotonic()
        return reply

    def mark_down(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            self._events.fleet_connection_changed(False, self.endpoint, reason)
            self._changed.set()
            for forget in list(self.on_disconnected):
                try:
                    forget()
                except Exception:
                    log.exception("fleet disconnect handler failed")

    async def wait_changed(self, timeout: float) -> None:
        """Wait until the up/down state changes, or `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    # ------------------------------------------------------------ supervisor

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="fleet-connection")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        with contextlib.suppress(*FAILURES):
            await close(self.client)

    async def _supervise(self) -> None:
        while True:
            try:
                await self._supervise_until_error()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the supervisor die: it is what brings the fleet back
                log.exception("fleet connection supervisor failed; restarting it")
                self.mark_down("supervisor error")
                await self._clock.sleep(RECONNECT_MIN)

    async def _supervise_until_error(self) -> None:
        delay = RECONNECT_MIN
        while True:
            if self.connected:
                idle = self._clock.monotonic() - self._answered_at
                if idle >= PING_IDLE:
                    await self.call(lambda: ping(self.client))
                    idle = 0.0
                await self._check_primary()
                # Sleep until a ping could be due: a member whose refreshes keep Redis busy is not woken
                # 4 times a second for nothing (it adds up when one machine hosts many members: bench).
                await self.wait_changed(max(PING_INTERVAL, PING_IDLE - idle))
                self._changed.clear()
                continue
            if await self._try_connect():
                delay = RECONNECT_MIN
                continue
            # Full jitter, so a fleet does not reconnect in lockstep after a Redis restart.
            await self._clock.sleep(self._rng.uniform(RECONNECT_MIN / 2, delay))
            delay = min(RECONNECT_MAX, delay * 2)

    async def _check_primary(self) -> None:
        """Sentinel mode: a primary that moved (SENTINEL FAILOVER) counts as a disconnect, so every user
        resyncs with the new one and the pub/sub listener subscribes again (sidecar/fleet/client.py)."""
        now = self._clock.monotonic()
        if self.config.sentinel is None or not self.connected or now < self._next_primary_check:
            return  # (only Sentinel moves a primary behind the client's back)
        self._next_primary_check = now + SENTINEL_CHECK_INTERVAL
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT):
                moved = await moved_primary(self.client)
        except FAILURES:
            return  # sentinels that do not answer say nothing about the primary, which the ping checks
        if moved:
            self.mark_down(f"the sentinels moved the primary to {moved}")

    async def _try_connect(self) -> bool:
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT):
                await ping(self.client)
        except FAILURES as exc:
            if not self.ever_connected and self.reconnects == 0:
                self._events.fleet_not_reachable_yet(self.endpoint, f"{type(exc).__name__}: {exc}")
            self.reconnects += 1
            return False
        self.connected = True
        self.ever_connected = True
        self._answered_at = self._clock.monotonic()
        self._events.fleet_connection_changed(True, self.endpoint)
        self._changed.set()
        for resync in list(self.on_connected):
            try:
                await resync()
            except Exception:
                log.exception("fleet resync failed")
        return True
