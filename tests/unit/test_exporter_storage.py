"""The exporter over a failing disk (issue 16): it keeps accepting into memory, says so (event,
metric, health, ladder), and pushes back only when that memory is full, with the true reason."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.config.schema import SendingQueueConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.core.ingest import Backpressure
from sidecar.exporters.exporter import Exporter
from sidecar.pipeline.classify import Classifier
from sidecar.queue.fallback import StorageFallbackQueue
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import UNAVAILABLE, FakeTransport, make_config, make_entry, sender_clock
from tests.fakes.sender import build as build_sender


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_full_disk_is_answered_from_memory_then_pushed_back_as_disk_full(tmp_path: Path) -> None:
    transport = FakeTransport("a:4317", sender_clock(), default=UNAVAILABLE)  # nothing drains
    config = make_config([transport.endpoint], sending_queue=SendingQueueConfig(
        num_consumers=1, queue_size=10_000, storage="file_storage"))
    metrics = Metrics()
    sender = build_sender(config, [transport], transport.clock, metrics)
    exporter = Exporter("otlp_grpc", config, sender, Classifier(), Events(metrics), SYSTEM_CLOCK, tmp_path, None)
    await exporter.start()
    queue = exporter.queue
    assert isinstance(queue, StorageFallbackQueue)
    labels = {"exporter": "otlp_grpc", "store": "queue"}
    assert sample(metrics, "sidecar_exporter_queue_storage_errors_total", reason="disk_full", **labels) == 0
    assert metrics.registry.get_sample_value("sidecar_exporter_queue_storage_errors_total",
                                             {"reason": "corrupt", **labels}) == 0  # initialised

    def cap(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}").fetchall()

    await queue.disk._db.run(cap)
    entry = make_entry(400)  # larger than a page: never fits the capped file
    queue.memory_bytes = 3 * len(entry.payload)
    message = ExportTraceServiceRequest.FromString(entry.payload)
    for _ in range(3):
        await exporter.accept(entry, message, None)  # acknowledged (the first may still fit a page)
    assert exporter.storage_degraded() == "disk_full"
    storage = exporter.health()["storage"]
    assert isinstance(storage, dict) and storage["state"] == "degraded"
    assert storage["queue"]["reason"] == "disk_full" and storage["queue"]["in_memory"] >= 2
    assert storage["dead_letters"] == {"reason": None, "in_memory": 0}
    assert sample(metrics, "sidecar_exporter_queue_storage_errors_total", reason="disk_full", **labels) >= 1
    assert sample(metrics, "sidecar_exporter_queue_storage_degraded", **labels) == 1
    assert exporter.ladder is not None and exporter.ladder.drivers.get("storage_degraded") == 1
    with pytest.raises(Backpressure, match=r"memory fallback is full \(disk_full\)"):
        for _ in range(2):  # memory holds 3 entries' worth
            await exporter.accept(entry, message, None)
    assert queue.in_memory == 3
    await exporter.shutdown(0.1)
