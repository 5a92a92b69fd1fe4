"""Which compression an exporter uses on the wire: `compression: auto` (the default) resolved per endpoint.

The sidecar usually runs beside the Collector (same pod, same node): on loopback, compression costs CPU on both
sides and saves nothing, so `auto` sends uncompressed to a loopback address (127.0.0.0/8, ::1, `localhost`) or a
unix socket, and gzip to anything else, as the Collector's otlp exporter does by default for a network hop.
`gzip`, `zstd` (OTLP/HTTP only: grpcio cannot send zstd) and `none` are used as given. Pure: no I/O, no DNS (a
name other than `localhost` is taken as remote).
"""

from __future__ import annotations

import enum
import functools
import gzip
import ipaddress
from typing import Any
from urllib.parse import urlsplit


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


AUTO = "auto"


def endpoint_host(endpoint: str) -> str | None:
    """The host an exporter endpoint names (gRPC `host:port`, `dns:///host:port`, `http(s)://host:port/..`,
    `[v6]:port`), or None for a unix socket (`unix:/path`, `unix:///path`, `unix-abstract:name`)."""
    text = endpoint.strip()
    lowered = text.lower()
    if lowered.startswith(("unix:", "unix-abstract:")):
        return None
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() in ("dns", "ipv4", "ipv6") and not parts.hostname:
            return endpoint_host(parts.path.lstrip("/"))  # dns:///host:port has an empty authority
        return parts.hostname or ""
    if text.startswith("["):  # [::1]:4317
        return text[1:text.find("]")] if "]" in text else text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text  # no port, or a bare IPv6 address
    return host if host.count(":") == 0 else text


def is_loopback(endpoint: str) -> bool:
    """True for a unix socket or a loopback host; a name other than `localhost` is not resolved (and not loopback)."""
    host = endpoint_host(endpoint)
    if host is None:
        return True
    host = host.strip().rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_compression(setting: str, endpoint: str) -> Compression:
    """The compression to use for `endpoint` given the configured `setting` (auto, gzip, zstd, none)."""
    if setting == AUTO:
        return Compression.NONE if is_loopback(endpoint) else Compression.GZIP
    return Compression(setting)


@functools.cache
def _zstd() -> Any:
    """zstandard loads when an exporter compresses with it (0.3 MiB a sidecar without zstd never needs)."""
    import zstandard

    return zstandard.ZstdCompressor(level=1)


def compress(payload: bytes, compression: Compression) -> bytes:
    """The request body for `Content-Encoding: <compression>` (fast levels: the hop is usually short)."""
    if compression is Compression.GZIP:
        return gzip.compress(payload, compresslevel=1)
    if compression is Compression.ZSTD:
        return _zstd().compress(payload)
    return payload
