"""The health/metrics endpoint served on asyncio streams (sidecar/telemetry/http.py), over real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry, Counter

from sidecar.telemetry.http import MAX_REQUEST_HEAD, HttpEndpoint, health_routes, metrics_routes


def _ready() -> tuple[bool, dict[str, object]]:
    return True, {"phase": "running"}


def _not_ready() -> tuple[bool, dict[str, object]]:
    return False, {"phase": "starting"}


async def _endpoint() -> HttpEndpoint:
    registry = CollectorRegistry()
    Counter("demo_total", "demo", registry=registry).inc(3)
    endpoint = HttpEndpoint("127.0.0.1:0", health_routes(_ready, _not_ready) + metrics_routes(registry))
    await endpoint.start()
    return endpoint


async def _read_response(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = b"" if head_only else await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_routes_statuses_and_keep_alive() -> None:
    endpoint = await _endpoint()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        answers = []
        for path in ("/health", "/ready", "/ready/upstream?verbose=1", "/metrics", "/nope"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answers.append(await _read_response(reader))  # all on one connection: keep-alive
        (h, hh, hb), (r, _, rb), (u, _, ub), (m, mh, mb), (n, _, nb) = answers
        assert (h, hh["content-type"], json.loads(hb)) == (200, "application/json", {"status": "alive"})
        assert (r, json.loads(rb)) == (200, {"status": "ready", "phase": "running"})
        assert (u, json.loads(ub)["status"]) == (503, "not_ready")
        assert m == 200 and mh["content-type"].startswith("text/plain") and b"demo_total 3.0" in mb
        assert (n, nb) == (404, b"404: Not Found")
        writer.write(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await _read_response(reader, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        writer.write(b"POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        status, headers, _ = await _read_response(reader)
        assert (status, headers["allow"], "connection" in headers) == (405, "GET, HEAD", False)
        # the body was read and dropped, not taken for a request
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _read_response(reader))[0] == 200
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _ = await _read_response(reader)
        assert (status, headers["connection"]) == (200, "close") and await reader.read() == b""
        writer.close()
    finally:
        await endpoint.stop()


async def test_http_1_0_closes_and_oversized_head_is_refused() -> None:
    endpoint = await _endpoint()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /health HTTP/1.0\r\n\r\n")
        status, headers, _ = await _read_response(reader)
        assert (status, headers["connection"]) == (200, "close") and await reader.read() == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n")
        status, _, _ = await _read_response(reader)
        assert status == 400
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nX: \r\n\r\n"  # a head of exactly the limit is served
        writer.write(head.replace(b"X: ", b"X: " + b"a" * (MAX_REQUEST_HEAD - len(head))))
        assert (await _read_response(reader))[0] == 200
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
        status, headers, _ = await _read_response(reader)
        assert (status, headers["connection"]) == (505, "close") and await reader.read() == b""
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"garbage\r\n\r\n")
        assert (await _read_response(reader))[0] == 400
        writer.close()
    finally:
        await endpoint.stop()


async def test_stop_closes_idle_keep_alive_connections() -> None:
    endpoint = await _endpoint()
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _read_response(reader))[0] == 200
    await asyncio.wait_for(endpoint.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_malformed_request_is_refused_and_others_are_still_served() -> None:
    endpoint = await _endpoint()
    try:
        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        # the last one lacks Host, which RFC 9112 section 3.2 requires of HTTP/1.1 (a 400, as h11 answers)
        for bad in (b"GET /health\r\n\r\n", b"GET /health HTTP/1.1\r\nno colon\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", b"\x00\xff\r\n\r\n",
                    b"GET /health HTTP/1.1\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            writer.write(bad)
            status, headers, _ = await _read_response(reader)
            assert (status, headers["connection"]) == (400, "close"), bad
            assert await reader.read() == b""
            writer.close()
            other_writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")  # an open keep-alive connection is unaffected
            assert (await _read_response(other_reader))[0] == 200
        other_writer.close()
    finally:
        await endpoint.stop()


async def test_pipelined_requests_are_answered_in_order() -> None:
    endpoint = await _endpoint()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET\r\n0\r\n\r\n"
                     b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /ready/upstream HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ready = await _read_response(reader)
        post = await _read_response(reader)
        head = await _read_response(reader, head_only=True)
        upstream = await _read_response(reader)
        nope = await _read_response(reader)
        assert (ready[0], json.loads(ready[2])["status"]) == (200, "ready")
        assert post[0] == 405  # its chunked body was read through, not parsed as a request
        assert head[0] == 200 and int(head[1]["content-length"]) > 0
        assert (upstream[0], json.loads(upstream[2])["status"]) == (503, "not_ready")
        assert (nope[0], nope[1]["connection"]) == (404, "close")
        assert await reader.read() == b""
        writer.close()
    finally:
        await endpoint.stop()


async def test_a_failing_handler_answers_500_and_the_connection_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("check failed")

    endpoint = HttpEndpoint("127.0.0.1:0", [("/broken", broken), *health_routes(_ready, _ready)])
    await endpoint.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _read_response(reader))[0] == 500
        assert (await _read_response(reader))[0] == 200
        assert "HTTP endpoint /broken failed" in caplog.text
        writer.close()
    finally:
        await endpoint.stop()
