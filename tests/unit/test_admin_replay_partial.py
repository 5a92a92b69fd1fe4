"""ReplayDeadLetters skips partial successes unless `include_partial` (issue 16), with a sending queue
and without one (synchronous delivery), and says how many it skipped and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sidecar.admin.server import SKIPPED_PARTIAL_REASON, AdminServicer
from sidecar.admin.v1 import admin_pb2 as pb
from sidecar.config.schema import SendingQueueConfig
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.core.taxonomy import Category, Classification, Recoverability, Recovery, Severity
from sidecar.exporters.exporter import Exporter
from sidecar.pipeline.classify import Classifier
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import FakeTransport, make_config, make_entry, sender_clock
from tests.fakes.sender import build as build_sender

PARTIAL = Classification(Category.PROCESSING, Severity.MEDIUM, Recoverability.PERMANENT, Recovery.DROP,
                         "partial_success", "default:partial_success")
BAD_DATA = Classification(Category.SERIALIZATION, Severity.HIGH, Recoverability.PERMANENT, Recovery.DROP,
                          "INVALID_ARGUMENT", "default")


@dataclass
class View:
    exporters: dict[str, Exporter] = field(default_factory=dict)


async def exporter_with_dead_letters(transport: FakeTransport, queue: bool) -> Exporter:
    config = make_config([transport.endpoint], sending_queue=SendingQueueConfig(enabled=queue, num_consumers=1))
    metrics = Metrics()
    exporter = Exporter("otlp_grpc", config, build_sender(config, [transport], transport.clock, metrics),
                        Classifier(), Events(metrics), SYSTEM_CLOCK, None, None)
    await exporter.start()
    assert exporter.dead_letters is not None
    await exporter.dead_letters.add(make_entry(10, tag="whole"), BAD_DATA, "bad")
    await exporter.dead_letters.add(make_entry(8, tag="partial"), PARTIAL, "3 rejected", rejected_items=3)
    return exporter


@pytest.mark.parametrize("queue", [True, False])
async def test_replay_skips_partial_successes_and_says_why(queue: bool) -> None:
    transport = FakeTransport("a:4317", sender_clock())
    exporter = await exporter_with_dead_letters(transport, queue)
    servicer = AdminServicer(View({"otlp_grpc": exporter}))  # type: ignore[arg-type]
    answer = await servicer._replay(pb.ReplayDeadLettersRequest())
    assert (answer.replayed, answer.replayed_items, answer.remaining) == (1, 10, 0)
    assert (answer.skipped_partial, answer.skipped_partial_items) == (1, 3)
    assert answer.skipped_reason == SKIPPED_PARTIAL_REASON and "include_partial" in answer.skipped_reason
    assert exporter.dead_letters is not None
    (left,) = await exporter.dead_letters.list()
    assert left.partial and left.rejected_items == 3

    answer = await servicer._replay(pb.ReplayDeadLettersRequest(include_partial=True))
    assert (answer.replayed, answer.replayed_items, answer.skipped_partial, answer.skipped_reason) == (1, 8, 0, "")
    assert exporter.dead_letters.count == 0
    if exporter.queue is not None:
        assert await exporter.queue.wait_empty(5.0)
    assert sum(entry.items for _, entry in transport.calls) == 10 + 8  # each sent once (perhaps merged)
    await exporter.shutdown(1.0)


async def test_replay_of_named_ids_skips_a_partial_one_among_them() -> None:
    transport = FakeTransport("a:4317", sender_clock())
    exporter = await exporter_with_dead_letters(transport, queue=True)
    assert exporter.dead_letters is not None
    ids = [dl.id for dl in await exporter.dead_letters.list()]
    servicer = AdminServicer(View({"otlp_grpc": exporter}))  # type: ignore[arg-type]
    answer = await servicer._replay(pb.ReplayDeadLettersRequest(exporter="otlp_grpc", ids=[ids[1]]))
    assert (answer.replayed, answer.skipped_partial, list(answer.missing_ids)) == (0, 1, [])
    listed = await servicer._list(pb.ListDeadLettersRequest())
    assert [(dl.partial_success, dl.rejected_items, dl.items) for dl in listed.dead_letters] == [
        (False, 0, 10), (True, 3, 8)]
    await exporter.shutdown(1.0)
