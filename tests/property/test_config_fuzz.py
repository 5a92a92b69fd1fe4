"""Issue 9: configuration fuzzing.

Whatever YAML an operator (or a template gone wrong) hands the sidecar — random documents, random text,
valid configurations with wrong types, unknown keys and deleted keys, hostile YAML (recursive aliases,
alias bombs, deep nesting, odd tags) — loading it yields a Config or a ConfigError whose every message
names a dotted path; never another exception or a traceback.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import Config, ConfigError, load_config_text, schema
from sidecar.config.units import encode_hook
from tests.sidecar_process import SidecarPorts, base_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))  # `make fuzz` raises it
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENVIRON = {"SET": "1", "PORT": "4317", "EMPTY": "", "TEXT": "hello", "DEEP": "[" * 3000, "LIST": "[1, 2]"}


def _schema_keys() -> list[str]:
    """Every key the schema knows, so random documents reach deep into it."""
    keys: set[str] = {"receivers", "processors", "exporters", "extensions", "service", "otlp", "otlp/2",
                      "otlp_grpc", "otlp_http", "otlp_grpc/a", "otlp_http/b", "classify", "enrich", "degradation",
                      "traces", "metrics", "logs", "traces/x", "grpc", "http", "file_storage", "health_check",
                      "admin", "x-unknown"}
    seen: set[type] = set()
    todo: list[Any] = [schema.ServiceConfig, schema.ExtensionsConfig, *schema.RECEIVER_KINDS.values(),
                       *schema.PROCESSOR_KINDS.values(), *schema.EXPORTER_KINDS.values()]
    while todo:
        tp = todo.pop()
        for arg in typing.get_args(tp):
            todo.append(arg)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and tp not in seen:
            seen.add(tp)
            hints = typing.get_type_hints(tp, include_extras=True)
            for field in msgspec.structs.fields(tp):
                keys.add(field.encode_name)
                todo.append(hints[field.name])
    return sorted(keys)


SCHEMA_KEYS = _schema_keys()
keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans())
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["5s", "0", "250ms", "1m30s", "-1s", "1e400s", "9" * 400 + "h", "s", "5", "1.5.5s",
                     "${env:SET}", "${env:UNSET}", "${env:UNSET:-7}", "${env:EMPTY:-}", "${env:LIST}",
                     "$$", "${env:", "${env:1BAD}", "$${env:SET}", "127.0.0.1:4317", "0.0.0.0:99999", "[::1]:80",
                     "http://collector:4318", "https://x", "collector:4317", "UNAVAILABLE", "full", "requests",
                     "FULL", "gzip", "a{99999999999}", "(" * 300, "((?P<a>x)", "/nonexistent/cert.pem", "\x00",
                     "otlp", "otlp_grpc", "classify", "file_storage", "health_check", "admin"]))
documents = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)), max_leaves=40)


def _check(text: str) -> Config | None:
    """Load `text`: a Config, or None after checking the ConfigError is well formed."""
    try:
        config = load_config_text(text, "fuzz.yaml", environ=ENVIRON)
    except ConfigError as exc:
        assert exc.errors, "a ConfigError lists at least one problem"
        for message in exc.errors:
            assert isinstance(message, str) and ": " in message, message
        assert str(exc).startswith("fuzz.yaml: ")
        return None
    _assert_finite(msgspec.to_builtins(
        {"receivers": config.receivers, "processors": config.processors, "exporters": config.exporters,
         "extensions": config.extensions, "service": config.service}, enc_hook=encode_hook))
    return config


def _assert_finite(node: Any) -> None:
    if isinstance(node, float):
        assert math.isfinite(node), node
    elif isinstance(node, dict):
        for value in node.values():
            _assert_finite(value)
    elif isinstance(node, list):
        for value in node:
            _assert_finite(value)


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


@SETTINGS
@given(document=documents)
def test_random_documents_load_or_raise_config_error(document: Any) -> None:
    _check(_dump(document))


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(["receivers", "processors", "exporters", "extensions", "service"]),
                                documents, max_size=5))
def test_random_top_level_sections(document: Any) -> None:
    _check(_dump(document))


@SETTINGS
@given(text=st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(text)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("{}[]:,-&*!|>'\"#%@` \n\tabc01$")), max_size=120))
def test_random_yaml_syntax(text: str) -> None:
    _check(text)


# ----------------------------------------------------------------------------- mutations of valid configs

DESIGN_EXAMPLE = {
    "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:14317", "max_recv_msg_size_mib": 16},
                                         "http": {"endpoint": "127.0.0.1:14318", "max_request_body_size_mib": 20,
                                                  "read_timeout": "30s"}},
                           "include_metadata": ["x-scope-orgid"], "auth": {"bearer_token": "${env:TEXT}"}}},
    "processors": {"classify": {"strict_otlp": False, "rules": [
        {"id": "r1", "match": {"grpc_code": "UNAVAILABLE", "http_status": [503], "message": "down"},
         "set": {"category": "transport", "recoverability": "retryable"}}]},
        "enrich": {"attribute_prefix": "sidecar.error.", "set_error_type": True},
        "degradation": {"error_rate": 0.5, "latency": "10s", "sample_ratio": 0.1}},
    "exporters": {
        "otlp_grpc": {"endpoints": ["collector:4317", "collector-b:4317"], "balancer": "least_outstanding",
                      "tls": {"insecure": True}, "headers": {"x-a": "b"}, "compression": "gzip", "timeout": "5s",
                      "retry_on_failure": {"enabled": True, "initial_interval": "5s", "max_interval": "30s",
                                           "multiplier": 1.5, "jitter": "full", "max_elapsed_time": "300s",
                                           "budget": {"ratio": 0.2, "min_per_second": 3}},
                      "sending_queue": {"enabled": True, "num_consumers": 10, "sizer": "requests",
                                        "queue_size": 1000, "storage": "file_storage"},
                      "circuit_breaker": {"failure_threshold": 5, "failure_rate": 0.5, "minimum_calls": 10,
                                          "window": "60s", "recovery_timeout": "60s", "half_open_max_calls": 3},
                      "concurrency": {"adaptive": True, "min": 1, "max": 64}},
        "otlp_http/backup": {"endpoint": "http://collector:4318"}},
    "extensions": {"health_check": {"endpoint": "127.0.0.1:13134"}, "file_storage": {"directory": "/tmp/q"},
                   "admin": {"endpoint": "127.0.0.1:4320"}},
    "service": {"extensions": ["health_check", "file_storage", "admin"], "memory_limit_mib": 512,
                "shutdown_timeout": "30s",
                "pipelines": {
                    "traces": {"receivers": ["otlp"], "processors": ["classify", "enrich", "degradation"],
                               "exporters": ["otlp_grpc", "otlp_http/backup"]},
                    "metrics": {"receivers": ["otlp"], "processors": ["degradation"], "exporters": ["otlp_grpc"]},
                    "logs": {"receivers": ["otlp"], "processors": ["classify", "enrich", "degradation"],
                             "exporters": ["otlp_grpc"]}},
                "telemetry": {"metrics": {"address": "127.0.0.1:18889"}, "logs": {"level": "info",
                                                                                 "encoding": "json"}}},
}
VALID = [DESIGN_EXAMPLE, base_config("127.0.0.1:4317", SidecarPorts(4317, 4318, 13134, 8889)),
         base_config("http://127.0.0.1:4318", SidecarPorts(4317, 4318, 13134, 8889), exporter="otlp_http")]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*path, i))
    return out


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    config = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(config) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = config
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["wrong_type", "wrong_type", "delete", "unknown_key", "rename", "null",
                                   "wrap_in_list", "swap"]))
        last = path[-1]
        if op == "wrong_type":
            parent[last] = draw(documents)
        elif op == "delete":
            del parent[last]
        elif op == "null":
            parent[last] = None
        elif op == "wrap_in_list":
            parent[last] = [parent[last]]
        elif op == "unknown_key" and isinstance(parent[last], dict):
            parent[last][draw(keys)] = draw(scalars)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif op == "swap":
            other = draw(st.sampled_from(paths))
            source = config
            for step in other:
                source = source[step] if isinstance(source, (dict, list)) else source
            parent[last] = copy.deepcopy(source)
    return config


def test_the_valid_configs_are_valid() -> None:
    for config in VALID:
        assert _check(_dump(config)) is not None


@settings(SETTINGS, max_examples=3 * EXAMPLES)
@given(config=mutated_configs())
def test_mutated_valid_configs_load_or_raise_config_error(config: Any) -> None:
    _check(_dump(config))


# ----------------------------------------------------------------------------- hostile YAML

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize(("text", "expected"), [
    ("a: &a [*a]\n", "once YAML aliases are expanded (or an alias that contains itself)"),
    ("service: &s {pipelines: *s}\n", "or an alias that contains itself"),
    ("receivers: &r {otlp: {protocols: {grpc: *r}}}\n", "or an alias that contains itself"),
    (_LAUGHS, "more than 100000 values once YAML aliases are expanded"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("a: " + "{a: " * 2000 + "1" + "}" * 2000, "nested too deeply"),
    ("service: ${env:DEEP}\n", "nested too deeply"),
    ("!!python/object:os.system {}\n", "invalid YAML"),
    ("service: !!binary aGVsbG8=\n", "service: must be a mapping, got bytes"),
    ("service: {pipelines: {traces: {receivers: [2001-12-14], exporters: [x]}}}\n", "must be a string, got date"),
    ("? [a, b]\n: 1\n", "invalid YAML"),
    ("a: b\na: c\n", ""),
    ("\t- x\n", "invalid YAML"),
    ("%YAML 9.9\n---\na: 1\n", ""),
    ("--- a\n--- b\n", "invalid YAML"),
    ("", "<root>: must be a mapping"),
    ("processors: {classify: {rules: [{id: a, match: {message: 'a{99999999999}'}, set: {category: transport}}]}}"
     "\nservice: {pipelines: {}}\n", "invalid regular expression: the repetition number is too large"),
    ("processors: {classify: {rules: [{id: a, match: {exception_type: '" + "(" * 1200 + ")" * 1200 + "'}, "
     "set: {category: transport}}]}}\nservice: {pipelines: {}}\n", "invalid regular expression"),
    ("receivers: {otlp: {protocols: {grpc: {max_recv_msg_size_mib: .inf}}}}\nservice: {pipelines: {}}\n",
     "receivers.otlp.protocols.grpc.max_recv_msg_size_mib: must be a finite number"),
    ("exporters: {otlp_grpc: {endpoint: 'a:1', timeout: " + "9" * 400 + "s}}\nservice: {pipelines: {}}\n",
     "exporters.otlp_grpc.timeout: must be a finite number"),
    ("service: {memory_limit_mib: .nan, pipelines: {}}\n", "service.memory_limit_mib: must be > 0"),
], ids=lambda value: value[:30] if isinstance(value, str) else None)
def test_hostile_yaml_is_a_config_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, environ=ENVIRON)
    assert any(expected in message for message in info.value.errors), info.value.errors


def test_validate_cli_reports_hostile_yaml_without_a_traceback(tmp_path: Path) -> None:
    for i, text in enumerate(["a: &a [*a]\nservice: *a\n", "[" * 5000 + "]" * 5000, _LAUGHS, "\x00\x01"]):
        path = tmp_path / f"hostile{i}.yaml"
        path.write_text(text)
        result = subprocess.run([sys.executable, "-m", "sidecar", "validate", "--config", str(path)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert f"{path}: " in result.stderr
