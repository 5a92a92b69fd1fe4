"""Redis as fleet mode uses it, in memory: the breaker record, the probe lease with its expiry and the
failure reports, with the semantics of the Lua scripts and of SET NX PX in sidecar/fleet/scripts.py
(tests/unit/test_fleet_redis.py checks the scripts themselves against a real redis-server), behind the
interfaces `SharedBreaker` uses (FleetScripts, the client, FleetConnection)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sidecar.fleet.view import MAX_WINDOW, EvidenceRule, Record, Report
from tests.fakes.clock import FakeClock

T = TypeVar("T")


@dataclass
class Store:
    """Redis as the fleet uses it: the breaker record and the lease, with its expiry."""

    clock: FakeClock
    publish: Callable[[Record], None]
    base: float  # the open period of a first trip (seconds), as the sidecars pass it
    max_timeout: float  # the open period's cap
    members: int  # of the endpoint
    open: bool = False
    timeout: float = 0.0
    until: float = 0.0
    gen: int = 0
    holder: str | None = None
    lease_expires: float = 0.0
    rule: EvidenceRule = field(default_factory=EvidenceRule)
    # the fleet's request rate as the budget's counts would give it: a quiet fleet's, 4 requests/s (a 4.9 s
    # window with the default rule), known (0: unknown, EvidenceRule.tally)
    rate: float = 4.0
    reports: list[tuple[float, Report]] = field(default_factory=list)  # (when, report)
    gen_opened: int = 0  # the generation of the last open from closed (an outage, for the model's cadence check)
    opened_by_evidence: list[list[str]] = field(default_factory=list)  # the reporters in the window of each

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def lease_holder(self) -> str | None:
        if self.holder is not None and self.now >= self.lease_expires:
            self.holder = None  # PX expired
        return self.holder

    def reply(self) -> list[Any]:
        remaining = max(0.0, self.until - self.now) if self.open else 0.0
        return ["open" if self.open else "closed", int(remaining * 1000), int(self.timeout * 1000), self.gen]

    def do_open(self, reopen: bool, instance: str) -> list[Any]:
        if self.open and not (reopen and self.lease_holder() == instance):
            return self.reply()
        self.timeout = min(self.max_timeout, max(self.base, self.timeout * 2)) if self.open else self.base
        if not self.open:
            self.gen_opened = self.gen + 1
        self.open, self.until, self.gen = True, self.now + self.timeout, self.gen + 1
        self.reports.clear()
        self.publish(Record(True, self.timeout, self.timeout, self.gen))
        return self.reply()

    def do_evidence(self, instance: str, failures: int, calls: int, calls_long: int, wait: float) -> list[Any]:
        if self.open:
            return [*self.reply(), 0, 0, 0]
        self.reports.append((self.now, Report(instance, failures, calls, calls_long, wait)))
        self.reports = [r for r in self.reports if r[0] >= self.now - MAX_WINDOW]
        recent = [r for at, r in self.reports if at >= self.now - self.rule.window(self.rate)]
        tally = self.rule.tally(recent, self.rate)
        needed = self.rule.needed(self.rate, tally.calls, tally.wait)
        if self.rule.opens(tally.failures, tally.reporters, self.members, self.rate, tally.calls, tally.wait):
            self.opened_by_evidence.append([r.instance for r in recent])
            return [*self.do_open(False, instance), 1, tally.failures, needed]
        return [*self.reply(), 0, tally.failures, needed]

    def do_close(self) -> list[Any]:
        if self.open:
            self.open, self.until, self.gen, self.holder = False, self.now, self.gen + 1, None
            self.reports.clear()
            self.publish(Record(False, 0.0, self.timeout, self.gen))
        return self.reply()


class FakeScripts:
    """FleetScripts' interface over a `Store`; `arrive` returns the store when a command reaches it (the
    model delays commands there, and replaces the store when Redis restarts)."""

    def __init__(self, arrive: Callable[[], Store]) -> None:
        self._arrive = arrive

    async def open(self, keys: list[str], args: list[Any]) -> list[Any]:
        return self._arrive().do_open(args[2] == 1, str(args[3]))

    async def close(self, keys: list[str], args: list[Any]) -> list[Any]:
        return self._arrive().do_close()

    async def evidence(self, keys: list[str], args: list[Any]) -> list[Any]:
        return self._arrive().do_evidence(str(args[0]), int(args[2]), int(args[3]), int(args[13]),
                                          int(args[15]) / 1000)

    async def read(self, keys: list[str], args: list[Any]) -> list[Any]:
        store = self._arrive()
        holder = store.lease_holder()
        return [*store.reply(), holder or "", int((store.lease_expires - store.now) * 1000) if holder else -2]

    async def renew(self, keys: list[str], args: list[Any]) -> int:
        store = self._arrive()
        if store.lease_holder() != args[0]:
            return 0
        store.lease_expires = store.now + int(args[1]) / 1000
        return 1

    async def release(self, keys: list[str], args: list[Any]) -> int:
        store = self._arrive()
        if store.lease_holder() != args[0]:
            return 0
        store.holder = None
        return 1


class FakeClient:
    def __init__(self, scripts: FakeScripts) -> None:
        self.scripts = scripts

    async def set(self, key: str, value: str, nx: bool, px: int) -> bool:
        store = self.scripts._arrive()
        if not nx or store.lease_holder() is not None:
            return False
        store.holder, store.lease_expires = value, store.now + px / 1000
        return True


class FakeConnection:
    """FleetConnection's interface: commands run only while connected."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.connected = True

    async def call(self, command: Callable[[], Awaitable[T]]) -> T | None:
        return await command() if self.connected else None
