"""The queue entry: what a receiver hands the exporters and the memory and disk queues hold alike."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.signals import Signal


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """What the sender needs and nothing more; memory and disk hold the same thing."""

    signal: Signal
    payload: bytes  # the serialized Export*ServiceRequest, already enriched
    items: int
    metadata: tuple[tuple[str, str], ...]  # client metadata passed through to upstream
    accepted_at: float  # wall-clock seconds when the client got its acknowledgement
