from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ("top_hotspots", "hotspot_window_minutes")
    TOP_HOTSPOTS_FIELD_NUMBER: _ClassVar[int]
    HOTSPOT_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    top_hotspots: int
    hotspot_window_minutes: int
    def __init__(self, top_hotspots: _Optional[int] = ..., hotspot_window_minutes: _Optional[int] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("uptime_seconds", "accepting", "ready", "exporters", "error_rates", "recovery", "hotspots", "hotspot_keys_evicted", "stats_since", "hotspot_window_minutes", "anomalies", "error_rate_history")
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTING_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    EXPORTERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATES_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_FIELD_NUMBER: _ClassVar[int]
    HOTSPOTS_FIELD_NUMBER: _ClassVar[int]
    HOTSPOT_KEYS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    STATS_SINCE_FIELD_NUMBER: _ClassVar[int]
    HOTSPOT_WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    ANOMALIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    uptime_seconds: float
    accepting: bool
    ready: bool
    exporters: _containers.RepeatedCompositeFieldContainer[ExporterStatus]
    error_rates: _containers.RepeatedCompositeFieldContainer[ErrorRate]
    recovery: RecoveryStats
    hotspots: _containers.RepeatedCompositeFieldContainer[Hotspot]
    hotspot_keys_evicted: int
    stats_since: float
    hotspot_window_minutes: int
    anomalies: _containers.RepeatedCompositeFieldContainer[Anomaly]
    error_rate_history: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, uptime_seconds: _Optional[float] = ..., accepting: _Optional[bool] = ..., ready: _Optional[bool] = ..., exporters: _Optional[_Iterable[_Union[ExporterStatus, _Mapping]]] = ..., error_rates: _Optional[_Iterable[_Union[ErrorRate, _Mapping]]] = ..., recovery: _Optional[_Union[RecoveryStats, _Mapping]] = ..., hotspots: _Optional[_Iterable[_Union[Hotspot, _Mapping]]] = ..., hotspot_keys_evicted: _Optional[int] = ..., stats_since: _Optional[float] = ..., hotspot_window_minutes: _Optional[int] = ..., anomalies: _Optional[_Iterable[_Union[Anomaly, _Mapping]]] = ..., error_rate_history: _Optional[_Iterable[float]] = ...) -> None: ...

class Anomaly(_message.Message):
    __slots__ = ("category", "score", "active", "errors_per_minute", "baseline_per_minute", "since", "service")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    category: str
    score: float
    active: bool
    errors_per_minute: float
    baseline_per_minute: float
    since: float
    service: str
    def __init__(self, category: _Optional[str] = ..., score: _Optional[float] = ..., active: _Optional[bool] = ..., errors_per_minute: _Optional[float] = ..., baseline_per_minute: _Optional[float] = ..., since: _Optional[float] = ..., service: _Optional[str] = ...) -> None: ...

class ExporterStatus(_message.Message):
    __slots__ = ("name", "queue", "degradation_level", "degradation_cause", "reachable", "endpoints", "dead_letters", "lag", "worsening")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    DEGRADATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DEGRADATION_CAUSE_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    WORSENING_FIELD_NUMBER: _ClassVar[int]
    name: str
    queue: QueueStatus
    degradation_level: int
    degradation_cause: str
    reachable: bool
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    dead_letters: DeadLetterSummary
    lag: QueueLag
    worsening: _containers.RepeatedCompositeFieldContainer[Worsening]
    def __init__(self, name: _Optional[str] = ..., queue: _Optional[_Union[QueueStatus, _Mapping]] = ..., degradation_level: _Optional[int] = ..., degradation_cause: _Optional[str] = ..., reachable: _Optional[bool] = ..., endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ..., dead_letters: _Optional[_Union[DeadLetterSummary, _Mapping]] = ..., lag: _Optional[_Union[QueueLag, _Mapping]] = ..., worsening: _Optional[_Iterable[_Union[Worsening, _Mapping]]] = ...) -> None: ...

class QueueLag(_message.Message):
    __slots__ = ("oldest_age_seconds", "time_to_full_seconds", "net_fill_rate_per_second", "size_history", "size_history_step_seconds")
    OLDEST_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FULL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NET_FILL_RATE_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SIZE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    SIZE_HISTORY_STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    oldest_age_seconds: float
    time_to_full_seconds: float
    net_fill_rate_per_second: float
    size_history: _containers.RepeatedScalarFieldContainer[float]
    size_history_step_seconds: float
    def __init__(self, oldest_age_seconds: _Optional[float] = ..., time_to_full_seconds: _Optional[float] = ..., net_fill_rate_per_second: _Optional[float] = ..., size_history: _Optional[_Iterable[float]] = ..., size_history_step_seconds: _Optional[float] = ...) -> None: ...

class Worsening(_message.Message):
    __slots__ = ("category", "error_type", "base_severity", "severity", "occurrences", "window_seconds")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    category: str
    error_type: str
    base_severity: str
    severity: str
    occurrences: int
    window_seconds: float
    def __init__(self, category: _Optional[str] = ..., error_type: _Optional[str] = ..., base_severity: _Optional[str] = ..., severity: _Optional[str] = ..., occurrences: _Optional[int] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("enabled", "storage", "sizer", "size", "capacity", "requests", "bytes", "in_flight")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    SIZER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    storage: str
    sizer: str
    size: int
    capacity: int
    requests: int
    bytes: int
    in_flight: int
    def __init__(self, enabled: _Optional[bool] = ..., storage: _Optional[str] = ..., sizer: _Optional[str] = ..., size: _Optional[int] = ..., capacity: _Optional[int] = ..., requests: _Optional[int] = ..., bytes: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("endpoint", "breaker_state", "breaker_seconds_in_state", "breaker_recovery_timeout_seconds", "breaker_trips", "consecutive_failures", "concurrency_limit", "in_flight", "retry_budget_tokens", "retry_budget_deposit_tokens", "retry_budget_floor_tokens", "health", "outstanding", "ewma_latency_seconds", "backoff_base_seconds")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    BREAKER_SECONDS_IN_STATE_FIELD_NUMBER: _ClassVar[int]
    BREAKER_RECOVERY_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BREAKER_TRIPS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_DEPOSIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_FLOOR_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    EWMA_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_BASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    breaker_state: str
    breaker_seconds_in_state: float
    breaker_recovery_timeout_seconds: float
    breaker_trips: int
    consecutive_failures: int
    concurrency_limit: int
    in_flight: int
    retry_budget_tokens: float
    retry_budget_deposit_tokens: float
    retry_budget_floor_tokens: float
    health: str
    outstanding: int
    ewma_latency_seconds: float
    backoff_base_seconds: float
    def __init__(self, endpoint: _Optional[str] = ..., breaker_state: _Optional[str] = ..., breaker_seconds_in_state: _Optional[float] = ..., breaker_recovery_timeout_seconds: _Optional[float] = ..., breaker_trips: _Optional[int] = ..., consecutive_failures: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., in_flight: _Optional[int] = ..., retry_budget_tokens: _Optional[float] = ..., retry_budget_deposit_tokens: _Optional[float] = ..., retry_budget_floor_tokens: _Optional[float] = ..., health: _Optional[str] = ..., outstanding: _Optional[int] = ..., ewma_latency_seconds: _Optional[float] = ..., backoff_base_seconds: _Optional[float] = ...) -> None: ...

class DeadLetterSummary(_message.Message):
    __slots__ = ("count", "bytes", "evicted")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    count: int
    bytes: int
    evicted: int
    def __init__(self, count: _Optional[int] = ..., bytes: _Optional[int] = ..., evicted: _Optional[int] = ...) -> None: ...

class ErrorRate(_message.Message):
    __slots__ = ("window_minutes", "per_minute", "errors", "export_errors", "item_errors")
    WINDOW_MINUTES_FIELD_NUMBER: _ClassVar[int]
    PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ERRORS_FIELD_NUMBER: _ClassVar[int]
    window_minutes: int
    per_minute: float
    errors: int
    export_errors: int
    item_errors: int
    def __init__(self, window_minutes: _Optional[int] = ..., per_minute: _Optional[float] = ..., errors: _Optional[int] = ..., export_errors: _Optional[int] = ..., item_errors: _Optional[int] = ...) -> None: ...

class RecoveryStats(_message.Message):
    __slots__ = ("outages", "recovered", "ongoing", "success_rate", "mean_recovery_seconds", "max_recovery_seconds", "last_recovery_seconds")
    OUTAGES_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    ONGOING_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_RECOVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    outages: int
    recovered: int
    ongoing: int
    success_rate: float
    mean_recovery_seconds: float
    max_recovery_seconds: float
    last_recovery_seconds: float
    def __init__(self, outages: _Optional[int] = ..., recovered: _Optional[int] = ..., ongoing: _Optional[int] = ..., success_rate: _Optional[float] = ..., mean_recovery_seconds: _Optional[float] = ..., max_recovery_seconds: _Optional[float] = ..., last_recovery_seconds: _Optional[float] = ...) -> None: ...

class Hotspot(_message.Message):
    __slots__ = ("service", "name", "signal", "category", "error_type", "count", "last_seen")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    name: str
    signal: str
    category: str
    error_type: str
    count: int
    last_seen: float
    def __init__(self, service: _Optional[str] = ..., name: _Optional[str] = ..., signal: _Optional[str] = ..., category: _Optional[str] = ..., error_type: _Optional[str] = ..., count: _Optional[int] = ..., last_seen: _Optional[float] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("exporter", "limit", "offset")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    limit: int
    offset: int
    def __init__(self, exporter: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "total")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    total: int
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("exporter", "id", "signal", "items", "bytes", "category", "severity", "recoverability", "recovery", "error_type", "message", "dead_at", "accepted_at", "rejected_items", "partial_success")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    RECOVERABILITY_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEAD_AT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    id: int
    signal: str
    items: int
    bytes: int
    category: str
    severity: str
    recoverability: str
    recovery: str
    error_type: str
    message: str
    dead_at: float
    accepted_at: float
    rejected_items: int
    partial_success: bool
    def __init__(self, exporter: _Optional[str] = ..., id: _Optional[int] = ..., signal: _Optional[str] = ..., items: _Optional[int] = ..., bytes: _Optional[int] = ..., category: _Optional[str] = ..., severity: _Optional[str] = ..., recoverability: _Optional[str] = ..., recovery: _Optional[str] = ..., error_type: _Optional[str] = ..., message: _Optional[str] = ..., dead_at: _Optional[float] = ..., accepted_at: _Optional[float] = ..., rejected_items: _Optional[int] = ..., partial_success: _Optional[bool] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("exporter", "ids", "include_partial")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    include_partial: bool
    def __init__(self, exporter: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., include_partial: _Optional[bool] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("replayed", "replayed_items", "remaining", "missing_ids", "skipped_partial", "skipped_partial_items", "skipped_reason")
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_PARTIAL_ITEMS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    replayed: int
    replayed_items: int
    remaining: int
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    skipped_partial: int
    skipped_partial_items: int
    skipped_reason: str
    def __init__(self, replayed: _Optional[int] = ..., replayed_items: _Optional[int] = ..., remaining: _Optional[int] = ..., missing_ids: _Optional[_Iterable[int]] = ..., skipped_partial: _Optional[int] = ..., skipped_partial_items: _Optional[int] = ..., skipped_reason: _Optional[str] = ...) -> None: ...

class ResetBreakerRequest(_message.Message):
    __slots__ = ("exporter", "endpoint")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    endpoint: str
    def __init__(self, exporter: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class ResetBreakerResponse(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: _containers.RepeatedCompositeFieldContainer[BreakerReset]
    def __init__(self, reset: _Optional[_Iterable[_Union[BreakerReset, _Mapping]]] = ...) -> None: ...

class BreakerReset(_message.Message):
    __slots__ = ("exporter", "endpoint", "previous_state")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    endpoint: str
    previous_state: str
    def __init__(self, exporter: _Optional[str] = ..., endpoint: _Optional[str] = ..., previous_state: _Optional[str] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("exporter", "timeout_seconds")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    timeout_seconds: float
    def __init__(self, exporter: _Optional[str] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("drained", "remaining", "waited_seconds")
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    WAITED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    drained: bool
    remaining: _containers.RepeatedCompositeFieldContainer[QueueRemaining]
    waited_seconds: float
    def __init__(self, drained: _Optional[bool] = ..., remaining: _Optional[_Iterable[_Union[QueueRemaining, _Mapping]]] = ..., waited_seconds: _Optional[float] = ...) -> None: ...

class QueueRemaining(_message.Message):
    __slots__ = ("exporter", "requests", "size", "bytes")
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    exporter: str
    requests: int
    size: int
    bytes: int
    def __init__(self, exporter: _Optional[str] = ..., requests: _Optional[int] = ..., size: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
