"""Issue 9: the receivers' codec under hostile input.

`inflate` must refuse a compression bomb while inflating (never producing much more than the limit),
and every decoder must answer any input with a message or a precise BadRequest/PayloadTooLarge,
never another exception.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from typing import Any

import orjson
import pytest
import zstandard
from google.rpc import code_pb2, error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sidecar.core.signals import Signal
from sidecar.receivers import codec

SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
MIB = 1024 * 1024
_REAL_DECOMPRESSOBJ = zlib.decompressobj


class CountingInflater:
    """Wraps zlib's decompressor and counts every byte it hands out."""

    produced = 0
    instances = 0

    def __init__(self, wbits: int = zlib.MAX_WBITS) -> None:
        self._inner = _REAL_DECOMPRESSOBJ(wbits)
        type(self).instances += 1

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        out = self._inner.decompress(data, max_length)
        type(self).produced += len(out)
        return out

    def flush(self, *args: Any) -> bytes:
        out = self._inner.flush(*args)
        type(self).produced += len(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingInflater]:
    CountingInflater.produced = 0
    CountingInflater.instances = 0
    monkeypatch.setattr(codec.zlib, "decompressobj", CountingInflater)
    return CountingInflater


def bomb(inflated_mib: int, encoding: str = "gzip") -> bytes:
    """A stream that inflates to `inflated_mib` MiB of zeros, about 1 KB per MiB on the wire.

    Each MiB is compressed after a full flush (which resets the compressor's history), so every block
    is the same bytes and a bomb of any size is one block repeated; it never exists inflated here. Only
    its trailer is wrong (the checksum covers two blocks), and an inflater that stops at the limit
    never reaches it.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    head = compressor.compress(b"\x00" * MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(b"\x00" * MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * (inflated_mib - 1) + compressor.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_bomb_is_refused_after_inflating_only_the_limit(counting: type[CountingInflater], encoding: str) -> None:
    limit = MIB
    body = bomb(4096, encoding)  # 4 GiB inflated, about 4 MB on the wire
    with pytest.raises(codec.PayloadTooLarge, match=f"limit of {limit} bytes"):
        codec.inflate(body, encoding, limit)
    assert counting.produced <= limit + 1, f"inflated {counting.produced} bytes of a bomb with limit {limit}"


def test_a_bomb_split_over_many_gzip_members_is_limited_by_the_total(counting: type[CountingInflater]) -> None:
    member = gzip.compress(b"\x00" * (MIB // 2))
    with pytest.raises(codec.PayloadTooLarge):
        codec.inflate(member * 1000, "gzip", 2 * MIB)  # 500 MiB in total, 2 MiB allowed
    assert counting.produced <= 2 * MIB + 1
    assert counting.instances <= 5


def test_the_bomb_helper_is_a_real_bomb() -> None:
    inflater = _REAL_DECOMPRESSOBJ(16 + zlib.MAX_WBITS)
    body, total = bomb(64), 0
    with pytest.raises(zlib.error, match="incorrect data check"):  # the trailer, reached only here
        while body:
            total += len(inflater.decompress(body, MIB))
            body = inflater.unconsumed_tail
    assert total >= 63 * MIB


def test_limits_are_exact() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    assert codec.inflate(gzip.compress(data), "gzip", len(data)) == data
    with pytest.raises(codec.PayloadTooLarge):
        codec.inflate(gzip.compress(data), "gzip", len(data) - 1)
    assert codec.inflate(zlib.compress(data), "deflate", len(data)) == data
    with pytest.raises(codec.PayloadTooLarge):
        codec.inflate(zlib.compress(data), "deflate", len(data) - 1)


def test_zstd_round_trips_every_frame_and_its_limit_is_exact() -> None:
    data = bytes(range(256)) * 4096
    body = zstandard.compress(data)
    assert codec.inflate(body, "zstd", len(data)) == data
    with pytest.raises(codec.PayloadTooLarge):
        codec.inflate(body, "zstd", len(data) - 1)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"def")
    assert codec.inflate(zstandard.compress(b"abc") + unsized, "zstd", 100) == b"abcdef"
    assert codec.inflate(zlib.compress(b"abc"), "zlib", 100) == b"abc"  # the Collector's name for deflate


def test_a_zstd_bomb_is_refused_after_inflating_about_the_limit() -> None:
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    body = b"".join(compressor.compress(b"\x00" * MIB) for _ in range(1024)) + compressor.flush()  # 1 GiB
    assert len(body) < MIB // 16
    produced = 0
    real = zstandard.ZstdDecompressor

    class Counting:
        def __init__(self) -> None:
            self._inner = real()

        def decompressobj(self) -> Any:
            inner = self._inner.decompressobj()

            class Obj:
                def decompress(self, data: Any) -> bytes:
                    nonlocal produced
                    out: bytes = inner.decompress(data)
                    produced += len(out)
                    return out

                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

            return Obj()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zstandard, "ZstdDecompressor", Counting)  # codec imports zstandard when it inflates
        with pytest.raises(codec.PayloadTooLarge):
            codec.inflate(body, "zstd", 4 * MIB)
    assert produced <= 2 * 4 * MIB  # never much more than the limit, never the gigabyte


def test_several_gzip_members_are_all_inflated() -> None:
    """`cat a.gz b.gz` is one valid gzip body (RFC 1952); dropping the second member would lose data."""
    assert codec.inflate(gzip.compress(b"abc") + gzip.compress(b"") + gzip.compress(b"def"), "gzip", 100) == b"abcdef"


# gzip.compress writes the current time into its header: bodies built at collection time (here, parameter
# ids) must not depend on it, or pytest-xdist's workers collect different tests and the run fails.
_gzip = functools.partial(gzip.compress, mtime=0)


@pytest.mark.parametrize(("body", "encoding", "match"), [
    (_gzip(b"abc") + b"trailing", "gzip", "trailing data"),
    (zlib.compress(b"abc") + b"x", "deflate", "trailing data"),
    (zlib.compress(b"abc") + zlib.compress(b"def"), "deflate", "trailing data"),
    (_gzip(b"abc")[:-4], "gzip", "truncated"),
    (_gzip(b"abc") + _gzip(b"def")[:12], "gzip", "truncated"),
    (_gzip(b"abc") + b"\x1f\x8b", "gzip", "truncated"),
    (b"", "gzip", "truncated"),
    (b"", "deflate", "truncated"),
    (b"plain text", "gzip", "invalid gzip"),
    (_gzip(b"abc"), "deflate", "invalid deflate"),
    (zlib.compress(b"abc"), "gzip", "invalid gzip"),
    (b"abc", "br", "unsupported Content-Encoding"),
    (b"abc", "snappy", "unsupported Content-Encoding"),
    (zstandard.compress(b"abc")[:-3], "zstd", "truncated"),
    (zstandard.compress(b"abc") + b"junk", "zstd", "invalid zstd"),
    (zstandard.compress(b"abc") + zstandard.compress(b"def")[:6], "zstd", "truncated"),
    (b"", "zstd", "truncated"),
    (_gzip(b"abc"), "zstd", "invalid zstd"),
    (_gzip(b"") * (codec.MAX_MEMBERS + 1), "gzip", f"more than {codec.MAX_MEMBERS} members"),
    (zstandard.compress(b"") * (codec.MAX_MEMBERS + 1), "zstd", f"more than {codec.MAX_MEMBERS} frames"),
])
def test_bad_streams_are_bad_requests(body: bytes, encoding: str, match: str) -> None:
    with pytest.raises(codec.BadRequest, match=match):
        codec.inflate(body, encoding, MIB)


@SETTINGS
@given(body=st.binary(max_size=512), encoding=st.sampled_from(["gzip", "deflate", "zstd"]),
       limit=st.integers(min_value=0, max_value=4096))
def test_inflate_answers_any_bytes_precisely(body: bytes, encoding: str, limit: int) -> None:
    try:
        out = codec.inflate(body, encoding, limit)
    except (codec.BadRequest, codec.PayloadTooLarge):
        return
    assert len(out) <= limit


@SETTINGS
@given(data=st.binary(max_size=4096), members=st.integers(1, 3), limit=st.integers(0, 20000),
       cut=st.none() | st.integers(1, 100))
def test_inflate_round_trips_or_refuses_correctly(data: bytes, members: int, limit: int, cut: int | None) -> None:
    body = gzip.compress(data) * members
    if cut is None:
        if len(data) * members <= limit:
            assert codec.inflate(body, "gzip", limit) == data * members
        else:
            with pytest.raises(codec.PayloadTooLarge):
                codec.inflate(body, "gzip", limit)
        return
    try:
        out = codec.inflate(body[: max(0, len(body) - cut)], "gzip", limit)
    except (codec.BadRequest, codec.PayloadTooLarge):
        return
    # Only a cut at a member boundary leaves a valid body: the members before it.
    assert out in [data * k for k in range(members)]


# -------------------------------------------------------------------- decoders


@SETTINGS
@given(signal=st.sampled_from(list(Signal)), body=st.binary(max_size=1024))
def test_decode_protobuf_never_raises_anything_but_bad_request(signal: Signal, body: bytes) -> None:
    try:
        codec.decode_protobuf(signal, body)
    except codec.BadRequest:
        pass


def _deep_kvlist(depth: int) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def ld(field: int, payload: bytes) -> bytes:
        return varint((field << 3) | 2) + varint(len(payload)) + payload

    value = b"\x18\x01"
    for _ in range(depth):
        value = ld(6, ld(1, ld(1, b"k") + ld(2, value)))
    span = ld(1, b"\x01" * 16) + ld(2, b"\x02" * 8) + ld(9, ld(1, b"a") + ld(2, value))
    return ld(1, ld(2, ld(2, span)))


def test_protobuf_nesting_past_the_parser_limit_is_a_bad_request() -> None:
    assert codec.decode_protobuf(Signal.TRACES, _deep_kvlist(20)).resource_spans  # type: ignore[attr-defined]
    with pytest.raises(codec.BadRequest, match="malformed protobuf"):
        codec.decode_protobuf(Signal.TRACES, _deep_kvlist(1000))


def test_invalid_utf8_is_a_bad_request() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(name="PLACEHOLDER")
    body = request.SerializeToString().replace(b"PLACEHOLDER", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5")
    with pytest.raises(codec.BadRequest):
        codec.decode_protobuf(Signal.TRACES, body)


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
                        st.sampled_from(["NaN", "Infinity", "1e400", "18446744073709551616", "-1", "0x1F",
                                         "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"]))
json_docs = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.dictionaries(st.sampled_from(["resourceSpans", "resourceLogs", "resourceMetrics", "scopeSpans", "spans",
                                     "scopeLogs", "logRecords", "scopeMetrics", "metrics", "gauge", "sum",
                                     "dataPoints", "exemplars", "traceId", "spanId", "parentSpanId", "links",
                                     "attributes", "key", "value", "intValue", "kvlistValue", "values",
                                     "startTimeUnixNano", "kind", "status", "code", "asInt", "asDouble",
                                     "severityNumber", "body", "resource"]) | st.text(max_size=6),
                    children, max_size=4)), max_leaves=20)


@SETTINGS
@given(signal=st.sampled_from(list(Signal)), doc=json_docs)
def test_decode_json_never_raises_anything_but_bad_request(signal: Signal, doc: Any) -> None:
    try:
        codec.decode_json(signal, orjson.dumps(doc))
    except codec.BadRequest:
        pass


@SETTINGS
@given(signal=st.sampled_from(list(Signal)), body=st.binary(max_size=256))
def test_decode_json_random_bytes(signal: Signal, body: bytes) -> None:
    try:
        codec.decode_json(signal, body)
    except codec.BadRequest:
        pass


@pytest.mark.parametrize("body", [
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": 99999999999999999999999}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": 1e400}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": -1}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": {"a": 1}}]}]}]}',
    b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": {"intValue": "1.5"}}]}}]}',
    b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"sum": {"dataPoints": '
    b'[{"asInt": "18446744073709551616"}]}}]}]}]}',
    b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": 1e40}]}]}]}',
    b'{"resourceSpans": 5}',
    b"[]",
    b'"x"',
    b"",
    b"\xff\xfe",
    b"[" * 5000,
    b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": '
    + b'{"kvlistValue": {"values": [{"key": "k", "value": ' * 300 + b"{}" + b"}]}}" * 300 + b"}]}}]}",
])
def test_wrong_types_and_huge_numbers_in_json_are_bad_requests(body: bytes) -> None:
    signal = Signal.METRICS if b"resourceMetrics" in body else Signal.LOGS if b"resourceLogs" in body \
        else Signal.TRACES
    with pytest.raises(codec.BadRequest):
        codec.decode_json(signal, body)


def test_unknown_fields_and_enum_names_in_json_are_ignored() -> None:
    """Forward compatibility, as the OTLP spec asks: unknown keys and enum names are skipped, not refused."""
    body = (b'{"future": 1, "resourceSpans": [{"scopeSpans": [{"spans": [{"name": "s", "kind": "SPAN_KIND_NEW",'
            b' "newField": {"x": [1]}}]}]}]}')
    message = codec.decode_json(Signal.TRACES, body)
    span = message.resource_spans[0].scope_spans[0].spans[0]  # type: ignore[attr-defined]
    assert span.name == "s"
    assert span.kind == 0


def test_rpc_status_carries_retry_info() -> None:
    status = codec.rpc_status(code_pb2.UNAVAILABLE, "full", retry_after=2.5)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() == 2_500_000_000
    assert codec.rpc_status(code_pb2.INVALID_ARGUMENT, "bad").details == []
