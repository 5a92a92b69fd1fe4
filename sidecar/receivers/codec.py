"""Decoding and encoding of OTLP payloads: protobuf, OTLP/JSON, gzip, google.rpc.Status.

Everything here is pure (bytes in, messages or a precise `BadRequest` out) so the
receivers only map results to their protocol's status codes.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from sidecar.core.signals import SPECS, Signal

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class BadRequest(Exception):
    """Input the client must fix; never retried (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class PayloadTooLarge(Exception):
    """Body or inflated body over the configured limit (HTTP 413 / gRPC RESOURCE_EXHAUSTED)."""


def decode_protobuf(signal: Signal, body: bytes) -> Message:
    message = SPECS[signal].request_type()
    try:
        message.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        # upb raises DecodeError for truncation, bad wire types, invalid UTF-8 and nesting past its limit.
        raise BadRequest(f"malformed protobuf {SPECS[signal].request_type.DESCRIPTOR.name}: {exc}") from None
    return message


# Real clients send one gzip member or zstd frame. Each further one costs a copy of the rest of the
# body (zlib's unused_data), so a body of thousands of empty members would only burn CPU.
MAX_MEMBERS = 64


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate gzip/zstd/deflate/zlib, refusing as soon as the output passes `limit` (a bomb never inflates fully).

    A gzip body may hold several members (RFC 1952 2.2, e.g. `cat a.gz b.gz`), a zstd body several
    frames: all of them are inflated (up to MAX_MEMBERS), as the Collector's readers do. Bytes after
    the last stream that are not another member are refused, never silently ignored.
    """
    if encoding == "zstd":
        return _unzstd(body, limit)
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding in ("deflate", "zlib"):  # both are the zlib format (RFC 1950), as the Collector reads them
        wbits = zlib.MAX_WBITS
    else:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} "
                         "(supported: gzip, zstd, deflate, zlib, identity)")
    out = b""
    rest = body
    for _ in range(MAX_MEMBERS):
        inflater = zlib.decompressobj(wbits)
        room = limit - len(out)
        try:
            part = inflater.decompress(rest, room + 1)
            if len(part) > room or inflater.unconsumed_tail:
                raise PayloadTooLarge(f"inflated body exceeds the limit of {limit} bytes")
            part += inflater.flush()
        except zlib.error as exc:
            raise BadRequest(f"invalid {encoding} body: {exc}") from None
        out += part
        if len(out) > limit:
            raise PayloadTooLarge(f"inflated body exceeds the limit of {limit} bytes")
        if not inflater.eof:
            raise BadRequest(f"invalid {encoding} body: truncated stream")
        rest = inflater.unused_data
        if not rest:
            return out
        if encoding != "gzip" or not rest.startswith(b"\x1f\x8b"):
            raise BadRequest(f"invalid {encoding} body: {len(rest)} bytes of trailing data after the stream")
    raise BadRequest(f"invalid gzip body: more than {MAX_MEMBERS} members")


# zstd can turn 4 bytes into a 128 KiB block, so input is fed in slices small enough that one call
# cannot produce more than about the room left (the decompressor has no output bound of its own).
_ZSTD_MAX_RATIO = 32 * 1024


def _unzstd(body: bytes, limit: int) -> bytes:
    """`inflate` for zstd: every frame (like gzip members, as the Collector's reader does), bounded by `limit`."""
    import zstandard  # here: only zstd bodies need it (0.3 MiB RSS otherwise)

    out = bytearray()
    view = memoryview(body)
    position = 0
    context = zstandard.ZstdDecompressor()
    for _ in range(MAX_MEMBERS):
        decompressor = context.decompressobj()
        fed = position
        try:
            while not decompressor.eof and fed < len(body):
                step = max(64, (limit - len(out)) // _ZSTD_MAX_RATIO + 1)
                out += decompressor.decompress(view[fed:fed + step])
                fed = min(fed + step, len(body))
                if len(out) > limit:
                    raise PayloadTooLarge(f"inflated body exceeds the limit of {limit} bytes")
        except zstandard.ZstdError as exc:
            raise BadRequest(f"invalid zstd body: {exc}") from None
        if not decompressor.eof:
            raise BadRequest("invalid zstd body: truncated stream")
        position = fed - len(decompressor.unused_data)
        if position == len(body):
            return bytes(out)
    raise BadRequest(f"invalid zstd body: more than {MAX_MEMBERS} frames")


# -------------------------------------------------------------------- OTLP/JSON

# OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping expects base64 for bytes.
_ID_FIELDS = {"traceId": 16, "spanId": 8, "parentSpanId": 8, "trace_id": 16, "span_id": 8,
              "parent_span_id": 8}


def _key(d: dict[str, Any], camel: str, snake: str) -> Any:
    return d.get(camel, d.get(snake))


def _hex_ids_to_base64(obj: dict[str, Any], where: str) -> None:
    for name, size in _ID_FIELDS.items():
        value = obj.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{where}.{name}: must be a hex string")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise BadRequest(f"{where}.{name}: invalid hex id {value[:64]!r}") from None
        if len(raw) != size:
            raise BadRequest(f"{where}.{name}: must be {size * 2} hex characters, got {len(value)}")
        obj[name] = base64.b64encode(raw).decode("ascii")


def _list(d: Any, camel: str, snake: str, where: str) -> list[Any]:
    if not isinstance(d, dict):
        raise BadRequest(f"{where}: must be an object")
    value = _key(d, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}.{camel}: must be an array")
    return value


def _convert_ids(signal: Signal, doc: dict[str, Any]) -> None:
    if signal is Signal.TRACES:
        for i, rs in enumerate(_list(doc, "resourceSpans", "resource_spans", "$")):
            for j, ss in enumerate(_list(rs, "scopeSpans", "scope_spans", f"resourceSpans[{i}]")):
                for k, span in enumerate(_list(ss, "spans", "spans", f"resourceSpans[{i}].scopeSpans[{j}]")):
                    where = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                    if not isinstance(span, dict):
                        raise BadRequest(f"{where}: must be an object")
                    _hex_ids_to_base64(span, where)
                    for n, link in enumerate(_list(span, "links", "links", where)):
                        if not isinstance(link, dict):
                            raise BadRequest(f"{where}.links[{n}]: must be an object")
                        _hex_ids_to_base64(link, f"{where}.links[{n}]")
    elif signal is Signal.LOGS:
        for i, rl in enumerate(_list(doc, "resourceLogs", "resource_logs", "$")):
            for j, sl in enumerate(_list(rl, "scopeLogs", "scope_logs", f"resourceLogs[{i}]")):
                for k, record in enumerate(_list(sl, "logRecords", "log_records",
                                                 f"resourceLogs[{i}].scopeLogs[{j}]")):
                    where = f"resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]"
                    if not isinstance(record, dict):
                        raise BadRequest(f"{where}: must be an object")
                    _hex_ids_to_base64(record, where)
    else:
        for i, rm in enumerate(_list(doc, "resourceMetrics", "resource_metrics", "$")):
            for j, sm in enumerate(_list(rm, "scopeMetrics", "scope_metrics", f"resourceMetrics[{i}]")):
                for k, metric in enumerate(_list(sm, "metrics", "metrics",
                                                 f"resourceMetrics[{i}].scopeMetrics[{j}]")):
                    where = f"resourceMetrics[{i}].scopeMetrics[{j}].metrics[{k}]"
                    if not isinstance(metric, dict):
                        raise BadRequest(f"{where}: must be an object")
                    for kind in ("gauge", "sum", "histogram", "exponentialHistogram",
                                 "exponential_histogram", "summary"):
                        data = metric.get(kind)
                        if data is None:
                            continue
                        for p, point in enumerate(_list(data, "dataPoints", "data_points", f"{where}.{kind}")):
                            for e, exemplar in enumerate(_list(point, "exemplars", "exemplars",
                                                               f"{where}.{kind}.dataPoints[{p}]")):
                                if not isinstance(exemplar, dict):
                                    raise BadRequest(f"{where}.{kind}.dataPoints[{p}].exemplars[{e}]: "
                                                     "must be an object")
                                _hex_ids_to_base64(exemplar, f"{where}.{kind}.dataPoints[{p}].exemplars[{e}]")


def decode_json(signal: Signal, body: bytes) -> Message:
    from google.protobuf import json_format  # here: only OTLP/JSON needs it (0.26 MiB otherwise)

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("invalid OTLP/JSON: the top level must be an object")
    _convert_ids(signal, doc)
    message = SPECS[signal].request_type()
    try:
        # The OTLP spec asks receivers to ignore unknown fields, for forward compatibility.
        json_format.ParseDict(doc, message, ignore_unknown_fields=True, max_recursion_depth=64)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        raise BadRequest(f"invalid OTLP/JSON: {exc}") from None
    return message


def encode_json(message: Message) -> bytes:
    from google.protobuf import json_format

    return orjson.dumps(json_format.MessageToDict(message))


def decode_request(signal: Signal, body: bytes, content_type: str) -> Message:
    if content_type == JSON:
        return decode_json(signal, body)
    return decode_protobuf(signal, body)


def encode_message(message: Message, content_type: str) -> bytes:
    return encode_json(message) if content_type == JSON else message.SerializeToString()


# -------------------------------------------------------------------- google.rpc.Status


def rpc_status(code: int, message: str, retry_after: float | None = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_after * 1e9))
        status.details.add().Pack(info)
    return status


GRPC_CODE = {
    "INVALID_ARGUMENT": code_pb2.INVALID_ARGUMENT,
    "RESOURCE_EXHAUSTED": code_pb2.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": code_pb2.UNAVAILABLE,
    "UNIMPLEMENTED": code_pb2.UNIMPLEMENTED,
    "UNAUTHENTICATED": code_pb2.UNAUTHENTICATED,
    "INTERNAL": code_pb2.INTERNAL,
    "PERMISSION_DENIED": code_pb2.PERMISSION_DENIED,
}
