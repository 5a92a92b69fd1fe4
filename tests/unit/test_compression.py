"""`compression: auto` resolves per endpoint: nothing on loopback or a unix socket, gzip across a network."""

from __future__ import annotations

import gzip
import ipaddress

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from sidecar.exporters.compression import Compression, compress, endpoint_host, is_loopback, resolve_compression


@pytest.mark.parametrize(("endpoint", "host"), [
    ("localhost:4317", "localhost"),
    ("127.0.0.1:4317", "127.0.0.1"),
    ("http://127.0.0.1:4318", "127.0.0.1"),
    ("https://[::1]:4318/otlp", "::1"),
    ("[::1]:4317", "::1"),
    ("::1", "::1"),
    ("collector:4317", "collector"),
    ("http://otel-collector.observability.svc:4318", "otel-collector.observability.svc"),
    ("dns:///localhost:4317", "localhost"),
    ("dns:///otel:4317", "otel"),
    ("unix:/var/run/otel.sock", None),
    ("unix:///var/run/otel.sock", None),
    ("unix-abstract:otel", None),
])
def test_endpoint_host(endpoint: str, host: str | None) -> None:
    assert endpoint_host(endpoint) == host


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("localhost:4317", Compression.NONE),
    ("LOCALHOST:4317", Compression.NONE),
    ("api.localhost:4317", Compression.NONE),
    ("127.0.0.1:4317", Compression.NONE),
    ("127.8.9.10:4317", Compression.NONE),
    ("http://[::1]:4318", Compression.NONE),
    ("unix:/tmp/collector.sock", Compression.NONE),
    ("collector:4317", Compression.GZIP),
    ("10.0.0.7:4317", Compression.GZIP),
    ("https://ingest.example.com:443", Compression.GZIP),
    ("http://[2001:db8::1]:4318", Compression.GZIP),
    ("128.0.0.1:4317", Compression.GZIP),
])
def test_auto_picks_none_on_loopback_and_gzip_elsewhere(endpoint: str, expected: Compression) -> None:
    assert resolve_compression("auto", endpoint) is expected


@pytest.mark.parametrize("setting", ["gzip", "zstd", "none"])
def test_an_explicit_setting_is_used_as_given(setting: str) -> None:
    assert resolve_compression(setting, "localhost:4317") is Compression(setting)
    assert resolve_compression(setting, "collector:4317") is Compression(setting)


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535), st.sampled_from(["grpc", "http", "https"]))
def test_auto_follows_the_address_family_loopback_range(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                                        port: int, form: str) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    endpoint = f"{host}:{port}" if form == "grpc" else f"{form}://{host}:{port}/v1"
    assert is_loopback(endpoint) == address.is_loopback
    assert resolve_compression("auto", endpoint) is (Compression.NONE if address.is_loopback else Compression.GZIP)


@given(st.binary(max_size=4096))
def test_compressed_bodies_decode_to_the_payload(payload: bytes) -> None:
    assert gzip.decompress(compress(payload, Compression.GZIP)) == payload
    assert zstandard.ZstdDecompressor().decompress(compress(payload, Compression.ZSTD),
                                                   max_output_size=len(payload) + 1) == payload
    assert compress(payload, Compression.NONE) is payload
