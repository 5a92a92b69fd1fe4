"""What receivers hand decoded requests to, and the answers they map to their protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from sidecar.core.signals import Signal

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Accepted; `rejected` items were shed or refused and are reported as OTLP partial success."""

    rejected: int = 0
    message: str = ""


class Backpressure(Exception):
    """Nothing left to shed: answer a status the client retries (UNAVAILABLE / 503) with a hint."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRefused(Exception):
    """Synchronous mode: upstream did not accept; `retryable` picks UNAVAILABLE/503 or a permanent code."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None,
                 grpc_code: str, http_status: int) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.grpc_code = grpc_code
        self.http_status = http_status


class Ingest(Protocol):
    def accepts(self, receiver: str, signal: Signal) -> bool: ...

    async def ingest(self, receiver: str, signal: Signal, payload: bytes, message: Message,
                     metadata: Metadata, transport: str) -> IngestResult: ...
