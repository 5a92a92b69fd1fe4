"""Soak: the sidecar under steady SDK load while the fake Collector misbehaves at random, for a long time.

    real SDK apps (OTLP/gRPC and OTLP/HTTP span exporters)
        -> sidecar (its own process; one traces pipeline fanning out to an otlp_grpc and an otlp_http exporter)
        -> fake Collector: random outages, throttling with RetryInfo / Retry-After, slow answers,
           partial success, connection resets, UNAVAILABLE bursts

At the end the faults stop, the applications flush, and the sidecar drains. Then:

* every span an SDK exporter got SUCCESS for (acknowledged by the sidecar) reached the Collector through
  *both* exporters (partial-success-rejected items are counted: the Collector reported them rejected, the
  sidecar counted them as dropped with reason `upstream_rejected`, and neither retried them);
* the sidecar's RSS, open file descriptors (/proc/PID/fd) and threads (/proc/PID/task) stayed flat: first
  (after warm-up), last (after draining) and max are reported;
* nothing is left in flight (admin API `GetStatus`: queue and endpoint in-flight counts back to 0);
* the log has no traceback and SIGTERM exits 0.

Run: `make soak` (SOAK_SECONDS, default 600) or `python -m bench.soak --seconds 180 --results bench/RESULTS.md`.
Exit code 0 only when nothing acknowledged was lost and nothing leaked.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.fakes.collector import FakeCollector
from tests.sdk_app import quiet_sdk_logs
from tests.sidecar_process import SidecarPorts, SidecarProcess, base_config, free_port

# ---------------------------------------------------------------------------------- the applications


class RecordingExporter(SpanExporter):
    """Wraps a real SDK exporter and remembers which spans the sidecar acknowledged."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.acked: set[bytes] = set()
        self.refused = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        with self.lock:
            if result is SpanExportResult.SUCCESS:
                self.acked.update(s.context.span_id.to_bytes(8, "big") for s in spans if s.context)
            else:
                self.refused += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class App:
    """One instrumented application: spans at a steady rate, 10% of them errors."""

    def __init__(self, protocol: str, endpoint: str, rate: float) -> None:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            inner: SpanExporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            inner = HttpSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=10)
        self.protocol = protocol
        self.exporter = RecordingExporter(inner)
        self.provider = TracerProvider(resource=Resource.create({"service.name": f"soak-{protocol}"}))
        self.provider.add_span_processor(BatchSpanProcessor(
            self.exporter, max_queue_size=50_000, max_export_batch_size=256, schedule_delay_millis=200))
        self.tracer = self.provider.get_tracer("soak")
        self.rate = rate
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"soak-app-{protocol}", daemon=True)

    def _run(self) -> None:
        tick = 0.1
        per_tick = max(1, round(self.rate * tick))
        next_at = time.monotonic()
        while not self.stop.is_set():
            for i in range(per_tick):
                with self.tracer.start_as_current_span(f"GET /item/{i % 5}", kind=SpanKind.SERVER,
                                                       record_exception=False) as span:
                    span.set_attribute("soak.index", self.sent)
                    if self.sent % 10 == 9:
                        span.set_status(Status(StatusCode.ERROR, "inventory unavailable"))
                        span.set_attribute("http.response.status_code", 503)
                    else:
                        span.set_attribute("http.response.status_code", 200)
                self.sent += 1
            next_at += tick
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.provider.force_flush(120_000)
        self.provider.shutdown()


# ---------------------------------------------------------------------------------- the faults


@dataclass
class FaultLog:
    counts: Counter[str] = field(default_factory=Counter)
    down_seconds: float = 0.0
    partial_rejected_requested: int = 0


def run_faults(upstream: FakeCollector, stop: threading.Event, rng: random.Random, log: FaultLog) -> None:
    """A random fault every few seconds until `stop`."""
    while not stop.wait(rng.uniform(2.0, 8.0)):
        kind = rng.choice(["outage", "throttle", "slow", "partial", "reset", "unavailable"])
        log.counts[kind] += 1
        if kind == "outage":
            seconds = rng.uniform(2.0, 12.0)
            upstream.go_down()
            stop.wait(seconds)
            upstream.come_up()
            log.down_seconds += seconds
        elif kind == "throttle":
            upstream.fail_next(rng.randint(5, 30), grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, http_status=429,
                               retry_after_s=rng.uniform(0.2, 2.0), message="throttled by soak")
        elif kind == "slow":
            upstream.set_delay(rng.uniform(0.3, 3.0))
            stop.wait(rng.uniform(3.0, 10.0))
            upstream.set_delay(0)
        elif kind == "partial":
            n, rejected = rng.randint(1, 10), rng.randint(1, 5)
            upstream.partial_success_next(n, rejected, "soak rejected some")
            log.partial_rejected_requested += n * rejected
        elif kind == "reset":
            upstream.reset_next(rng.randint(1, 10))
        else:
            upstream.fail_next(rng.randint(5, 50), message="unavailable by soak")
    upstream.clear_faults()
    if not upstream.is_up:
        upstream.come_up()


class Delivered:
    """Span ids the fake Collector accepted, per protocol (read incrementally: the record list only grows)."""

    def __init__(self, upstream: FakeCollector) -> None:
        self.upstream = upstream
        self.seen = 0
        self.spans: dict[str, set[bytes]] = {"grpc": set(), "http": set()}

    def update(self) -> None:
        records = self.upstream.received()
        for record in records[self.seen:]:
            if record.accepted and record.signal == "traces":
                self.spans[record.protocol].update(
                    s.span_id for rs in record.message.resource_spans  # type: ignore[attr-defined]
                    for ss in rs.scope_spans for s in ss.spans)
        self.seen = len(records)


# ---------------------------------------------------------------------------------- process figures


@dataclass
class Sample:
    at: float
    rss_mib: float
    fds: int
    threads: int
    queued: float


def sample(sidecar: SidecarProcess, started: float) -> Sample | None:
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        queued = sidecar.metric_value("sidecar_exporter_queue_size")
    except (OSError, AttributeError, ValueError):
        return None
    return Sample(time.monotonic() - started, rss_kib / 1024, fds, threads, queued)


def admin_in_flight(port: int) -> dict[str, int] | None:
    """Requests and calls still in flight per the admin API (None when it is not available)."""
    try:
        from sidecar.admin.v1 import admin_pb2, admin_pb2_grpc
    except ImportError:
        return None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError:
            return None
    out: dict[str, int] = {}
    for exporter in status.exporters:
        out[f"{exporter.name} queue in_flight"] = exporter.queue.in_flight
        out[f"{exporter.name} queue requests"] = exporter.queue.requests
        for endpoint in exporter.endpoints:
            out[f"{exporter.name} endpoint in_flight"] = out.get(f"{exporter.name} endpoint in_flight", 0) + \
                endpoint.in_flight + endpoint.outstanding
    return out


# ---------------------------------------------------------------------------------- the run


REJECTED = "partial-success rejected (sidecar_dropped_items_total{reason=upstream_rejected})"


@dataclass
class Outcome:
    ok: bool
    markdown: str


def soak(seconds: float, rate: float, seed: int) -> Outcome:
    rng = random.Random(seed)
    quiet_sdk_logs()
    started_wall = datetime.datetime.now(datetime.UTC)
    with FakeCollector() as upstream, tempfile.TemporaryDirectory(prefix="sidecar-soak-") as tmp:
        ports = SidecarPorts()
        admin_port = free_port()
        fast_retry = {"initial_interval": "200ms", "max_interval": "2s", "max_elapsed_time": "0s"}
        config = base_config(upstream.grpc_endpoint, ports, retry_on_failure=fast_retry,
                             sending_queue={"queue_size": 5000, "num_consumers": 8})
        grpc_exporter = config["exporters"]["otlp_grpc"]
        config["exporters"]["otlp_http"] = {**copy.deepcopy(grpc_exporter), "endpoint": upstream.http_endpoint}
        config["service"]["pipelines"]["traces"]["exporters"] = ["otlp_grpc", "otlp_http"]
        config["extensions"]["admin"] = {"endpoint": f"127.0.0.1:{admin_port}"}
        config["service"]["extensions"].append("admin")
        sidecar = SidecarProcess(config, Path(tmp), ports).start(wait_ready=True)
        tracker = Delivered(upstream)
        started = time.monotonic()
        samples: list[Sample] = []
        apps = [App("grpc", sidecar.grpc_endpoint, rate / 2), App("http", sidecar.http_endpoint, rate / 2)]
        for app in apps:
            app.thread.start()
        stop_faults = threading.Event()
        faults = FaultLog()
        fault_thread = threading.Thread(target=run_faults, args=(upstream, stop_faults, rng, faults),
                                        name="soak-faults", daemon=True)
        fault_thread.start()
        try:
            next_report = 0.0
            while time.monotonic() - started < seconds:
                point = sample(sidecar, started)
                if point is not None:
                    samples.append(point)
                    if point.at >= next_report:
                        acked_now = sum(len(a.exporter.acked) for a in apps)
                        print(f"[{point.at:6.0f}s] rss {point.rss_mib:6.1f} MiB  fds {point.fds:4d}  "
                              f"threads {point.threads:3d}  queued {point.queued:5.0f}  acked spans {acked_now:8d}  "
                              f"faults {dict(faults.counts)}", flush=True)
                        next_report = point.at + 30
                tracker.update()
                if sidecar.proc is not None and sidecar.proc.poll() is not None:
                    raise RuntimeError(f"the sidecar died:\n{sidecar.logs()[-4000:]}")
                time.sleep(5)
            load_seconds = time.monotonic() - started
            stop_faults.set()
            fault_thread.join()
            for app in apps:
                app.finish()
            acked: set[bytes] = set().union(*(a.exporter.acked for a in apps))
            drain_started = time.monotonic()
            while time.monotonic() - drain_started < 300:
                tracker.update()
                if acked <= tracker.spans["grpc"] and acked <= tracker.spans["http"]:
                    break
                time.sleep(0.5)
            drain_seconds = time.monotonic() - drain_started
            time.sleep(5)  # let the sidecar settle before the last figures
            last = sample(sidecar, started)
            if last is not None:
                samples.append(last)
            in_flight = admin_in_flight(admin_port)
            metrics = {
                REJECTED: sidecar.metric_value("sidecar_dropped_items_total", reason="upstream_rejected"),
                "items dropped, all reasons (sidecar_dropped_items_total)":
                    sidecar.metric_value("sidecar_dropped_items_total"),
                "export retries": sidecar.metric_value("sidecar_exporter_retries_total"),
                "breaker transitions to open": sidecar.metric_value("sidecar_breaker_transitions_total",
                                                                    to_state="open"),
                "dead letters": sidecar.metric_value("sidecar_dead_letters_total"),
            }
            failures = Counter[str]()
            for line in sidecar.metrics_text().splitlines():
                if line.startswith("sidecar_exporter_send_failed_spans_total{"):
                    error_type = re.search(r'error_type="([^"]*)"', line)
                    failures[error_type.group(1) if error_type else "?"] += int(float(line.rsplit(" ", 1)[1]))
            rejected_upstream = sum(r.rejected for r in upstream.accepted("traces"))
            tracker.update()
        finally:
            stop_faults.set()
            for app in apps:
                app.stop.set()
            code = sidecar.stop(timeout=60)
            logs = sidecar.logs()
        missing = {p: len(acked - tracker.spans[p]) for p in ("grpc", "http")}
        sent = sum(a.sent for a in apps)
        refused = sum(a.exporter.refused for a in apps)
        leaks = leak_findings(samples, in_flight)
        traceback = "Traceback" in logs
        ok = not any(missing.values()) and not leaks and not traceback and code == 0
        markdown = render(started_wall, seconds=seconds, load_seconds=load_seconds, rate=rate, seed=seed,
                          sent=sent, acked=len(acked), refused=refused, missing=missing,
                          drain_seconds=drain_seconds, faults=faults, failures=failures, metrics=metrics,
                          rejected_upstream=rejected_upstream, samples=samples, in_flight=in_flight,
                          leaks=leaks, traceback=traceback, exit_code=code, ok=ok)
        return Outcome(ok, markdown)


def leak_findings(samples: list[Sample], in_flight: dict[str, int] | None) -> list[str]:
    findings = []
    warm = [s for s in samples if s.at >= 30] or samples
    if len(warm) >= 2:
        first, last = warm[0], warm[-1]
        if last.fds > first.fds + 20:
            findings.append(f"open fds grew from {first.fds} to {last.fds}")
        if last.threads > first.threads + 4:
            findings.append(f"threads grew from {first.threads} to {last.threads}")
        if last.rss_mib > 2 * first.rss_mib + 50:
            findings.append(f"RSS grew from {first.rss_mib:.0f} to {last.rss_mib:.0f} MiB")
    for key, value in (in_flight or {}).items():
        if value:
            findings.append(f"{key} = {value} after draining")
    return findings


def _figures(values: list[float], unit: str = "") -> str:
    if not values:
        return "n/a"
    suffix = f" {unit}" if unit else ""
    return ", ".join(f"{label} {value:.0f}{suffix}" for label, value in (
        ("first", values[0]), ("last", values[-1]), ("max", max(values)), ("median", statistics.median(values))))


def render(started: datetime.datetime, *, seconds: float, load_seconds: float, rate: float, seed: int,
           sent: int, acked: int, refused: int, missing: dict[str, int], drain_seconds: float, faults: FaultLog,
           failures: Counter[str],
           metrics: dict[str, float], rejected_upstream: int, samples: list[Sample],
           in_flight: dict[str, int] | None, leaks: list[str], traceback: bool, exit_code: int, ok: bool) -> str:
    warm = [s for s in samples if s.at >= 30] or samples
    lines = [
        f"Run {started:%Y-%m-%d %H:%M} UTC: {load_seconds / 60:.1f} min of load at {rate:.0f} spans/s "
        f"(half OTLP/gRPC, half OTLP/HTTP, real SDK exporters), seed {seed}; one traces pipeline fanning out "
        "to an `otlp_grpc` and an `otlp_http` exporter (memory queues, `max_elapsed_time: 0`); "
        f"`python -m bench.soak --seconds {seconds:.0f}`. **Result: {'PASS' if ok else 'FAIL'}.**",
        "",
        "| | |",
        "|---|---|",
        f"| spans created by the apps | {sent} |",
        f"| acknowledged by the sidecar (SDK export SUCCESS) | {acked} |",
        f"| not acknowledged (SDK export FAILURE after its own retries; never counted as sent) | {refused} |",
        f"| acknowledged but missing upstream via otlp_grpc / otlp_http | {missing['grpc']} / {missing['http']} |",
        f"| partial-success items rejected by the Collector (counted, not retried) | {rejected_upstream} "
        f"(sidecar `upstream_rejected`: {metrics[REJECTED]:.0f}; the Collector's figure also counts partial "
        "answers sent after the sidecar's 2 s timeout during a 'slow' fault, whose requests were retried) |",
        f"| drain after the faults stopped | {drain_seconds:.1f} s |",
        f"| faults injected | {', '.join(f'{k} {v}' for k, v in sorted(faults.counts.items()))}; "
        f"Collector down {faults.down_seconds:.0f} s in total |",
        f"| failed export attempts by error type (spans) | "
        f"{', '.join(f'{k} {v}' for k, v in failures.most_common()) or 'none'} |",
    ]
    for name, value in metrics.items():
        if name != REJECTED:
            lines.append(f"| {name} | {value:.0f} |")
    lines += [
        f"| sidecar RSS (after 30 s warm-up) | {_figures([s.rss_mib for s in warm], 'MiB')} |",
        f"| open file descriptors | {_figures([float(s.fds) for s in warm])} |",
        f"| threads | {_figures([float(s.threads) for s in warm])} |",
        f"| queued requests (both exporters) | max {max((s.queued for s in samples), default=0):.0f}, "
        f"last {samples[-1].queued if samples else 0:.0f} |",
        f"| in flight after draining (admin API) | "
        f"{', '.join(f'{k} {v}' for k, v in in_flight.items()) if in_flight is not None else 'admin API n/a'} |",
        f"| traceback in the sidecar log | {'yes' if traceback else 'no'} |",
        f"| exit code on SIGTERM | {exit_code} |",
    ]
    if leaks:
        lines += ["", "Leak findings: " + "; ".join(leaks)]
    return "\n".join(lines) + "\n"


def write_results(path: Path, markdown: str, title: str = "Soak") -> None:
    """Replace the '## <title>' section of RESULTS.md (or append it); other sections are left as they are
    (bench/run.py keeps sections it did not write, e.g. this one and bench/fleet_ha.py's)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n" + markdown
    match = re.search(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match:
        text = text[: match.start()] + section + ("\n" if match.end() < len(text) else "") + text[match.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "400")),
                        help="spans per second, split over the two applications")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "9")))
    parser.add_argument("--results", type=Path, help="write the report into this RESULTS.md under '## Soak'")
    args = parser.parse_args(argv)
    outcome = soak(args.seconds, args.rate, args.seed)
    print()
    print(outcome.markdown)
    if args.results is not None:
        with contextlib.suppress(OSError):
            write_results(args.results, outcome.markdown)
            print(f"written to {args.results} under '## Soak'")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
