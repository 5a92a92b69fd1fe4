"""Scenario 8 of bench/run.py: the per-pod footprint, side by side with rotel in one run (issue 24).

Per relay, each with a sink of its own:

* start-up: from exec to /ready answering 200 (rotel: to its OTLP/gRPC port accepting connections),
  a fresh process each time, the median of `STARTS`; the sidecar is started as a user starts it, without
  the malloc variables in its environment (it sets them itself), with its bytecode cached as an installed
  package has it (the first, untimed start writes the cache);
* idle: RSS after settling, and CPU % of a core over `IDLE_WINDOW` seconds with no traffic;
* at rate: 10,000 spans/s in 100-span requests (bench/loadgen.py --rate): CPU % and RSS at the window's end;
* burst: `BURST` seconds at saturation (closed loop, concurrency 16, 512-span requests: the fast path's
  throughput), then RSS every second for `AFTER` seconds; reported: the peak, and RSS `AFTER` seconds later
  against the idle value;
* enriched: a closed-loop run with 10 % error spans (the enriched path's throughput).

Relays: the sidecar gRPC-only (OTLP/gRPC in and out, health and metrics endpoints, memory queue, default
probing, the classify/enrich/degradation pipeline); the same with the OTLP/HTTP receiver as well (the default
deployment, collector-config/sidecar-minimal.yaml); rotel; and with `--baseline DIR`, the gRPC-only sidecar of
another checkout (its own .venv), e.g. main, to compare before and after in the same run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.run import (
    ROOT,
    Rotel,
    Section,
    Settings,
    Sink,
    default_sidecar_config,
    log,
    median,
    rss_mib,
    run_at_rate,
    run_loadgen,
    table,
    terminate,
    tree_cpu_seconds,
    wait_listening,
)
from sidecar.runtime import MALLOC_ARENA_ENV, MALLOC_ENV
from tests.sidecar_process import SidecarPorts

STARTS = 3
SETTLE = 5.0  # seconds after ready before idle RSS is read
IDLE_WINDOW = 20.0
RATE, RATE_SPANS = 10_000, 100
BURST, BURST_SPANS, BURST_CONCURRENCY = 30.0, 512, 16
AFTER = 60.0
ENRICHED_SECONDS = 5.0
ERROR_FRACTION = 0.1


@dataclass
class Relay:
    name: str
    command: list[str]
    cwd: Path
    env: dict[str, str]
    target: str  # host:port of its OTLP/gRPC receiver
    ready_url: str | None  # None: ready when `target` accepts connections
    sink: Sink
    proc: subprocess.Popen[bytes] | None = None
    row: dict[str, Any] = field(default_factory=dict)

    def start(self) -> float:
        """Start a fresh process; seconds from exec to ready."""
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if self.ready_url is None:
            wait_listening(self.target, self.proc, self.name)
            return time.monotonic() - started
        deadline = started + 30.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.ready_url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - started
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} not ready after 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None


def _user_env(pythonpath: Path, pycache: Path) -> dict[str, str]:
    """The environment a user starts the sidecar with: no malloc variables (it sets the thresholds itself),
    and bytecode cached, as `pip install` leaves it in an image (here under `pycache`, so that no checkout
    is written to); the first, untimed start fills the cache."""
    env = {k: v for k, v in os.environ.items()
           if k not in MALLOC_ENV and k not in (MALLOC_ARENA_ENV, "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def sidecar_relay(name: str, checkout: Path, sink: Sink, workdir: Path, http_receiver: bool) -> Relay:
    ports = SidecarPorts()
    config = default_sidecar_config(sink.target, ports)
    if not http_receiver:
        del config["receivers"]["otlp"]["protocols"]["http"]
    directory = workdir / name.replace(" ", "_").replace(",", "")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    python = checkout / ".venv" / "bin" / "python"
    return Relay(name, [str(python), "-m", "sidecar", "run", "--config", str(path)], directory,
                 _user_env(checkout, directory / "pycache"),
                 f"127.0.0.1:{ports.grpc}", f"http://127.0.0.1:{ports.health}/ready", sink)


def rotel_relay(sink: Sink, workdir: Path) -> Relay:
    probe = Rotel(sink.target, workdir / "rotel")  # its command line, ports and files; restarted below
    command = list(probe.proc.args)  # type: ignore[arg-type]
    probe.stop()
    return Relay("rotel (Rust), defaults", command, workdir, dict(os.environ), probe.target, None, sink)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.wait(1.0):
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic() - t0, rss_mib(self.pid)))


def anon_mib(pid: int) -> float:
    """RssAnon: the process's own memory, without the shared libraries' file pages RSS also counts."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_relay(relay: Relay, settings: Settings) -> dict[str, Any]:
    relay.start()  # untimed: fills the bytecode cache
    relay.stop()
    starts = []
    for _ in range(STARTS):
        starts.append(relay.start())
        relay.stop()
    relay.start()
    time.sleep(SETTLE)
    idle_rss = rss_mib(relay.pid)
    cpu0 = tree_cpu_seconds(relay.pid)
    time.sleep(IDLE_WINDOW)
    idle_cpu = 100 * (tree_cpu_seconds(relay.pid) - cpu0) / IDLE_WINDOW
    idle_rss = min(idle_rss, rss_mib(relay.pid))
    idle_anon = anon_mib(relay.pid)
    at_rate = run_at_rate(relay.target, relay.pid, relay.sink, spans=RATE_SPANS, rate=RATE,
                          duration=settings.cpu_window, warmup=settings.cpu_warmup)
    sampler = RssSampler(relay.pid)
    sampler.start()
    burst = run_loadgen(relay.target, concurrency=BURST_CONCURRENCY, duration=BURST, error_fraction=0.0,
                        sink=relay.sink.target, spans=BURST_SPANS)
    burst_end = sampler.samples[-1][0] if sampler.samples else 0.0
    time.sleep(AFTER)
    after_rss, after_anon = rss_mib(relay.pid), anon_mib(relay.pid)
    sampler.done.set()
    sampler.join()
    enriched = run_loadgen(relay.target, concurrency=BURST_CONCURRENCY, duration=ENRICHED_SECONDS,
                           error_fraction=ERROR_FRACTION, sink=relay.sink.target, spans=BURST_SPANS)
    relay.stop()
    peak = max((rss for _, rss in sampler.samples), default=float("nan"))
    after_burst = [(round(t - burst_end, 1), rss) for t, rss in sampler.samples if t >= burst_end]
    return {"start_s": median(starts), "start_range": [min(starts), max(starts)], "idle_rss_mib": idle_rss,
            "idle_anon_mib": idle_anon, "after_burst_anon_mib": after_anon,
            "idle_cpu_percent": idle_cpu, "rate_rss_mib": at_rate["rss_mib"],
            "rate_cpu_percent": at_rate["cpu_percent"],
            "burst_spans_per_second": burst["delivered_spans_per_second"], "burst_peak_rss_mib": peak,
            "after_burst_rss_mib": after_rss, "after_minus_idle_mib": after_rss - idle_rss,
            "after_burst_timeline": after_burst[::5],
            "enriched_spans_per_second": enriched["delivered_spans_per_second"]}


def scenario_footprint(settings: Settings, baseline: Path | None = None) -> Section:
    log(f"footprint: per relay {STARTS} starts, {IDLE_WINDOW:g}s idle, {RATE:,} spans/s in {RATE_SPANS}-span "
        f"requests, a {BURST:g}s burst and {AFTER:g}s after it, {ENRICHED_SECONDS:g}s enriched")
    with contextlib.ExitStack() as stack:

        def own_sink() -> Sink:
            sink = Sink()
            stack.callback(sink.stop)
            return sink

        relays = [sidecar_relay("sidecar, gRPC only", ROOT, own_sink(), settings.workdir, http_receiver=False),
                  sidecar_relay("sidecar, gRPC + HTTP receivers", ROOT, own_sink(), settings.workdir,
                                http_receiver=True)]
        if baseline is not None:
            relays.append(sidecar_relay(f"baseline {baseline.name}, gRPC only", baseline.resolve(), own_sink(),
                                        settings.workdir, http_receiver=False))
        relays.append(rotel_relay(own_sink(), settings.workdir))
        for relay in relays:
            stack.callback(relay.stop)
            relay.row = measure_relay(relay, settings)
            row = relay.row
            log(f"  {relay.name}: ready {row['start_s']:.2f}s, idle {row['idle_rss_mib']:.1f} MiB "
                f"{row['idle_cpu_percent']:.2f} %, at rate {row['rate_rss_mib']:.1f} MiB "
                f"{row['rate_cpu_percent']:.1f} %, burst {row['burst_spans_per_second']:,.0f} spans/s peak "
                f"{row['burst_peak_rss_mib']:.1f} MiB, {AFTER:g}s later {row['after_burst_rss_mib']:.1f} MiB, "
                f"enriched {row['enriched_spans_per_second']:,.0f}")
    rotel = relays[-1].row
    rows = []
    for relay in relays:
        row = relay.row
        row["rate_rss_vs_rotel"] = row["rate_rss_mib"] / rotel["rate_rss_mib"]
        rows.append([relay.name, f"{row['start_s']:.2f} ({row['start_range'][0]:.2f} - {row['start_range'][1]:.2f})",
                     f"{row['idle_rss_mib']:.1f} ({row['idle_anon_mib']:.1f})", f"{row['idle_cpu_percent']:.2f}",
                     f"{row['rate_rss_mib']:.1f}",
                     f"{row['rate_rss_vs_rotel']:.2f}", f"{row['rate_cpu_percent']:.1f}",
                     f"{row['burst_peak_rss_mib']:.1f}",
                     f"{row['after_burst_rss_mib']:.1f} ({row['after_burst_anon_mib']:.1f})",
                     f"{row['after_minus_idle_mib']:+.1f}", row["burst_spans_per_second"],
                     row["enriched_spans_per_second"]])
    body = table(["relay", "exec -> ready s (median, range)", "idle RSS MiB (anon)", "idle CPU %",
                  f"RSS MiB at {RATE // 1000}k spans/s", "x rotel", "CPU % at that rate",
                  "burst peak RSS MiB", f"RSS {AFTER:g}s after (anon)", "after - idle MiB",
                  "burst spans/s (fast path)", "10 % errors spans/s (enriched)"], rows)
    body += (f"\n\nOne run, relays one after another, each with a sink of its own. exec -> ready: {STARTS} fresh "
             "starts, /ready answering 200 (rotel: its OTLP/gRPC port accepting connections); the sidecar starts "
             "without the malloc variables in its environment, as a user starts it, with its bytecode cached as `pip "
             "install` leaves it in an image (one untimed start first writes the cache). "
             f"Idle: RSS {SETTLE:g}s after ready, CPU over the next {IDLE_WINDOW:g}s. At rate: {RATE:,} spans/s in "
             f"{RATE_SPANS}-span requests, {settings.cpu_window:g}s after {settings.cpu_warmup:g}s of warm-up, RSS at "
             f"the end. Burst: {BURST:g}s closed loop at concurrency {BURST_CONCURRENCY}, {BURST_SPANS}-span requests "
             f"(saturation), RSS sampled every second, then RSS {AFTER:g}s after the burst. Enriched: "
             f"{ENRICHED_SECONDS:g}s of the same with {ERROR_FRACTION:.0%} error spans. The sidecar rows run the "
             "defaults (memory queue, default probing, classify/enrich/degradation, health and metrics endpoints). "
             "RSS includes the shared libraries' file pages (grpc's cygrpc alone is ~15 MiB of them): see "
             "bench/notes.md, Footprint, for the breakdown.")
    data = {relay.name: relay.row for relay in relays}
    return Section("footprint", "9. Footprint", body, data)
