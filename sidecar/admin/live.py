"""`status --watch`: a live terminal view of the admin API's status, drawn with rich.

For people who would rather look than read JSON: per exporter the queue depth with a sparkline of
the last ten minutes, the oldest entry's age, the time to full, the breakers and the degradation
level; the error rate with a sparkline of the last fifteen minutes; the error-rate anomalies; the
top error hotspots of the last minutes. `render_live` is a pure function of a `GetStatusResponse`
(and `now`, for the "ago" columns), so a test renders it through rich's console capture; the
client redraws it in place (`rich.live.Live`) on a terminal and prints it once per refresh
otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sidecar.admin.status import ago, anomaly_subject, duration, level_name, rate
from sidecar.admin.v1 import admin_pb2 as pb

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 30
TIME_TO_FULL_WARNING = 600.0  # the alert's threshold (collector-config/alerts.yml): under it, shown in red
OLDEST_WARNING = 300.0
BREAKER_STYLES = {"closed": "green", "half_open": "yellow", "open": "bold red"}
LEVEL_STYLES = {0: "green", 1: "yellow", 2: "yellow", 3: "red", 4: "bold red"}


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH, ceiling: float | None = None) -> str:
    """The last `width` values as block characters, scaled to `ceiling` (default: their maximum)."""
    shown = [v if math.isfinite(v) and v > 0 else 0.0 for v in list(values)[-width:]]
    if not shown:
        return ""
    top = ceiling if ceiling is not None and ceiling > 0 else max(shown)
    if top <= 0:
        return SPARK[0] * len(shown)
    last = len(SPARK) - 1
    return "".join(SPARK[min(last, max(0, math.ceil(v / top * last)))] for v in shown)


def _lag_cells(exporter: pb.ExporterStatus) -> tuple[Text, Text, Text]:
    if not exporter.queue.enabled:
        return Text("synchronous", style="dim"), Text("-"), Text("-")
    lag = exporter.lag
    spark = sparkline(lag.size_history, ceiling=float(exporter.queue.capacity) or None)
    if lag.HasField("oldest_age_seconds"):
        age = lag.oldest_age_seconds
        oldest = Text(duration(age), style="red" if age >= OLDEST_WARNING else "")
    else:
        oldest = Text("empty", style="dim")
    if lag.HasField("time_to_full_seconds"):
        ttf = lag.time_to_full_seconds
        full = Text(duration(ttf) if ttf > 0 else "FULL", style="bold red" if ttf < TIME_TO_FULL_WARNING else "yellow")
    else:
        full = Text("not filling", style="green")
    return Text(spark, style="cyan"), oldest, full


def _breakers(exporter: pb.ExporterStatus) -> Text:
    text = Text()
    for i, ep in enumerate(exporter.endpoints):
        if i:
            text.append("  ")
        text.append(f"{ep.endpoint} ")
        state = ep.breaker_state
        text.append(state.replace("_", "-"), style=BREAKER_STYLES.get(state, ""))
    return text


def _exporters(status: pb.GetStatusResponse) -> Table:
    table = Table(title="Exporters", title_justify="left", expand=False, pad_edge=False)
    for column in ("EXPORTER", "QUEUE", "LAST 10 MIN", "OLDEST", "TIME TO FULL", "BREAKERS", "DEGRADATION"):
        table.add_column(column, no_wrap=True, justify="right" if column == "QUEUE" else "left")
    for exporter in status.exporters:
        queue = exporter.queue
        fill = f"{queue.size}/{queue.capacity}" if queue.enabled else "-"
        spark, oldest, full = _lag_cells(exporter)
        level = Text(level_name(exporter.degradation_level), style=LEVEL_STYLES.get(exporter.degradation_level, ""))
        if exporter.degradation_level and exporter.degradation_cause:
            level.append(f" ({exporter.degradation_cause})")
        table.add_row(exporter.name, fill, spark, oldest, full, _breakers(exporter), level)
    return table


def _errors(status: pb.GetStatusResponse) -> Text:
    text = Text("Errors  ", style="bold")
    text.append("   ".join(f"{r.window_minutes}m {rate(r.per_minute)}" for r in status.error_rates))
    if status.error_rate_history:
        text.append("   last 15 min ")
        text.append(sparkline(status.error_rate_history), style="magenta")
    return text


def _anomalies(status: pb.GetStatusResponse, now: float) -> RenderableType:
    shown = [a for a in status.anomalies if a.active or a.score >= 1.0]
    if not shown:
        return Text("Anomalies  none (every error rate is within its usual range)", style="green")
    table = Table(title="Anomalies", title_justify="left", pad_edge=False)
    for column in ("ERRORS OF", "SCORE", "NOW", "USUAL", "STATE"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("SCORE", "NOW", "USUAL") else "left")
    for anomaly in shown:
        state = Text("ANOMALY", style="bold red") if anomaly.active else Text("elevated", style="yellow")
        if anomaly.active and anomaly.HasField("since"):
            state.append(f" for {duration(max(0.0, now - anomaly.since))}")
        table.add_row(anomaly_subject(anomaly), f"{anomaly.score:.1f}", rate(anomaly.errors_per_minute),
                      rate(anomaly.baseline_per_minute), state)
    return table


def _hotspots(status: pb.GetStatusResponse, now: float) -> RenderableType:
    window = status.hotspot_window_minutes or 5
    if not status.hotspots:
        return Text(f"Top error hotspots (last {window} min)  none", style="green")
    table = Table(title=f"Top error hotspots (last {window} min)", title_justify="left", pad_edge=False)
    for column in ("COUNT", "SERVICE", "NAME", "CATEGORY", "ERROR TYPE", "LAST SEEN"):
        table.add_column(column, no_wrap=True, justify="right" if column == "COUNT" else "left")
    for h in status.hotspots:
        table.add_row(str(h.count), h.service, h.name, h.category, h.error_type, ago(h.last_seen, now))
    return table


def render_live(status: pb.GetStatusResponse, now: float) -> RenderableType:
    header = Text(f"sidecar  {'ready' if status.ready else 'NOT READY'}, "
                  f"{'accepting' if status.accepting else 'not accepting'}, up {duration(status.uptime_seconds)}",
                  style="bold" if status.ready else "bold red")
    return Group(header, Text(""), _exporters(status), Text(""), _errors(status), Text(""), _anomalies(status, now),
                 Text(""), _hotspots(status, now))
