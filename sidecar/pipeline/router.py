"""Receivers → pipelines → exporters: runs the pure stages and hands entries to each exporter's queue."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from sidecar.config.schema import DegradationProcessorConfig, EnrichProcessorConfig
from sidecar.core.clock import Clock
from sidecar.core.entry import QueueEntry
from sidecar.core.ingest import IngestResult, Metadata
from sidecar.core.signals import Signal, count_items
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import EnrichStats, enrich_logs, enrich_traces_payload
from sidecar.telemetry.events import Events
from sidecar.telemetry.stats import UNKNOWN_SERVICE, ErrorStats

log = logging.getLogger("sidecar.pipeline")


class Destination(Protocol):
    """An exporter as the pipeline sees it."""

    name: str

    async def accept(self, entry: QueueEntry, message: Message,
                     degradation: DegradationProcessorConfig | None) -> IngestResult:
        """Queue (or send) `entry`. `message` is the decoded request; for traces it is not enriched
        (the enrichment is in `entry.payload` only), so whatever is derived from it must decode
        `entry.payload` instead."""


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

    def enrich_payload(self, message: Message, raw: bytes, collect: bool = False) -> tuple[EnrichStats | None, bytes]:
        """Enrich and return the bytes to queue: `raw` itself when nothing changed (the fast path).

        Traces are enriched on the bytes (`enrich_traces_payload`: no full serialization, and
        `message` is left as received); logs in place on `message`, then serialized; metrics are not
        enriched. `raw` is the protobuf encoding of `message`: enrichment rules out error-free requests
        by scanning it. `collect`: fill `stats.hotspots` (for the error hotspots).
        """
        if self.enrich is None or self.classifier is None:
            return None, raw
        if self.signal is Signal.TRACES:
            stats, enriched = enrich_traces_payload(raw, self.classifier, self.enrich, collect=collect)
            return stats, raw if enriched is None else enriched
        if self.signal is not Signal.LOGS:
            return None, raw
        in_place = enrich_logs(message, self.classifier, self.enrich,  # type: ignore[arg-type]
                               raw=raw, collect=collect)
        return in_place, message.SerializeToString() if in_place.enriched else raw


class Router:
    def __init__(self, pipelines: list[Pipeline], events: Events, clock: Clock,
                 error_stats: ErrorStats | None = None) -> None:
        self.events = events
        self.clock = clock
        self.error_stats = error_stats  # the admin API's derived figures; None: not collected
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
            # Log enrichment edits in place; a second pipeline on the same receiver starts from the original.
            last = index == len(pipelines) - 1 or pipeline.signal is Signal.TRACES
            own = message if last else _copy(message)
            own, own_payload = self._enrich(pipeline, signal, own, payload, items)
            entry = QueueEntry(signal, own_payload, items, metadata, self.clock.wall())
            try:
                for exporter in pipeline.exporters:
                    result = await exporter.accept(entry, own, pipeline.degradation)
                    if result.rejected:
                        rejected = max(rejected, result.rejected)
                        messages.append(f"{exporter.name}: {result.message}")
            except Exception:
                self.events.refused(signal, receiver, transport, items, "refused")
                raise
        self.events.received(signal, receiver, transport, items)
        return IngestResult(rejected, "; ".join(messages))

    def _enrich(self, pipeline: Pipeline, signal: Signal, own: Message, payload: bytes,
                items: int) -> tuple[Message, bytes]:
        """The pipeline's enrichment, failing open: whatever classification or enrichment raises (a
        bug, a request shaped like nothing seen before), the request goes on as received, counted
        in sidecar_enrich_failures_total and logged once a minute per cause, and the client is
        never failed for it. Enrichment is a bonus; the data is the job."""
        try:
            stats, own_payload = pipeline.enrich_payload(own, payload, collect=self.error_stats is not None)
        except Exception as exc:
            self.events.enrich_failed(signal, items, exc)
            # Logs are enriched in place: a half-enriched message must not travel with the original bytes.
            fresh = type(own)()
            fresh.ParseFromString(payload)
            return fresh, payload
        if stats is not None and stats.enriched:
            try:
                self._count_enrichment(signal, stats)
                if self.error_stats is not None and stats.hotspots:
                    _record_hotspots(self.error_stats, signal, own, stats.hotspots)
            except Exception as exc:  # the enrichment itself is good: keep it, report the accounting bug
                self.events.enrich_failed(signal, items, exc)
        return own, own_payload

    def _count_enrichment(self, signal: Signal, stats: EnrichStats) -> None:
        for (category, severity, recoverability, error_type), n in stats.by_class.items():
            self.events.classified(signal, category, severity, recoverability, error_type, n)


def _record_hotspots(error_stats: ErrorStats, signal: Signal, message: Any,
                     hotspots: Mapping[tuple[tuple[int, int], str, tuple[str, str, str, str]], int]) -> None:
    """Count the enriched items by (service.name, span or log name, class) into `error_stats`: one call per
    group of the request, whatever the number of items in it."""
    groups = message.resource_spans if signal is Signal.TRACES else message.resource_logs
    services: dict[int, str] = {}
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for ((ri, _), name, (category, _, _, error_type)), n in hotspots.items():
        service = services.get(ri)
        if service is None:
            service = services[ri] = _service_name(groups[ri].resource)
        counts[(service, name, category, error_type)] += n
    error_stats.item_errors(signal.value, counts)


def _service_name(resource: Any) -> str:
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return str(attribute.value.string_value) or UNKNOWN_SERVICE
    return UNKNOWN_SERVICE


def _copy(message: Message) -> Message:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone
