"""One exporter: its queue, its consumers and its sender chain (DESIGN.md §2, §5).

`accept` is the pipeline's door: it applies the exporter's degradation level,
then queues (acknowledged once stored) or, with the queue disabled, sends
synchronously and maps upstream's answer back to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from google.protobuf.message import Message

from sidecar.config.schema import DegradationProcessorConfig, ExporterConfig, component_kind
from sidecar.config.units import MIB, mib_to_bytes
from sidecar.core.clock import SYSTEM_CLOCK, Clock
from sidecar.core.drops import DropReason
from sidecar.core.entry import QueueEntry
from sidecar.core.ingest import Backpressure, IngestResult, UpstreamRefused
from sidecar.core.signals import Signal
from sidecar.core.tasks import cancel_and_wait
from sidecar.core.taxonomy import INTERNAL_ERROR, Category, Classification
from sidecar.exporters.outcomes import OutcomeWindow
from sidecar.exporters.retry import Reason
from sidecar.exporters.sender import Sender, SendReport, Verdict, build_sender
from sidecar.exporters.transport import Transport
from sidecar.exporters.transport_grpc import GrpcTransport
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.degrade import (
    DegradationLadder,
    Level,
    Pressure,
    ShedResult,
    shed_logs,
    shed_traces,
)
from sidecar.queue.base import Lease, ManagedSendingQueue, QueueFull, QueueStorageError
from sidecar.queue.deadletter import DeadLetter, DeadLetterStore, Evicted
from sidecar.queue.deadletter_fallback import FallbackDeadLetters
from sidecar.queue.factory import open_dead_letters, open_queue
from sidecar.queue.fallback import STORAGE_REASONS, StorageFallbackQueue
from sidecar.queue.memory import MemoryQueue
from sidecar.queue.tiered import TieredQueue
from sidecar.runtime import release_free_memory
from sidecar.telemetry.events import Events
from sidecar.telemetry.stats import ErrorStats

log = logging.getLogger("sidecar.exporter")

_HTTP_FOR_GRPC = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                  "UNIMPLEMENTED": 404, "FAILED_PRECONDITION": 400, "RESOURCE_EXHAUSTED": 413}
_GRPC_FOR_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
                  405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT"}
RELEASE_AT = 0.7  # fraction of the memory limit from which free heap memory is returned before RSS is judged
MEMORY_HEADROOM = 0.05  # the ladder's memory thresholds apply to the limit less this fraction (requests in flight)


def resident_memory_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return None


class BacklogHandoff(Protocol):
    """Fleet mode (sidecar/fleet/handoff.py): where a stopping exporter moves what it could not deliver."""

    reserve: float  # seconds of the shutdown budget kept for `hand_off` (the drain gets the rest)

    async def hand_off(self, exporter: Exporter, seconds: float) -> None:
        """Move the queue's entries, then the dead letters, oldest first, within `seconds`; an entry
        leaves the local store only once the fleet confirmed it."""


def build_transports(name: str, config: ExporterConfig) -> list[Transport]:
    kind = component_kind(name)
    endpoints = config.endpoint_list()
    if kind == "otlp_http":
        from sidecar.exporters.transport_http import HttpTransport  # aiohttp only for an otlp_http exporter

        return [HttpTransport(endpoint, config) for endpoint in endpoints]
    return [GrpcTransport(endpoint, config) for endpoint in endpoints]


class Exporter:
    def __init__(self, name: str, config: ExporterConfig, sender: Sender, classifier: Classifier,
                 events: Events, clock: Clock, storage_directory: Path | None,
                 memory_limit_bytes: int | None, recover: bool = False,
                 degradation: DegradationProcessorConfig | None = None) -> None:
        self.name = name
        self.config = config
        self.sender = sender
        self.classifier = classifier
        self.events = events
        self.clock = clock
        self.storage_directory = storage_directory if config.sending_queue.storage else None
        self.memory_limit_bytes = memory_limit_bytes
        self.recover = recover
        self.queue: ManagedSendingQueue | None = None
        self.dead_letters: DeadLetterStore | None = None
        self.ladder = DegradationLadder(degradation) if degradation is not None else None
        self.consumers: list[asyncio.Task[None]] = []
        self._housekeeping: list[asyncio.Task[None]] = []  # background chores (dead-letter expiry)
        self.accepting = False
        self.outcomes = OutcomeWindow()  # the error-rate and latency (p99) triggers of the ladder
        self._memory_sample: tuple[float, int | None] = (float("-inf"), None)
        self._released_at = float("-inf")  # last `release_free_memory` call
        self._rng = random.Random()
        # Entries requeued because the retry budget refused their retry: their next send is a retry
        # too (see `Sender.send(resend=...)`). Equal entries compare equal, memory or disk queue alike.
        self._owed_retry: set[QueueEntry] = set()
        # With a batch that waits (`flush_timeout`), one consumer gathers at a time (see `_next_leases`).
        self._gathering = asyncio.Lock()
        # Entries of a merged request that failed permanently: each goes again on its own (see `_settle`).
        self._send_alone: set[QueueEntry] = set()
        self.handoff: BacklogHandoff | None = None  # fleet mode with handoff: set by the fleet
        events.exporter_added(name)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        queue_cfg = self.config.sending_queue
        try:
            if self.storage_directory is not None:
                self.events.storage_initialised(self.name, ("queue", "dead_letters"), STORAGE_REASONS)
            if queue_cfg.enabled:
                self.queue = await open_queue(self.name, queue_cfg, self.storage_directory, recover=self.recover,
                                              memory_limit_bytes=self.memory_limit_bytes,
                                              listener=StorageEvents(self.events, self.name, "queue"))
            bounds = self.config.dead_letter
            self.dead_letters = await open_dead_letters(
                self.name, self.storage_directory, max_entries=bounds.max_items,
                max_bytes=mib_to_bytes(bounds.max_size_mib) if bounds.max_size_mib is not None else None,
                max_age=float(bounds.max_age) or None, synchronous=queue_cfg.synchronous, recover=self.recover,
                listener=StorageEvents(self.events, self.name, "dead_letters"), monotonic=self.clock.monotonic)
        except QueueStorageError as exc:
            raise OSError(f"exporters.{self.name}: {exc}") from None
        if isinstance(self.queue, TieredQueue):
            self.queue.on_spill = functools.partial(self._spill_event, self.events.spilled)
            self.queue.on_drain = functools.partial(self._spill_event, self.events.spill_drained)
        if self.queue is not None:
            self.events.queue_opened(self.name, self.queue.capacity)
            if self.queue.count:
                log.info("replaying queued requests from disk", extra={
                    "exporter": self.name, "requests": self.queue.count})
            self.update_queue_gauges()
            self.consumers = [asyncio.create_task(self._consume(), name=f"{self.name}-consumer-{i}")
                              for i in range(queue_cfg.num_consumers)]
        if self.dead_letters.max_age is not None:
            self._housekeeping.append(asyncio.create_task(self._expire_dead_letters(self.dead_letters.max_age),
                                                          name=f"{self.name}-dead-letter-expiry"))
        self.sender.start()
        self.accepting = True

    async def shutdown(self, timeout: float) -> None:
        """Drain for up to `timeout`; persist (disk) or count as dropped (memory) what is left."""
        self.accepting = False
        # With a handoff, part of the budget is kept for it (at most half): an upstream that is down
        # would otherwise take the whole budget for a drain that cannot finish.
        reserve = min(self.handoff.reserve, timeout / 2) if self.handoff is not None else 0.0
        if self.queue is not None:
            started = self.clock.monotonic()
            drained = await self._drain(timeout - reserve)
            await cancel_and_wait(self.consumers)
            if self.handoff is not None and (not drained or (self.dead_letters and self.dead_letters.count)):
                try:
                    await self.handoff.hand_off(self, timeout - (self.clock.monotonic() - started))
                except Exception:  # a failed handoff must not skip the rest: what is left is kept or counted
                    log.exception("handoff failed; what is left stays in the local queue",
                                  extra={"exporter": self.name})
                drained = not self.queue.count
            if not drained and isinstance(self.queue, TieredQueue):
                persisted = await self.queue.persist_memory()  # storage is there: keep what memory held
                log.warning("shutdown: requests left in the queue kept on disk, replayed on next start",
                            extra={"exporter": self.name, "requests": self.queue.count,
                                   "moved_from_memory": persisted})
            elif not drained:
                if self.queue.durable:
                    log.warning("shutdown: requests left in the disk queue, replayed on next start",
                                extra={"exporter": self.name, "requests": self.queue.count})
                elif isinstance(self.queue, MemoryQueue):
                    # One event per signal: the drop log is throttled per key, and the process is
                    # exiting, so per-entry events would log only the first entry's items.
                    left: dict[str, int] = {}
                    for entry in self.queue.drain_nowait():
                        left[entry.signal.value] = left.get(entry.signal.value, 0) + entry.items
                    for signal_name, items in left.items():
                        self.events.dropped(signal_name, DropReason.SHUTDOWN, items,
                                            f"exporter {self.name}: not delivered within shutdown_timeout")
            await self.queue.close()
        await self.sender.stop()
        await self.sender.close()
        await cancel_and_wait(self._housekeeping)
        if self.dead_letters is not None:
            await self.dead_letters.close()

    async def _drain(self, seconds: float) -> bool:
        """Wait up to `seconds` for the queue to empty. With a handoff, stop early once no endpoint takes
        calls (the breakers are open: an outage): the handoff gets the rest of the shutdown budget."""
        assert self.queue is not None
        if self.handoff is None:
            return await self.queue.wait_empty(seconds)
        deadline = self.clock.monotonic() + seconds
        while True:
            if await self.queue.wait_empty(max(0.0, min(0.25, deadline - self.clock.monotonic()))):
                return True
            if self.clock.monotonic() >= deadline or not self.sender.ready_now():
                return False

    async def take_handed_off(self, entry: QueueEntry, dead: DeadLetter | None) -> bool:
        """Fleet handoff: an entry another sidecar handed off, claimed by this one. True once this sidecar
        is responsible for it (upstream accepted it, or it is in this sidecar's own dead letters or queue),
        so the fleet may forget it; False to try again later (it stays claimed in Redis)."""
        assert self.dead_letters is not None
        if dead is not None:  # a dead letter is kept for inspection and replay, never sent again here
            self._count_evicted(await self.dead_letters.add(entry, dead.classification, dead.message,
                                                            dead.dead_at, rejected_items=dead.rejected_items))
            return True
        return await self._settle_handed_off(entry, await self.sender.send(entry), [entry])

    async def take_handed_off_batch(self, entries: list[QueueEntry]) -> list[bool]:
        """Several claimed entries of one signal and metadata sent as one upstream request, as the batcher
        merges queued ones (`take_handed_off` for what `True` means, per entry)."""
        merged = merge_entries(entries)
        report = await self.sender.send(merged)
        if not report.parts and report.verdict is Verdict.DEAD_LETTER and report.reason in (Reason.PERMANENT,
                                                                                          Reason.FATAL):
            # May be one entry's fault (as in `_settle`): each gets the verdict it would have had alone.
            return [await self.take_handed_off(entry, None) for entry in entries]
        return [await self._settle_handed_off(merged, report, entries)] * len(entries)

    async def _settle_handed_off(self, entry: QueueEntry, report: SendReport, originals: list[QueueEntry]) -> bool:
        """Act on the report for a claimed `entry` (the merge of `originals`, or one of them)."""
        if report.verdict is Verdict.REQUEUE and not report.parts:
            return False
        requeue = [part.entry for part in report.outcomes(entry) if part.report.verdict is Verdict.REQUEUE]
        if requeue:
            if self.queue is None:
                return False  # nowhere to keep the rest: send the whole entry again later (duplicates, no loss)
            try:
                for piece in requeue:
                    await self.queue.put(piece)
            except QueueFull:
                return False
        delivered = []
        for part in report.outcomes(entry):
            if part.report.verdict is Verdict.DEAD_LETTER:
                await self._dead_letter(part.entry, part.report)
            elif part.report.verdict is Verdict.DELIVERED:
                if part.report.rejected:
                    await self._dead_letter_partial(part.entry, part.report)
                delivered.append(part.entry)
        self._delivered(originals if not report.parts and report.verdict is Verdict.DELIVERED else delivered)
        return True

    def _spill_event(self, event: Callable[[str, str, int], None], entry: QueueEntry) -> None:
        event(self.name, entry.signal.value, entry.items)

    async def reconfigure(self, config: ExporterConfig) -> None:
        """A reload's settings that a running exporter takes in place (sidecar/reload.py decides which):
        the sender chain's; the queue, its consumers and what they hold are untouched."""
        await self.sender.reconfigure(config)
        self.config = config

    def health(self) -> dict[str, object]:
        queue = self.queue
        return {
            "upstream": self.sender.upstream().value,
            "queue_size": queue.size if queue else 0,
            "queue_capacity": queue.capacity if queue else 0,
            "degradation_level": int(self.ladder.level) if self.ladder else 0,
            "endpoints": self.sender.status(),
            **({"storage": self.storage_status()} if self.storage_directory is not None else {}),
        }

    def storage_degraded(self) -> str | None:
        """Why the queue or the dead letters keep data in memory (disk_full, io_error, corrupt), or None."""
        queue, dead = self._disk_queue(), self.dead_letters
        if isinstance(queue, StorageFallbackQueue) and queue.degraded:
            return queue.degraded
        return dead.degraded if isinstance(dead, FallbackDeadLetters) else None

    def _disk_queue(self) -> ManagedSendingQueue | None:
        """The queue that writes to disk: the queue itself, or the disk tier of a spilling one."""
        return self.queue.disk if isinstance(self.queue, TieredQueue) else self.queue

    def storage_status(self) -> dict[str, object]:
        queue, dead = self._disk_queue(), self.dead_letters
        status: dict[str, object] = {"state": "degraded" if self.storage_degraded() else "ok"}
        if isinstance(queue, StorageFallbackQueue):
            status["queue"] = {"reason": queue.degraded, "in_memory": queue.in_memory,
                               "quarantined": list(queue.quarantined)}
        if isinstance(dead, FallbackDeadLetters):
            status["dead_letters"] = {"reason": dead.degraded, "in_memory": dead.memory.count}
        return status

    # ------------------------------------------------------------------ accepting

    async def accept(self, entry: QueueEntry, message: Message,
                     degradation: DegradationProcessorConfig | None) -> IngestResult:
        if not self.accepting:
            raise Backpressure(f"exporter {self.name} is shutting down", retry_after=5.0)
        if self.queue is None:
            return await self._send_synchronously(entry)
        level = self._current_level()
        if isinstance(self.queue, TieredQueue):
            self.queue.spilling = level.spills  # level 1 (spill) and up: new requests go to disk
        shed: ShedResult | None = None
        if degradation is not None and level.sheds:
            try:
                entry, shed = self._shed(entry, message, level, degradation.sample_ratio)
            except Exception as exc:
                # Classification raised while telling error items from the rest: shed nothing rather
                # than risk shedding an error span; the queue (and then backpressure) takes the load.
                self.events.enrich_failed(entry.signal, entry.items, exc)
                shed = None
        if shed is not None and entry.items == 0:
            self._count_shed(entry, shed, level)
            return IngestResult(shed.shed, shed.message())
        if level.rejects and self.queue.count > 0:
            # The ladder's cause, not `_memory_fraction()`: that is a (truthy) fraction whenever a limit is set.
            self._push_back(entry, "memory_limit" if self.ladder and self.ladder.cause == "memory" else "queue_full")
        try:
            await self.queue.put(entry)
        except QueueFull as exc:
            self._push_back(entry, exc.reason)  # queue_full, or the storage's reason (disk_full, ...)
        finally:
            self.update_queue_gauges()
        self.sender.held()  # held back by an open breaker: an occurrence of its class (severity escalation)
        if shed is not None and shed.shed:
            # Counted only now: when the put fails the client is told to retry the whole request,
            # so nothing was dropped (counting earlier made the counters exceed the partial successes).
            self._count_shed(entry, shed, level)
            return IngestResult(shed.shed, shed.message())
        return IngestResult()

    def _count_shed(self, entry: QueueEntry, shed: ShedResult, level: Level) -> None:
        for reason, count in shed.shed_by_reason.items():
            self.events.dropped(entry.signal.value, reason, count, f"exporter {self.name} at level {int(level)}")

    def _push_back(self, entry: QueueEntry, reason: str) -> None:
        self.events.backpressure(self.name, entry.signal.value, entry.items, reason)
        retry_after = max(1.0, min(30.0, self.sender_wait_hint()))
        what = ("sending queue is full" if reason in ("queue_full", "memory_limit")
                else "queue storage is failing and its memory fallback is full")
        raise Backpressure(f"exporter {self.name}: {what} ({reason}); retry later", retry_after=retry_after)

    def sender_wait_hint(self) -> float:
        return 1.0 if self.sender.ready_now() else 5.0

    def _shed(self, entry: QueueEntry, message: Message, level: Level,
              sample_ratio: float) -> tuple[QueueEntry, ShedResult]:
        """Shed on a private copy decoded from the entry: the pipeline's message is shared with the
        other exporters, and for traces it does not carry the enrichment (only the payload does)."""
        own = type(message)()
        own.ParseFromString(entry.payload)
        if entry.signal is Signal.TRACES:
            result = shed_traces(own, level, sample_ratio,  # type: ignore[arg-type]
                                 lambda span: self.classifier.classify_span(span) is not None)
        elif entry.signal is Signal.LOGS:
            result = shed_logs(own, level, sample_ratio,  # type: ignore[arg-type]
                               lambda record: self.classifier.classify_log(record) is not None)
        else:
            return entry, ShedResult(entry.items, 0, {}, level, "metric_points")
        if not result.changed:
            return entry, result
        return replace(entry, payload=own.SerializeToString(), items=result.kept), result

    def _memory_fraction(self) -> float | None:
        """RSS over the memory limit less MEMORY_HEADROOM (what the ladder's memory thresholds apply to).

        Requests in flight are received and decoded before they can be refused, so push-back must
        start below the limit for RSS to stay under it; and RSS is read on every request once it
        is close (a stale reading lets a burst through), otherwise at most every 0.25 s.
        """
        if not self.memory_limit_bytes:
            return None
        now = self.clock.monotonic()
        sampled_at, rss = self._memory_sample
        effective = self.memory_limit_bytes * (1.0 - MEMORY_HEADROOM)
        close = rss is not None and rss >= 0.9 * effective
        if close or now - sampled_at > 0.25:
            rss = resident_memory_bytes()
            if rss is not None and rss >= RELEASE_AT * self.memory_limit_bytes and now - self._released_at >= 1.0:
                # RSS includes freed heap memory glibc keeps (runtime.MALLOC_ENV): return it before judging.
                self._released_at = now
                if release_free_memory():
                    rss = resident_memory_bytes()
            self._memory_sample = (now, rss)
        return None if rss is None else rss / effective

    def _current_level(self) -> Level:
        queue = self.queue
        assert queue is not None
        error_rate, latency = self.outcomes.stats(self.clock.monotonic())
        pressure = Pressure(
            queue_fill=queue.size / queue.capacity if queue.capacity else 0.0,
            queue_full=queue.size >= queue.capacity,
            breaker_open=not self.sender.ready_now(),
            memory_fraction=self._memory_fraction(),
            error_rate=error_rate,
            latency=latency,
            storage_degraded=self.storage_degraded() is not None,
        )
        if self.ladder is None:
            self.ladder = DegradationLadder(None)
        previous = self.ladder.level
        level = self.ladder.update(pressure)
        if level != previous:
            self.events.degradation_changed(self.name, int(previous), int(level), self.ladder.cause)
        return level

    # ------------------------------------------------------------------ synchronous mode

    async def _send_synchronously(self, entry: QueueEntry) -> IngestResult:
        report = await self.sender.send(entry)
        if report.verdict is Verdict.DELIVERED:
            self._delivered([entry])
            return IngestResult(report.rejected, _rejected_message(report))
        if report.reason is Reason.BREAKER_OPEN and report.attempts == 0:
            self.sender.held()
        classification = report.classification or INTERNAL_ERROR
        if report.verdict is Verdict.REQUEUE or classification.retryable:
            raise UpstreamRefused(f"upstream did not accept the request: {classification.error_type}",
                                  retryable=True, retry_after=report.retry_after, grpc_code="UNAVAILABLE",
                                  http_status=503)
        grpc_code, http_status = _client_status(classification)
        raise UpstreamRefused(f"upstream refused the request ({classification.category.value}/"
                              f"{classification.error_type})", retryable=False, retry_after=None,
                              grpc_code=grpc_code, http_status=http_status)

    # ------------------------------------------------------------------ consuming

    async def _consume(self) -> None:
        assert self.queue is not None
        while True:
            await self.sender.wait_ready()
            leases = await self._next_leases()
            entry = leases[0].entry if len(leases) == 1 else merge_entries([held.entry for held in leases])
            self.update_queue_gauges()
            started = self.clock.monotonic()
            try:
                # (Membership hashes the whole payload the first time: look only when something is owed.)
                owed = bool(self._owed_retry) and any(held.entry in self._owed_retry for held in leases)
                report = await self.sender.send(entry, resend=owed)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._nack_all(leases))
                raise
            except Exception:
                log.exception("sender failed unexpectedly", extra={"exporter": self.name})
                report = SendReport(verdict=Verdict.DEAD_LETTER, classification=INTERNAL_ERROR)
            now = self.clock.monotonic()
            self.outcomes.record(now, report.verdict is Verdict.DELIVERED, now - started)
            try:
                await self._settle(leases, entry, report)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A consumer must outlive any bug in settling: give the entry back (at-least-once) and
                # pause briefly so a persistent failure cannot spin.
                log.exception("settling an export result failed; the request stays queued",
                              extra={"exporter": self.name})
                with contextlib.suppress(Exception):
                    await self._nack_all(leases)
                await self.clock.sleep(1.0)
            finally:
                self.update_queue_gauges()
            if report.verdict is Verdict.REQUEUE and report.retry_after:
                await self.clock.sleep(min(report.retry_after, 5.0))
            # Let go of this request before waiting for the next one: a consumer idle at the queue would keep
            # the last batch it sent alive (merged payload and its entries, ~1 MiB at 512 spans x 8), times
            # num_consumers: tens of MiB of RSS that never came back after a burst.
            del leases, entry, report

    def _forget_owed(self, entry: QueueEntry) -> None:
        if self._owed_retry:  # a lookup hashes the whole payload (once per bytes object): skip it when empty
            self._owed_retry.discard(entry)
        if self._send_alone:
            self._send_alone.discard(entry)

    async def _next_leases(self) -> list[Lease]:
        """The leases of the next upstream request: one entry, or (with `sending_queue.batch`) a batch."""
        assert self.queue is not None
        batch = self.config.sending_queue.batch
        if batch is None or not batch.enabled or batch.flush_timeout <= 0:
            return await self._take(await self.queue.get())
        # One consumer gathers at a time: while it waits `flush_timeout` for more entries, the other
        # consumers wait here rather than at the queue, where each would take one of the entries the
        # wait is for (with 10 consumers and a steady rate, the batch would almost never grow).
        async with self._gathering:
            return await self._take(await self.queue.get())

    async def _take(self, first: Lease) -> list[Lease]:
        """`first`, plus (with `sending_queue.batch`) the entries waiting that can share its upstream
        request: same signal and metadata, within the batch's count and size. Waits up to
        `flush_timeout` for more when fewer than `max_requests` are there. An entry owed a send on its own
        (`_send_alone`) is never merged."""
        batch = self.config.sending_queue.batch
        queue = self.queue
        if batch is None or not batch.enabled or queue is None:
            return [first]
        if self._send_alone and first.entry in self._send_alone:  # (a lookup hashes the payload: only when owed)
            return [first]
        limit = int(batch.max_size_mib * MIB)
        if self.sender.max_request_bytes is not None:
            limit = min(limit, self.sender.max_request_bytes)
        leases = [first]
        size = len(first.entry.payload)
        try:
            if batch.flush_timeout > 0 and queue.available < batch.max_requests - 1:
                await self.clock.sleep(float(batch.flush_timeout))
            while len(leases) < batch.max_requests and queue.available:
                lease = await queue.get()  # does not wait: an entry is available (no await before this)
                entry = lease.entry
                if (entry.signal is not first.entry.signal or entry.metadata != first.entry.metadata
                        or size + len(entry.payload) > limit
                        or (self._send_alone and entry in self._send_alone)):
                    await queue.nack(lease)  # back to its place, for the next request
                    break
                leases.append(lease)
                size += len(entry.payload)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._nack_all(leases))
            raise
        return leases

    async def _nack_all(self, leases: list[Lease]) -> None:
        assert self.queue is not None
        for lease in leases:
            await self.queue.nack(lease)

    async def _settle(self, leases: list[Lease], entry: QueueEntry, report: SendReport) -> None:
        """Act on the report for `entry`, sent on behalf of `leases` (one, or several merged by the batch):
        they share its fate. Split parts are requeued or dead-lettered one by one; when a requeue does not
        fit, every lease is nacked instead (the whole request is sent again: duplicates, never loss)."""
        assert self.queue is not None
        if not report.parts:
            if (report.verdict is Verdict.DEAD_LETTER and len(leases) > 1
                    and report.reason in (Reason.PERMANENT, Reason.FATAL)):
                # A permanent answer to a merged request may be one entry's fault (one client's malformed
                # data): each entry goes again on its own and gets the verdict it would have had unbatched,
                # never dead-lettered for a neighbour.
                self._send_alone.update(lease.entry for lease in leases)
                await self._nack_all(leases)
                return
            if report.verdict is Verdict.REQUEUE:
                if report.reason is Reason.BUDGET_EXHAUSTED:
                    self._owed_retry.update(lease.entry for lease in leases)
                await self._nack_all(leases)
                return
            if report.verdict is Verdict.DEAD_LETTER:
                await self._dead_letter(entry, report)
            elif report.verdict is Verdict.DELIVERED and report.rejected:
                await self._dead_letter_partial(entry, report)
            delivered = [lease.entry for lease in leases] if report.verdict is Verdict.DELIVERED else []
        else:
            try:
                for part in report.parts:
                    if part.report.verdict is Verdict.REQUEUE:
                        await self.queue.put(part.entry)
                        if part.report.reason is Reason.BUDGET_EXHAUSTED:
                            self._owed_retry.add(part.entry)
            except QueueFull:
                await self._nack_all(leases)  # resend them all later: duplicates, never loss
                return
            for part in report.parts:
                if part.report.verdict is Verdict.DEAD_LETTER:
                    await self._dead_letter(part.entry, part.report)
                elif part.report.verdict is Verdict.DELIVERED and part.report.rejected:
                    await self._dead_letter_partial(part.entry, part.report)
            delivered = [part.entry for part in report.parts if part.report.verdict is Verdict.DELIVERED]
        for lease in leases:
            self._forget_owed(lease.entry)
            await self.queue.ack(lease)
        if self._send_alone and not self.queue.count:  # nothing left to send alone (e.g. expired meanwhile)
            self._send_alone.clear()
        self._delivered(delivered)

    def _delivered(self, entries: list[QueueEntry]) -> None:
        """Upstream acknowledged these: their delivery latency, from the client's acknowledgement."""
        now = self.clock.wall()
        for entry in entries:
            self.events.delivered(self.name, entry.accepted_at, now)

    async def _dead_letter(self, entry: QueueEntry, report: SendReport) -> None:
        assert self.dead_letters is not None
        classification = report.classification or INTERNAL_ERROR
        message = report.reason or classification.error_type
        evicted = await self.dead_letters.add(entry, classification, message, self.clock.wall())
        self.events.dead_lettered(self.name, entry.signal.value, entry.items, classification.category.value,
                                  classification.error_type, message)
        self._count_evicted(evicted)

    async def _dead_letter_partial(self, entry: QueueEntry, report: SendReport) -> None:
        """A partial success: the whole request is kept for inspection, standing for its rejected items
        (already counted as dropped by the sender). Never a reason to send it again: a failure to store
        it is logged and the entry is acked all the same."""
        assert self.dead_letters is not None
        message = report.rejected_message or f"upstream rejected {report.rejected} of {entry.items} items"
        try:
            classification = report.classification or self.classifier.classify_partial_success(
                report.rejected, report.rejected_message)
            evicted = await self.dead_letters.add(entry, classification, message, self.clock.wall(),
                                                  rejected_items=report.rejected)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writing a partial-success dead letter failed; its rejected items stay counted as "
                          "upstream_rejected", extra={"exporter": self.name, "rejected_items": report.rejected})
            return
        self.events.dead_lettered(self.name, entry.signal.value, report.rejected, classification.category.value,
                                  classification.error_type, message)
        self._count_evicted(evicted)

    def _count_evicted(self, evicted: list[Evicted]) -> None:
        for old in evicted:
            why = "older than dead_letter.max_age" if old.expired else "dead-letter store full"
            self.events.dropped(old.signal.value, old.reason, old.dropped_items, f"exporter {self.name}: {why}")

    async def _expire_dead_letters(self, max_age: float) -> None:
        """Retention holds when nothing new fails: dead letters past max_age go, looked at a few
        times per max_age (at most every minute), and their items are counted as dropped."""
        assert self.dead_letters is not None
        interval = min(60.0, max(0.05, max_age / 4))
        while True:
            await self.clock.sleep(interval)
            try:
                self._count_evicted(await self.dead_letters.expire(self.clock.wall()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("expiring dead letters failed", extra={"exporter": self.name})

    def update_queue_gauges(self) -> None:
        if self.queue is not None:
            self.events.queue_changed(self.name, self.queue.size, self.queue.bytes)


class StorageEvents:
    """The StorageListener of one exporter's store: each report becomes a typed event."""

    def __init__(self, events: Events, exporter: str, store: str) -> None:
        self.events = events
        self.exporter = exporter
        self.store = store

    def storage_error(self, reason: str, detail: str) -> None:
        self.events.storage_error(self.exporter, self.store, reason, detail)

    def storage_degraded(self, reason: str) -> None:
        self.events.storage_degraded(self.exporter, self.store, reason)

    def storage_restored(self) -> None:
        self.events.storage_restored(self.exporter, self.store)

    def lost(self, signal: Signal, items: int, reason: DropReason, detail: str) -> None:
        self.events.dropped(signal.value, reason, items, f"exporter {self.exporter}: {detail}")


def merge_entries(entries: list[QueueEntry]) -> QueueEntry:
    """One entry carrying all of `entries` (same signal and metadata): the Export requests concatenated.

    Every Export*ServiceRequest is a single repeated field, so the concatenation of serialized
    requests is the serialized request holding all their resource groups, in order.
    """
    first = entries[0]
    return QueueEntry(first.signal, b"".join(entry.payload for entry in entries), sum(e.items for e in entries),
                      first.metadata, min(entry.accepted_at for entry in entries))


def _rejected_message(report: SendReport) -> str:
    return f"upstream rejected {report.rejected} items" if report.rejected else ""


def _client_status(classification: Classification) -> tuple[str, int]:
    """What the client sees for a permanent upstream failure in synchronous mode."""
    error_type = classification.error_type
    if error_type.startswith("http_") and error_type[5:].isdigit():
        status = int(error_type[5:])
        return _GRPC_FOR_HTTP.get(status, "INTERNAL"), status
    if error_type in _HTTP_FOR_GRPC:
        return error_type, _HTTP_FOR_GRPC[error_type]
    if classification.category is Category.SERIALIZATION:
        return "INVALID_ARGUMENT", 400
    return "INTERNAL", 500


def build_exporter(name: str, config: ExporterConfig, storage_directory: Path | None, classifier: Classifier,
                   events: Events, clock: Clock = SYSTEM_CLOCK, *,
                   memory_limit_mib: float | None = None, recover: bool = False,
                   error_stats: ErrorStats | None = None,
                   degradation: DegradationProcessorConfig | None = None) -> Exporter:
    """The one place an exporter and its sender chain are assembled; everything they use is passed in here."""
    transports = build_transports(name, config)
    sender = build_sender(name, config, transports, classifier, events, clock, error_stats=error_stats)
    memory_limit = int(memory_limit_mib * MIB) if memory_limit_mib else None
    return Exporter(name, config, sender, classifier, events, clock, storage_directory, memory_limit, recover,
                    degradation)
