"""Config loading: every invalid file under testdata names its exact error; valid files load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, load_config_text
from sidecar.config.units import Duration

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests/testdata/invalid_configs").glob("*.yaml"))


def _expectations(path: Path) -> tuple[list[str], list[str]]:
    exact, prefixes = [], []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            exact.append(line.removeprefix("# expect: "))
        elif line.startswith("# expect-prefix: "):
            prefixes.append(line.removeprefix("# expect-prefix: "))
    return exact, prefixes


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_reports_exact_error(path: Path) -> None:
    exact, prefixes = _expectations(path)
    assert exact or prefixes, f"{path.name} has no '# expect:' line"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    errors = info.value.errors
    for expected in exact:
        assert expected in errors, f"{expected!r} not in {errors}"
    for prefix in prefixes:
        assert any(e.startswith(prefix) for e in errors), f"no error starting {prefix!r} in {errors}"
    if len(exact) > 1:
        assert len(errors) == len(exact), "all errors are reported at once, and only those"


def test_validate_cli_exits_non_zero_with_dotted_path() -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", "validate", "--config",
                             str(ROOT / "tests/testdata/invalid_configs/multiplier_below_one.yaml")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "exporters.otlp_grpc.retry_on_failure.multiplier: must be >= 1" in result.stderr


def test_validate_cli_accepts_the_example_configs(tmp_path: Path) -> None:
    # sidecar-production.yaml requires its TLS files to exist (test_deployment_files.py loads real ones).
    tls = {name: tmp_path / name for name in ("SIDECAR_TLS_CA_FILE", "SIDECAR_TLS_CERT_FILE", "SIDECAR_TLS_KEY_FILE")}
    for file in tls.values():
        file.touch()
    for path in sorted((ROOT / "collector-config").glob("sidecar*.yaml")):
        result = subprocess.run([sys.executable, "-m", "sidecar", "validate", "--config", str(path)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "SIDECAR_UPSTREAM": "collector:4317",
                                     **{name: str(file) for name, file in tls.items()}})
        assert result.returncode == 0, result.stderr


MINIMAL = """
receivers:
  otlp:
    protocols:
      grpc:
      http: {endpoint: "127.0.0.1:${env:HTTP_PORT:-4318}"}
exporters:
  otlp_grpc/primary:
    endpoint: ${env:UPSTREAM}
    timeout: 250ms
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlp_grpc/primary]}
"""


def test_env_expansion_defaults_and_durations() -> None:
    config = load_config_text(MINIMAL, environ={"UPSTREAM": "collector:4317"})
    receiver = config.receivers["otlp"]
    assert receiver.protocols.grpc is not None and receiver.protocols.grpc.endpoint == "0.0.0.0:4317"
    assert receiver.protocols.http is not None and receiver.protocols.http.endpoint == "127.0.0.1:4318"
    exporter = config.exporters["otlp_grpc/primary"]
    assert exporter.endpoint == "collector:4317"
    assert exporter.timeout == pytest.approx(0.25)
    assert exporter.retry_on_failure.initial_interval == 5.0
    assert exporter.retry_on_failure.multiplier == 1.5
    assert exporter.circuit_breaker.failure_threshold == 5


def test_whole_value_env_reference_is_typed() -> None:
    text = MINIMAL.replace("timeout: 250ms", "sending_queue:\n      queue_size: ${env:QSIZE}")
    config = load_config_text(text, environ={"UPSTREAM": "c:4317", "QSIZE": "77"})
    assert config.exporters["otlp_grpc/primary"].sending_queue.queue_size == 77


def test_dollar_escape() -> None:
    text = MINIMAL.replace("timeout: 250ms", "headers: {x-literal: \"$${env:NOT_EXPANDED}\"}")
    config = load_config_text(text, environ={"UPSTREAM": "c:4317"})
    assert config.exporters["otlp_grpc/primary"].headers["x-literal"] == "${env:NOT_EXPANDED}"


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5.0), ("250ms", 0.25), ("1m30s", 90.0),
                                               ("1h", 3600.0), ("1.5s", 1.5), ("0", 0.0)])
def test_duration_parse(text: str, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "5 s", "-1s", "1d", ""])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)
