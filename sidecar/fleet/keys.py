"""Key and channel names in Redis. The endpoint is used as configured, so sidecars that name the same
Collector the same way share its state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def channel(self) -> str:
        """Pub/sub channel of breaker changes."""
        return f"{self.prefix}breaker-events"

    @property
    def members(self) -> str:
        """Sorted set: instance -> expiry of its heartbeat (Redis time, ms)."""
        return f"{self.prefix}members"

    def breaker(self, endpoint: str) -> str:
        return f"{self.prefix}breaker:{endpoint}"

    def lease(self, endpoint: str) -> str:
        return f"{self.prefix}probe-lease:{endpoint}"

    def budget(self, endpoint: str) -> str:
        return f"{self.prefix}retry-budget:{endpoint}"

    def member(self, instance: str) -> str:
        return f"{self.prefix}member:{instance}"
