"""The exporter's side of the fleet handoff (sidecar/exporters/exporter.py): a claimed entry is sent through
the exporter's own chain and reported done only once this sidecar is responsible for it; a stopping
exporter stops draining when nothing can be sent and gives the handoff the rest of its budget."""

from __future__ import annotations

import msgspec

from sidecar.config.schema import CircuitBreakerConfig, HealthProbeConfig, SendingQueueConfig
from sidecar.config.units import Duration
from sidecar.core.clock import SYSTEM_CLOCK
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import INTERNAL_ERROR
from sidecar.exporters.exporter import Exporter
from sidecar.exporters.transport import SendOutcome
from sidecar.pipeline.classify import Classifier
from sidecar.queue.deadletter import DeadLetter
from sidecar.telemetry.events import Events
from sidecar.telemetry.metrics import Metrics
from tests.fakes.sender import FakeTransport, make_config, make_entry, sender_clock
from tests.fakes.sender import build as build_sender

INVALID = ExportFailure(grpc_code="INVALID_ARGUMENT")
UNAVAILABLE = ExportFailure(grpc_code="UNAVAILABLE")


async def started(transport: FakeTransport, probe: bool = True, **config: object) -> Exporter:
    queue = SendingQueueConfig(enabled=True, num_consumers=1, queue_size=100, batch=None)
    exporter_config = msgspec.structs.replace(make_config([transport.endpoint], sending_queue=queue, **config),
                                              health_probe=HealthProbeConfig(enabled=probe))
    sender = build_sender(exporter_config, [transport], transport.clock, Metrics())
    exporter = Exporter("otlp_grpc", exporter_config, sender, Classifier(), Events(Metrics()), SYSTEM_CLOCK, None,
                        None)
    await exporter.start()
    return exporter


async def test_a_claimed_entry_is_done_once_upstream_accepted_it() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome()])
    exporter = await started(transport)
    entry = make_entry(5)
    assert await exporter.take_handed_off(entry, None) is True
    assert len(transport.calls) == 1
    await exporter.shutdown(1.0)


async def test_a_claimed_entry_that_fails_permanently_becomes_this_sidecars_dead_letter() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [INVALID])
    exporter = await started(transport)
    entry = make_entry(5)
    assert await exporter.take_handed_off(entry, None) is True
    assert exporter.dead_letters is not None
    (dead,) = await exporter.dead_letters.list()
    assert dead.entry == entry
    await exporter.shutdown(1.0)


async def test_a_handed_off_dead_letter_is_kept_not_sent() -> None:
    transport = FakeTransport("a:4317", sender_clock())
    exporter = await started(transport)
    entry = make_entry(5)
    c = INTERNAL_ERROR
    dead = DeadLetter(id=0, entry=entry, category=c.category, severity=c.severity, recoverability=c.recoverability,
                      recovery=c.recovery, error_type=c.error_type, classified_by=c.classified_by, message="no",
                      dead_at=5.0)
    assert await exporter.take_handed_off(entry, dead) is True
    assert transport.calls == []
    assert exporter.dead_letters is not None
    (kept,) = await exporter.dead_letters.list()
    assert (kept.entry, kept.message, kept.dead_at) == (entry, "no", 5.0)
    await exporter.shutdown(1.0)


async def test_a_claimed_entry_the_upstream_refuses_for_now_stays_claimed() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [UNAVAILABLE] * 20)
    exporter = await started(transport, circuit_breaker=CircuitBreakerConfig(
        failure_threshold=1, recovery_timeout=Duration(60.0), max_recovery_timeout=Duration(60.0)))
    assert await transport.clock.run(exporter.take_handed_off(make_entry(5), None)) is False
    assert exporter.queue is not None and exporter.queue.count == 0  # not taken into the local queue either
    await exporter.shutdown(1.0)


class RecordingHandoff:
    reserve = 2.0

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    async def hand_off(self, exporter: Exporter, seconds: float) -> None:
        assert exporter.queue is not None
        self.calls.append((exporter.queue.count, seconds))


async def test_a_stopping_exporter_whose_breakers_are_open_hands_off_with_the_rest_of_its_budget() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [UNAVAILABLE] * 50)
    exporter = await started(transport, circuit_breaker=CircuitBreakerConfig(
        failure_threshold=1, recovery_timeout=Duration(60.0), max_recovery_timeout=Duration(60.0)),
        probe=False)  # a successful probe would half-open the breaker
    handoff = RecordingHandoff()
    exporter.handoff = handoff
    assert exporter.queue is not None
    for _ in range(3):
        await exporter.queue.put(make_entry(2))
    while exporter.sender.ready_now():  # the first send fails and opens the breaker
        await SYSTEM_CLOCK.sleep(0.01)
    await exporter.shutdown(10.0)
    ((queued, seconds),) = handoff.calls
    assert queued == 3
    assert seconds > 9.0  # not the drain's 8 s share of waiting first: nothing could be sent


async def test_claimed_entries_go_up_as_one_request_and_a_permanent_refusal_is_judged_per_entry() -> None:
    transport = FakeTransport("a:4317", sender_clock(), [SendOutcome(), INVALID, SendOutcome(), INVALID])
    exporter = await started(transport)
    first, second = make_entry(2, tag="a"), make_entry(3, tag="b")
    assert await exporter.take_handed_off_batch([first, second]) == [True, True]
    assert len(transport.calls) == 1  # merged
    # Refused permanently as a whole: each goes again on its own; only the bad one becomes a dead letter.
    assert await exporter.take_handed_off_batch([first, second]) == [True, True]
    assert len(transport.calls) == 4
    assert exporter.dead_letters is not None
    (dead,) = await exporter.dead_letters.list()
    assert dead.entry == second
    await exporter.shutdown(1.0)
