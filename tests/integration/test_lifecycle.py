"""Start-up refusals, health and readiness, and SIGTERM of the sidecar process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.fakes.collector import FakeCollector
from tests.integration.conftest import SidecarFactory
from tests.sidecar_process import ROOT, SidecarPorts, base_config


def _run(config_path: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-m", "sidecar", "--config", str(config_path)], capture_output=True,
                          text=True, env=env, timeout=60, cwd=ROOT)


def test_refuses_the_pure_python_protobuf_backend(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config("127.0.0.1:1", SidecarPorts())))
    result = _run(path, {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    assert result.returncode == 3
    assert "upb" in result.stderr and "pure-Python" in result.stderr


def test_port_in_use_is_a_clear_startup_error(tmp_path: Path) -> None:
    ports = SidecarPorts()
    busy = socket.socket()
    busy.bind(("127.0.0.1", ports.http))
    busy.listen()
    try:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(base_config("127.0.0.1:1", ports)))
        result = _run(path, {})
    finally:
        busy.close()
    assert result.returncode == 3
    assert "cannot start" in result.stderr and str(ports.http) in result.stderr


def test_invalid_config_exits_2_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    config = base_config("127.0.0.1:1", SidecarPorts())
    config["exporters"]["otlp_grpc"]["retry_on_failure"]["multiplier"] = 0.1
    path.write_text(yaml.safe_dump(config))
    result = _run(path, {})
    assert result.returncode == 2
    assert "exporters.otlp_grpc.retry_on_failure.multiplier: must be >= 1" in result.stderr


def test_sigterm_drains_and_exits_zero(upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    upstream.set_delay(0.5)
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add()
    for i in range(20):
        spans.spans.add(trace_id=b"\x01" * 16, span_id=i.to_bytes(8, "big"), name="s")
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}")
    channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                        request_serializer=None, response_deserializer=None)(request.SerializeToString(), timeout=5)
    channel.close()
    assert sidecar.stop() == 0
    # What was acknowledged before SIGTERM was delivered during the drain.
    assert len(upstream.span_ids()) == 20


def test_sigterm_repeated_during_and_after_the_drain_still_exits_zero(
        upstream: FakeCollector, sidecar_factory: SidecarFactory) -> None:
    """A supervisor may ask twice. Once drained, the sidecar ignores further SIGTERMs instead of meeting the
    default handler after its event loop closed (which turned a clean stop into exit -15)."""
    sidecar = sidecar_factory(upstream.grpc_endpoint)
    assert sidecar.proc is not None
    sidecar.terminate()
    deadline = time.monotonic() + 30
    while sidecar.proc.poll() is None and time.monotonic() < deadline:
        sidecar.proc.send_signal(signal.SIGTERM)  # again and again, through the drain and the exit
        time.sleep(0.005)
    assert sidecar.proc.wait(5) == 0, sidecar.logs()[-2000:]
