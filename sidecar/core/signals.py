"""The three OTLP signals and the protobuf types that carry each one."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Signal(enum.StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


@dataclass(frozen=True, slots=True)
class SignalSpec:
    signal: Signal
    request_type: type[Message]
    response_type: type[Message]
    grpc_service: str
    http_path: str
    item_name: str  # the Collector's word for one item: spans, metric_points, log_records

    @property
    def grpc_method(self) -> str:
        return f"/{self.grpc_service}/Export"


SPECS: dict[Signal, SignalSpec] = {
    Signal.TRACES: SignalSpec(
        Signal.TRACES,
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "/v1/traces",
        "spans",
    ),
    Signal.METRICS: SignalSpec(
        Signal.METRICS,
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
        "metric_points",
    ),
    Signal.LOGS: SignalSpec(
        Signal.LOGS,
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "/v1/logs",
        "log_records",
    ),
}


def count_items(signal: Signal, request: Message) -> int:
    """Items as the Collector counts them: spans, metric data points, log records."""
    total = 0
    msg: Any = request
    if signal is Signal.TRACES:
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                total += len(ss.spans)
        return total
    if signal is Signal.LOGS:
        for rl in msg.resource_logs:
            for sl in rl.scope_logs:
                total += len(sl.log_records)
        return total
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def partial_success_response(signal: Signal, rejected: int, message: str) -> Message:
    response = SPECS[signal].response_type()
    if rejected or message:
        ps = response.partial_success  # type: ignore[attr-defined]
        if signal is Signal.TRACES:
            ps.rejected_spans = rejected
        elif signal is Signal.METRICS:
            ps.rejected_data_points = rejected
        else:
            ps.rejected_log_records = rejected
        ps.error_message = message
    return response


def rejected_count(signal: Signal, response: Message) -> tuple[int, str]:
    """The partial-success part of an Export response: (rejected items, message)."""
    if not response.HasField("partial_success"):
        return 0, ""
    ps = response.partial_success  # type: ignore[attr-defined]
    if signal is Signal.TRACES:
        return int(ps.rejected_spans), ps.error_message
    if signal is Signal.METRICS:
        return int(ps.rejected_data_points), ps.error_message
    return int(ps.rejected_log_records), ps.error_message
