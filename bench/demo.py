"""The demo: a real SDK application → the sidecar (its own process) → an embedded fake Collector.

Scenario 1 (memory queue): steady traffic with some error spans, metrics and logs;
the Collector goes down in the middle and comes back. Scenario 2 (disk queue): the
Collector goes down, the sidecar is killed with SIGKILL while it holds acknowledged
data, it is restarted, the Collector comes back. Both end with a loss count and the
error classes the sidecar wrote onto the error spans.

Run: python -m bench.demo   (or `make demo`). Exit code 0 only when nothing was lost.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.fakes.collector import FakeCollector
from tests.sdk_app import SdkApp, quiet_sdk_logs
from tests.sidecar_process import SidecarPorts, SidecarProcess, base_config

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def say(text: str) -> None:
    print(f"{BOLD}==>{RESET} {text}", flush=True)


def send_phase(app: SdkApp, seconds: float, rate_per_second: int) -> int:
    """Send at a fixed rate for `seconds`: spans (10% errors, some HTTP 503s), metrics and logs."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tick = time.monotonic()
        app.send_traces(rate_per_second // 5, error_every=10, http_503_every=25)
        app.record_metrics(5)
        app.emit_logs(5, error_every=5)
        sent += rate_per_second // 5
        time.sleep(max(0.0, 0.2 - (time.monotonic() - tick)))
    return sent


def enrichment_summary(upstream: FakeCollector) -> collections.Counter[str]:
    classes: collections.Counter[str] = collections.Counter()
    for span in upstream.spans():
        attributes = {a.key: a.value.string_value for a in span.attributes}
        if "sidecar.error.category" in attributes:
            classes[f"{attributes['sidecar.error.category']}/{attributes['sidecar.error.recoverability']}"
                    f" ({attributes.get('error.type', '?')})"] += 1
    return classes


def report(title: str, app: SdkApp, upstream: FakeCollector, metrics: dict[str, float]) -> bool:
    sent = {i.to_bytes(8, "big") for i in app.span_ids}
    received = upstream.span_ids()
    lost = sent - received
    errors_sent = {i.to_bytes(8, "big") for i in app.error_span_ids}
    print()
    print(f"{BOLD}{title}{RESET}")
    print(f"  spans sent by the application      {len(sent):>8}")
    print(f"  spans received by the Collector    {len(sent & received):>8}")
    print(f"  spans lost                         {len(lost):>8}")
    print(f"  error spans sent / received        {len(errors_sent):>8} / {len(errors_sent & received)}")
    print(f"  log records received               {len(upstream.log_records()):>8}")
    print(f"  metric points received            {upstream.metric_point_count():>8}")
    for name, value in metrics.items():
        print(f"  {name:<35}{value:>8.0f}")
    print("  error classes written onto error spans (sidecar.error.category/recoverability (error.type)):")
    for label, count in enrichment_summary(upstream).most_common():
        print(f"    {count:>6}  {label}")
    return not lost


def scrape(sidecar: SidecarProcess) -> dict[str, float]:
    return {
        "export retries": sidecar.metric_value("sidecar_exporter_retries_total"),
        "breaker transitions": sidecar.metric_value("sidecar_breaker_transitions_total"),
        "  closed -> open": sidecar.metric_value("sidecar_breaker_transitions_total", to_state="open"),
        "  -> closed again": sidecar.metric_value("sidecar_breaker_transitions_total", to_state="closed"),
        "failed export attempts (spans)": sidecar.metric_value("sidecar_exporter_send_failed_spans_total"),
        "items dropped": sidecar.metric_value("sidecar_dropped_items_total"),
    }


def scenario_outage(workdir: Path, outage: float) -> bool:
    say("scenario 1: memory queue, the Collector goes down in the middle of the traffic")
    with FakeCollector() as upstream:
        ports = SidecarPorts()
        config = base_config(upstream.grpc_endpoint, ports)
        (workdir / "outage").mkdir()
        sidecar = SidecarProcess(config, workdir / "outage", ports).start()
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sidecar.grpc_endpoint
        app = SdkApp("grpc", service_name="checkout")
        try:
            say(f"sidecar pid {sidecar.proc.pid if sidecar.proc else '?'} listening on {sidecar.grpc_endpoint}; "
                "sending traffic")
            send_phase(app, 3, 500)
            say(f"Collector DOWN for {outage:.0f}s (traffic continues)")
            upstream.go_down()
            send_phase(app, outage, 500)
            say("Collector UP again; waiting for the sidecar to drain its queue")
            upstream.come_up()
            send_phase(app, 2, 500)
            app.flush()
            upstream.wait_for(lambda f: {i.to_bytes(8, "big") for i in app.span_ids} <= f.span_ids(), timeout=60)
            metrics = scrape(sidecar)
        finally:
            app.shutdown()
            sidecar.stop()
        return report("scenario 1 summary", app, upstream, metrics)


def scenario_crash(workdir: Path, outage: float) -> bool:
    say("scenario 2: disk queue, the Collector is down and the sidecar is killed with SIGKILL")
    with FakeCollector() as upstream:
        ports = SidecarPorts()
        directory = workdir / "crash"
        directory.mkdir()
        config = base_config(upstream.grpc_endpoint, ports, storage_dir=directory / "queue")
        sidecar = SidecarProcess(config, directory, ports).start()
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sidecar.grpc_endpoint
        app = SdkApp("grpc", service_name="payments")
        try:
            send_phase(app, 2, 500)
            say("Collector DOWN; the application keeps sending, the sidecar acknowledges to disk")
            upstream.go_down()
            send_phase(app, outage / 2, 500)
            app.flush()
            say("kill -9 the sidecar while it holds the acknowledged data")
            sidecar.kill()
            say("restart the sidecar on the same disk queue")
            sidecar = SidecarProcess(config, directory, ports).start()
            say("Collector UP again")
            upstream.come_up()
            upstream.wait_for(lambda f: {i.to_bytes(8, "big") for i in app.span_ids} <= f.span_ids(), timeout=60)
            metrics = scrape(sidecar)
        finally:
            app.shutdown()
            sidecar.stop()
        return report("scenario 2 summary (after SIGKILL and restart)", app, upstream, metrics)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=8.0, help="seconds the Collector is down")
    args = parser.parse_args()
    quiet_sdk_logs()
    with tempfile.TemporaryDirectory(prefix="sidecar-demo-") as tmp:
        ok_outage = scenario_outage(Path(tmp), args.outage)
        ok_crash = scenario_crash(Path(tmp), args.outage)
    print()
    if ok_outage and ok_crash:
        say("nothing lost in either scenario")
        return 0
    say("DATA WAS LOST: see the summaries above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
