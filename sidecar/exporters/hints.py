"""What transports read from an upstream's answer besides its status: RetryInfo and Retry-After (OTLP spec).

Pure and never raising: a hint that cannot be parsed is no hint.
"""

from __future__ import annotations

import math
import re
from datetime import UTC

from google.rpc import error_details_pb2, status_pb2

_RETRY_INFO_SUFFIX = "google.rpc.RetryInfo"


def retry_info_from_status_details(details: bytes | None) -> float | None:
    """The RetryInfo delay (seconds, >= 0) in a `grpc-status-details-bin` value, or None.

    Never raises: garbage, a Status without RetryInfo, or an undecodable RetryInfo give None.
    A RetryInfo without a delay gives 0.0 (retry, no particular wait).
    """
    if not details or not isinstance(details, bytes | bytearray | memoryview):
        return None
    try:
        status = status_pb2.Status.FromString(bytes(details))
        for any_detail in status.details:
            if not any_detail.type_url.endswith(_RETRY_INFO_SUFFIX):
                continue
            info = error_details_pb2.RetryInfo.FromString(any_detail.value)
            if not info.HasField("retry_delay"):
                return 0.0
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(0.0, float(delay)) if math.isfinite(delay) else None
    except Exception:
        return None
    return None


_DELTA_SECONDS = re.compile(r"\s*(\d{1,15}(?:\.\d{1,9})?)\s*")


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """HTTP Retry-After as delta-seconds or an HTTP-date, in seconds from `now_wall`, clamped to >= 0.

    None for a missing or unparseable value. A decimal delta ("1.5") is accepted leniently;
    a negative one is garbage. An HTTP-date without a zone is taken as UTC.
    """
    if value is None or not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > 100:
        return None
    m = _DELTA_SECONDS.fullmatch(value)
    if m:
        return float(m.group(1))
    import email.utils  # here: an HTTP-date is rare, and the email package is 0.3 MiB a gRPC-only sidecar never needs

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delay = when.timestamp() - now_wall
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None

