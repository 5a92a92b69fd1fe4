"""The interface every upstream transport (gRPC, HTTP) implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sidecar.core.entry import QueueEntry


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """Upstream accepted the request; `rejected` > 0 is an OTLP partial success."""

    rejected: int = 0
    rejected_message: str = ""


class Transport(Protocol):
    """One upstream endpoint. Raises sidecar.core.errors.ExportError on any failure."""

    endpoint: str

    async def send(self, entry: QueueEntry, timeout: float) -> SendOutcome: ...

    async def probe(self, timeout: float) -> None:
        """An empty Export request of the cheapest signal: proves the endpoint answers."""

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Headers (gRPC metadata) sent with every later request, in place of the configured ones (a reload)."""

    async def close(self) -> None: ...
