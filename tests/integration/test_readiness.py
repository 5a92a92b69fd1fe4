"""Readiness of the sidecar process (DESIGN.md §10).

/ready answers "can this sidecar accept data now?" and must stay 200 through a Collector outage:
the sidecar runs in the application's pod, so a 503 there would take the application out of its
Service exactly when buffering is the sidecar's job. /ready/upstream is the Collector's
reachability, `unknown` until a probe has answered.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.factory import queue_path
from sidecar.queue.sqlite import QUEUE_COLUMNS, SqliteQueue, entry_columns
from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sidecar_process import free_port, get_json

PROBE_INTERVAL = 0.5
UNHEALTHY_THRESHOLD = 2
PROBE = {"interval": f"{int(PROBE_INTERVAL * 1000)}ms", "timeout": "1s",
         "unhealthy_threshold": UNHEALTHY_THRESHOLD, "healthy_threshold": 1}


def upstream_state(body: dict[str, object]) -> object:
    exporters = body["exporters"]
    assert isinstance(exporters, dict)
    return exporters["otlp_grpc"]["upstream"]


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A port that accepts TCP connections and never says a word: a probe to it cannot answer
    before its timeout, so the endpoint is observably `unknown` for that long."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(16)
    try:
        yield listener
    finally:
        listener.close()


def test_ready_ignores_the_upstream_and_ready_upstream_follows_it(
        silent_listener: socket.socket, sidecar_factory: SidecarFactory) -> None:
    port = silent_listener.getsockname()[1]
    sidecar = sidecar_factory(f"127.0.0.1:{port}", health_probe=PROBE)
    base = f"http://127.0.0.1:{sidecar.ports.health}"

    code, body = get_json(f"{base}/ready")
    assert code == 200 and body["phase"] == "running", body  # at once, with nothing answering upstream
    assert upstream_state(body) == "unknown"  # reported in the detail, never healthy by assumption
    code, body = get_json(f"{base}/ready/upstream")
    assert code == 503 and upstream_state(body) == "unknown", body

    # Nothing is listening any more: probes fail, the endpoint is unreachable; /ready does not care.
    silent_listener.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and upstream_state(get_json(f"{base}/ready/upstream")[1]) != "unreachable":
        time.sleep(0.05)
    code, body = get_json(f"{base}/ready/upstream")
    assert code == 503 and upstream_state(body) == "unreachable", body
    endpoints = body["exporters"]["otlp_grpc"]["endpoints"]  # type: ignore[index]
    assert [ep["health"] for ep in endpoints] == ["unhealthy"]

    stays_until = time.monotonic() + PROBE_INTERVAL * UNHEALTHY_THRESHOLD * 2
    while time.monotonic() < stays_until:
        code, body = get_json(f"{base}/ready")
        assert code == 200, body
        time.sleep(0.05)

    # The Collector starts: /ready/upstream turns 200 within one probe interval, plus the gRPC
    # channel's reconnect backoff (capped at 2 s by the transport) after the refused connections.
    with FakeCollector(grpc_port=port) as collector:
        started = time.monotonic()
        while time.monotonic() - started < 10 and get_json(f"{base}/ready/upstream")[0] != 200:
            time.sleep(0.02)
        took = time.monotonic() - started
        code, body = get_json(f"{base}/ready/upstream")
        assert code == 200 and upstream_state(body) == "reachable", body
        assert took <= PROBE_INTERVAL + 2.5, f"/ready/upstream took {took:.2f}s after the Collector came up"
        assert collector.attempts  # the probes reached it


def test_ready_is_200_under_backpressure(sidecar_factory: SidecarFactory) -> None:
    """Clients pushed back get a status they retry; the pod must stay in its Service meanwhile."""
    sidecar = sidecar_factory(f"127.0.0.1:{free_port()}", health_probe=PROBE,
                              sending_queue={"queue_size": 2, "num_consumers": 1})
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s")
    codes = []
    for _ in range(6):
        try:
            export(request.SerializeToString(), timeout=5)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    channel.close()
    assert grpc.StatusCode.UNAVAILABLE in codes, codes  # pushed back...
    code, body = get_json(f"http://127.0.0.1:{sidecar.ports.health}/ready")
    assert code == 200, body  # ...and still ready


def _fill_queue_database(path: Path, rows: int) -> None:
    """A disk queue with `rows` small entries, written directly (the queue's own writer would take
    tens of seconds): replaying it at start-up takes long enough to be seen."""
    async def create() -> None:
        await (await SqliteQueue(path, 1).open()).close()  # the schema, made by the queue itself
    asyncio.run(create())
    payload = trace_service_pb2.ExportTraceServiceRequest()
    payload.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s")
    row = entry_columns(QueueEntry(Signal.TRACES, payload.SerializeToString(), 1, (), time.time()))
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(f"INSERT INTO queue ({', '.join(QUEUE_COLUMNS[1:])}) VALUES (?, ?, ?, ?, ?, ?)",
                         (row for _ in range(rows)))
    conn.close()


def test_ready_is_503_while_starting_and_after_sigterm(tmp_path: Path, sidecar_factory: SidecarFactory) -> None:
    storage = tmp_path / "queue"
    storage.mkdir()
    _fill_queue_database(queue_path(storage, "otlp_grpc"), 600_000)

    def use_storage(config: dict[str, object]) -> None:
        config["extensions"]["file_storage"] = {"directory": str(storage)}  # type: ignore[index]
        config["service"]["extensions"].append("file_storage")  # type: ignore[index]
        config["exporters"]["otlp_grpc"]["sending_queue"]["storage"] = "file_storage"  # type: ignore[index]

    # Upstream down, so the replayed queue stays and the drain at SIGTERM lasts shutdown_timeout.
    sidecar = sidecar_factory(f"127.0.0.1:{free_port()}", config_edit=use_storage, wait_ready=False,
                              health_probe=PROBE, sending_queue={"queue_size": 1_000_000})
    base = f"http://127.0.0.1:{sidecar.ports.health}"
    code, body = get_json(f"{base}/ready")  # /health answers from the start; the queue is still being replayed
    assert code == 503 and body["phase"] == "starting", body
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and get_json(f"{base}/ready")[0] != 200:
        time.sleep(0.05)
    code, body = get_json(f"{base}/ready")
    assert code == 200 and body["exporters"]["otlp_grpc"]["queue_size"] == 600_000, body  # type: ignore[index]

    assert sidecar.proc is not None
    sidecar.proc.terminate()
    deadline = time.monotonic() + 10
    seen: tuple[int, dict[str, object]] | None = None
    while time.monotonic() < deadline:
        try:
            seen = get_json(f"{base}/ready")
        except (urllib.error.URLError, ConnectionError):
            break  # stopped listening: the drain is over
        if seen[0] == 503:
            break
        time.sleep(0.02)
    assert seen is not None and seen[0] == 503 and seen[1]["phase"] == "stopping", seen
    assert sidecar.proc.wait(30) == 0
