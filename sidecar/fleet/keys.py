"""Key and channel names in Redis. The endpoint is used as configured, so sidecars that name the same
Collector the same way share its state.

Hash tags (the part in braces is all Redis Cluster hashes) keep every key of one upstream endpoint in
one slot, ``<prefix>{<endpoint>}:<what>``, so each Lua script, which touches only one endpoint's keys,
runs on one node; and the membership keys in another, ``<prefix>{fleet}:...``, so a heartbeat is one
script too. With one server or Sentinel the braces are only characters.

These names changed with Sentinel/Cluster support (before: ``<prefix>breaker:<endpoint>`` and so on).
During a rolling upgrade old and new sidecars use different keys and channel: each group shares state
within itself, not with the other, until every sidecar runs the new version (docs/operations.md, Upgrades).
"""

from __future__ import annotations

from dataclasses import dataclass

FLEET_TAG = "{fleet}"  # the slot of the fleet-wide keys (not an endpoint's: their suffixes differ)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def _endpoint(self, endpoint: str, what: str) -> str:
        return f"{self.prefix}{{{endpoint}}}:{what}"

    @property
    def channel(self) -> str:
        """Pub/sub channel of breaker changes (a channel is no key; tagged so a cluster client picks one node)."""
        return f"{self.prefix}{FLEET_TAG}:breaker-events"

    @property
    def members(self) -> str:
        """Sorted set: instance -> expiry of its heartbeat (Redis time, ms)."""
        return f"{self.prefix}{FLEET_TAG}:all-members"

    def member(self, instance: str) -> str:
        """Hash: one sidecar's heartbeat (payload, at); in the slot of `members`, so both change in one script."""
        return f"{self.prefix}{FLEET_TAG}:member:{instance}"

    def breaker(self, endpoint: str) -> str:
        return self._endpoint(endpoint, "breaker")

    def lease(self, endpoint: str) -> str:
        return self._endpoint(endpoint, "probe-lease")

    def evidence(self, endpoint: str) -> str:
        """Sorted set of failure reports on the endpoint (``instance
seq
failures``), scored by Redis
        time in ms (sidecar/fleet/scripts.py EVIDENCE). Named apart from the hash of earlier versions, so a
        fleet in the middle of a rolling upgrade never meets a key of the wrong type."""
        return self._endpoint(endpoint, "failures")

    def endpoint_members(self, endpoint: str) -> str:
        """Sorted set: instance -> expiry of its heartbeat, for the sidecars that send to the endpoint."""
        return self._endpoint(endpoint, "members")

    def budget(self, endpoint: str) -> str:
        return self._endpoint(endpoint, "retry-budget")

    # Handoff (sidecar/fleet/handoff.py): one stream per endpoint and signal and one byte counter per
    # endpoint, in the endpoint's slot, always used together (in one script), never with another
    # endpoint's keys.

    def handoff(self, endpoint: str, signal: str) -> str:
        """Stream of the entries of one signal that departed sidecars handed off for the endpoint (consumer
        group `deliver`): one per signal, so a member claims only what it exports to that endpoint itself."""
        return self._endpoint(endpoint, f"handoff:{signal}")

    def handoff_bytes(self, endpoint: str) -> str:
        """Payload bytes held in the endpoint's handoff stream (the fleet-wide budget's share of it)."""
        return self._endpoint(endpoint, "handoff-bytes")

    @property
    def handoff_endpoints(self) -> str:
        """Set: the endpoints that have (or had) a handoff stream; the budget sums their byte counters
        (one command per key: in a cluster they live in different slots)."""
        return f"{self.prefix}{FLEET_TAG}:handoff-endpoints"

    @property
    def left_behind(self) -> str:
        """Hash: volume id -> what a departed sidecar left on that volume (sidecar/fleet/leftbehind.py)."""
        return f"{self.prefix}{FLEET_TAG}:handoff-left"
