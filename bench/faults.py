"""Faults beyond a clean outage (issue 16), measured: the "Faults" section of bench/RESULTS.md.

    python -m bench.faults [--quick] [--backlog-seconds S] [--results bench/RESULTS.md]

Each row is one fault injected into a real sidecar process (`python -m sidecar`) fed by the real
OpenTelemetry Python SDK (a BatchSpanProcessor whose exporter records which spans it was told
were delivered: "acknowledged") or, for the backlog, by 512-span Export calls. Delivered is what
the fake Collector (tests/fakes/collector.py) accepted; lost is acknowledged minus delivered, and
the sidecar's own `sidecar_dropped_items_total` by reason is shown next to it. Time to recover:
from the end of the fault to the arrival of the last acknowledged span. Peak RSS of the sidecar
is sampled every 0.25 s.

1. disk full      `file_storage` on a 1 MiB tmpfs (needs root), Collector down 15 s, 6,000 spans at
                  400 spans/s (the issue's own setup: before this work 4,976 of them were lost at
                  the application), then another writer takes the last free bytes and is removed.
2. black hole     the Collector accepts the HTTP/2 streams and never answers, for 15 s.
3. slow upstream  every answer takes 3 s (not failing), for 15 s.
4. WAL cut        the queue's WAL is truncated under the running sidecar (Collector down, then back).
5. SIGSTOP        the sidecar is frozen for 10 s while the application sends.
6. long backlog   disk queue, Collector down for `--backlog-seconds` (60 s by default; the issue's
                  5 minutes with --backlog-seconds 300) at 2,000 spans/s in 512-span requests:
                  RSS over time, drain rate and time to drain after recovery, order, duplicates.
7. partial success  the Collector answers 40 trace requests with partial success (5 spans rejected
                  each) while the SDK sends 6,000 spans at 400 spans/s: the rejected spans are lost by
                  the Collector's choice (counted `upstream_rejected`), each such request is one dead
                  letter, and none is sent twice.
8. memory full    disk full (1 MiB tmpfs, needs root) AND the queue's memory fallback full
                  (`memory_limit_mib` 256: the fallback holds 128 MiB), Collector down: ~260 KB
                  requests until clients are pushed back, then the disk gets room and the Collector
                  comes back.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.run import ROOT, log, rss_mib, table
from sidecar.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.fakes.collector import FakeCollector
from tests.sdk_app import RecordedTraffic, quiet_sdk_logs
from tests.sidecar_process import SidecarPorts, SidecarProcess, base_config, free_port

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
EXPORTER = "otlp_grpc"
RATE = 400  # spans/s of the SDK application
FAULT_SECONDS = 15.0
LOSS_REASONS = ("queue_full", "memory_limit", "corrupt", "shutdown", "upstream_rejected", "dead_letter_evicted")


# ---------------------------------------------------------------- measuring


class RssSampler(threading.Thread):
    """Peak (and a timeline of) the sidecar's RSS, every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((time.monotonic() - self.t0, rss_mib(self.pid)))
            self._stop_event.wait(self.interval)

    @property
    def peak(self) -> float:
        return max((mib for _, mib in self.samples), default=float("nan"))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


@dataclass
class Row:
    fault: str
    sent: int
    acknowledged: int
    delivered: int
    drops: dict[str, float]
    recover_seconds: float
    peak_rss_mib: float
    note: str = ""

    @classmethod
    def not_run(cls, fault: str, why: str) -> Row:
        return cls(fault, 0, 0, 0, {}, float("nan"), float("nan"), f"not run: {why}")

    @property
    def lost(self) -> int:
        return self.acknowledged - self.delivered

    def cells(self) -> list[Any]:
        drops = ", ".join(f"{reason} {int(n)}" for reason, n in self.drops.items() if n) or "none"
        return [self.fault, self.sent, self.acknowledged, self.delivered, f"{self.lost} (sidecar drops: {drops})",
                f"{self.recover_seconds:.1f}", f"{self.peak_rss_mib:.0f}", self.note]


def drops(sidecar: SidecarProcess) -> dict[str, float]:
    with contextlib.suppress(OSError):
        return {reason: sidecar.metric_value("sidecar_dropped_items_total", reason=reason)
                for reason in LOSS_REASONS}
    return {}


def wait_arrived(upstream: FakeCollector, expected: set[bytes], timeout: float) -> float:
    """Seconds until every expected span arrived (or `timeout`)."""
    started = time.monotonic()
    upstream.wait_for(lambda f: expected <= f.span_ids(), timeout=timeout)
    return time.monotonic() - started


def send_at_rate(app: RecordedTraffic, count: int, rate: int) -> None:
    per_tick = max(1, rate // 10)
    sent = 0
    while sent < count:
        tick = time.monotonic()
        n = min(per_tick, count - sent)
        app.send(n, padding=100)
        sent += n
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))


@contextlib.contextmanager
def sidecar_process(upstream: FakeCollector, workdir: Path, name: str, storage: Path | None = None,
                    edit: Callable[[dict[str, Any]], None] | None = None,
                    **overrides: Any) -> Iterator[tuple[SidecarProcess, RssSampler]]:
    ports = SidecarPorts()
    config = base_config(upstream.grpc_endpoint, ports, storage_dir=storage,
                         **{"sending_queue": {"num_consumers": 4, "queue_size": 100_000}, **overrides})
    config["service"]["telemetry"]["logs"]["level"] = "warn"
    if edit is not None:
        edit(config)
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    sidecar = SidecarProcess(config, directory, ports).start(timeout=30.0)
    assert sidecar.proc is not None
    sampler = RssSampler(sidecar.proc.pid)
    sampler.start()
    try:
        yield sidecar, sampler
    finally:
        sampler.stop()
        with contextlib.suppress(Exception):
            sidecar.stop()
        sidecar.kill()


@contextlib.contextmanager
def sdk_traffic(sidecar: SidecarProcess, name: str) -> Iterator[RecordedTraffic]:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sidecar.grpc_endpoint
    os.environ["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    os.environ["OTEL_EXPORTER_OTLP_TIMEOUT"] = "30"
    app = RecordedTraffic(name)
    try:
        yield app
    finally:
        app.shutdown()


def sdk_row(fault: str, upstream: FakeCollector, sidecar: SidecarProcess, sampler: RssSampler,
            app: RecordedTraffic, recovered_from: float, note: str, exclude: set[bytes] | None = None) -> Row:
    app.flush(60_000)
    acknowledged = app.recorder.acknowledged - (exclude or set())
    wait_arrived(upstream, acknowledged, timeout=120.0)
    arrived = upstream.span_ids()
    last = max((r.received_at for r in upstream.accepted("traces")
                if {s.span_id for rs in r.message.resource_spans for ss in rs.scope_spans for s in ss.spans}
                & acknowledged), default=recovered_from)
    return Row(fault, app.sent, len(acknowledged), len(acknowledged & arrived), drops(sidecar),
               max(0.0, last - recovered_from), sampler.peak, note)


# ---------------------------------------------------------------- the faults


@contextlib.contextmanager
def tmpfs(volume: Path, size: str = "1m") -> Iterator[str]:
    """A `size` tmpfs at `volume` (needs root): yields "" once mounted, else why it could not be."""
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(volume)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        yield f"cannot mount a tmpfs ({mounted.stderr.strip()})"
        return
    try:
        yield ""
    finally:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True, check=False)


def fault_disk_full(workdir: Path) -> Row:
    volume = workdir / "small"
    with tmpfs(volume) as cannot_mount:
        if cannot_mount:
            return Row.not_run("disk full (1 MiB volume)", cannot_mount)

        def on_volume(config: dict[str, Any]) -> None:
            config["extensions"]["file_storage"]["directory"] = str(volume)

        with FakeCollector() as upstream, \
                sidecar_process(upstream, workdir, "disk-full", storage=workdir / "unused", edit=on_volume) as (
                    sidecar, sampler), sdk_traffic(sidecar, "disk-full") as app:
            upstream.go_down()
            send_at_rate(app, int(RATE * FAULT_SECONDS), RATE)
            app.flush(60_000)
            filler = volume / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.close(fd)
            upstream.come_up()
            recovered_from = time.monotonic()
            filler.unlink()
            errors = sidecar.metric_value("sidecar_exporter_queue_storage_errors_total", reason="disk_full")
            row = sdk_row("disk full (1 MiB volume), Collector down 15 s", upstream, sidecar, sampler, app,
                          recovered_from, f"the disk filled ({int(errors)} disk_full errors; after the first, "
                          "the disk is probed once a second): accepted into memory meanwhile, then another "
                          "writer took the last bytes until the Collector was back")
            return row


def fault_black_hole(workdir: Path) -> Row:
    with FakeCollector() as upstream, sidecar_process(
            upstream, workdir, "black-hole", timeout="2s", concurrency={"max": 4},
            circuit_breaker={"recovery_timeout": "1s", "max_recovery_timeout": "2s"}) as (sidecar, sampler), \
            sdk_traffic(sidecar, "black-hole") as app:
        upstream.reset_concurrency()
        upstream.set_delay(3600)
        send_at_rate(app, int(RATE * FAULT_SECONDS), RATE)
        open_calls = upstream.max_concurrent_data_calls
        upstream.set_delay(0)
        recovered_from = time.monotonic()
        timeouts = sidecar.metric_value("sidecar_exporter_send_failed_spans_total", category="timeout")
        return sdk_row("black hole (HTTP/2 streams never answered) 15 s", upstream, sidecar, sampler, app,
                       recovered_from, f"at most {open_calls} calls open upstream (concurrency.max 4); "
                       f"{int(timeouts)} spans in timed-out attempts")


def fault_slow(workdir: Path) -> Row:
    with FakeCollector() as upstream, sidecar_process(upstream, workdir, "slow", timeout="10s") as (
            sidecar, sampler), sdk_traffic(sidecar, "slow") as app:
        upstream.set_delay(3.0)
        started = time.monotonic()
        send_at_rate(app, int(RATE * FAULT_SECONDS), RATE)
        app.flush(60_000)
        flushed_in = time.monotonic() - started
        upstream.set_delay(0)
        recovered_from = time.monotonic()
        return sdk_row("slow upstream (3 s an answer) 15 s", upstream, sidecar, sampler, app, recovered_from,
                       f"the application sent and flushed {int(RATE * FAULT_SECONDS)} spans in {flushed_in:.1f} s "
                       f"(acknowledged when queued)")


def fault_wal_cut(workdir: Path) -> Row:
    with FakeCollector() as upstream, sidecar_process(upstream, workdir, "wal-cut", storage=workdir / "wal-q") as (
            sidecar, sampler):
        upstream.go_down()
        client = RawClient(sidecar)
        try:
            for _ in range(150):
                client.export(20, padding=1000)
            wal = workdir / "wal-q" / f"{EXPORTER}.sqlite-wal"
            os.truncate(wal, wal.stat().st_size // 2)
            for _ in range(5):
                client.export(20, padding=1000)
            upstream.come_up()
            recovered_from = time.monotonic()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                    sidecar.metric_value("sidecar_exporter_queue_size", exporter=EXPORTER) > 0
                    or len(client.acknowledged - upstream.span_ids())
                    != sidecar.metric_value("sidecar_dropped_items_total", reason="corrupt")):
                time.sleep(0.25)
            recover = time.monotonic() - recovered_from
            arrived = upstream.span_ids()
            return Row("queue WAL cut to half while running (Collector down, then back)", client.sent,
                       len(client.acknowledged), len(client.acknowledged & arrived), drops(sidecar), recover,
                       sampler.peak, "file quarantined, readable rows carried over; the rest counted `corrupt`")
        finally:
            client.close()


def fault_sigstop(workdir: Path) -> Row:
    with FakeCollector() as upstream, sidecar_process(upstream, workdir, "sigstop", storage=workdir / "stop-q") as (
            sidecar, sampler), sdk_traffic(sidecar, "sigstop") as app:
        assert sidecar.proc is not None
        send_at_rate(app, RATE * 2, RATE)
        os.kill(sidecar.proc.pid, signal.SIGSTOP)
        try:
            send_at_rate(app, RATE * 10, RATE)  # 10 s frozen
        finally:
            os.kill(sidecar.proc.pid, signal.SIGCONT)
        recovered_from = time.monotonic()
        send_at_rate(app, RATE * 2, RATE)
        return sdk_row("SIGSTOP 10 s, then SIGCONT", upstream, sidecar, sampler, app, recovered_from,
                       "the SDK retried through the pause (export timeout 30 s)")


# ---------------------------------------------------------------- the long backlog


class RawClient:
    def __init__(self, sidecar: SidecarProcess) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.ports.grpc}",
                                             options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self._export = self.channel.unary_unary(
            TRACE_EXPORT, request_serializer=trace_service_pb2.ExportTraceServiceRequest.SerializeToString,
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        self.acknowledged: set[bytes] = set()
        self.refused: list[tuple[grpc.StatusCode, str]] = []  # push-backs: (code, details)
        self.acknowledged_bytes = 0
        self.order: list[int] = []  # request numbers acknowledged, in order
        self.sent = 0
        self._next = 0
        self._prefix = os.urandom(4)

    def export(self, spans: int, padding: int = 50) -> bool:
        number = self._next
        self._next += 1
        request = trace_service_pb2.ExportTraceServiceRequest()
        scope = request.resource_spans.add().scope_spans.add()
        ids = set()
        for k in range(spans):
            span_id = self._prefix + (number * 1024 + k).to_bytes(4, "big")
            span = scope.spans.add(trace_id=self._prefix * 4, span_id=span_id, name="backlog",
                                   start_time_unix_nano=1_700_000_000_000_000_000,
                                   end_time_unix_nano=1_700_000_000_100_000_000)
            span.attributes.add(key="app.padding").value.string_value = "b" * padding
            ids.add(span_id)
        self.sent += spans
        try:
            self._export(request, timeout=10, wait_for_ready=True)
        except grpc.RpcError as exc:
            call: Any = exc
            self.refused.append((call.code(), call.details() or ""))
            return False
        self.acknowledged |= ids
        self.acknowledged_bytes += request.ByteSize()
        self.order.append(number)
        return True

    def close(self) -> None:
        self.channel.close()


def request_number(span_id: bytes) -> int:
    return int.from_bytes(span_id[4:], "big") // 1024


def fault_long_backlog(workdir: Path, seconds: float) -> Row:
    spans_per_request, requests_per_second = 512, 4  # 2,048 spans/s
    with FakeCollector() as upstream, sidecar_process(upstream, workdir, "backlog", storage=workdir / "backlog-q",
                                                      sending_queue={"num_consumers": 4, "queue_size": 100_000}) as (
            sidecar, sampler):
        client = RawClient(sidecar)
        try:
            time.sleep(1.0)
            idle_rss = sampler.peak
            upstream.go_down()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                tick = time.monotonic()
                for _ in range(requests_per_second):
                    client.export(spans_per_request)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            backlog_rss = sampler.peak
            upstream.come_up()
            drain = wait_arrived(upstream, client.acknowledged, timeout=max(120.0, seconds * 2))
            accepted = upstream.accepted("traces")
            arrived = upstream.span_ids()
            total = sum(r.item_count for r in accepted)
            # Order: the request numbers in arrival order; an inversion is a request that arrived
            # after a later-accepted one (consumers run in parallel, so small ones are expected).
            numbers = [request_number(s.span_id) for r in accepted
                       for rs in r.message.resource_spans for ss in rs.scope_spans for s in ss.spans[:1]]
            inversions = sum(1 for a, b in itertools.pairwise(numbers) if b < a)
            row = Row(f"Collector down {seconds:.0f} s, disk queue, 2,048 spans/s in 512-span requests", client.sent,
                      len(client.acknowledged), len(client.acknowledged & arrived), drops(sidecar), drain,
                      sampler.peak,
                      f"idle RSS {idle_rss:.0f} MiB, {backlog_rss:.0f} MiB at the end of the outage; drained "
                      f"{len(client.acknowledged) / max(drain, 1e-9):,.0f} spans/s; {total - len(arrived)} "
                      f"duplicates; {inversions} order inversions among {len(numbers)} requests")
            return row
        finally:
            client.close()


# ---------------------------------------------------------------- partial success, memory full


def fault_partial_success(workdir: Path) -> Row:
    partial_calls, rejected_each = 40, 5
    admin_port = free_port()

    def with_admin(config: dict[str, Any]) -> None:
        config["extensions"]["admin"] = {"endpoint": f"127.0.0.1:{admin_port}"}
        config["service"]["extensions"].append("admin")

    with FakeCollector() as upstream, sidecar_process(upstream, workdir, "partial", storage=workdir / "partial-q",
                                                      edit=with_admin) as (sidecar, sampler), \
            sdk_traffic(sidecar, "partial") as app:
        upstream.partial_success_next(partial_calls, rejected=rejected_each, message="rejected by the bench",
                                      signal="traces", data_only=True)
        send_at_rate(app, int(RATE * FAULT_SECONDS), RATE)
        recovered_from = time.monotonic()
        row = sdk_row("Collector answers partial success (40 requests, 5 spans rejected each), 15 s", upstream,
                      sidecar, sampler, app, recovered_from, "")
        partial = [r for r in upstream.data_attempts("traces") if r.fault == "partial"]
        rejected = sum(min(r.rejected, r.item_count) for r in partial)
        received = Counter(s.span_id for r in upstream.data_attempts("traces")
                           for rs in r.message.resource_spans for ss in rs.scope_spans for s in ss.spans)
        resent = sum(n - 1 for n in received.values())
        with grpc.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
            listed = admin_pb2_grpc.AdminStub(channel).ListDeadLetters(
                admin_pb2.ListDeadLettersRequest(limit=10_000), timeout=10)
        letters = [dl for dl in listed.dead_letters if dl.partial_success]
        # The Collector keeps whole requests; which spans it "rejected" is not said (OTLP gives a count),
        # so delivered is what arrived less the rejected count.
        row.delivered -= rejected
        row.note = (f"{len(partial)} requests answered partial success: {len(letters)} dead letters "
                    f"(partial_success) standing for {sum(dl.rejected_items for dl in letters)} rejected spans, "
                    f"{resent} spans sent twice (never retried); lost = rejected by the Collector")
        return row


def fault_memory_full(workdir: Path) -> Row:
    memory_limit_mib = 256
    volume = workdir / "tiny"
    with tmpfs(volume) as cannot_mount:
        if cannot_mount:
            return Row.not_run("disk full and memory fallback full", cannot_mount)

        def edit(config: dict[str, Any]) -> None:
            config["extensions"]["file_storage"]["directory"] = str(volume)
            config["service"]["memory_limit_mib"] = memory_limit_mib
            # The ladder's RSS thresholds at their maximum, so the fallback's own bound is what pushes back.
            config["processors"]["degradation"] = {"memory_essential_above": 0.99, "memory_backpressure_at": 1.0}

        with FakeCollector() as upstream, sidecar_process(upstream, workdir, "memory-full", storage=workdir / "x",
                                                          edit=edit) as (sidecar, sampler):
            client = RawClient(sidecar)
            try:
                upstream.go_down()
                started = time.monotonic()
                while len(client.refused) < 20 and time.monotonic() - started < 120:
                    client.export(64, padding=4000)
                filled_in = time.monotonic() - started
                reasons = {details.rpartition("(")[2].partition(")")[0] for _, details in client.refused}
                codes = {code.name for code, _ in client.refused}
                subprocess.run(["mount", "-o", "remount,size=512m", str(volume)], capture_output=True, check=True)
                upstream.come_up()
                recover = wait_arrived(upstream, client.acknowledged, timeout=180.0)
                arrived = upstream.span_ids()
                return Row(f"disk full (1 MiB) and the memory fallback full (memory_limit_mib {memory_limit_mib}), "
                           "Collector down", client.sent, len(client.acknowledged),
                           len(client.acknowledged & arrived), drops(sidecar), recover, sampler.peak,
                           f"{client.acknowledged_bytes / 2**20:.0f} MiB acknowledged in {filled_in:.1f} s, then "
                           f"{len(client.refused)} requests pushed back with {'/'.join(sorted(codes))} "
                           f"({', '.join(sorted(reasons))}: memory fallback full); then the disk got room and "
                           "the Collector came back")
            finally:
                client.close()


# ---------------------------------------------------------------- report


def markdown(rows: list[Row], command: str) -> str:
    body = table(["fault", "spans sent", "acknowledged", "delivered", "lost (by reason)", "s to recover",
                  "peak RSS MiB", "notes"], [row.cells() for row in rows])
    return (body + "\n\nAcknowledged: what the client was told was delivered (the SDK exporter's SUCCESS, "
            "or an OK Export answer). Lost = acknowledged - delivered; in brackets the sidecar's own "
            "`sidecar_dropped_items_total` by reason: where it equals the loss, every lost span is accounted "
            "for. "
            f"See bench/faults.py for each setup.\n\n_(from `{command}`)_\n")


def write_results(path: Path, text: str) -> None:
    """Replace the '## Faults' section of RESULTS.md (or append it); other sections are left as they are."""
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    section = "## Faults\n\n" + text
    match = re.search(r"^## Faults\n.*?(?=^## |\Z)", current, flags=re.S | re.M)
    if match:
        current = current[: match.start()] + section + ("\n" if match.end() < len(current) else "") + \
            current[match.end():]
    else:
        current = current.rstrip("\n") + "\n\n" + section
    path.write_text(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog-seconds", type=float, default=60.0, help="outage of the long-backlog row")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=("disk_full", "black_hole", "slow", "wal_cut", "sigstop", "backlog",
                                 "partial_success", "memory_full"))
    parser.add_argument("--results", type=Path, default=None, help="write the table into this RESULTS.md")
    args = parser.parse_args(argv)
    command = "python -m bench.faults " + " ".join(argv if argv is not None else sys.argv[1:])
    quiet_sdk_logs()
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-faults-"))
    faults: dict[str, Callable[[], Row]] = {
        "disk_full": lambda: fault_disk_full(workdir),
        "black_hole": lambda: fault_black_hole(workdir),
        "slow": lambda: fault_slow(workdir),
        "wal_cut": lambda: fault_wal_cut(workdir),
        "sigstop": lambda: fault_sigstop(workdir),
        "backlog": lambda: fault_long_backlog(workdir, args.backlog_seconds),
        "partial_success": lambda: fault_partial_success(workdir),
        "memory_full": lambda: fault_memory_full(workdir),
    }
    rows = []
    try:
        for name, run in faults.items():
            if args.only is not None and name not in args.only:
                continue
            log(f"faults: {name}")
            row = run()
            log(f"  {row.cells()}")
            rows.append(row)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False, cwd=ROOT)
    text = markdown(rows, command.strip())
    print(text)
    if args.results is not None:
        write_results(args.results, text)
        print(f"written to {args.results} under '## Faults'")
    # Every loss accounted for: the sidecar counted exactly what was lost (corrupt rows, upstream rejections).
    return 0 if all(row.lost == int(sum(row.drops.values())) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
