"""Plain-text rendering of the admin API's answers for the `status` and `deadletters` commands.

Pure functions of the response messages (and `now`, for "ago" columns): aligned columns, no
colours, no dependencies, so the output is the same in a terminal, a pipe or a test.
`to_plain` turns a response into JSON-ready data for `--json` (numbers stay numbers, unlike
protobuf's JSON mapping which writes 64-bit integers as strings; unset optional fields are null).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

from google.protobuf.message import Message

from sidecar.admin.v1 import admin_pb2 as pb

LEVEL_NAMES = {0: "normal", 1: "spill", 2: "reduce", 3: "essential", 4: "backpressure"}
MESSAGE_CHARS = 60


# ------------------------------------------------------------------ formatting helpers


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Rows under headers, columns padded to their widest cell (two spaces apart); `right`: column
    indexes aligned to the right (numbers). Trailing spaces are trimmed."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        minutes, secs = divmod(int(seconds), 60)
        return f"{minutes}m{secs:02d}s"
    hours, rest = divmod(int(seconds), 3600)
    if hours < 48:
        return f"{hours}h{rest // 60:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def rate(value: float) -> str:
    return f"{value:.1f}/min" if value < 100 else f"{value:.0f}/min"


def ago(then: float, now: float) -> str:
    return "-" if then <= 0 else f"{duration(max(0.0, now - then))} ago"


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def level_name(level: int) -> str:
    return f"{level} {LEVEL_NAMES.get(level, '?')}"


# ------------------------------------------------------------------ status


def render_status(status: pb.GetStatusResponse, now: float) -> str:
    """The `status` table; `now` is the wall-clock time the "ago" columns count from."""
    lines = [
        f"sidecar  {'ready' if status.ready else 'NOT READY'}, "
        f"{'accepting' if status.accepting else 'not accepting'}, up {duration(status.uptime_seconds)}",
        "",
    ]
    exporter_rows = []
    endpoint_rows = []
    for exporter in status.exporters:
        queue = exporter.queue
        if queue.enabled:
            fill = f"{queue.size}/{queue.capacity} {queue.sizer}"
            held = f"{queue.requests} req, {size(queue.bytes)}"
        else:
            fill, held = "synchronous", "-"
        level = level_name(exporter.degradation_level)
        if exporter.degradation_level and exporter.degradation_cause:
            level += f" ({exporter.degradation_cause})"
        dead = exporter.dead_letters
        lag = exporter.lag
        if queue.enabled:
            oldest = duration(lag.oldest_age_seconds) if lag.HasField("oldest_age_seconds") else "empty"
            full = duration(lag.time_to_full_seconds) if lag.HasField("time_to_full_seconds") else "not filling"
        else:
            oldest = full = "-"
        exporter_rows.append([
            exporter.name, fill, held, oldest, full, str(queue.in_flight) if queue.enabled else "-",
            queue.storage if queue.enabled else "-", level,
            f"{dead.count} ({size(dead.bytes)})" if dead.count else "0",
            "yes" if exporter.reachable else "NO",
        ])
        for ep in exporter.endpoints:
            state = ep.breaker_state if ep.breaker_state != "half_open" else "half-open"
            latency = duration(ep.ewma_latency_seconds) if ep.HasField("ewma_latency_seconds") else "-"
            endpoint_rows.append([
                exporter.name, ep.endpoint, f"{state} {duration(ep.breaker_seconds_in_state)}",
                str(ep.breaker_trips), str(ep.consecutive_failures), f"{ep.in_flight}/{ep.concurrency_limit}",
                f"{ep.retry_budget_tokens:.1f}", ep.health, latency,
            ])
    lines += table(["EXPORTER", "QUEUE", "HELD", "OLDEST", "TIME TO FULL", "IN FLIGHT", "STORAGE", "DEGRADATION",
                    "DEAD LETTERS", "REACHABLE"], exporter_rows, right={5})
    lines.append("")
    lines += table(["EXPORTER", "ENDPOINT", "BREAKER", "TRIPS", "FAILS", "CONCURRENCY", "RETRY TOKENS",
                    "HEALTH", "LATENCY"], endpoint_rows, right={3, 4, 5, 6})
    lines.append("")
    rates = "   ".join(f"{r.window_minutes}m {rate(r.per_minute)}" for r in status.error_rates)
    widest = max(status.error_rates, key=lambda r: r.window_minutes, default=None)
    if widest is not None:
        rates += (f"   (last {widest.window_minutes}m: {widest.export_errors} export errors, "
                  f"{widest.item_errors} error spans/logs)")
    lines.append(f"ERRORS     {rates}")
    worsening = [[exporter.name, w.category, w.error_type, f"{w.base_severity} -> {w.severity}",
                  f"{w.occurrences} in {duration(w.window_seconds)}"]
                 for exporter in status.exporters for w in exporter.worsening]
    if worsening:
        lines.append("")
        lines.append("WORSENING (export errors recurring enough to be reported above their own severity)")
        lines += table(["EXPORTER", "CATEGORY", "ERROR TYPE", "SEVERITY", "RECENT"], worsening)
    lines.append(f"RECOVERY   {_recovery_text(status.recovery)}")
    lines.append(f"ANOMALIES  {_anomaly_text(status.anomalies)}")
    lines.append("")
    window = f"(last {status.hotspot_window_minutes or 5}m)"
    if status.hotspots:
        lines.append(f"TOP ERROR HOTSPOTS {window}")
        rows = [[str(h.count), h.service, h.name, h.signal, h.category, h.error_type, ago(h.last_seen, now)]
                for h in status.hotspots]
        lines += table(["COUNT", "SERVICE", "NAME", "SIGNAL", "CATEGORY", "ERROR TYPE", "LAST SEEN"], rows,
                       right={0})
        if status.hotspot_keys_evicted:
            lines.append(f"({status.hotspot_keys_evicted} rare hotspot keys forgotten to bound memory)")
    else:
        lines.append(f"TOP ERROR HOTSPOTS {window}  none (no error spans or error log records)")
    return "\n".join(lines) + "\n"


def _anomaly_text(anomalies: Sequence[pb.Anomaly]) -> str:
    """Active anomalies, then elevated scores (>= 1); "none" when every rate is usual."""
    shown = [a for a in anomalies if a.active or a.score >= 1.0]
    if not shown:
        return "none"
    return ", ".join(f"{anomaly_subject(a)} {a.score:.1f}" + (" ANOMALY" if a.active else "")
                     + f" ({rate(a.errors_per_minute)}, usually {rate(a.baseline_per_minute)})" for a in shown)


def anomaly_subject(anomaly: pb.Anomaly) -> str:
    """What an anomaly is about: its category, or `service NAME`."""
    return f"service {anomaly.service}" if anomaly.service else anomaly.category


def _recovery_text(recovery: pb.RecoveryStats) -> str:
    if not recovery.outages:
        return "no outages"
    text = f"{recovery.outages} outage{'s' if recovery.outages != 1 else ''}: {recovery.recovered} recovered"
    if recovery.HasField("success_rate"):
        text += f" ({recovery.success_rate:.0%})"
    text += f", {recovery.ongoing} ongoing"
    if recovery.HasField("mean_recovery_seconds"):
        text += f"; mean recovery {duration(recovery.mean_recovery_seconds)}"
    if recovery.HasField("max_recovery_seconds"):
        text += f", max {duration(recovery.max_recovery_seconds)}"
    return text


# ------------------------------------------------------------------ dead letters and actions


def render_dead_letters(response: pb.ListDeadLettersResponse, now: float, offset: int = 0) -> str:
    if not response.dead_letters:
        return f"no dead letters shown ({response.total} held)\n"
    rows = [[dl.exporter, str(dl.id), dl.signal, str(dl.items), rejected_text(dl), size(dl.bytes), dl.category,
             dl.recoverability, dl.error_type, ago(dl.dead_at, now), clip(dl.message)]
            for dl in response.dead_letters]
    lines = table(["EXPORTER", "ID", "SIGNAL", "ITEMS", "REJECTED", "SIZE", "CATEGORY", "RECOVERABILITY",
                   "ERROR TYPE", "DEAD", "MESSAGE"], rows, right={1, 3, 5})
    first = offset + 1
    lines.append(f"({first}-{offset + len(response.dead_letters)} of {response.total})")
    if any(dl.partial_success for dl in response.dead_letters):
        lines.append("partial: a partial success; the upstream accepted the other items, so `replay` skips it "
                     "unless --include-partial")
    return "\n".join(lines) + "\n"


def rejected_text(dl: pb.DeadLetter) -> str:
    """How many of the dead letter's items were refused: all of a failed request, some of a partial success."""
    return f"{dl.rejected_items} (partial)" if dl.partial_success else "all"


def render_replay(response: pb.ReplayDeadLettersResponse) -> str:
    text = (f"replayed {response.replayed} dead letter{'s' if response.replayed != 1 else ''} "
            f"({response.replayed_items} items); {response.remaining} not replayed")
    if response.missing_ids:
        text += f"; not found: {', '.join(str(i) for i in response.missing_ids)}"
    if response.skipped_partial:
        text += (f"\nskipped {response.skipped_partial} partial success{'es' if response.skipped_partial != 1 else ''}"
                 f" ({response.skipped_partial_items} rejected items): {response.skipped_reason} "
                 f"(--include-partial)")
    return text + "\n"


def render_reset(response: pb.ResetBreakerResponse) -> str:
    if not response.reset:
        return "no circuit breaker to reset\n"
    rows = [[r.exporter, r.endpoint, r.previous_state, "closed"] for r in response.reset]
    return "\n".join(table(["EXPORTER", "ENDPOINT", "WAS", "NOW"], rows)) + "\n"


def render_drain(response: pb.DrainResponse) -> str:
    head = ("drained" if response.drained else "NOT drained") + f" after {duration(response.waited_seconds)}"
    rows = [[r.exporter, str(r.requests), str(r.size), size(r.bytes)] for r in response.remaining]
    return "\n".join([head, *table(["EXPORTER", "REQUESTS LEFT", "SIZE LEFT", "BYTES LEFT"], rows,
                                   right={1, 2})]) + "\n"


# ------------------------------------------------------------------ JSON


def to_plain(message: Message) -> dict[str, Any]:
    """A response as JSON-ready data: field names as in the proto, integers as numbers,
    unset optional scalars as None, every other field present (defaults included)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.name] = [to_plain(v) if field.message_type is not None else v for v in value]
        elif field.message_type is not None:
            out[field.name] = to_plain(value)
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = value
    return out
