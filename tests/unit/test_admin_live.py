"""`status --watch`: the live view (sidecar/admin/live.py) rendered through rich's console capture."""

from __future__ import annotations

import argparse
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from sidecar.admin import client as admin_client
from sidecar.admin.live import SPARK, render_live, sparkline
from sidecar.admin.v1 import admin_pb2 as pb
from tests.fakes.admin_status import NOW, recorded_status


def _render(status: pb.GetStatusResponse, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system="truecolor")
    console.print(render_live(status, NOW))
    return console.export_text()


def _line(text: str, *needles: str) -> str:
    return next(line for line in text.splitlines() if all(n in line for n in needles))


def test_live_view_of_a_recorded_status() -> None:
    text = _render(recorded_status())
    assert text.splitlines()[0] == "sidecar  NOT READY, accepting, up 1h02m"

    primary = _line(text, "otlp_grpc/primary")
    # queue depth, its sparkline over the last ten minutes (scaled to the capacity: 900/1000 is the top)
    assert "12/1000" in primary and sparkline([0, 2, 5, 9, 12, 900, 12], ceiling=1000) in primary
    assert "█" in primary
    assert "1m05s" in primary and "7m30s" in primary  # oldest age, time to full
    assert "collector-a:4317 open" in primary and "collector-b:4317 half-open" in primary
    assert "1 spill (breaker_open)" in primary
    http = _line(text, "otlp_http")
    assert "synchronous" in http and "0 normal" in http

    errors = _line(text, "Errors")
    assert "1m 12.0/min" in errors and "15m 1.6/min" in errors
    assert sparkline([1, 2, 2, 40, 300]) in errors

    assert "Anomalies" in text
    timeout = _line(text, "timeout", "ANOMALY")
    assert "9.5" in timeout and "300/min" in timeout and "2.0/min" in timeout and "for 40s" in timeout
    assert "elevated" in _line(text, "transport", "1.5")
    assert "for 20s" in _line(text, "service checkout", "ANOMALY")
    assert "internal" not in text.split("Anomalies", 1)[1].split("Top error hotspots", 1)[0], \
        "a category at its usual rate is not listed"

    assert "Top error hotspots (last 5 min)" in text
    hotspot = _line(text, "1234", "checkout")
    assert "POST /pay" in hotspot and "connection_refused" in hotspot and "3.0s ago" in hotspot


def test_live_view_of_a_quiet_sidecar() -> None:
    status = pb.GetStatusResponse(ready=True, accepting=True, uptime_seconds=5)
    exporter = status.exporters.add(name="otlp_grpc", reachable=True)
    exporter.queue.CopyFrom(pb.QueueStatus(enabled=True, sizer="requests", capacity=100))
    status.anomalies.add(category="transport", score=0.2)
    text = _render(status)
    assert text.splitlines()[0] == "sidecar  ready, accepting, up 5.0s"
    row = _line(text, "otlp_grpc")
    assert "0/100" in row and "empty" in row and "not filling" in row
    assert "Anomalies  none" in text
    assert "Top error hotspots (last 5 min)  none" in text


def test_time_to_full_and_age_are_coloured_by_the_alert_thresholds() -> None:
    status = recorded_status()
    console = Console(file=io.StringIO(), width=160, record=True, color_system="truecolor")
    console.print(render_live(status, NOW))
    html = console.export_html(inline_styles=True)
    assert "7m30s" in html and "color: #800000" in html.split("7m30s")[0].rsplit("<span", 1)[1], \
        "under 10 minutes to full is red"


@given(values=st.lists(st.floats(min_value=0, max_value=1e9), max_size=100), width=st.integers(1, 60))
def test_sparkline_is_one_block_per_value(values: list[float], width: int) -> None:
    line = sparkline(values, width)
    assert len(line) == min(len(values), width)
    assert set(line) <= set(SPARK)
    if values and max(values[-width:]) > 0:
        assert SPARK[-1] in line, "the largest value reaches the top"


def test_watch_prints_the_live_view_once_per_refresh_into_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[pb.GetStatusRequest] = []

    class _Client:
        def call(self, method: str, request: pb.GetStatusRequest) -> pb.GetStatusResponse:
            assert method == "GetStatus"
            calls.append(request)
            return recorded_status()

    out = io.StringIO()
    args = argparse.Namespace(command="status", watch=0.5, count=3, json=False, top=4, window=15)
    slept: list[float] = []
    assert admin_client._status(_Client(), args, out, slept.append) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert text.count("sidecar  NOT READY") == 3 and text.count("Top error hotspots") == 3
    assert slept == [0.5, 0.5]
    assert all(r.top_hotspots == 4 and r.hotspot_window_minutes == 15 for r in calls)
    assert "\x1b[" not in text, "no escape codes into a pipe"
