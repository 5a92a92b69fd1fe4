"""The exporter keeps a partial success as a dead letter (issue 16): one per partially accepted upstream
request, standing for its rejected items, with the upstream's error_message; never retried."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sidecar.config.schema import DeadLetterConfig, QueueBatchConfig, SendingQueueConfig
from sidecar.config.units import Duration
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.core.entry import QueueEntry
from sidecar.exporters.exporter import Exporter, merge_entries
from sidecar.exporters.transport import SendOutcome
from sidecar.pipeline.classify import Classifier
from sidecar.queue.deadletter import DeadLetter, SqliteDeadLetters
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import TOO_LARGE, FakeTransport, make_config, make_entry, sample, sender_clock
from tests.fakes.sender import build as build_sender

EXPORTER = "otlp_grpc"


async def started(transport: FakeTransport, metrics: Metrics, *, storage: Path | None = None,
                  batch: QueueBatchConfig | None = None, dead_letter: DeadLetterConfig | None = None,
                  enabled: bool = True) -> Exporter:
    queue_config = SendingQueueConfig(enabled=enabled, num_consumers=1, queue_size=100, batch=batch,
                                      storage="file_storage" if storage else None)
    config = make_config([transport.endpoint], sending_queue=queue_config,
                         dead_letter=dead_letter or DeadLetterConfig())
    sender = build_sender(config, [transport], transport.clock, metrics)
    exporter = Exporter(EXPORTER, config, sender, Classifier(), Events(metrics), SYSTEM_CLOCK, storage, None)
    await exporter.start()
    return exporter


async def delivered(exporter: Exporter, *entries: QueueEntry) -> list[DeadLetter]:
    assert exporter.queue is not None and exporter.dead_letters is not None
    for entry in entries:
        await exporter.queue.put(entry)
    assert await exporter.queue.wait_empty(5.0)
    return await exporter.dead_letters.list()


def dead_letter_count(metrics: Metrics, category: str = "processing") -> float:
    return sample(metrics, "sidecar_dead_letters_total", {"exporter": EXPORTER, "category": category})


async def test_a_partial_success_becomes_one_dead_letter_and_is_not_retried(tmp_path: Path) -> None:
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome(rejected=3, rejected_message="3 bad spans")])
    metrics = Metrics()
    exporter = await started(transport, metrics)
    entry = make_entry(10)
    (dl,) = await delivered(exporter, entry)
    assert len(transport.calls) == 1  # never retried
    assert dl.entry == entry  # the whole request, accepted items too, for inspection
    assert (dl.rejected_items, dl.partial, dl.items) == (3, True, 3)
    assert (dl.message, dl.error_type, dl.category.value) == ("3 bad spans", "partial_success", "processing")
    assert dead_letter_count(metrics) == 1
    assert sample(metrics, "sidecar_dropped_items_total", {"signal": "traces", "reason": "upstream_rejected"}) == 3
    assert sample(metrics, "sidecar_exporter_sent_spans_total", {"exporter": EXPORTER}) == 7
    await exporter.shutdown(1.0)


async def test_a_full_success_writes_no_dead_letter() -> None:
    transport = FakeTransport("a:4317", sender_clock())
    metrics = Metrics()
    exporter = await started(transport, metrics)
    assert await delivered(exporter, make_entry(10)) == []
    assert dead_letter_count(metrics) == 0
    await exporter.shutdown(1.0)


async def test_a_partial_success_without_a_message_says_what_was_rejected() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome(rejected=2)])
    exporter = await started(transport, Metrics())
    (dl,) = await delivered(exporter, make_entry(5))
    assert dl.message == "upstream rejected 2 of 5 items"
    await exporter.shutdown(1.0)


async def test_the_dead_letter_is_on_disk_with_storage(tmp_path: Path) -> None:
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome(rejected=4, rejected_message="bad")])
    exporter = await started(transport, Metrics(), storage=tmp_path)
    entry = make_entry(6)
    await delivered(exporter, entry)
    await exporter.shutdown(1.0)
    store = await SqliteDeadLetters(tmp_path / f"{EXPORTER}.deadletter.sqlite").open()
    (dl,) = await store.list()
    assert (dl.entry, dl.rejected_items, dl.message) == (entry, 4, "bad")
    await store.close()


async def test_a_merged_request_partially_accepted_is_one_dead_letter() -> None:
    """With the batch, one upstream request carries several entries: one dead letter for that request."""
    transport = FakeTransport("a:4317", sender_clock())
    metrics = Metrics()
    batch = QueueBatchConfig(enabled=True, max_requests=8, max_size_mib=4.0, flush_timeout=Duration(0.0))
    exporter = await started(transport, metrics, batch=batch)
    assert exporter.queue is not None
    gate, taken = asyncio.Event(), asyncio.Event()

    async def held(entry: QueueEntry) -> SendOutcome:  # the first request waits so the rest gather
        taken.set()
        await gate.wait()
        return SendOutcome()

    transport.script = [held, SendOutcome(rejected=2, rejected_message="two bad")]
    entries = [make_entry(3, tag=t) for t in "abcd"]
    await exporter.queue.put(entries[0])
    await asyncio.wait_for(taken.wait(), 5.0)
    for entry in entries[1:]:
        await exporter.queue.put(entry)
    gate.set()
    assert await exporter.queue.wait_empty(5.0)
    assert len(transport.calls) == 2
    (dl,) = await exporter.dead_letters.list() if exporter.dead_letters else []
    assert dl.entry.payload == merge_entries(entries[1:]).payload and dl.entry.items == 9
    assert dl.rejected_items == 2 and dead_letter_count(metrics) == 1
    await exporter.shutdown(1.0)


async def test_a_split_part_partially_accepted_is_a_dead_letter_of_that_part() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [TOO_LARGE, SendOutcome(rejected=1, rejected_message="x"),
                                                          SendOutcome()])
    exporter = await started(transport, Metrics())
    entry = make_entry(8, resources=2)
    (dl,) = await delivered(exporter, entry)
    first_half = transport.calls[1][1]
    assert len(transport.calls) == 3  # the whole, then each half once
    assert dl.entry == first_half and dl.entry.items == 4 and dl.rejected_items == 1
    await exporter.shutdown(1.0)


async def test_evicting_a_partial_dead_letter_counts_its_rejected_items_once() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome(rejected=3, rejected_message="a"),
                                                          SendOutcome(rejected=5, rejected_message="b")])
    metrics = Metrics()
    exporter = await started(transport, metrics, dead_letter=DeadLetterConfig(max_items=1))
    (dl,) = await delivered(exporter, make_entry(10, tag="a"), make_entry(10, tag="b"))
    assert (dl.message, dl.rejected_items) == ("b", 5)
    # Each rejected item is one drop, counted when the upstream refused it; evicting its kept copy adds none.
    assert sample(metrics, "sidecar_dropped_items_total", {"signal": "traces", "reason": "upstream_rejected"}) == 8
    assert sample(metrics, "sidecar_dropped_items_total", {"signal": "traces", "reason": "dead_letter_evicted"}) == 0
    assert exporter.dead_letters is not None and exporter.dead_letters.evicted_items == 3
    await exporter.shutdown(1.0)


async def test_synchronous_mode_answers_the_client_and_keeps_no_dead_letter() -> None:
    """Without a queue the client itself gets the partial success (as it gets a permanent failure)."""
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome(rejected=2, rejected_message="x")])
    exporter = await started(transport, Metrics(), enabled=False)
    result = await exporter.accept(make_entry(5), None, None)  # type: ignore[arg-type]
    assert result.rejected == 2
    assert exporter.dead_letters is not None and exporter.dead_letters.count == 0
    await exporter.shutdown(1.0)
