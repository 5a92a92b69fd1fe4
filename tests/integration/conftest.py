from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.collector import FakeCollector
from tests.sdk_app import quiet_sdk_logs
from tests.sidecar_process import SidecarPorts, SidecarProcess, base_config


@pytest.fixture
def upstream() -> Iterator[FakeCollector]:
    with FakeCollector() as fake:
        yield fake


SidecarFactory = Callable[..., SidecarProcess]


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[SidecarFactory]:
    """Start sidecars as subprocesses; each is stopped with SIGTERM (and must exit 0) at teardown."""
    started: list[SidecarProcess] = []
    quiet_sdk_logs()

    def start(upstream_endpoint: str, exporter: str = "otlp_grpc", *, storage: bool = False,
              config_edit: Callable[[dict[str, Any]], None] | None = None, wait_ready: bool = True,
              module: str = "sidecar", **overrides: Any) -> SidecarProcess:
        ports = SidecarPorts()
        workdir = tmp_path / f"sidecar{len(started)}"
        workdir.mkdir()
        config = base_config(upstream_endpoint, ports, exporter,
                             storage_dir=workdir / "queue" if storage else None, **overrides)
        if config_edit is not None:
            config_edit(config)
        process = SidecarProcess(config, workdir, ports, module)
        started.append(process)
        return process.start(wait_ready=wait_ready)

    yield start
    failures = []
    for process in started:  # all drain at once: each may take up to its shutdown_timeout
        process.terminate()
    for process in started:
        try:
            code = process.stop()
            if code not in (0, None, -9):
                failures.append(f"sidecar exited {code}:\n{process.logs()[-4000:]}")
        finally:
            process.kill()
    assert not failures, "\n".join(failures)
