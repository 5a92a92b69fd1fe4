"""Rules that relate several keys; each returns messages prefixed by a dotted path."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from sidecar.config import schema
from sidecar.core.signals import Signal

_SIGNALS = {s.value for s in Signal}
_HOST_PORT = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[^\s:/\[\]]*):(\d{1,5})$")
_GRPC_CODES = {code.name for code in grpc.StatusCode}


def split_host_port(address: str) -> tuple[str, int] | None:
    match = _HOST_PORT.match(address)
    if match is None:
        return None
    port = int(match.group(1))
    if port > 65535:
        return None
    host = address[: match.start(1) - 1].strip("[]")
    return host, port


def cross_check(config: schema.Config) -> list[str]:
    errors: list[str] = []
    _check_receivers(config, errors)
    _check_processors(config, errors)
    _check_exporters(config, errors)
    _check_extensions(config, errors)
    check_pipelines(config.service.pipelines, set(config.receivers), set(config.processors),
                    set(config.exporters), errors)
    _check_ports(config, errors)
    _check_anomaly(config.service.telemetry.anomaly, errors)
    return errors


def _check_anomaly(anomaly: schema.TelemetryAnomalyConfig, errors: list[str]) -> None:
    base = "service.telemetry.anomaly"
    if anomaly.interval <= 0:
        errors.append(f"{base}.interval: must be > 0")
    if anomaly.clear >= anomaly.threshold:
        errors.append(f"{base}.clear: must be below threshold ({anomaly.threshold}), or the alarm could not clear")


def _check_listen(address: str, path: str, errors: list[str]) -> None:
    if split_host_port(address) is None:
        errors.append(f"{path}: must be host:port, e.g. 0.0.0.0:4317 (got {address!r})")


def _check_file(value: str | None, path: str, errors: list[str]) -> None:
    if value is not None and not Path(value).is_file():
        errors.append(f"{path}: file not found: {value}")


def _check_receivers(config: schema.Config, errors: list[str]) -> None:
    for name, receiver in config.receivers.items():
        base = f"receivers.{name}"
        protocols = receiver.protocols
        if protocols.grpc is None and protocols.http is None:
            errors.append(f"{base}.protocols: enable at least one of grpc, http")
        for proto_name, proto in (("grpc", protocols.grpc), ("http", protocols.http)):
            if proto is None:
                continue
            _check_listen(proto.endpoint, f"{base}.protocols.{proto_name}.endpoint", errors)
            if proto.tls is not None:
                tls_path = f"{base}.protocols.{proto_name}.tls"
                _check_file(proto.tls.cert_file, f"{tls_path}.cert_file", errors)
                _check_file(proto.tls.key_file, f"{tls_path}.key_file", errors)
                _check_file(proto.tls.client_ca_file, f"{tls_path}.client_ca_file", errors)
        if protocols.http is not None and protocols.http.read_timeout <= 0:
            errors.append(f"{base}.protocols.http.read_timeout: must be > 0")
        for i, key in enumerate(receiver.include_metadata):
            if not key or key != key.lower() or not re.fullmatch(r"[a-z0-9_.\-]+", key):
                errors.append(f"{base}.include_metadata[{i}]: must be a lower-case header name (got {key!r})")
        if receiver.auth is not None and not receiver.auth.bearer_token:
            errors.append(f"{base}.auth.bearer_token: must not be empty")


def _check_processors(config: schema.Config, errors: list[str]) -> None:
    for name, processor in config.processors.items():
        base = f"processors.{name}"
        if isinstance(processor, schema.ClassifyProcessorConfig):
            seen: set[str] = set()
            for i, rule in enumerate(processor.rules):
                path = f"{base}.rules[{i}]"
                if not rule.id:
                    errors.append(f"{path}.id: must not be empty")
                elif rule.id in seen:
                    errors.append(f"{path}.id: duplicate rule id {rule.id!r}")
                seen.add(rule.id)
                match = rule.match
                if match.grpc_code is not None and match.grpc_code not in _GRPC_CODES:
                    errors.append(f"{path}.match.grpc_code: unknown gRPC status {match.grpc_code!r} "
                                  f"(expected a name such as UNAVAILABLE)")
                for status_i, status in enumerate(match.http_status or []):
                    if not 100 <= status <= 599:
                        errors.append(f"{path}.match.http_status[{status_i}]: must be an HTTP status 100..599")
                for field_name in ("message", "exception_type"):
                    pattern = getattr(match, field_name)
                    if pattern is not None:
                        try:
                            re.compile(pattern)
                        except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}, ((((...
                            errors.append(f"{path}.match.{field_name}: invalid regular expression: {exc}")
                if all(getattr(match, f) is None for f in match.__struct_fields__):
                    errors.append(f"{path}.match: set at least one condition")
                if all(getattr(rule.set, f) is None for f in rule.set.__struct_fields__):
                    errors.append(f"{path}.set: set at least one field")
        elif isinstance(processor, schema.EnrichProcessorConfig):
            if not processor.attribute_prefix:
                errors.append(f"{base}.attribute_prefix: must not be empty")
        elif isinstance(processor, schema.DegradationProcessorConfig):
            if not processor.spill_at < processor.reduce_at < processor.essential_at <= 1:
                errors.append(f"{base}: thresholds must satisfy spill_at < reduce_at < essential_at <= 1")
            if processor.latency <= 0:
                errors.append(f"{base}.latency: must be > 0")
            if not processor.memory_essential_above < processor.memory_backpressure_at:
                errors.append(f"{base}: thresholds must satisfy memory_essential_above < memory_backpressure_at")


def _check_exporters(config: schema.Config, errors: list[str]) -> None:
    for name, exporter in config.exporters.items():
        base = f"exporters.{name}"
        kind = schema.component_kind(name)
        if exporter.endpoint is not None and exporter.endpoints is not None:
            errors.append(f"{base}: set either endpoint or endpoints, not both")
        endpoints = exporter.endpoint_list()
        if not endpoints:
            errors.append(f"{base}: endpoint (or endpoints) is required")
        if len(set(endpoints)) != len(endpoints):
            errors.append(f"{base}.endpoints: contains duplicates")
        for i, endpoint in enumerate(endpoints):
            path = f"{base}.endpoint" if exporter.endpoint is not None else f"{base}.endpoints[{i}]"
            if kind == "otlp_http":
                if not re.match(r"^https?://[^/\s]+", endpoint):
                    errors.append(f"{path}: must be a URL such as http://collector:4318 (got {endpoint!r})")
            else:
                bare = re.sub(r"^(https?|dns:///?)://?", "", endpoint).rstrip("/")
                if split_host_port(bare) is None:
                    errors.append(f"{path}: must be host:port such as collector:4317 (got {endpoint!r})")
        if exporter.timeout <= 0:
            errors.append(f"{base}.timeout: must be > 0")
        retry = exporter.retry_on_failure
        if retry.initial_interval <= 0:
            errors.append(f"{base}.retry_on_failure.initial_interval: must be > 0")
        if retry.max_interval < retry.initial_interval:
            errors.append(f"{base}.retry_on_failure.max_interval: must be >= initial_interval")
        if retry.max_elapsed_time < 0:
            errors.append(f"{base}.retry_on_failure.max_elapsed_time: must be >= 0 (0 disables the limit)")
        breaker = exporter.circuit_breaker
        for key in ("window", "recovery_timeout"):
            if getattr(breaker, key) <= 0:
                errors.append(f"{base}.circuit_breaker.{key}: must be > 0")
        if breaker.max_recovery_timeout < breaker.recovery_timeout:
            errors.append(f"{base}.circuit_breaker.max_recovery_timeout: must be >= recovery_timeout")
        if exporter.concurrency.min > exporter.concurrency.max:
            errors.append(f"{base}.concurrency: min must be <= max")
        probe = exporter.health_probe
        if probe.interval <= 0:
            errors.append(f"{base}.health_probe.interval: must be > 0")
        if probe.timeout <= 0:
            errors.append(f"{base}.health_probe.timeout: must be > 0")
        if probe.health_check_url is not None:
            url_path = f"{base}.health_probe.health_check_url"
            if not re.match(r"^https?://[^/\s]+", probe.health_check_url):
                errors.append(f"{url_path}: must be a URL such as http://collector:13133/ "
                              f"(got {probe.health_check_url!r})")
            elif len(endpoints) > 1 and "{host}" not in probe.health_check_url:
                errors.append(f"{url_path}: with several endpoints, write {{host}} where each endpoint's host "
                              "goes (e.g. http://{host}:13133/), so each endpoint is judged by its own Collector")
        tls = exporter.tls
        _check_file(tls.ca_file, f"{base}.tls.ca_file", errors)
        _check_file(tls.cert_file, f"{base}.tls.cert_file", errors)
        _check_file(tls.key_file, f"{base}.tls.key_file", errors)
        if (tls.cert_file is None) != (tls.key_file is None):
            errors.append(f"{base}.tls: cert_file and key_file go together")
        if kind != "otlp_http" and tls.insecure_skip_verify and any(
                endpoint.startswith("https://") or (not endpoint.startswith("http://") and not tls.insecure)
                for endpoint in endpoints):
            # Ignoring it would fail every export at run time with a certificate error instead.
            errors.append(f"{base}.tls.insecure_skip_verify: not supported by otlp_grpc (the gRPC runtime always "
                          "verifies the server's certificate); set tls.ca_file to the CA that signed it")
        if kind != "otlp_http" and exporter.compression == "zstd":
            errors.append(f"{base}.compression: zstd is not supported by otlp_grpc (grpcio sends gzip or nothing); "
                          "use auto, gzip or none, or an otlp_http exporter for zstd")
        queue = exporter.sending_queue
        if queue.storage_mode == "spill" and queue.storage is None:
            errors.append(f"{base}.sending_queue.storage_mode: spill needs sending_queue.storage (a disk to spill to)")
        if queue.storage is not None:
            if queue.storage != "file_storage":
                errors.append(f"{base}.sending_queue.storage: unknown storage extension {queue.storage!r} "
                              "(expected file_storage)")
            elif config.extensions.file_storage is None:
                errors.append(f"{base}.sending_queue.storage: extension file_storage is not configured "
                              "under extensions")
        for header in exporter.headers:
            if header != header.lower() and header.lower().startswith("grpc-"):
                errors.append(f"{base}.headers.{header}: grpc- headers are reserved")


def _check_extensions(config: schema.Config, errors: list[str]) -> None:
    ext = config.extensions
    if ext.health_check is not None:
        _check_listen(ext.health_check.endpoint, "extensions.health_check.endpoint", errors)
    if ext.admin is not None:
        _check_listen(ext.admin.endpoint, "extensions.admin.endpoint", errors)
        hp = split_host_port(ext.admin.endpoint)
        if hp is not None and hp[0] not in ("127.0.0.1", "localhost", "::1") and not ext.admin.token:
            errors.append("extensions.admin.token: required when the admin API is bound beyond loopback")
    if ext.fleet is not None:
        _check_fleet(ext.fleet, errors)
    for i, name in enumerate(config.service.extensions):
        if name not in ext.__struct_fields__:
            errors.append(f"service.extensions[{i}]: unknown extension {name!r} "
                          f"(expected one of: {', '.join(ext.__struct_fields__)})")
        elif getattr(ext, name) is None:
            errors.append(f"service.extensions[{i}]: extension {name!r} is not configured under extensions")
    telemetry = config.service.telemetry.metrics.address
    if telemetry is not None:
        _check_listen(telemetry, "service.telemetry.metrics.address", errors)


_REDIS_SCHEMES = ("redis", "rediss")
_INSTANCE_ID = re.compile(r"^[^\s]{1,200}$")


def _check_fleet(fleet: schema.FleetConfig, errors: list[str]) -> None:
    base = "extensions.fleet"
    modes = [name for name in ("endpoint", "sentinel", "cluster") if getattr(fleet, name) is not None]
    if len(modes) != 1:
        got = ", ".join(f"{base}.{m}" for m in modes) or "none"
        errors.append(f"{base}: set exactly one of endpoint (one Redis server), sentinel (Redis Sentinel) or "
                      f"cluster (Redis Cluster) (got {got})")
    if fleet.endpoint is not None:
        _check_fleet_endpoint(fleet.endpoint, base, errors)
        if fleet.tls is not None:
            errors.append(f"{base}.tls: applies to sentinel and cluster modes; for one server use a rediss:// "
                          "endpoint")
    if fleet.sentinel is not None:
        sentinel = fleet.sentinel
        if not sentinel.master_name.strip():
            errors.append(f"{base}.sentinel.master_name: must name the primary the sentinels monitor")
        _check_addresses(sentinel.addresses, f"{base}.sentinel.addresses", "26379", errors)
    if fleet.cluster is not None:
        _check_addresses(fleet.cluster.nodes, f"{base}.cluster.nodes", "7000", errors)
    if fleet.tls is not None:
        _check_file(fleet.tls.ca_file, f"{base}.tls.ca_file", errors)
    _check_fleet_options(fleet, base, errors)


def _check_addresses(addresses: list[str], path: str, example_port: str, errors: list[str]) -> None:
    if not addresses:
        errors.append(f"{path}: list at least one host:port")
    for i, address in enumerate(addresses):
        if split_host_port(address) is None or not address.rpartition(":")[0].strip("[]"):
            errors.append(f"{path}[{i}]: must be host:port, e.g. redis-0.redis:{example_port} (got {address!r})")


def _check_fleet_endpoint(endpoint: str, base: str, errors: list[str]) -> None:
    url = urlsplit(endpoint)
    if url.scheme not in _REDIS_SCHEMES:
        errors.append(f"{base}.endpoint: must be redis://host:port/db or rediss://host:port/db "
                      f"(got {endpoint!r})")
    else:
        try:
            port = url.port
        except ValueError:
            port = -1
        if not url.hostname:
            errors.append(f"{base}.endpoint: names no host (got {endpoint!r})")
        if port is not None and not 1 <= port <= 65535:
            errors.append(f"{base}.endpoint: port must be 1..65535 (got {endpoint!r})")
        db = url.path.lstrip("/")
        if db and not db.isdigit():
            errors.append(f"{base}.endpoint: the database after the / must be a number (got {db!r})")
        if url.query or url.fragment:
            errors.append(f"{base}.endpoint: takes no query or fragment (got {endpoint!r})")


def _check_fleet_options(fleet: schema.FleetConfig, base: str, errors: list[str]) -> None:
    if not fleet.key_prefix or any(c.isspace() or c in "{}" for c in fleet.key_prefix):
        # Braces would change the hash tag that keeps each endpoint's keys in one Redis Cluster slot.
        errors.append(f"{base}.key_prefix: must be non-empty, without whitespace or braces "
                      f"(got {fleet.key_prefix!r})")
    if fleet.instance_id is not None and not _INSTANCE_ID.match(fleet.instance_id):
        errors.append(f"{base}.instance_id: must be 1..200 characters without whitespace "
                      f"(got {fleet.instance_id!r})")
    if not 0.1 <= fleet.heartbeat_interval <= 60:
        errors.append(f"{base}.heartbeat_interval: must be between 100ms and 60s "
                      f"(got {float(fleet.heartbeat_interval)}s)")
    if not 0.001 <= fleet.command_timeout <= 0.5:
        errors.append(f"{base}.command_timeout: must be between 1ms and 500ms, so that the sidecar falls back "
                      f"to its local state within 1s (got {float(fleet.command_timeout)}s)")
    handoff = fleet.handoff
    if handoff.claim_timeout < 1:
        errors.append(f"{base}.handoff.claim_timeout: must be at least 1s, longer than one delivery attempt "
                      f"(got {float(handoff.claim_timeout)}s)")
    if not 0.05 <= handoff.claim_interval <= 60:
        errors.append(f"{base}.handoff.claim_interval: must be between 50ms and 60s "
                      f"(got {float(handoff.claim_interval)}s)")
    if handoff.timeout < 0:
        errors.append(f"{base}.handoff.timeout: must not be negative (got {float(handoff.timeout)}s)")


def check_pipelines(pipelines: dict[str, schema.PipelineConfig], receivers: set[str], processors: set[str],
                    exporters: set[str], errors: list[str]) -> None:
    """Pipelines against the component names defined; usable before the components themselves validate."""
    if not pipelines:
        errors.append("service.pipelines: define at least one pipeline (traces, metrics or logs)")
    for name, pipeline in pipelines.items():
        base = f"service.pipelines.{name}"
        if schema.component_kind(name) not in _SIGNALS:
            errors.append(f"{base}: pipeline type must be one of traces, metrics, logs")
        if not pipeline.receivers:
            errors.append(f"{base}.receivers: must name at least one receiver")
        if not pipeline.exporters:
            errors.append(f"{base}.exporters: must name at least one exporter")
        for section, defined in (("receivers", receivers), ("processors", processors),
                                 ("exporters", exporters)):
            names = getattr(pipeline, section)
            for i, ref in enumerate(names):
                if ref not in defined:
                    errors.append(f"{base}.{section}[{i}]: {section[:-1]} {ref!r} is not defined "
                                  f"under {section}")
            if len(set(names)) != len(names):
                errors.append(f"{base}.{section}: lists a component twice")


def _check_ports(config: schema.Config, errors: list[str]) -> None:
    seen: dict[int, str] = {}

    def claim(address: str | None, path: str) -> None:
        hp = split_host_port(address) if address else None
        if hp is None or hp[1] == 0:
            return
        if hp[1] in seen:
            errors.append(f"{path}: port {hp[1]} is already used by {seen[hp[1]]}")
        else:
            seen[hp[1]] = path

    for name, receiver in config.receivers.items():
        if receiver.protocols.grpc is not None:
            claim(receiver.protocols.grpc.endpoint, f"receivers.{name}.protocols.grpc.endpoint")
        if receiver.protocols.http is not None:
            claim(receiver.protocols.http.endpoint, f"receivers.{name}.protocols.http.endpoint")
    if config.extensions.health_check is not None:
        claim(config.extensions.health_check.endpoint, "extensions.health_check.endpoint")
    if config.extensions.admin is not None:
        claim(config.extensions.admin.endpoint, "extensions.admin.endpoint")
    claim(config.service.telemetry.metrics.address, "service.telemetry.metrics.address")
