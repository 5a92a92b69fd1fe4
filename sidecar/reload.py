"""What a SIGHUP reload may change in place, and what needs a restart.

Queues, connections and the state of breakers, limiters and budgets survive a reload. Swapped or
reconfigured in place: the classification rules, the enrichment settings, the degradation
thresholds, the log level, the anomaly detector's settings (its baselines
are kept), and of each exporter the keys in EXPORTER_KEYS_IN_PLACE (retry,
breaker, concurrency, timeout, headers, health probe but turning it on or off). Any other difference (endpoints, TLS,
queue and storage, receivers, extensions, pipelines' components) is reported as needing a
restart, by dotted path, and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from sidecar.config.schema import Config, ExporterConfig
from sidecar.config.units import encode_hook
from sidecar.core.errors import ExportFailure
from sidecar.core.taxonomy import Classification
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.evidence import LogFacts, SpanFacts

# Exporter keys a running exporter takes in place (Exporter.reconfigure); any other needs a restart.
EXPORTER_KEYS_IN_PLACE = frozenset({"retry_on_failure", "circuit_breaker", "concurrency", "timeout", "headers",
                                    "health_probe"})


@dataclass(frozen=True)
class ReloadPlan:
    processors_changed: bool
    log_level_changed: bool
    needs_restart: list[str] = field(default_factory=list)
    # exporter name -> its new configuration, for those whose in-place keys changed
    exporters_changed: dict[str, ExporterConfig] = field(default_factory=dict)
    anomaly_changed: bool = False

    @property
    def applies_anything(self) -> bool:
        return (self.processors_changed or self.log_level_changed or bool(self.exporters_changed)
                or self.anomaly_changed)


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=encode_hook)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    needs_restart: list[str] = []
    for name in sorted(set(old.receivers) | set(new.receivers)):
        if name not in old.receivers or name not in new.receivers or \
                _plain(old.receivers[name]) != _plain(new.receivers[name]):
            needs_restart.append(f"receivers.{name}")
    exporters_changed: dict[str, ExporterConfig] = {}
    for name in sorted(set(old.exporters) | set(new.exporters)):
        if name not in old.exporters or name not in new.exporters:
            needs_restart.append(f"exporters.{name}")
            continue
        before, after = _plain(old.exporters[name]), _plain(new.exporters[name])
        changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
        needs_restart.extend(f"exporters.{name}.{key}" for key in changed if key not in EXPORTER_KEYS_IN_PLACE)
        if old.exporters[name].health_probe.enabled != new.exporters[name].health_probe.enabled:
            needs_restart.append(f"exporters.{name}.health_probe.enabled")
        if any(key in EXPORTER_KEYS_IN_PLACE for key in changed):
            applied = _in_place_only(old.exporters[name], new.exporters[name])
            if applied != old.exporters[name]:
                exporters_changed[name] = applied
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
        exporters_changed=exporters_changed,
        anomaly_changed=_plain(old.service.telemetry.anomaly) != _plain(new.service.telemetry.anomaly),
    )


def _in_place_only(old: ExporterConfig, new: ExporterConfig) -> ExporterConfig:
    """The running exporter's configuration with only the keys it can take in place replaced, so
    what runs (and what `status` and the next reload compare with) is what was applied."""
    probe = msgspec.structs.replace(new.health_probe, enabled=old.health_probe.enabled)  # on/off: a restart
    replaced = {key: getattr(new, key) for key in EXPORTER_KEYS_IN_PLACE} | {"health_probe": probe}
    return msgspec.structs.replace(old, **replaced)


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
