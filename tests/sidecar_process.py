"""Start the sidecar as its own process, the way a user does, with a config written for the test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


# Ports for servers a test starts later (sidecars, redis-server) come from below the kernel's ephemeral
# range (net.ipv4.ip_local_port_range, 32768-60999 by default), one block per pytest-xdist worker. A
# port the kernel hands out for bind(0) may be taken again before the server binds it: by the outgoing
# connection of any client (their source ports come from the ephemeral range) or by the other worker
# asking the kernel at the same moment. It happened in a CI run: "address already in use".
PORT_RANGE = (20000, 32000)
_HANDED_OUT: set[int] = set()


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    low, high = PORT_RANGE
    size = (high - low) // max(1, count)
    start = low + (index % max(1, count)) * size
    return range(start, start + size)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free now, in this worker's block, and not handed out before by this process (two
    SidecarPorts of one test must not collide even after the first server has gone)."""
    block = _port_block()
    offset = os.getpid() % len(block)  # successive runs do not reuse the same ports first
    for step in range(len(block)):
        port = block[(offset + step) % len(block)]
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port left in {block.start}-{block.stop - 1}")


@dataclass
class SidecarPorts:
    grpc: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    health: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)


def get_json(url: str) -> tuple[int, dict[str, object]]:
    """GET a JSON endpoint of the sidecar (health, readiness): (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def base_config(upstream: str, ports: SidecarPorts, exporter: str = "otlp_grpc",
                storage_dir: Path | None = None, **exporter_overrides: Any) -> dict[str, Any]:
    """A config with fast retry settings so tests finish quickly; override any exporter key."""
    exporter_cfg: dict[str, Any] = {
        "endpoint": upstream,
        "tls": {"insecure": True},
        "timeout": "2s",
        "retry_on_failure": {"initial_interval": "100ms", "max_interval": "1s", "max_elapsed_time": "60s"},
        "circuit_breaker": {"recovery_timeout": "1s", "max_recovery_timeout": "2s"},
        "health_probe": {"interval": "1s", "timeout": "1s"},
        # One upstream request per client request, so tests can count and script them one by one;
        # the default batching is covered by tests/unit/test_queue_batch.py and test_default_batching.
        "sending_queue": {"num_consumers": 4, "queue_size": 1000, "batch": {"enabled": False}},
    }
    for key, value in exporter_overrides.items():
        if isinstance(value, dict) and isinstance(exporter_cfg.get(key), dict):
            exporter_cfg[key] = {**exporter_cfg[key], **value}
        else:
            exporter_cfg[key] = value
    config: dict[str, Any] = {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{ports.grpc}"},
            "http": {"endpoint": f"127.0.0.1:{ports.http}"},
        }}},
        "processors": {"classify": {}, "enrich": {}, "degradation": {}},
        "exporters": {exporter: exporter_cfg},
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{ports.health}"}},
        "service": {
            "extensions": ["health_check"],
            "shutdown_timeout": "5s",
            "telemetry": {"metrics": {"address": f"127.0.0.1:{ports.metrics}"},
                          "logs": {"level": "info", "encoding": "json"}},
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["classify", "enrich", "degradation"],
                           "exporters": [exporter]},
                "metrics": {"receivers": ["otlp"], "processors": ["degradation"], "exporters": [exporter]},
                "logs": {"receivers": ["otlp"], "processors": ["classify", "enrich", "degradation"],
                         "exporters": [exporter]},
            },
        },
    }
    if storage_dir is not None:
        config["extensions"]["file_storage"] = {"directory": str(storage_dir)}
        config["service"]["extensions"].append("file_storage")
        config["exporters"][exporter]["sending_queue"]["storage"] = "file_storage"
    return config


class SidecarProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, ports: SidecarPorts, module: str = "sidecar") -> None:
        self.module = module  # `python -m MODULE run --config ...`: tests/fakes/ may wrap the real one
        self.config = config
        self.ports = ports
        self.workdir = workdir
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.terminated = False  # SIGTERM sent to the current run

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.grpc}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> SidecarProcess:
        """Start and wait until /ready (start-up done, receivers listening), or with `wait_ready=False`
        only until /health answers (the process is alive; a disk queue may still be replaying)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        log = self.log_path.open("ab")
        self.terminated = False
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "run", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        path = "/ready" if wait_ready else "/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.health}{path}", timeout=1) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sidecar did not become healthy within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The sidecar's JSON log lines (every run, when it was restarted on the same workdir)."""
        events = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def terminate(self) -> None:
        """SIGTERM without waiting, once per run (to stop several at once; `stop` then only waits). Once the
        sidecar's loop has closed, a second SIGTERM would meet the default handler and kill it."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"sidecar did not stop on SIGTERM within {timeout}s:\n{self.logs()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.metrics}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total
