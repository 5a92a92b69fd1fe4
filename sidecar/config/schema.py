"""The configuration schema as msgspec Structs (DESIGN.md §6).

Every Struct forbids unknown keys. Types here describe shape and simple bounds;
rules that relate several keys live in `validate.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from sidecar.config.units import Duration
from sidecar.core.taxonomy import Category, Recoverability, Recovery, Severity

PositiveFloat = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
PositiveInt = Annotated[int, Meta(ge=1)]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# ---------------------------------------------------------------- receivers


class TLSServerConfig(Base):
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set to require client certificates (mTLS)


class AuthConfig(Base):
    bearer_token: str


class GrpcReceiverConfig(Base):
    endpoint: str = "0.0.0.0:4317"
    max_recv_msg_size_mib: PositiveFloat = 16.0
    tls: TLSServerConfig | None = None


class HttpReceiverConfig(Base):
    endpoint: str = "0.0.0.0:4318"
    max_request_body_size_mib: PositiveFloat = 20.0
    read_timeout: Duration = Duration(30.0)
    tls: TLSServerConfig | None = None


class ProtocolsConfig(Base):
    grpc: GrpcReceiverConfig | None = None
    http: HttpReceiverConfig | None = None


class OtlpReceiverConfig(Base):
    protocols: ProtocolsConfig = msgspec.field(default_factory=ProtocolsConfig)
    # Client metadata (gRPC metadata / HTTP headers) copied onto the upstream request.
    include_metadata: list[str] = msgspec.field(default_factory=list)
    auth: AuthConfig | None = None


# ---------------------------------------------------------------- processors


class RuleMatch(Base):
    grpc_code: str | None = None  # e.g. UNAVAILABLE
    http_status: list[int] | None = None
    message: str | None = None  # regular expression, searched
    has_retry_info: bool | None = None
    exception_type: str | None = None  # regular expression, searched
    error_type: str | None = None  # exact low-cardinality type, e.g. connection_refused


class RuleSet(Base):
    category: Category | None = None
    severity: Severity | None = None
    recoverability: Recoverability | None = None
    recovery: Recovery | None = None
    error_type: str | None = None


class ClassifyRule(Base):
    id: str
    match: RuleMatch
    set: RuleSet


class ClassifyProcessorConfig(Base):
    strict_otlp: bool = False
    rules: list[ClassifyRule] = msgspec.field(default_factory=list)


class EnrichProcessorConfig(Base):
    attribute_prefix: str = "sidecar.error."
    set_error_type: bool = True


class DegradationProcessorConfig(Base):
    error_rate: Fraction = 0.5
    latency: Duration = Duration(10.0)
    sample_ratio: Fraction = 0.1
    spill_at: Fraction = 0.5
    reduce_at: Fraction = 0.8
    essential_at: Fraction = 0.95
    hysteresis: Fraction = 0.1
    # RSS as a fraction of service.memory_limit_mib (less 5 % headroom for requests in flight):
    # above the first the exporter acts as level 3 (essential), at the second as level 4 (push back).
    memory_essential_above: Fraction = 0.8
    memory_backpressure_at: Annotated[float, Meta(gt=0, le=1)] = 1.0


ProcessorConfig = ClassifyProcessorConfig | EnrichProcessorConfig | DegradationProcessorConfig


# ---------------------------------------------------------------- exporters


class TLSClientConfig(Base):
    insecure: bool = False
    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name_override: str | None = None


class RetryBudgetConfig(Base):
    ratio: Annotated[float, Meta(ge=0)] = 0.2
    min_per_second: Annotated[float, Meta(ge=0)] = 3.0


class RetryConfig(Base):
    enabled: bool = True
    initial_interval: Duration = Duration(5.0)
    max_interval: Duration = Duration(30.0)
    multiplier: Annotated[float, Meta(ge=1)] = 1.5
    randomization_factor: Fraction = 0.5
    jitter: Literal["full", "equal", "decorrelated"] = "full"
    max_elapsed_time: Duration = Duration(300.0)  # 0 means retry without a time limit
    # Transport attempts of one request (the first one included) before it goes to the dead-letter
    # store; 0 means no limit (max_elapsed_time then bounds it). Whichever limit comes first applies.
    max_attempts: Annotated[int, Meta(ge=0)] = 0
    budget: RetryBudgetConfig = msgspec.field(default_factory=RetryBudgetConfig)


class QueueBatchConfig(Base):
    """A consumer merges entries waiting in the queue into one upstream request (waiting up to flush_timeout).

    On by default: at a steady rate most of a request's cost in the sidecar is per gRPC call, not per
    span; merging upstream calls saves about 28 % of the sidecar's CPU at 10,000 spans/s in 100-span
    requests (bench/RESULTS.md, "CPU at a steady rate").
    """

    enabled: bool = True
    max_requests: PositiveInt = 8  # queue entries per upstream request at most
    max_size_mib: PositiveFloat = 4.0  # merged request size at most (and never above max_request_size_mib)
    flush_timeout: Duration = Duration(0.1)  # how long a consumer waits for more entries (0: it never waits)


class SendingQueueConfig(Base):
    enabled: bool = True
    num_consumers: PositiveInt = 10
    sizer: Literal["requests", "items", "bytes"] = "requests"
    queue_size: PositiveInt = 1000
    storage: str | None = None  # name of a storage extension, e.g. file_storage
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # With storage: `always` commits every request to disk before answering the client (survives
    # kill -9); `spill` keeps requests in memory while the exporter is healthy and commits them to
    # disk from degradation level 1 on (a crash loses what was in memory, not what was spilled).
    storage_mode: Literal["always", "spill"] = "always"
    # `enabled: false` (or None, programmatically): one upstream request per queue entry
    batch: QueueBatchConfig | None = msgspec.field(default_factory=QueueBatchConfig)


class CircuitBreakerConfig(Base):
    enabled: bool = True
    failure_threshold: PositiveInt = 5
    failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5
    minimum_calls: PositiveInt = 10
    window: Duration = Duration(60.0)
    recovery_timeout: Duration = Duration(60.0)
    max_recovery_timeout: Duration = Duration(600.0)
    half_open_max_calls: PositiveInt = 3
    # Successful half-open calls in a row that close the breaker. One is not enough: a Collector that
    # flaps (crash-looping, a memory_limiter letting the odd request through) answers one probe and
    # then the whole backlog lands on it. 3 = one full wave of the default half_open_max_calls.
    half_open_success_threshold: PositiveInt = 3


class ConcurrencyConfig(Base):
    adaptive: bool = True
    min: PositiveInt = 1
    max: PositiveInt = 64


class HealthProbeConfig(Base):
    enabled: bool = True
    interval: Duration = Duration(30.0)
    timeout: Duration = Duration(5.0)
    unhealthy_threshold: PositiveInt = 3
    healthy_threshold: PositiveInt = 2
    health_check_url: str | None = None


class DeadLetterConfig(Base):
    """Bounds of an exporter's dead-letter store; past any of them the oldest dead letters go (counted)."""

    max_items: PositiveInt = 10_000  # dead letters kept (each one is one failed request, not one span)
    # Payload bytes kept; absent: 64 MiB for the in-memory store, no limit on disk (max_items bounds it).
    max_size_mib: PositiveFloat | None = None
    max_age: Duration = Duration(0.0)  # older dead letters are dropped; 0: kept until the other bounds push them out


class ExporterConfig(Base):
    endpoint: str | None = None
    endpoints: list[str] | None = None
    balancer: Literal["least_outstanding", "ewma_latency", "round_robin"] = "least_outstanding"
    tls: TLSClientConfig = msgspec.field(default_factory=TLSClientConfig)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    compression: Literal["auto", "gzip", "zstd", "none"] = "auto"  # auto: none on loopback, else gzip
    timeout: Duration = Duration(5.0)
    max_request_size_mib: PositiveFloat | None = None
    retry_on_failure: RetryConfig = msgspec.field(default_factory=RetryConfig)
    sending_queue: SendingQueueConfig = msgspec.field(default_factory=SendingQueueConfig)
    circuit_breaker: CircuitBreakerConfig = msgspec.field(default_factory=CircuitBreakerConfig)
    concurrency: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    health_probe: HealthProbeConfig = msgspec.field(default_factory=HealthProbeConfig)
    dead_letter: DeadLetterConfig = msgspec.field(default_factory=DeadLetterConfig)

    def endpoint_list(self) -> list[str]:
        if self.endpoints:
            return list(self.endpoints)
        return [self.endpoint] if self.endpoint else []


# ---------------------------------------------------------------- extensions


class HealthCheckConfig(Base):
    endpoint: str = "0.0.0.0:13134"


class FileStorageConfig(Base):
    directory: str = "/var/lib/otlp-sidecar"


class AdminConfig(Base):
    endpoint: str = "127.0.0.1:4320"
    token: str | None = None


class FleetConfig(Base):
    """Fleet mode (DESIGN.md §9): sidecars share breaker state, probing and a retry budget in Redis."""

    endpoint: str  # redis://[:password@]host:port/db, or rediss:// for TLS
    password: str | None = None  # overrides a password in the URL; e.g. ${env:REDIS_PASSWORD}
    key_prefix: str = "otlp-sidecar:"
    instance_id: str | None = None  # default: hostname:pid
    heartbeat_interval: Duration = Duration(2.0)
    # The longest a retry waits for the fleet budget's answer beyond its own backoff (the question is asked
    # while the backoff runs); unanswered by then, the local budget decides alone. Background commands
    # have their own bound (sidecar/fleet/connection.py).
    command_timeout: Duration = Duration(0.05)
    # While the fleet holds an endpoint open, the probe lease holder probes it this often (an empty Export,
    # or a GET of health_probe.health_check_url), whatever the breakers' recovery_timeout: recovery is seen
    # within about one interval. One probe per interval is the whole fleet's cost on a failing upstream.
    probe_interval: Duration = Duration(1.5)
    # Pooled evidence (sidecar/fleet/view.py EvidenceRule): the endpoint opens fleet-wide when, within the
    # window in which the fleet makes about `minimum_calls` calls (50 ms to 5 s), failures reach
    # `failure_ratio` of them, reported by at least two sidecars.
    failure_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.25
    minimum_calls: PositiveInt = 20


class ExtensionsConfig(Base):
    health_check: HealthCheckConfig | None = None
    file_storage: FileStorageConfig | None = None
    admin: AdminConfig | None = None
    fleet: FleetConfig | None = None


# ---------------------------------------------------------------- service


class PipelineConfig(Base):
    receivers: list[str]
    exporters: list[str]
    processors: list[str] = msgspec.field(default_factory=list)


class TelemetryMetricsConfig(Base):
    address: str | None = "0.0.0.0:8889"


class TelemetryLogsConfig(Base):
    level: Literal["debug", "info", "warn", "error"] = "info"
    encoding: Literal["json", "console"] = "json"


class TelemetryAnomalyConfig(Base):
    """The error-rate anomaly detector per category (sidecar/telemetry/anomaly.py)."""

    interval: Duration = Duration(10.0)  # one rate sample (errors per minute over the interval) per interval
    alpha: Annotated[float, Meta(gt=0, lt=1)] = 0.05  # EWMA weight of a new interval
    threshold: PositiveFloat = 4.0  # score (standard deviations above the baseline) that raises the event
    clear: Annotated[float, Meta(ge=0)] = 2.0  # score under which it clears (hysteresis); < threshold
    warmup: PositiveInt = 30  # intervals learned before the first alarm
    min_std: PositiveFloat = 1.0  # errors per minute: the smallest deviation a score is measured against
    # Also score the error spans / log records per service.name; the gauge is exported for the `top_services`
    # services with the most errors (bounded cardinality). 0: per category only.
    top_services: Annotated[int, Meta(ge=0)] = 10


class TelemetryConfig(Base):
    metrics: TelemetryMetricsConfig = msgspec.field(default_factory=TelemetryMetricsConfig)
    logs: TelemetryLogsConfig = msgspec.field(default_factory=TelemetryLogsConfig)
    anomaly: TelemetryAnomalyConfig = msgspec.field(default_factory=TelemetryAnomalyConfig)


class ServiceConfig(Base):
    pipelines: dict[str, PipelineConfig]
    extensions: list[str] = msgspec.field(default_factory=list)
    memory_limit_mib: PositiveFloat | None = 512.0
    shutdown_timeout: Duration = Duration(30.0)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)


# Component kinds: the part of a key before "/" picks the schema of its value.
RECEIVER_KINDS: dict[str, type[Base]] = {"otlp": OtlpReceiverConfig}
PROCESSOR_KINDS: dict[str, type[Base]] = {
    "classify": ClassifyProcessorConfig,
    "enrich": EnrichProcessorConfig,
    "degradation": DegradationProcessorConfig,
}
EXPORTER_KINDS: dict[str, type[Base]] = {"otlp_grpc": ExporterConfig, "otlp_http": ExporterConfig}


def component_kind(key: str) -> str:
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class Config:
    """A loaded and validated configuration."""

    receivers: dict[str, OtlpReceiverConfig]
    processors: dict[str, Base]
    exporters: dict[str, ExporterConfig]
    extensions: ExtensionsConfig
    service: ServiceConfig
    source: str = "<memory>"
    raw: dict[str, object] = field(default_factory=dict, repr=False)
