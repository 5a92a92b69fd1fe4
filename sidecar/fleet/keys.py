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

    def evidence(self, endpoint: str) -> str:
        """Sorted set of failure reports on the endpoint (``instance\nseq\nfailures``), scored by Redis
        time in ms (sidecar/fleet/scripts.py EVIDENCE). Named apart from the hash of earlier versions, so a
        fleet in the middle of a rolling upgrade never meets a key of the wrong type."""
        return f"{self.prefix}failures:{endpoint}"

    def endpoint_members(self, endpoint: str) -> str:
        """Sorted set: instance -> expiry of its heartbeat, for the sidecars that send to the endpoint."""
        return f"{self.prefix}members:{endpoint}"

    def budget(self, endpoint: str) -> str:
        return f"{self.prefix}retry-budget:{endpoint}"

    def member(self, instance: str) -> str:
        return f"{self.prefix}member:{instance}"
