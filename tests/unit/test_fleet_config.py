"""extensions.fleet: the issue's YAML as written, defaults, ${env:...} passwords and precise errors."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, load_config_text
from sidecar.config.schema import Config

BASE = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:4317"}}}
exporters:
  otlp_grpc: {endpoint: "collector:4317"}
extensions:
  health_check: {}
  fleet: %s
service:
  extensions: [health_check, fleet]
  pipelines: {traces: {receivers: [otlp], exporters: [otlp_grpc]}}
"""


def load(fleet: str, environ: dict[str, str] | None = None) -> Config:
    return load_config_text(BASE % fleet, environ=environ or {})


def errors(fleet: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(fleet)
    return info.value.errors


def test_the_issue_yaml_loads_with_defaults() -> None:
    fleet = load('{endpoint: "redis://127.0.0.1:6379/0"}').extensions.fleet
    assert fleet is not None
    assert fleet.endpoint == "redis://127.0.0.1:6379/0"
    assert fleet.key_prefix == "otlp-sidecar:"
    assert fleet.instance_id is None and fleet.password is None
    assert float(fleet.heartbeat_interval) == 2.0 and float(fleet.command_timeout) == 0.05


def test_every_option_and_an_env_password() -> None:
    fleet = load('{endpoint: "rediss://redis.internal:6380/2", password: "${env:REDIS_PASSWORD}", '
                 'key_prefix: "shop:", instance_id: "pod-7", heartbeat_interval: 5s, command_timeout: 20ms}',
                 environ={"REDIS_PASSWORD": "s3cret"}).extensions.fleet
    assert fleet is not None
    assert (fleet.endpoint, fleet.password, fleet.key_prefix, fleet.instance_id) == (
        "rediss://redis.internal:6380/2", "s3cret", "shop:", "pod-7")
    assert float(fleet.heartbeat_interval) == 5.0 and float(fleet.command_timeout) == 0.02


@pytest.mark.parametrize(("fleet", "expected"), [
    ('{endpoint: "http://127.0.0.1:6379"}',
     "extensions.fleet.endpoint: must be redis://host:port/db or rediss://host:port/db "
     "(got 'http://127.0.0.1:6379')"),
    ('{endpoint: "127.0.0.1:6379"}',
     "extensions.fleet.endpoint: must be redis://host:port/db or rediss://host:port/db (got '127.0.0.1:6379')"),
    ('{endpoint: "redis://:6379/0"}', "extensions.fleet.endpoint: names no host (got 'redis://:6379/0')"),
    ('{endpoint: "redis://h:70000/0"}', "extensions.fleet.endpoint: port must be 1..65535 (got 'redis://h:70000/0')"),
    ('{endpoint: "redis://h:6379/zero"}',
     "extensions.fleet.endpoint: the database after the / must be a number (got 'zero')"),
    ('{endpoint: "redis://h:6379/0", key_prefix: ""}',
     "extensions.fleet.key_prefix: must be non-empty, without whitespace (got '')"),
    ('{endpoint: "redis://h:6379/0", instance_id: "pod 7"}',
     "extensions.fleet.instance_id: must be 1..200 characters without whitespace (got 'pod 7')"),
    ('{endpoint: "redis://h:6379/0", heartbeat_interval: 10ms}',
     "extensions.fleet.heartbeat_interval: must be between 100ms and 60s (got 0.01s)"),
    ('{endpoint: "redis://h:6379/0", command_timeout: 2s}',
     "extensions.fleet.command_timeout: must be between 1ms and 500ms, so that the sidecar falls back to its "
     "local state within 1s (got 2.0s)"),
])
def test_bad_values_name_the_key_and_the_reason(fleet: str, expected: str) -> None:
    assert expected in errors(fleet)


def test_the_endpoint_is_required() -> None:
    assert any(e.startswith("extensions.fleet") and "endpoint" in e for e in errors("{key_prefix: x}"))


def test_listing_fleet_without_configuring_it_is_an_error() -> None:
    text = BASE.replace("  fleet: %s\n", "")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, environ={})
    assert "service.extensions[1]: extension 'fleet' is not configured under extensions" in info.value.errors


def test_probe_cadence_and_evidence_rule_reach_the_shared_breakers() -> None:
    """The shipped defaults give fast recovery with nothing but `endpoint` set, and each key is used."""
    from sidecar.config.schema import CircuitBreakerConfig
    from sidecar.core.clock import SYSTEM_CLOCK
    from sidecar.fleet.fleet import evidence_rule
    from sidecar.fleet.view import EvidenceRule

    defaults = load('{endpoint: "redis://127.0.0.1:6379/0"}').extensions.fleet
    assert defaults is not None
    assert float(defaults.probe_interval) == 1.5  # far below the breakers' default recovery_timeout (60 s)
    assert float(CircuitBreakerConfig().recovery_timeout) == 60.0
    assert evidence_rule(defaults) == EvidenceRule(failure_ratio=0.25, minimum_calls=20)
    tuned = load('{endpoint: "redis://h:6379/0", probe_interval: 500ms, failure_ratio: 0.5, minimum_calls: 40}')
    assert tuned.extensions.fleet is not None
    assert evidence_rule(tuned.extensions.fleet) == EvidenceRule(failure_ratio=0.5, minimum_calls=40)
    assert evidence_rule(tuned.extensions.fleet).needed(0.0) == 20
    from sidecar.fleet.fleet import Fleet
    from sidecar.telemetry.events import Events
    from sidecar.telemetry.metrics import Metrics
    from tests.fakes.sender import FakeTransport, build, make_config, sender_clock

    clock = sender_clock()
    fleet = Fleet(tuned.extensions.fleet, Events(Metrics()), SYSTEM_CLOCK, dict)
    fleet.attach("otlp_grpc", build(make_config(["a:4317"]), [FakeTransport("a:4317", clock)], clock, Metrics()))
    shared = fleet.breakers["a:4317"]
    assert shared.probe_interval == 0.5 and shared.rule == EvidenceRule(failure_ratio=0.5, minimum_calls=40)
    assert any("failure_ratio" in e for e in errors('{endpoint: "redis://h:6379/0", failure_ratio: 0}'))
