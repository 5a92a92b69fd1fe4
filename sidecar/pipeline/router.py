"""Receivers → pipelines → exporters: runs the pure stages and hands entries to each exporter's queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import Message

from sidecar.clock import Clock
from sidecar.config.schema import DegradationProcessorConfig, EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import EnrichStats, enrich_logs, enrich_traces
from sidecar.queue.base import QueueEntry
from sidecar.receivers.ingest import IngestResult, Metadata
from sidecar.signals import Signal, count_items
from sidecar.telemetry.metrics import Metrics

log = logging.getLogger("sidecar.pipeline")


class Destination(Protocol):
    """An exporter as the pipeline sees it."""

    name: str

    async def accept(self, entry: QueueEntry, message: Message,
                     degradation: DegradationProcessorConfig | None) -> IngestResult: ...


@dataclass
class Pipeline:
    name: str
    signal: Signal
    receivers: list[str]
    exporters: list[Destination]
    classifier: Classifier | None = None
    enrich: EnrichProcessorConfig | None = None
    degradation: DegradationProcessorConfig | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def enrich_in_place(self, message: Message, raw: bytes) -> EnrichStats | None:
        """Classify and enrich error spans/log records; None when this pipeline does not enrich.

        `raw` is the protobuf encoding of `message`: enrichment rules out error-free requests by
        scanning it, which is much cheaper than walking every span in Python.
        """
        if self.enrich is None or self.classifier is None:
            return None
        if self.signal is Signal.TRACES:
            return enrich_traces(message, self.classifier, self.enrich, raw=raw)  # type: ignore[arg-type]
        if self.signal is Signal.LOGS:
            return enrich_logs(message, self.classifier, self.enrich, raw=raw)  # type: ignore[arg-type]
        return None


class Router:
    def __init__(self, pipelines: list[Pipeline], metrics: Metrics, clock: Clock) -> None:
        self.metrics = metrics
        self.clock = clock
        self.routes: dict[tuple[str, Signal], list[Pipeline]] = {}
        for pipeline in pipelines:
            for receiver in pipeline.receivers:
                self.routes.setdefault((receiver, pipeline.signal), []).append(pipeline)

    def accepts(self, receiver: str, signal: Signal) -> bool:
        return (receiver, signal) in self.routes

    async def ingest(self, receiver: str, signal: Signal, payload: bytes, message: Message,
                     metadata: Metadata, transport: str) -> IngestResult:
        pipelines = self.routes[(receiver, signal)]
        items = count_items(signal, message)
        if items == 0:
            return IngestResult()  # nothing to deliver: an empty Export is a liveness probe, answer it here
        rejected = 0
        messages: list[str] = []
        for index, pipeline in enumerate(pipelines):
            # Enrichment edits in place; a second pipeline on the same receiver starts from the original.
            own = message if index == len(pipelines) - 1 else _copy(message)
            stats = pipeline.enrich_in_place(own, payload)
            if stats is not None and stats.enriched:
                self._count_enrichment(signal, stats)
                own_payload = own.SerializeToString()
            else:
                own_payload = payload  # fast path: forward the bytes we received
            entry = QueueEntry(signal, own_payload, items, metadata, self.clock.wall())
            try:
                for exporter in pipeline.exporters:
                    result = await exporter.accept(entry, own, pipeline.degradation)
                    if result.rejected:
                        rejected = max(rejected, result.rejected)
                        messages.append(f"{exporter.name}: {result.message}")
            except Exception:
                self.metrics.receiver_refused[signal].labels(receiver, transport, "refused").inc(items)
                raise
        self.metrics.receiver_accepted[signal].labels(receiver, transport).inc(items)
        return IngestResult(rejected, "; ".join(messages))

    def _count_enrichment(self, signal: Signal, stats: EnrichStats) -> None:
        for (category, severity, recoverability), n in stats.by_class.items():
            self.metrics.errors.labels(category, severity, recoverability).inc(n)
            self.metrics.enriched.labels(signal.value, category).inc(n)


def _copy(message: Message) -> Message:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone
