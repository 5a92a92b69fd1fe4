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
    """Every config section: an unknown key is an error (a typo must not be ignored), fields by name only."""


# ---------------------------------------------------------------- receivers


class TLSServerConfig(Base):
    # The server's certificate (PEM). `validate` checks the files exist; start-up loads them and refuses to start
    # (exit 3) on an expired certificate, a key that is not the certificate's (or is encrypted), or a file that is
    # not PEM.
    cert_file: str
    # The certificate's private key (PEM, not encrypted).
    key_file: str
    client_ca_file: str | None = None  # set to require client certificates (mTLS)


class AuthConfig(Base):
    """Require `Authorization: Bearer <token>` from clients (401 / `UNAUTHENTICATED` otherwise)."""

    # The token clients must send (compared in constant time); e.g. `${env:SIDECAR_RECEIVER_TOKEN}`.
    bearer_token: str


class GrpcReceiverConfig(Base):
    """The OTLP/gRPC receiver; absent = off, `{}` = on with the defaults."""

    # host:port to listen on (the standard OTLP/gRPC port, so applications' defaults work unchanged).
    endpoint: str = "0.0.0.0:4317"
    # Largest request accepted; a larger one is refused with `RESOURCE_EXHAUSTED`.
    max_recv_msg_size_mib: PositiveFloat = 16.0
    # TLS for this receiver (absent: plaintext); with `client_ca_file`, mutual TLS.
    tls: TLSServerConfig | None = None


class HttpReceiverConfig(Base):
    """The OTLP/HTTP receiver (protobuf or JSON; `/v1/traces`, `/v1/metrics`, `/v1/logs`); absent = off."""

    # host:port to listen on (the standard OTLP/HTTP port).
    endpoint: str = "0.0.0.0:4318"
    # Largest body accepted (413 otherwise). A compressed body is limited by its inflated size; `Content-Encoding`
    # `gzip`, `zstd`, `deflate`/`zlib` are accepted, several members or frames allowed, up to 64.
    max_request_body_size_mib: PositiveFloat = 20.0
    # A body not received in time is answered 408; an idle connection, or one whose headers never complete, is
    # closed after it.
    read_timeout: Duration = Duration(30.0)
    # TLS for this receiver (absent: plaintext); with `client_ca_file`, mutual TLS.
    tls: TLSServerConfig | None = None


class ProtocolsConfig(Base):
    """The transports the receiver listens on; at least one must be present."""

    grpc: GrpcReceiverConfig | None = None
    http: HttpReceiverConfig | None = None


class OtlpReceiverConfig(Base):
    # The transports to listen on: `grpc`, `http` or both.
    protocols: ProtocolsConfig = msgspec.field(default_factory=ProtocolsConfig)
    # Client metadata (gRPC metadata / HTTP headers, lower-case names) copied onto the upstream request,
    # e.g. `[x-scope-orgid]` for a multi-tenant backend.
    include_metadata: list[str] = msgspec.field(default_factory=list)
    # Client authentication (absent: none).
    auth: AuthConfig | None = None


# ---------------------------------------------------------------- processors


class RuleMatch(Base):
    """What a rule matches; every condition given must hold."""

    grpc_code: str | None = None  # e.g. UNAVAILABLE
    # HTTP status codes, any of them.
    http_status: list[int] | None = None
    message: str | None = None  # regular expression, searched
    # Whether the answer carried a retry hint (gRPC `RetryInfo`, HTTP `Retry-After`).
    has_retry_info: bool | None = None
    exception_type: str | None = None  # regular expression, searched
    error_type: str | None = None  # exact low-cardinality type, e.g. connection_refused


class RuleSet(Base):
    """The classification a matching rule sets; a field not given keeps the built-in value."""

    # The error category (DESIGN.md §3).
    category: Category | None = None
    # The base severity (it rises for a class that keeps recurring).
    severity: Severity | None = None
    # Decides what happens to the request: `retryable` and `temporary` are retried, `permanent` and `fatal` go to
    # the dead-letter store.
    recoverability: Recoverability | None = None
    # The recovery strategy reported (`split_and_retry` halves the request and resends it).
    recovery: Recovery | None = None
    # The low-cardinality `error_type` label and attribute.
    error_type: str | None = None


class ClassifyRule(Base):
    """One export-error rule; the first rule that matches wins, before the built-in table."""

    # A name for the rule, shown in logs.
    id: str
    # The conditions.
    match: RuleMatch
    # The classification it gives.
    set: RuleSet


class ClassifyProcessorConfig(Base):
    """How export errors, error spans and error log records are classified (DESIGN.md §3)."""

    # `true` treats `RESOURCE_EXHAUSTED` without RetryInfo as permanent, as the OTLP specification does; by
    # default it is retried as temporary.
    strict_otlp: bool = False
    # Export-error rules tried in order before the built-in table.
    rules: list[ClassifyRule] = msgspec.field(default_factory=list)


class EnrichProcessorConfig(Base):
    """Writes the classification onto error spans and error log records. Fails open: when classification or
    enrichment raises, the request is forwarded as received and counted in `sidecar_enrich_failures_total`; the
    client never sees the error.
    """

    # Prefix of the attributes written (`sidecar.error.category`, `.severity`, `.recoverability`, ...).
    attribute_prefix: str = "sidecar.error."
    # Also set the semantic-convention `error.type` when the item has none.
    set_error_type: bool = True


class DegradationProcessorConfig(Base):
    """The degradation ladder per exporter: 0 normal, 1 spill, 2 reduce (sample non-error spans), 3 essential
    (errors only), 4 push back on clients. Each trigger enters a level at its threshold and leaves it
    `hysteresis` below.
    """

    # Failed / all export attempts of the exporter over the last minute at or above which it goes to level 1. What
    # level 1 does depends on the queue: with `storage_mode: spill` new requests go to disk, with `always` they
    # are on disk anyway, without storage it is a warning only (metric, `degradation_level` event, `/ready`,
    # `status`).
    error_rate: Fraction = 0.5
    # p99 of the successful sends of the last minute (retries included) at or above which the exporter goes to
    # level 1.
    latency: Duration = Duration(10.0)
    # At level 2, the share of traces without an error that is kept (decided by trace id, so a trace is kept or
    # dropped whole in every sidecar).
    sample_ratio: Fraction = 0.1
    # Queue fill that enters level 1 (spill).
    spill_at: Fraction = 0.5
    # Queue fill that enters level 2 (sample non-error spans and low-severity logs).
    reduce_at: Fraction = 0.8
    # Queue fill that enters level 3 (keep only errors and metrics); a full queue is level 4.
    essential_at: Fraction = 0.95
    # How far below a threshold a level is left (relative for `latency`), so levels do not flap.
    hysteresis: Fraction = 0.1
    # RSS as a fraction of service.memory_limit_mib (less 5 % headroom for requests in flight):
    # above the first the exporter acts as level 3 (essential), at the second as level 4 (push back).
    memory_essential_above: Fraction = 0.8
    # RSS fraction (of the same limit) at which clients are pushed back, as level 4.
    memory_backpressure_at: Annotated[float, Meta(gt=0, le=1)] = 1.0


ProcessorConfig = ClassifyProcessorConfig | EnrichProcessorConfig | DegradationProcessorConfig


# ---------------------------------------------------------------- exporters


class TLSClientConfig(Base):
    """TLS towards the upstream. An `http://` endpoint is plaintext, `https://` is TLS and always verified (unless
    `insecure_skip_verify`), as in the Collector.
    """

    # gRPC: `true` sends plaintext. It never turns verification off for an `https://` endpoint.
    insecure: bool = False
    # Do not verify the server's certificate: `otlp_http` only (the gRPC runtime cannot skip verification, so
    # `otlp_grpc` refuses it at start-up for a TLS endpoint).
    insecure_skip_verify: bool = False
    # CA bundle (PEM) to verify the server with; absent: the system's CAs.
    ca_file: str | None = None
    # Client certificate (PEM) for mutual TLS; checked at start-up as the receivers' are.
    cert_file: str | None = None
    # The client certificate's private key (PEM).
    key_file: str | None = None
    # The name to verify the server's certificate against, when it differs from the endpoint's host.
    server_name_override: str | None = None


class RetryBudgetConfig(Base):
    """Retries allowed per endpoint: at most `ratio` x first attempts + `min_per_second` per second (Envoy's retry
    budget); a refused retry goes back to the queue, nothing is dropped. In fleet mode the same budget is also
    kept for the whole fleet.
    """

    # Retries as a share of first attempts.
    ratio: Annotated[float, Meta(ge=0)] = 0.2
    # Retries per second always allowed, whatever the ratio.
    min_per_second: Annotated[float, Meta(ge=0)] = 3.0


class RetryConfig(Base):
    """Backoff and retry of failed exports; only retryable and temporary failures are retried, a server hint
    (`RetryInfo`, `Retry-After`) is a floor.
    """

    # `false`: a retryable failure goes to the dead-letter store (error type `retry_disabled`) instead of being
    # retried.
    enabled: bool = True
    # The first backoff.
    initial_interval: Duration = Duration(5.0)
    # The largest backoff.
    max_interval: Duration = Duration(30.0)
    # Growth of the backoff per attempt.
    multiplier: Annotated[float, Meta(ge=1)] = 1.5
    # The random share of each backoff with `jitter: equal`.
    randomization_factor: Fraction = 0.5
    # How the backoff is randomised: `full` (uniform up to the backoff), `equal` (see `randomization_factor`) or
    # `decorrelated`.
    jitter: Literal["full", "equal", "decorrelated"] = "full"
    # Time from a request's first attempt after which it goes to the dead-letter store instead of another
    # retry; 0 means retry without a time limit. Counted per delivery run: a request put back in the queue
    # (retry budget spent, every breaker open) starts a new run.
    max_elapsed_time: Duration = Duration(300.0)
    # Transport attempts of one request (the first one included) before it goes to the dead-letter
    # store; 0 means no limit (max_elapsed_time then bounds it). Whichever limit comes first applies.
    max_attempts: Annotated[int, Meta(ge=0)] = 0
    # The retry budget.
    budget: RetryBudgetConfig = msgspec.field(default_factory=RetryBudgetConfig)


class QueueBatchConfig(Base):
    """A consumer merges entries waiting in the queue (same signal and metadata) into one upstream request.

    One consumer at a time takes an entry and waits up to `flush_timeout` for more (not when `max_requests`
    are already waiting, e.g. while a backlog drains). Clients are acknowledged as before (once queued);
    delivery waits up to `flush_timeout` longer.

    On by default: at a steady rate most of a request's cost in the sidecar is per gRPC call, not per
    span; merging upstream calls saves about 28 % of the sidecar's CPU at 10,000 spans/s in 100-span
    requests (bench/RESULTS.md, "CPU at a steady rate").
    """

    # On by default. When a merged request gets a permanent error, each of its entries is sent again on its own,
    # so one client's bad data never dead-letters another's.
    enabled: bool = True
    max_requests: PositiveInt = 8  # queue entries per upstream request at most
    max_size_mib: PositiveFloat = 4.0  # merged request size at most (and never above max_request_size_mib)
    flush_timeout: Duration = Duration(0.1)  # how long a consumer waits for more entries (0: it never waits)


class SendingQueueConfig(Base):
    """The exporter's queue. Clients are acknowledged once their request is queued (memory) or committed (disk);
    consumers deliver it.
    """

    # `false`: no queue; the client's answer waits for the upstream and the upstream's failures are mapped back to
    # it (no dead letters).
    enabled: bool = True
    # Queue entries delivered concurrently (further bounded by `concurrency`).
    num_consumers: PositiveInt = 10
    # The unit of `queue_size`: requests, items (spans, data points, log records) or payload bytes.
    sizer: Literal["requests", "items", "bytes"] = "requests"
    # Capacity in the sizer's unit; the degradation ladder's fill thresholds are fractions of it.
    queue_size: PositiveInt = 1000
    # Name of a storage extension: `file_storage` keeps the queue in SQLite (WAL) under its directory, replayed
    # at start-up. Absent: memory only.
    storage: str | None = None
    # SQLite's `synchronous`: `NORMAL` can lose the last transaction on power loss (not on a process crash),
    # `FULL` cannot.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # With storage: `always` commits every request to disk before answering the client (survives
    # kill -9); `spill` keeps requests in memory while the exporter is healthy and commits them to
    # disk from degradation level 1 on (a crash loses what was in memory, not what was spilled). Both tiers drain
    # in acceptance order; what memory holds at shutdown is written to disk.
    storage_mode: Literal["always", "spill"] = "always"
    # Merging of queued entries into fewer upstream requests; `enabled: false` (or null): one upstream request
    # per queue entry.
    batch: QueueBatchConfig | None = msgspec.field(default_factory=QueueBatchConfig)


class CircuitBreakerConfig(Base):
    """One circuit breaker per endpoint; only retryable and temporary errors count."""

    # `false`: no breaker.
    enabled: bool = True
    # Consecutive failures that open the breaker.
    failure_threshold: PositiveInt = 5
    # Or: the failed share of calls in `window` (once there were `minimum_calls`) that opens it.
    failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5
    # Calls in `window` before `failure_rate` is judged.
    minimum_calls: PositiveInt = 10
    # The sliding window of `failure_rate`.
    window: Duration = Duration(60.0)
    # How long it stays open before half-open calls (or the health probe) test the endpoint; doubles after each
    # failed test.
    recovery_timeout: Duration = Duration(60.0)
    # The longest open period the doubling reaches.
    max_recovery_timeout: Duration = Duration(600.0)
    # Calls admitted at a time while half-open; any failure among them opens the breaker again.
    half_open_max_calls: PositiveInt = 3
    # Successful half-open calls in a row that close the breaker. One is not enough: a Collector that
    # flaps (crash-looping, a memory_limiter letting the odd request through) answers one probe and
    # then the whole backlog lands on it. 3 = one full wave of the default half_open_max_calls.
    half_open_success_threshold: PositiveInt = 3


class ConcurrencyConfig(Base):
    """The in-flight limit per endpoint, AIMD on latency and failures."""

    # `false` fixes the limit at `max`.
    adaptive: bool = True
    # The lowest limit.
    min: PositiveInt = 1
    # The highest limit.
    max: PositiveInt = 64


class HealthProbeConfig(Base):
    """Active health probe per endpoint: an empty Export request (or a GET of `health_check_url`) at start-up and
    every `interval`; feeds the breaker and `/ready/upstream` (never `/ready`).
    """

    # `false`: an endpoint is `unknown` until it first accepts an export, and unhealthy while its breaker is open.
    enabled: bool = True
    # Time between probes.
    interval: Duration = Duration(30.0)
    # A probe not answered in time failed.
    timeout: Duration = Duration(5.0)
    # Failed probes in a row that mark a healthy endpoint unhealthy (the first answer decides at start-up).
    unhealthy_threshold: PositiveInt = 3
    # Successful probes in a row that mark an unhealthy endpoint healthy.
    healthy_threshold: PositiveInt = 2
    # The Collector's `health_check` extension, e.g. `http://collector:13133/`: the probe is then an HTTP GET and
    # only a 200 is healthy (the extension says 503 while the Collector starts or stops, when its OTLP port
    # already or still answers). With several endpoints write `{host}` for each endpoint's host; `https://` is
    # verified against the system's CAs.
    health_check_url: str | None = None


class DeadLetterConfig(Base):
    """Bounds of an exporter's dead-letter store; past any of them the oldest dead letters go.

    Their items are counted in `sidecar_dropped_items_total` as `dead_letter_evicted`, or `dead_letter_expired`
    for age (a partial success's copy adds nothing there: its rejected items were counted once, as
    `upstream_rejected`).
    """

    max_items: PositiveInt = 10_000  # dead letters kept (each one is one failed request, not one span)
    # Payload bytes kept; absent: 64 MiB for the in-memory store, no limit on disk (max_items bounds it).
    max_size_mib: PositiveFloat | None = None
    # Older dead letters are dropped (checked a few times per max_age, at most every minute); 0: kept until the
    # other bounds push them out.
    max_age: Duration = Duration(0.0)


class ExporterConfig(Base):
    # The upstream: gRPC `host:port`, HTTP `http(s)://host:port` (use `endpoint` or `endpoints`).
    endpoint: str | None = None
    # Several upstreams: failover and load balancing across them, a breaker and health state each.
    endpoints: list[str] | None = None
    # How a request picks one of `endpoints` among those whose breaker admits it.
    balancer: Literal["least_outstanding", "ewma_latency", "round_robin"] = "least_outstanding"
    # TLS towards the upstream.
    tls: TLSClientConfig = msgspec.field(default_factory=TLSClientConfig)
    # Headers (gRPC metadata) added to every upstream request, e.g. an API key.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # `auto`: none to a loopback endpoint (127.0.0.0/8, ::1, localhost) or a unix socket, gzip to any other host
    # (a host name is not resolved). `zstd` for otlp_http only (grpcio cannot send it). See docs/operations.md.
    compression: Literal["auto", "gzip", "zstd", "none"] = "auto"
    # Deadline of one upstream export attempt.
    timeout: Duration = Duration(5.0)
    # Largest upstream request: a larger one is split in halves before sending (absent: no limit; a 413 or
    # 'message larger than max' also splits).
    max_request_size_mib: PositiveFloat | None = None
    # Retries and backoff.
    retry_on_failure: RetryConfig = msgspec.field(default_factory=RetryConfig)
    # The queue.
    sending_queue: SendingQueueConfig = msgspec.field(default_factory=SendingQueueConfig)
    # The breakers.
    circuit_breaker: CircuitBreakerConfig = msgspec.field(default_factory=CircuitBreakerConfig)
    # The adaptive in-flight limit.
    concurrency: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    # The active health probe.
    health_probe: HealthProbeConfig = msgspec.field(default_factory=HealthProbeConfig)
    # The dead-letter store of permanent and fatal failures and partial successes (on disk with `file_storage`;
    # see `python -m sidecar deadletters`).
    dead_letter: DeadLetterConfig = msgspec.field(default_factory=DeadLetterConfig)

    def endpoint_list(self) -> list[str]:
        if self.endpoints:
            return list(self.endpoints)
        return [self.endpoint] if self.endpoint else []


# ---------------------------------------------------------------- extensions


class HealthCheckConfig(Base):
    """Serves `/health` (liveness), `/ready` (readiness) and `/ready/upstream`."""

    # host:port (off the Collector's 13133, so both can share a host).
    endpoint: str = "0.0.0.0:13134"


class FileStorageConfig(Base):
    """Disk storage for the queues (`sending_queue.storage: file_storage`) and the dead letters."""

    # One `<exporter>.sqlite` queue and `<exporter>.deadletter.sqlite` per exporter; on a small volume (under 256
    # MiB) new files use 4 KiB pages and keep a reserve for acknowledgements.
    directory: str = "/var/lib/otlp-sidecar"


class AdminConfig(Base):
    """The admin gRPC API (`protos/sidecar/v1/admin.proto`) used by `status`, `deadletters`, `breaker reset` and
    `drain`.
    """

    # host:port (loopback by default).
    endpoint: str = "127.0.0.1:4320"
    # Bearer token clients must send (`--token`, `$SIDECAR_ADMIN_TOKEN`); required when bound beyond loopback.
    token: str | None = None


class HandoffConfig(Base):
    """Handoff: on shutdown, what the drain could not deliver is moved to the fleet's Redis and the other
    sidecars deliver it, so a deleted pod's queue is not lost (docs/operations.md, DESIGN.md §9)."""

    # On with fleet mode: this sidecar hands off its backlog when it stops and delivers others' handoffs.
    # false: neither; what the drain leaves stays in the local queue, as without fleet mode.
    enabled: bool = True
    # The fleet-wide bound on handed-off payload bytes in Redis, summed over every endpoint's stream; what does
    # not fit stays in the local queue. Size Redis's maxmemory above it (each request costs ~200 bytes more).
    max_mib: PositiveFloat = 256.0
    # The part of service.shutdown_timeout kept for the handoff (the drain gets the rest), capped at half of it.
    # When every breaker is open the drain stops at once and the handoff gets the whole rest.
    timeout: Duration = Duration(10.0)
    # A claimed entry idle this long (its claimer died or hung) is taken over by another member (XAUTOCLAIM).
    claim_timeout: Duration = Duration(30.0)
    # How often a live member claims handed-off entries while an endpoint it exports to has a backlog; with none,
    # it looks at the endpoint's byte counter once a heartbeat_interval (one GET), so an idle fleet pays ~nothing.
    claim_interval: Duration = Duration(1.0)
    # Entries left on a departed sidecar's volume (budget full, Redis away, out of time) are counted as dropped
    # (reason shutdown) when no sidecar has come back with that volume within this long (or sooner, when the
    # same instance_id comes back with another volume: its own was deleted).
    left_behind_timeout: Duration = Duration(600.0)


class FleetTLSConfig(Base):
    """Set for TLS to the Redis nodes in `sentinel` and `cluster` modes (one server: a rediss:// endpoint)."""

    ca_file: str | None = None  # PEM bundle that signed the Redis nodes' certificates; default: the system's
    insecure_skip_verify: bool = False  # encrypt without checking the certificate (tests only)


class FleetSentinelConfig(Base):
    """Redis Sentinel: the sidecars ask the sentinels where the primary is and follow its failovers."""

    master_name: str  # the name the sentinels monitor (`sentinel monitor <master_name> ...`)
    addresses: list[str]  # host:port of the sentinels; any that answer will do
    password: str | None = None  # the sentinels' own password (sentinel.conf requirepass), if they have one
    tls: bool = False  # talk TLS to the sentinels too (with extensions.fleet.tls's CA)
    db: Annotated[int, Meta(ge=0)] = 0  # database number on the primary


class FleetClusterConfig(Base):
    """Redis Cluster: each upstream endpoint's keys live in one hash slot, so on one primary."""

    nodes: list[str]  # host:port of some cluster nodes to learn the topology from (startup nodes)


class FleetConfig(Base):
    """Fleet mode (DESIGN.md §9): sidecars share breaker state, probing and a retry budget in Redis.
    Exactly one of `endpoint` (one server), `sentinel` or `cluster` says where Redis is."""

    endpoint: str | None = None  # one server: redis://[:password@]host:port/db, or rediss:// for TLS
    sentinel: FleetSentinelConfig | None = None
    cluster: FleetClusterConfig | None = None
    # The Redis nodes' password: overrides a password in the endpoint URL; in sentinel and cluster modes,
    # the primaries' and replicas' requirepass. E.g. ${env:REDIS_PASSWORD}
    password: str | None = None
    tls: FleetTLSConfig | None = None
    # Prefix of every Redis key, so several fleets can share one Redis (no braces: see sidecar/fleet/keys.py).
    key_prefix: str = "otlp-sidecar:"
    instance_id: str | None = None  # default: hostname:pid
    # How often this sidecar writes its heartbeat (100ms..60s); a member is gone after 3 missed.
    heartbeat_interval: Duration = Duration(2.0)
    # The longest a retry waits for the fleet budget's answer beyond its own backoff (the question is asked
    # while the backoff runs); unanswered by then, the local budget decides alone. Background commands
    # have their own bound (sidecar/fleet/connection.py).
    command_timeout: Duration = Duration(0.05)
    # While the fleet holds an endpoint open, the probe lease holder probes it this often (an empty Export,
    # or a GET of health_probe.health_check_url), whatever the breakers' recovery_timeout: recovery is seen
    # within about one interval. One probe per interval is the whole fleet's cost on a failing upstream.
    probe_interval: Duration = Duration(1.5)
    # Pooled evidence (sidecar/fleet/view.py EvidenceRule): the endpoint opens fleet-wide when the failures
    # the sidecars reported within the evidence window reach this share of the calls the fleet made in the
    # span they can come from (the window plus the reports' batching, 50 to 100 ms), reported by at least two
    # sidecars. Independent failures well below it almost never add up. Before the fleet's rate is known (the
    # first second or two of its traffic) the window is 5 s and a sidecar's failures count once it reported two.
    failure_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.25
    # Sets the evidence window: that span (window + 100 ms) is the time the fleet takes to make about this
    # many calls to the endpoint (the window 50 ms to 5 s). With the defaults the fleet opens after 5
    # failures up to 133 requests/s, 12 to 18 at 500 (fewer when the failures were sent at once: see
    # docs/operations.md).
    minimum_calls: PositiveInt = 20
    handoff: HandoffConfig = msgspec.field(default_factory=HandoffConfig)


class ExtensionsConfig(Base):
    """Extensions; each runs when configured here and listed in `service.extensions`."""

    # Health endpoints.
    health_check: HealthCheckConfig | None = None
    # Disk storage.
    file_storage: FileStorageConfig | None = None
    # The admin API.
    admin: AdminConfig | None = None
    # Fleet mode: see docs/operations.md#fleet-mode.
    fleet: FleetConfig | None = None


# ---------------------------------------------------------------- service


class PipelineConfig(Base):
    """One pipeline per signal: `traces`, `metrics` or `logs`, or `traces/<name>`."""

    # Receivers feeding it.
    receivers: list[str]
    # Exporters it sends to; several fan out, each with its own queue.
    exporters: list[str]
    # Processors applied, from `classify`, `enrich`, `degradation`.
    processors: list[str] = msgspec.field(default_factory=list)


class TelemetryMetricsConfig(Base):
    """The sidecar's own Prometheus metrics (docs/metrics.md)."""

    # host:port serving `/metrics`; null: off.
    address: str | None = "0.0.0.0:8889"


class TelemetryLogsConfig(Base):
    """The sidecar's own logs on stderr (docs/troubleshooting.md)."""

    # The lowest level logged.
    level: Literal["debug", "info", "warn", "error"] = "info"
    # `json`: one object per line with an `event` field; `console`: for people.
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
    # services with the most errors (bounded cardinality). 0: per category only. Counting error items per service
    # is the admin API's hotspot collection: one update per request and distinct (service, span name, class),
    # about 0.1 ms a request in an error storm (under 1 us per error span, measured in-process on a 2-core
    # machine), paid anyway with the admin API on; without it, 0 saves it.
    top_services: Annotated[int, Meta(ge=0)] = 10


class TelemetryConfig(Base):
    """The sidecar's own telemetry."""

    # Metrics.
    metrics: TelemetryMetricsConfig = msgspec.field(default_factory=TelemetryMetricsConfig)
    # Logs.
    logs: TelemetryLogsConfig = msgspec.field(default_factory=TelemetryLogsConfig)
    # The error-rate anomaly detector: every `interval` the error rate of each category (and of each
    # `service.name`, for the `top_services` with most errors) is scored in standard deviations against an EWMA
    # baseline; a sustained new level becomes the baseline. Applied on reload with the baselines kept.
    anomaly: TelemetryAnomalyConfig = msgspec.field(default_factory=TelemetryAnomalyConfig)


class ServiceConfig(Base):
    # The pipelines by name.
    pipelines: dict[str, PipelineConfig]
    # Extensions to run (each configured under `extensions`).
    extensions: list[str] = msgspec.field(default_factory=list)
    # Soft memory limit, less 5 % headroom for requests in flight: RSS above `memory_essential_above` of it acts
    # as level 3, at `memory_backpressure_at` clients are pushed back (null: no limit). RSS is sampled every 0.25
    # s and on every request within 10 % of push-back; requests in flight cost 3-4x their size, so at a high rate
    # of large requests RSS can pass it briefly (tests/integration/test_buffering.py allows 40 MiB); once clients
    # are pushed back it stays flat. `make bench` (scenario 5) measures it; capacity: docs/operations.md.
    memory_limit_mib: PositiveFloat | None = 512.0
    # Drain time on SIGTERM; what is left is kept on disk, or counted dropped with reason `shutdown`.
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
