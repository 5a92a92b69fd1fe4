"""The fleet-wide retry budget of one endpoint (Envoy's retry budget across the fleet), an atomic
token bucket in Redis (scripts.BUDGET).

First attempts are counted locally and sent in the background, once a second (breaker.FLUSH_INTERVAL) in the
same round trip as the endpoint's breaker refresh (`take_deposits`), so a request never waits for a deposit.
A retry asking for a token sends what is pending itself, and deposits fund retries for TTL seconds, so once a
second loses nothing; every 0.25 s it was 4 of the ~10 commands/s each member sent (bench/RESULTS.md).
A retry asks for a token (`try_spend`) while it waits its backoff (sidecar/exporters/sender.py); the
command is bounded by the configured command timeout, and an unanswered request (Redis down or slow) lets
the local budget, already charged, decide alone.
Deposits made while Redis is down are not kept: they would fund a burst of retries long after the
requests that paid for them.

With fleet mode, `min_per_second` of the exporter's retry budget is the floor of the whole fleet
(retries <= ratio x fleet first attempts + min_per_second), on top of each sidecar's local budget.
"""

from __future__ import annotations

from sidecar.config.schema import RetryBudgetConfig
from sidecar.fleet.breaker import FleetScripts
from sidecar.fleet.client import ScriptCall
from sidecar.fleet.connection import FleetConnection
from sidecar.fleet.keys import Keys

TTL = 10  # seconds a deposit funds retries, as the local budget's


class FleetRetryBudget:
    def __init__(self, endpoint: str, config: RetryBudgetConfig, conn: FleetConnection,
                 fleet_scripts: FleetScripts, keys: Keys) -> None:
        self.endpoint = endpoint
        self.config = config
        self._conn = conn
        self._scripts = fleet_scripts
        self._key = keys.budget(endpoint)
        self.pending = 0  # first attempts not yet sent
        self.granted = 0
        self.refused = 0

    def reconfigure(self, config: RetryBudgetConfig) -> None:
        self.config = config

    def deposit(self) -> None:
        if self._conn.connected:
            self.pending += 1

    async def try_spend(self) -> bool | None:
        deposits, self.pending = self.pending, 0
        reply = await self._conn.call_fast(lambda: self._scripts.budget(
            keys=[self._key], args=self._args(deposits, want=True)))
        if reply is None:
            return None
        if int(reply) > 0:
            self.granted += 1
            return True
        self.refused += 1
        return False

    def take_deposits(self) -> ScriptCall | None:
        """The deposits made since the last time, as a BUDGET call that rides on the endpoint's breaker refresh
        (sidecar/fleet/breaker.py, about once a second); None when there are none."""
        if not self.pending:
            return None
        deposits, self.pending = self.pending, 0
        return self._scripts.budget, [self._key], self._args(deposits, want=False)

    def _args(self, deposits: int, want: bool) -> list[str | int | float]:
        return [deposits, 1 if want else 0, float(self.config.ratio), float(self.config.min_per_second), TTL]
