"""`sending_queue.batch`: a consumer merges the entries already waiting into one upstream request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.config.schema import QueueBatchConfig, SendingQueueConfig
from sidecar.config.units import Duration
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError
from sidecar.exporters.exporter import Exporter, merge_entries
from sidecar.exporters.transport import SendOutcome
from sidecar.pipeline.classify import Classifier
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import (
    INVALID,
    UNAVAILABLE,
    FakeTransport,
    make_config,
    make_entry,
    sender_clock,
)
from tests.fakes.sender import build as build_sender


def names(entry: QueueEntry) -> list[str]:
    request = ExportTraceServiceRequest.FromString(entry.payload)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_merged_entry_is_the_concatenated_request() -> None:
    entries = [make_entry(3, resources=2, tag="a"), make_entry(2, tag="b"), make_entry(4, resources=3, tag="c")]
    merged = merge_entries(entries)
    assert merged.items == 9
    assert names(merged) == [n for e in entries for n in names(e)]
    assert merged.metadata == entries[0].metadata
    assert merged.accepted_at == min(e.accepted_at for e in entries)


async def run_exporter(entries: list[QueueEntry], batch: QueueBatchConfig | None, transport: FakeTransport,
                       storage: Path | None = None) -> Exporter:
    queue_config = SendingQueueConfig(num_consumers=1, queue_size=100, batch=batch,
                                      storage="file_storage" if storage else None)
    config = make_config([transport.endpoint], sending_queue=queue_config)
    metrics = Metrics()
    sender = build_sender(config, [transport], transport.clock, metrics)
    exporter = Exporter("otlp_grpc", config, sender, Classifier(), Events(metrics), SYSTEM_CLOCK,
                        storage, None)
    await exporter.start()
    assert exporter.queue is not None
    # Fill the queue while the only consumer is busy with the first entry, so the rest wait together.
    gate = asyncio.Event()

    taken = asyncio.Event()

    async def slow_first(entry: QueueEntry) -> SendOutcome:
        taken.set()
        await gate.wait()
        return SendOutcome()

    transport.script.insert(0, slow_first)
    await exporter.queue.put(entries[0])
    await asyncio.wait_for(taken.wait(), 5.0)  # the consumer holds the first entry
    for entry in entries[1:]:
        await exporter.queue.put(entry)
    gate.set()
    assert await exporter.queue.wait_empty(5.0)
    await exporter.shutdown(1.0)
    return exporter


@pytest.mark.parametrize("disk", [False, True])
async def test_waiting_entries_share_upstream_requests(tmp_path: Path, disk: bool) -> None:
    transport = FakeTransport("a:4317", sender_clock())
    entries = [make_entry(2, tag=f"e{i}-") for i in range(7)]
    await run_exporter(entries, QueueBatchConfig(max_requests=4), transport, tmp_path if disk else None)
    sent = [entry for _, entry in transport.calls]
    assert [e.items for e in sent] == [2, 8, 4]  # the first alone (it was taken at once), then 4 + 2 entries
    assert [n for e in sent for n in names(e)] == [n for e in entries for n in names(e)]


async def test_without_batch_every_entry_is_its_own_request() -> None:
    transport = FakeTransport("a:4317", sender_clock())
    entries = [make_entry(2, tag=f"e{i}-") for i in range(4)]
    await run_exporter(entries, None, transport)
    assert [entry.items for _, entry in transport.calls] == [2, 2, 2, 2]


async def test_size_limit_and_metadata_split_batches() -> None:
    transport = FakeTransport("a:4317", sender_clock())
    small = [make_entry(2, tag=f"s{i}-") for i in range(3)]
    other = QueueEntry(small[0].signal, small[0].payload, 2, (("tenant", "b"),), 1.0)
    limit_mib = 2.5 * len(small[0].payload) / (1024 * 1024)  # two entries fit, three do not
    await run_exporter([*small, other, *small], QueueBatchConfig(max_requests=10, max_size_mib=limit_mib),
                       transport)
    sent = [entry for _, entry in transport.calls]
    assert [(e.items, e.metadata) for e in sent] == [
        (2, small[0].metadata),  # taken alone before the rest arrived
        (4, small[0].metadata), (2, (("tenant", "b"),)), (4, small[0].metadata), (2, small[0].metadata)]


async def test_a_failed_merged_request_is_retried_whole() -> None:
    clock = sender_clock()
    transport = FakeTransport("a:4317", clock, script=[UNAVAILABLE])
    entries = [make_entry(1, tag=f"e{i}-") for i in range(3)]
    task = asyncio.ensure_future(run_exporter(entries, QueueBatchConfig(), transport))
    while not task.done():  # the retry waits on the fake clock
        await asyncio.sleep(0.01)
        clock.advance(1.0)
    await task
    sent = [entry for _, entry in transport.calls]
    delivered = [n for e in sent[:1] + sent[2:] for n in names(e)]
    assert sorted(delivered) == sorted(n for e in entries for n in names(e))
    assert names(sent[1]) == names(sent[2])  # the failed merged request went again as it was


async def waiting_batch_exporter(transport: FakeTransport, *, consumers: int, max_requests: int,
                                 flush_timeout: float) -> Exporter:
    """A started exporter on a memory queue whose batch waits `flush_timeout` for more entries."""
    queue_config = SendingQueueConfig(num_consumers=consumers, queue_size=100,
                                      batch=QueueBatchConfig(max_requests=max_requests,
                                                             flush_timeout=Duration(flush_timeout)))
    config = make_config([transport.endpoint], sending_queue=queue_config)
    metrics = Metrics()
    exporter = Exporter("otlp_grpc", config, build_sender(config, [transport], transport.clock, metrics),
                        Classifier(), Events(metrics), SYSTEM_CLOCK, None, None)
    await exporter.start()
    return exporter


async def test_flush_timeout_waits_for_entries_that_arrive_soon() -> None:
    transport = FakeTransport("a:4317", sender_clock())
    exporter = await waiting_batch_exporter(transport, consumers=1, max_requests=4, flush_timeout=0.2)
    assert exporter.queue is not None
    entries = [make_entry(1, tag=f"e{i}-") for i in range(3)]
    for entry in entries:
        await exporter.queue.put(entry)
        await asyncio.sleep(0.02)  # each arrives while the consumer waits with the first
    assert await exporter.queue.wait_empty(5.0)
    await exporter.shutdown(1.0)
    assert [entry.items for _, entry in transport.calls] == [3]


async def test_flush_timeout_batches_a_steady_trickle_with_many_consumers() -> None:
    """Ten idle consumers: while one waits `flush_timeout` with the first entry, the others must not
    take the entries that arrive meanwhile one by one (one consumer gathers at a time)."""
    transport = FakeTransport("a:4317", sender_clock())
    exporter = await waiting_batch_exporter(transport, consumers=10, max_requests=8, flush_timeout=0.3)
    assert exporter.queue is not None
    entries = [make_entry(1, tag=f"e{i}-") for i in range(4)]
    for entry in entries:
        await exporter.queue.put(entry)
        await asyncio.sleep(0.02)  # a steady trickle, well inside the first entry's wait
    assert await exporter.queue.wait_empty(5.0)
    await exporter.shutdown(1.0)
    assert [entry.items for _, entry in transport.calls] == [4]
    assert [n for _, e in transport.calls for n in names(e)] == [n for e in entries for n in names(e)]


async def started_exporter(transport: FakeTransport, queue_config: SendingQueueConfig) -> tuple[Exporter, Metrics]:
    """An exporter with `queue_config` sending through `transport`, started."""
    config = make_config([transport.endpoint], sending_queue=queue_config)
    metrics = Metrics()
    exporter = Exporter("otlp_grpc", config, build_sender(config, [transport], transport.clock, metrics),
                        Classifier(), Events(metrics), SYSTEM_CLOCK, None, None)
    await exporter.start()
    return exporter, metrics


async def trickle(entries: list[QueueEntry], batch: QueueBatchConfig | None,
                  transport: FakeTransport) -> tuple[Exporter, Metrics]:
    """Ten consumers; `entries` put 20 ms apart; returns once every entry left the queue."""
    exporter, metrics = await started_exporter(
        transport, SendingQueueConfig(num_consumers=10, queue_size=100, batch=batch))
    assert exporter.queue is not None
    for entry in entries:
        await exporter.queue.put(entry)
        await asyncio.sleep(0.02)
    assert await exporter.queue.wait_empty(5.0)
    await exporter.shutdown(1.0)
    return exporter, metrics


async def test_batching_is_on_by_default_and_enabled_false_turns_it_off() -> None:
    assert SendingQueueConfig().batch == QueueBatchConfig(enabled=True, max_requests=8, max_size_mib=4.0,
                                                          flush_timeout=Duration(0.1))
    entries = [make_entry(1, tag=f"e{i}-") for i in range(4)]
    transport = FakeTransport("a:4317", sender_clock())
    default = SendingQueueConfig().batch
    assert default is not None
    # The default batch, with a wait long enough that a loaded machine cannot stretch the trickle past it.
    await trickle(entries, msgspec.structs.replace(default, flush_timeout=Duration(0.5)), transport)
    assert [entry.items for _, entry in transport.calls] == [4]
    transport = FakeTransport("a:4317", sender_clock())
    await trickle(entries, QueueBatchConfig(enabled=False, flush_timeout=Duration(0.3)), transport)
    assert [entry.items for _, entry in transport.calls] == [1, 1, 1, 1]


async def test_a_permanent_failure_of_a_merged_request_sends_each_entry_alone() -> None:
    """One client's malformed request must not dead-letter the requests it was merged with."""
    entries = [make_entry(1, tag=f"e{i}-") for i in range(4)]
    bad = names(entries[2])[0]

    async def refuse_the_bad_one(entry: QueueEntry) -> SendOutcome:
        if bad in names(entry):
            raise ExportError(INVALID)
        return SendOutcome()

    transport = FakeTransport("a:4317", sender_clock(), default=refuse_the_bad_one)
    exporter, metrics = await trickle(entries, QueueBatchConfig(max_requests=8, flush_timeout=Duration(0.3)),
                                      transport)
    sent = [names(entry) for _, entry in transport.calls]
    assert sent[0] == [n for e in entries for n in names(e)]  # merged, refused as a whole
    assert sorted(sent[1:]) == sorted(names(e) for e in entries)  # then each on its own
    assert metrics.registry.get_sample_value("sidecar_dead_letters_total", {
        "exporter": "otlp_grpc", "category": "serialization"}) == 1  # only the bad one
    assert not exporter._send_alone


async def test_an_idle_consumer_holds_no_request_it_sent() -> None:
    """After a burst, consumers wait at the queue; the last batch each sent (its merged payload and its
    entries) must not stay alive in the waiting consumer's frame, or RSS never comes back (issue 24)."""
    transport = FakeTransport("a:4317", sender_clock())
    exporter, _ = await started_exporter(
        transport, SendingQueueConfig(num_consumers=2, queue_size=100, batch=QueueBatchConfig(max_requests=4)))
    assert exporter.queue is not None
    try:
        for i in range(6):
            await exporter.queue.put(make_entry(2, tag=f"e{i}-"))
        assert await exporter.queue.wait_empty(5.0)
        assert transport.calls
        await asyncio.sleep(0.05)  # every consumer is back at the queue, waiting
        for task in exporter.consumers:
            frame = task.get_coro().cr_frame  # type: ignore[union-attr]
            assert frame is not None
            held = {name for name in ("leases", "entry", "report") if name in frame.f_locals}
            assert held == set(), f"{task.get_name()} still holds {held}"
    finally:
        await exporter.shutdown(1.0)
