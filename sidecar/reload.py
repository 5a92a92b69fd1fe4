"""What a SIGHUP reload may change in place, and what needs a restart.

Breakers, queues and connections survive a reload, so only the pure parts are
swapped: the classification rules, the enrichment settings, the degradation
thresholds, the log level and the anomaly detector's settings (its baselines are
kept). Any other difference is reported, not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import Config
from sidecar.config.units import encode_hook
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import Classification
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.evidence import LogFacts, SpanFacts


@dataclass(frozen=True)
class ReloadPlan:
    processors_changed: bool
    log_level_changed: bool
    needs_restart: list[str] = field(default_factory=list)
    anomaly_changed: bool = False

    @property
    def applies_anything(self) -> bool:
        return self.processors_changed or self.log_level_changed or self.anomaly_changed


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=encode_hook)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    needs_restart: list[str] = []
    for section in ("receivers", "exporters"):
        old_section, new_section = getattr(old, section), getattr(new, section)
        for name in sorted(set(old_section) | set(new_section)):
            if name not in old_section or name not in new_section or \
                    _plain(old_section[name]) != _plain(new_section[name]):
                needs_restart.append(f"{section}.{name}")
    if _plain(old.extensions) != _plain(new.extensions):
        needs_restart.append("extensions")
    old_service, new_service = _plain(old.service), _plain(new.service)
    for key in sorted(set(old_service) | set(new_service)):
        if key == "telemetry":
            if old_service[key]["metrics"] != new_service[key]["metrics"]:
                needs_restart.append("service.telemetry.metrics")
            continue
        if old_service.get(key) != new_service.get(key):
            needs_restart.append(f"service.{key}")
    old_pipelines = {k: (v.receivers, v.exporters) for k, v in old.service.pipelines.items()}
    new_pipelines = {k: (v.receivers, v.exporters) for k, v in new.service.pipelines.items()}
    if old_pipelines != new_pipelines and "service.pipelines" not in needs_restart:
        needs_restart.append("service.pipelines")
    processors_changed = _plain(old.processors) != _plain(new.processors) or any(
        old.service.pipelines[k].processors != new.service.pipelines[k].processors
        for k in set(old.service.pipelines) & set(new.service.pipelines))
    if "service.pipelines" in needs_restart and old_pipelines == new_pipelines:
        needs_restart.remove("service.pipelines")  # only the processor lists differ: applied in place
    return ReloadPlan(
        processors_changed=processors_changed,
        log_level_changed=old.service.telemetry.logs != new.service.telemetry.logs,
        needs_restart=needs_restart,
        anomaly_changed=_plain(old.service.telemetry.anomaly) != _plain(new.service.telemetry.anomaly),
    )


class ClassifierHandle(Classifier):
    """A Classifier whose rules can be swapped by a reload while senders keep their reference."""

    def __init__(self, current: Classifier) -> None:  # no super().__init__: everything delegates
        self.current = current

    def classify_export(self, failure: ExportFailure) -> Classification:
        return self.current.classify_export(failure)

    def classify_partial_success(self, rejected: int, message: str) -> Classification:
        return self.current.classify_partial_success(rejected, message)

    def classify_span(self, span: trace_pb2.Span) -> Classification | None:
        return self.current.classify_span(span)

    def classify_log(self, record: logs_pb2.LogRecord) -> Classification | None:
        return self.current.classify_log(record)

    @property
    def effective(self) -> Classifier:
        return self.current.effective

    # The handle has none of a Classifier's state: every public method must delegate (a test checks).
    def classify_span_facts(self, facts: SpanFacts) -> Classification:
        return self.current.classify_span_facts(facts)

    def classify_log_facts(self, facts: LogFacts, record: logs_pb2.LogRecord) -> Classification:
        return self.current.classify_log_facts(facts, record)
