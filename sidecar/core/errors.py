"""What a transport saw when an export failed, before it is classified.

Transports build these at the I/O edge; everything after works on the
classification, never on grpc or aiohttp exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.taxonomy import Classification


@dataclass(frozen=True, slots=True)
class ExportFailure:
    grpc_code: str | None = None  # grpc.StatusCode name, e.g. "UNAVAILABLE"
    http_status: int | None = None
    message: str = ""
    retry_after: float | None = None  # seconds, from RetryInfo or Retry-After, already parsed
    has_retry_info: bool = False  # RetryInfo present (gRPC) or Retry-After present (HTTP)
    # client-side failure without an answer: connection_refused, connection_reset, dns,
    # tls_handshake, timeout, or "internal" for a bug in the sidecar
    client_error: str | None = None


class ExportError(Exception):
    """Raised by a transport; carries the raw observation and, once classified, its class."""

    def __init__(self, failure: ExportFailure, classification: Classification | None = None) -> None:
        self.failure = failure
        self.classification = classification
        super().__init__(self.describe())

    def describe(self) -> str:
        f = self.failure
        what = f.grpc_code or (f"http_{f.http_status}" if f.http_status else f.client_error or "error")
        return f"{what}: {f.message}" if f.message else what
