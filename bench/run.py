"""Benchmark scenarios, side by side with a direct baseline, written into bench/RESULTS.md.

    python -m bench.run [all|throughput|latency|outage|crash|memory|fleet|cpu|fleet-scale] [--quick] [--duration S]
                        [--repeats N] [--sizes 50,200,1000]

1. throughput  loadgen -> sink (direct) vs loadgen -> sidecar -> sink, 0 %, 10 % and 50 % error spans;
               spans/s delivered (counted by the sink), ratio to direct, CPU per request of each process;
               the floor: the same through a null proxy (bench/null_proxy.py), with and without a parse;
               and a peer: the same through rotel, a collector written in Rust (PyPI `rotel`).
2. latency     added latency (p50/p99) at concurrency 1 and 16, sidecar vs direct.
3. outage      a real OpenTelemetry SDK application sends at a fixed rate while the Collector (the
               fake one) is down: spans lost SDK -> Collector directly, through the sidecar with the
               memory queue, with the disk queue; time to drain after recovery; a timeline (outage.png).
4. crash       SIGKILL of the sidecar during the outage with the disk queue; spans lost.
5. memory      RSS over time with the upstream down and service.memory_limit_mib set (memory.png).
6. fleet       4 and 8 sidecars in front of an upstream failing for 20 s, local vs fleet mode (extensions.fleet,
               a real redis-server): calls hitting the failing upstream, recovery to the first delivered
               export, spans lost (bench/fleet.py). Not part of `all` (3-4 minutes): run it by name.
7. cpu         CPU at a steady rate: 10,000 spans/s in 100- and 512-span requests through the sidecar
               (defaults, compression none; defaults with 50 % error spans) and through rotel (a Rust
               collector); CPU % of one core,
               us of CPU per span and RSS of each relay, against the Collector testbed's 20 % budget.
8. fleet-scale fleet mode at N = 50, 200 and 1,000 simulated members (the real fleet and exporter code, an
               in-process upstream) on one real redis-server, 2,000 requests/s in total: calls on an upstream
               failing for 20 s, time to the fleet-wide open, first success after recovery, Redis commands/s
               per member and redis-server CPU, opens and p99 delivery latency under 1 % and 5 % scattered
               failures against fleet mode off (bench/fleet_scale.py). Not part of `all` (~20 minutes).
9. footprint   start-up to /ready, idle RSS and CPU, RSS at 10k spans/s, RSS after a 30 s burst, side by
               side with rotel (bench/footprint.py; `--baseline DIR` adds another checkout's sidecar).
               Not part of `all` (about 10 minutes): run it by name.

Every process is its own: the sink (bench/sink.py), the sidecar (`python -m sidecar`, as a user
starts it), the load generator (bench/loadgen.py); the fake Collector and the SDK application run
in this process. The direct baseline is measured in the same run, interleaved with the sidecar
runs, and the tables report medians over `--repeats` and ratios. Each scenario replaces its own
section of RESULTS.md (and its entry in results.json, from which the summary of targets is made);
`--quick` writes RESULTS-quick.md, results-quick.json and *-quick.png instead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet_scale import scale_targets
from bench.sink import sink_stats
from sidecar.runtime import MALLOC_ENV
from tests.fakes.collector import FakeCollector
from tests.sidecar_process import SidecarPorts, SidecarProcess, base_config, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
SPANS = 512
ERROR_FRACTION = 0.1
STORM_FRACTION = 0.5  # an error storm: half the spans are errors (issue 26)
SECTIONS = ("throughput", "latency", "outage", "crash", "memory", "fleet", "cpu", "fleet-scale", "footprint")
IN_ALL = ("throughput", "latency", "outage", "crash", "memory", "cpu")
# Same glibc tuning for the bench's own processes (sink, load generator) as the sidecar gives itself.
TOOL_ENV = dict(MALLOC_ENV)


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    quick: bool
    duration: float  # measured seconds per throughput run
    repeats: int
    latency_duration: float
    concurrency: int
    outage: float  # seconds the Collector is down
    steady: float  # seconds of traffic before and after the outage
    rate: int  # spans/s of the SDK application
    memory_duration: float
    memory_limit_mib: float
    cpu_window: float  # measured seconds per steady-rate run
    cpu_warmup: float
    cpu_repeats: int
    results: Path
    fleet_sizes: tuple[int, ...] = ()  # fleet-scale: the N to simulate (empty: 50, 200, 1000)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sidecar-bench-")))

    def figure(self, name: str) -> Path:
        """Where a plot goes: next to the results file, named after it (outage.png, outage-quick.png)."""
        stem = self.results.stem
        suffix = stem[len("RESULTS"):] if stem.startswith("RESULTS") else f"-{stem}"
        return self.results.with_name(f"{name}{suffix.lower()}.png")

    @classmethod
    def make(cls, args: argparse.Namespace) -> Settings:
        quick = bool(args.quick)
        settings = cls(
            quick=quick,
            duration=2.0 if quick else 8.0,
            repeats=1 if quick else 3,
            latency_duration=1.5 if quick else 5.0,
            concurrency=16,
            outage=6.0 if quick else 30.0,
            steady=2.0 if quick else 5.0,
            rate=1000,
            memory_duration=6.0 if quick else 25.0,
            memory_limit_mib=args.memory_limit,
            cpu_window=2.0 if quick else 8.0,
            cpu_warmup=1.0 if quick else 2.0,
            cpu_repeats=1 if quick else 2,
            results=args.results or BENCH / ("RESULTS-quick.md" if quick else "RESULTS.md"),
        )
        if args.duration is not None:
            settings.duration = settings.latency_duration = args.duration
        if args.repeats is not None:
            settings.repeats = args.repeats
        if args.outage is not None:
            settings.outage = args.outage
        if args.cpu_window is not None:
            settings.cpu_window = args.cpu_window
        if args.sizes:
            settings.fleet_sizes = tuple(int(n) for n in args.sizes.split(","))
        if args.cpu_repeats is not None:
            settings.cpu_repeats = args.cpu_repeats
        return settings


# ------------------------------------------------------------------------------------- processes


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TOOL_ENV)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a helper process, SIGKILL it if it has not exited 10 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sink:
    """bench/sink.py in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.sink", "--port", str(self.port)], cwd=ROOT,
                                     env=tool_env(), stdout=subprocess.DEVNULL)
        sink_stats(self.target, timeout=20.0)

    def stats(self) -> dict[str, float]:
        return sink_stats(self.target)

    def stop(self) -> None:
        terminate(self.proc)


def bench_exporter(upstream: str, ports: SidecarPorts, storage: Path | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """The sidecar's config for the benchmark: the defaults of DESIGN.md, except where stated here."""
    config = base_config(upstream, ports, storage_dir=storage, **{
        "compression": "none",  # the sidecar -> sink hop is loopback; gzip (the default) costs CPU here
        "timeout": "5s",
        "retry_on_failure": {"initial_interval": "500ms", "max_interval": "5s", "max_elapsed_time": "300s"},
        "circuit_breaker": {"recovery_timeout": "2s", "max_recovery_timeout": "5s"},
        "health_probe": {"interval": "1s", "timeout": "1s"},
        "sending_queue": {"num_consumers": 10, "queue_size": 1000},
        **overrides,
    })
    config["exporters"]["otlp_grpc"]["sending_queue"].pop("batch", None)  # the default (tests turn it off)
    config["service"]["telemetry"]["logs"]["level"] = "warn"
    return config


def start_sidecar(config: dict[str, Any], name: str, ports: SidecarPorts, workdir: Path) -> SidecarProcess:
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    return SidecarProcess(config, directory, ports).start(timeout=30.0)


def run_loadgen(target: str, *, concurrency: int, duration: float, error_fraction: float,
                sink: str | None = None, warmup: float = 1.0, spans: int = SPANS) -> dict[str, Any]:
    """One bench/loadgen.py run; adds its CPU seconds (`cpu`)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [PYTHON, "-m", "bench.loadgen", "--target", target, "--json", "--concurrency", str(concurrency),
               "--duration", str(duration), "--warmup", str(warmup), "--spans", str(spans),
               "--error-fraction", str(error_fraction)]
    if sink:
        command += ["--sink", sink]
    done = subprocess.run(command, cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=duration + warmup + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["wall"] = duration + warmup
    return result


def metric(sidecar: SidecarProcess, name: str, **labels: str) -> float:
    try:
        return sidecar.metric_value(name, **labels)
    except OSError:
        return float("nan")


# ------------------------------------------------------------------------------------ formatting


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


@dataclass
class Section:
    key: str
    title: str
    body: str
    data: dict[str, Any]


# ----------------------------------------------------------------------- 1 + 2: throughput, latency


@contextlib.contextmanager
def sink_and_sidecar(settings: Settings) -> Iterator[tuple[Sink, SidecarProcess]]:
    sink = Sink()
    sidecar: SidecarProcess | None = None
    try:
        ports = SidecarPorts()
        sidecar = start_sidecar(bench_exporter(sink.target, ports), "throughput", ports, settings.workdir)
        yield sink, sidecar
    finally:
        if sidecar is not None:
            sidecar.stop()
        sink.stop()


class NullProxy:
    """bench/null_proxy.py in its own process: the floor under any grpc.aio proxy (see its docstring)."""

    def __init__(self, upstream: str, parse: bool) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        command = [PYTHON, "-m", "bench.null_proxy", "--port", str(self.port), "--upstream", upstream]
        self.proc = subprocess.Popen(command + (["--parse"] if parse else []), cwd=ROOT, env=tool_env(),
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if "listening" not in self.proc.stdout.readline():
            raise RuntimeError(f"null proxy did not start (exit code {self.proc.poll()})")

    def stop(self) -> None:
        terminate(self.proc)


def rotel_binary() -> Path:
    """The rotel collector's executable, as the PyPI package `rotel` ships it (bench extra)."""
    import rotel

    return Path(rotel.__file__).resolve().parent / "rotel-agent"


def wait_listening(target: str, proc: subprocess.Popen[Any], what: str, timeout: float = 20.0) -> None:
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {target}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on {target} after {timeout:g}s")
        time.sleep(0.05)


class Rotel:
    """rotel (an OpenTelemetry collector written in Rust) as an OTLP/gRPC receiver -> OTLP/gRPC exporter relay.

    Its own defaults except the ports and, when given, `--otlp-exporter-compression` (its default is gzip).
    Like the sidecar, it answers a client once the request is buffered; by default it batches spans
    into upstream requests of up to 8192 spans or 200 ms.
    """

    def __init__(self, upstream: str, workdir: Path, compression: str | None = None) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        command = [str(rotel_binary()), "start", "--otlp-grpc-endpoint", self.target,
                   "--otlp-http-endpoint", f"127.0.0.1:{free_port()}", "--exporter", "otlp",
                   "--otlp-exporter-endpoint", f"http://{upstream}",
                   "--pid-file", str(workdir / f"rotel-{self.port}.pid"),
                   "--log-file", str(workdir / f"rotel-{self.port}.log")]
        if compression is not None:
            command += ["--otlp-exporter-compression", compression]
        with open(workdir / f"rotel-{self.port}.out", "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.target, self.proc, "rotel")

    def stop(self) -> None:
        terminate(self.proc)


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its live descendants, plus what its waited-for children used."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/stat") as stat:
                children.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError), open(f"/proc/{current}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
        todo.extend(children.get(current, ()))
    return total


def measure(sink: Sink, target: str, proxy_pid: int | None, concurrency: int, duration: float,
            error_fraction: float) -> dict[str, Any]:
    """One loadgen run against `target`; CPU per request of the proxy in between (`proxy_pid`), sink and loadgen."""
    proxy_cpu = cpu_seconds(proxy_pid) if proxy_pid is not None else 0.0
    sink_cpu = cpu_seconds(sink.proc.pid)
    result = run_loadgen(target, concurrency=concurrency, duration=duration, error_fraction=error_fraction,
                         sink=sink.target)
    requests = max(1.0, result["requests"] * result["wall"] / result["duration"])  # warm-up included
    result["sidecar_ms_per_request"] = (1000 * (cpu_seconds(proxy_pid) - proxy_cpu) / requests
                                        if proxy_pid is not None else float("nan"))
    result["sink_ms_per_request"] = 1000 * (cpu_seconds(sink.proc.pid) - sink_cpu) / requests
    result["loadgen_ms_per_request"] = 1000 * result["cpu"] / requests
    return result


def sidecar_target(sidecar: SidecarProcess) -> tuple[str, int]:
    assert sidecar.proc is not None
    return f"127.0.0.1:{sidecar.ports.grpc}", sidecar.proc.pid


DIRECT = "direct (loadgen -> sink)"
FAST = "sidecar, fast path (0 % error spans)"
ENRICHED = "sidecar, 10 % error spans enriched"
STORM = "sidecar, 50 % error spans enriched (an error storm)"
FLOOR = "floor: null proxy (receive + forward, no work)"
FLOOR_PARSED = "floor: null proxy + upb parse"
ROTEL = "peer: rotel relay (Rust; compression none, its batching), 0 %"


def scenario_throughput(settings: Settings, pair: tuple[Sink, SidecarProcess] | None = None) -> Section:
    log(f"throughput: {settings.repeats} x (direct, sidecar 0 %, 10 % and 50 % errors, null-proxy floors "
        f"at 0 % and 10 %, rotel), {settings.duration:g}s each at concurrency {settings.concurrency}")
    with contextlib.ExitStack() as stack:
        sink, sidecar = pair if pair is not None else stack.enter_context(sink_and_sidecar(settings))
        floors = {}
        for parse in (False, True):
            proxy = NullProxy(sink.target, parse)
            stack.callback(proxy.stop)
            floors[parse] = (proxy.target, proxy.proc.pid)
        rotel = Rotel(sink.target, settings.workdir / "rotel", compression="none")
        stack.callback(rotel.stop)
        direct_target: tuple[str, int | None] = (sink.target, None)
        modes: list[tuple[str, tuple[str, int | None], float, bool]] = [  # name, (target, pid), errors, sidecar
            (DIRECT, direct_target, 0.0, False),
            (FAST, sidecar_target(sidecar), 0.0, True),
            (ENRICHED, sidecar_target(sidecar), ERROR_FRACTION, True),
            (STORM, sidecar_target(sidecar), STORM_FRACTION, True),
            (f"{FLOOR}, 0 %", floors[False], 0.0, False),
            (f"{FLOOR_PARSED}, 0 %", floors[True], 0.0, False),
            (f"{FLOOR_PARSED}, 10 %", floors[True], ERROR_FRACTION, False),
            (ROTEL, (rotel.target, rotel.proc.pid), 0.0, False),
        ]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in modes}
        dropped_before = metric(sidecar, "sidecar_dropped_items_total")
        for repeat in range(settings.repeats):
            for name, (target, pid), errors, _ in modes:
                result = measure(sink, target, pid, settings.concurrency, settings.duration, errors)
                runs[name].append(result)
                log(f"  [{repeat + 1}/{settings.repeats}] {name}: {result['delivered_spans_per_second']:,.0f} "
                    f"spans/s delivered, proxy {result['sidecar_ms_per_request']:.2f} ms CPU/request")
        dropped = metric(sidecar, "sidecar_dropped_items_total") - dropped_before
    rows = []
    data: dict[str, Any] = {"modes": {}, "dropped": dropped}
    for name, _target, _errors, through_sidecar in modes:
        results = runs[name]
        direct = runs[DIRECT]
        rates = [r["delivered_spans_per_second"] for r in results]
        ratios = [r["delivered_spans_per_second"] / d["delivered_spans_per_second"]
                  for r, d in zip(results, direct, strict=True)]
        delivered_spans = sum(r["delivered_spans_per_second"] * r["duration"] for r in results)
        enriched = sum(r["delivered_enriched"] or 0 for r in results)
        row = {
            "spans_per_second": median(rates),
            "min": min(rates), "max": max(rates),
            "ratio": median(ratios),
            "ratio_to_rotel": median([r["delivered_spans_per_second"] / p["delivered_spans_per_second"]
                                      for r, p in zip(results, runs[ROTEL], strict=True)]),
            "sidecar_ms": median([r["sidecar_ms_per_request"] for r in results]),
            "sink_ms": median([r["sink_ms_per_request"] for r in results]),
            "loadgen_ms": median([r["loadgen_ms_per_request"] for r in results]),
            "enriched_share": enriched / delivered_spans if delivered_spans else 0.0,
            "failed": sum(r["failed"] for r in results),
            "sidecar": through_sidecar,
        }
        data["modes"][name] = row
        rows.append([name, row["spans_per_second"], f"{row['min']:,.0f} - {row['max']:,.0f}",
                     f"{row['ratio']:.2f}", row["sidecar_ms"], row["sink_ms"], row["loadgen_ms"],
                     f"{row['enriched_share']:.1%}", row["failed"]])
    body = table(["mode", "spans/s delivered (median)", "range", "ratio to direct", "proxy CPU ms/request",
                  "sink CPU ms/request", "loadgen CPU ms/request", "spans enriched", "failed calls"], rows)
    body += (f"\n\n{settings.repeats} run(s) of {settings.duration:g}s (after 1s warm-up) per mode, interleaved, "
             f"concurrency {settings.concurrency}, {SPANS}-span requests; delivered = counted by the sink. "
             "Ratios are to the direct run of the same repetition (the direct path with 10 % error spans "
             "measured the same within noise: the request is 9 % larger). "
             f"Items the sidecar dropped during the runs: {dropped:.0f}. CPU ms/request: CPU time of each "
             "process divided by the requests it handled (the proxy's includes its gRPC poller thread). "
             "The two floors are `bench/null_proxy.py`: a grpc.aio server that forwards each request's bytes "
             "on one grpc.aio channel and answers with the upstream's answer, without (and with) parsing "
             "it: no queue, no classification, no retry, no metrics. No Python proxy on grpc.aio can be "
             "faster than the first; every sidecar has to do at least what the second does. The peer is "
             "rotel (PyPI `rotel`, an OpenTelemetry collector in Rust) as an OTLP/gRPC -> OTLP/gRPC relay to "
             "the same sink, with its defaults (it batches up to 8192 spans or 200 ms per upstream request) "
             "except `--otlp-exporter-compression none`, as the sidecar's `auto` picks on loopback; its CPU "
             "per request is per request received.")
    return Section("throughput", "1. Throughput", body, data)


def scenario_latency(settings: Settings, pair: tuple[Sink, SidecarProcess] | None = None) -> Section:
    cases = [(1, 0.0), (1, ERROR_FRACTION), (16, 0.0)]
    log(f"latency: {settings.repeats} x {len(cases)} cases x (direct, sidecar), {settings.latency_duration:g}s each")
    rows = []
    data: dict[str, Any] = {"cases": {}}
    with contextlib.ExitStack() as stack:
        sink, sidecar = pair if pair is not None else stack.enter_context(sink_and_sidecar(settings))
        target, pid = sidecar_target(sidecar)
        for concurrency, errors in cases:
            direct: list[dict[str, Any]] = []
            through: list[dict[str, Any]] = []
            for _ in range(settings.repeats):
                direct.append(measure(sink, sink.target, None, concurrency, settings.latency_duration, errors))
                through.append(measure(sink, target, pid, concurrency, settings.latency_duration, errors))
            d50 = median([r["latency_ms"]["p50"] for r in direct])
            d99 = median([r["latency_ms"]["p99"] for r in direct])
            s50 = median([r["latency_ms"]["p50"] for r in through])
            s99 = median([r["latency_ms"]["p99"] for r in through])
            key = f"c{concurrency}_e{int(errors * 100)}"
            data["cases"][key] = {"direct_p50": d50, "direct_p99": d99, "sidecar_p50": s50, "sidecar_p99": s99,
                                  "added_p50": s50 - d50, "added_p99": s99 - d99}
            rows.append([concurrency, f"{errors:.0%}", d50, s50, s50 - d50, d99, s99, s99 - d99])
            log(f"  concurrency {concurrency}, {errors:.0%} errors: p50 {d50:.2f} -> {s50:.2f} ms, "
                f"p99 {d99:.2f} -> {s99:.2f} ms")
    body = table(["concurrency", "error spans", "direct p50 ms", "sidecar p50 ms", "added p50 ms",
                  "direct p99 ms", "sidecar p99 ms", "added p99 ms"], rows)
    body += (f"\n\nLatency of one {SPANS}-span Export call as the client sees it (the sidecar answers once the "
             f"request is queued); median over {settings.repeats} run(s) of {settings.latency_duration:g}s each. "
             "At concurrency 16 the calls queue behind each other, so that row measures saturation as much "
             "as the sidecar's own cost.")
    return Section("latency", "2. Added latency", body, data)


# --------------------------------------------------------------------------- 6: CPU at a steady rate

CPU_RATE = 10_000  # spans/s: the OpenTelemetry Collector testbed's steady-rate load test
CPU_SIZES = (100, 512)  # spans per request: the testbed's batches, the SDK's default batch
CPU_BUDGET = 20.0  # % of one core: what the Collector testbed budgets for that test
SIDECAR_DEFAULTS = "sidecar, defaults"
SIDECAR_NONE = "sidecar, compression none"
SIDECAR_UNBATCHED = "sidecar, defaults but batch off (one upstream call per request)"
SIDECAR_STORM = "sidecar, defaults, 50 % error spans enriched (an error storm)"
FLOOR_AT_RATE = "floor: null proxy + upb parse"
ROTEL_DEFAULTS = "rotel, defaults"
ROTEL_NONE = "rotel, compression none"


def default_sidecar_config(upstream: str, ports: SidecarPorts, **exporter: Any) -> dict[str, Any]:
    """The sidecar as a user would start it: every exporter setting at its default (DESIGN.md), the
    classify/enrich/degradation pipeline of collector-config/sidecar-minimal.yaml, warn-level logs."""
    config = base_config(upstream, ports)
    config["exporters"]["otlp_grpc"] = {"endpoint": upstream, "tls": {"insecure": True}, **exporter}
    config["service"]["telemetry"]["logs"]["level"] = "warn"
    return config


def run_at_rate(target: str, relay_pid: int, sink: Sink, *, spans: int, rate: float, duration: float,
                warmup: float, error_fraction: float = 0.0) -> dict[str, Any]:
    """One open-loop loadgen run at `rate` spans/s; the relay's CPU (its process tree) and RSS over exactly
    the loadgen's measured window (it announces the window's start and end)."""
    command = [PYTHON, "-m", "bench.loadgen", "--target", target, "--json", "--announce", "--rate", str(rate),
               "--spans", str(spans), "--concurrency", "64", "--duration", str(duration), "--warmup", str(warmup),
               "--sink", sink.target, "--error-fraction", str(error_fraction)]
    proc = subprocess.Popen(command, cwd=ROOT, env=tool_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    cpu: dict[str, float] = {}
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "window-start":
                cpu["start"], cpu["t0"] = tree_cpu_seconds(relay_pid), time.monotonic()
            elif line.strip() == "window-end":
                cpu["end"], cpu["t1"] = tree_cpu_seconds(relay_pid), time.monotonic()
                cpu["rss"] = rss_mib(relay_pid)
        code = proc.wait(timeout=duration + warmup + 60)
    finally:
        terminate(proc)
    if code != 0 or "end" not in cpu:
        raise RuntimeError(f"loadgen at a steady rate failed ({code}): {''.join(lines)[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    wall = cpu["t1"] - cpu["t0"]
    used = cpu["end"] - cpu["start"]
    # Per span the relay acknowledged in the window (what it received): rotel forwards in 200 ms batches,
    # so what the sink counted in a short window is off by up to a batch.
    acknowledged = result["requests"] * spans * wall / result["duration"]
    result.update(cpu_percent=100 * used / wall, rss_mib=cpu["rss"], cpu_seconds=used, wall=wall,
                  us_per_span=1e6 * used / acknowledged if acknowledged else float("nan"))
    return result


def scenario_cpu(settings: Settings) -> Section:
    log(f"cpu: {CPU_RATE} spans/s in {' and '.join(map(str, CPU_SIZES))}-span requests, {settings.cpu_repeats} x "
        f"{settings.cpu_window:g}s per relay (after {settings.cpu_warmup:g}s warm-up)")
    relays: dict[str, tuple[str, int, Sink]] = {}
    with contextlib.ExitStack() as stack:

        def own_sink() -> Sink:  # one sink per relay: what it counts came through that relay alone
            sink = Sink()
            stack.callback(sink.stop)
            return sink

        for name, extra in ((SIDECAR_DEFAULTS, {}), (SIDECAR_NONE, {"compression": "none"}),
                            (SIDECAR_UNBATCHED, {"sending_queue": {"batch": {"enabled": False}}})):
            ports, sink = SidecarPorts(), own_sink()
            sidecar = start_sidecar(default_sidecar_config(sink.target, ports, **extra),
                                    f"cpu-{len(relays)}", ports, settings.workdir)
            stack.callback(sidecar.stop)
            relays[name] = (*sidecar_target(sidecar), sink)
        relays[SIDECAR_STORM] = relays[SIDECAR_DEFAULTS]  # the same sidecar and sink, half the spans errors
        fractions = {SIDECAR_STORM: STORM_FRACTION}
        for name, compression in ((ROTEL_DEFAULTS, None), (ROTEL_NONE, "none")):
            sink = own_sink()
            rotel = Rotel(sink.target, settings.workdir / "rotel", compression=compression)
            stack.callback(rotel.stop)
            relays[name] = (rotel.target, rotel.proc.pid, sink)
        sink = own_sink()
        floor = NullProxy(sink.target, parse=True)
        stack.callback(floor.stop)
        relays[FLOOR_AT_RATE] = (floor.target, floor.proc.pid, sink)
        runs: dict[tuple[int, str], list[dict[str, Any]]] = {(n, r): [] for n in CPU_SIZES for r in relays}
        for repeat in range(settings.cpu_repeats):
            for spans in CPU_SIZES:
                for name, (target, pid, sink) in relays.items():
                    result = run_at_rate(target, pid, sink, spans=spans, rate=CPU_RATE,
                                         duration=settings.cpu_window, warmup=settings.cpu_warmup,
                                         error_fraction=fractions.get(name, 0.0))
                    runs[(spans, name)].append(result)
                    log(f"  [{repeat + 1}/{settings.cpu_repeats}] {spans} spans/request, {name}: "
                        f"{result['cpu_percent']:.1f} % of a core, {result['us_per_span']:.2f} us/span, "
                        f"{result['delivered_spans_per_second']:,.0f} spans/s delivered, "
                        f"RSS {result['rss_mib']:.0f} MiB")
    data: dict[str, Any] = {"rate": CPU_RATE, "budget_percent": CPU_BUDGET, "sizes": {}}
    rows: list[list[Any]] = []
    for spans in CPU_SIZES:
        sized: dict[str, Any] = {}
        for name in relays:
            results = runs[(spans, name)]
            sized[name] = {
                "cpu_percent": median([r["cpu_percent"] for r in results]),
                "cpu_range": [min(r["cpu_percent"] for r in results), max(r["cpu_percent"] for r in results)],
                "us_per_span": median([r["us_per_span"] for r in results]),
                "us_per_request": median([r["us_per_span"] for r in results]) * spans,
                "rss_mib": median([r["rss_mib"] for r in results]),
                "delivered": median([r["delivered_spans_per_second"] or 0.0 for r in results]),
                "failed": sum(r["failed"] for r in results),
                "skipped": sum(r["skipped"] for r in results),
            }
        for name, row in sized.items():
            # Each repetition against rotel's run of the same repetition, then the median.
            for key, peer in (("ratio_to_rotel", ROTEL_DEFAULTS), ("ratio_to_rotel_none", ROTEL_NONE)):
                row[key] = median([r["cpu_percent"] / p["cpu_percent"]
                                   for r, p in zip(runs[(spans, name)], runs[(spans, peer)], strict=True)])
            rows.append([spans, name, row["cpu_percent"],
                         f"{row['cpu_range'][0]:.1f} - {row['cpu_range'][1]:.1f}", row["us_per_span"],
                         row["us_per_request"], f"{row['ratio_to_rotel']:.2f}", f"{row['ratio_to_rotel_none']:.2f}",
                         row["rss_mib"], row["delivered"], row["failed"]])
        data["sizes"][str(spans)] = sized
        rows.append([spans, f"reference: the Collector testbed's budget{'' if spans == 100 else ' (set for 100)'}",
                     CPU_BUDGET, "", 1e6 * CPU_BUDGET / 100 / CPU_RATE, "", "", "", "", "", ""])
    body = table(["spans/request", "relay", "CPU % of one core (median)", "range", "us CPU/span",
                  "us CPU/request", "x rotel defaults", "x rotel none", "RSS MiB", "spans/s delivered",
                  "failed calls"], rows)
    body += (f"\n\n{CPU_RATE:,} spans/s offered at a steady pace (bench/loadgen.py `--rate`: one Export call every "
             "10 ms with 100 spans, every 51 ms with 512) through each relay to a sink of its own, "
             f"{settings.cpu_repeats} run(s) of {settings.cpu_window:g}s per relay and size (after "
             f"{settings.cpu_warmup:g}s of warm-up), interleaved; medians. CPU: utime + stime of the relay's "
             "process and its children from /proc over exactly the load generator's measured window, as a share "
             "of one core; us/span divides it by the spans the relay acknowledged in the window. RSS at the window's "
             "end. Sidecar, defaults: every exporter setting at its default (`compression: auto`, which is none "
             "on this loopback hop, so the two sidecar rows run the same configuration: they show the noise), "
             "the classify/enrich/degradation pipeline; batch off: the same with `sending_queue.batch.enabled: false`, "
             "as before batching became the default; 50 % error spans: the defaults sidecar again, with every other "
             "span an error span to classify and enrich (an error storm). The floor is bench/null_proxy.py "
             "--parse (receive, parse, forward each request on one grpc.aio channel, nothing else). rotel, "
             "defaults: gzip on its exporter and its batching (up to 8192 spans or 200 ms per upstream request). "
             "The Collector's own testbed runs this load "
             f"(OTLP/gRPC in, OTLP out, 10,000 spans/s in 100-span batches) with a budget of {CPU_BUDGET:g} % "
             "of one core: the reference line.")
    return Section("cpu", "7. CPU at a steady rate", body, data)


# ----------------------------------------------------------------------------------- 3 + 4: outages


class Scraper(threading.Thread):
    """Scrapes the sidecar's /metrics (and its RSS) periodically into a timeline."""

    NAMES = {
        "accepted": "sidecar_receiver_accepted_spans_total",
        "sent": "sidecar_exporter_sent_spans_total",
        "queue": "sidecar_exporter_queue_size",
        "breaker": "sidecar_breaker_state",
        "level": "sidecar_degradation_level",
    }

    def __init__(self, metrics_port: int, pid: Callable[[], int | None], t0: float, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.metrics_port = metrics_port
        self.pid = pid
        self.t0 = t0
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop_event = threading.Event()

    def scrape(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        values = dict.fromkeys(self.NAMES, 0.0)
        wanted = {name: key for key, name in self.NAMES.items()}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            name = head.partition("{")[0]
            key = wanted.get(name)
            if key is not None:
                if key in ("breaker", "level"):
                    values[key] = max(values[key], float(value))
                else:
                    values[key] += float(value)
        return values

    def run(self) -> None:
        while not self._stop_event.is_set():
            values = self.scrape()
            pid = self.pid()
            sample: dict[str, float] = {"t": time.monotonic() - self.t0, "up": 1.0 if values else 0.0}
            sample.update(values or {})
            with contextlib.suppress(OSError):
                sample["rss"] = rss_mib(pid) if pid else float("nan")
            self.samples.append(sample)
            self._stop_event.wait(self.interval)

    def stop(self) -> list[dict[str, float]]:
        self._stop_event.set()
        self.join(5)
        return self.samples


def send_for(app: Any, seconds: float, rate: int) -> int:
    """Spans at `rate`/s for `seconds` (every 10th one an error span with an exception), in 0.1 s ticks."""
    sent = 0
    deadline = time.monotonic() + seconds
    per_tick = max(1, rate // 10)
    while time.monotonic() < deadline:
        tick = time.monotonic()
        app.send_traces(per_tick, error_every=10)
        sent += per_tick
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    return sent


def wait_delivered(upstream: FakeCollector, expected: set[bytes], timeout: float, quiet: float = 5.0) -> float:
    """Wait until every expected span arrived, or nothing new arrived for `quiet` s; the time it took."""
    started = time.monotonic()
    last_count, last_change = -1, started
    while time.monotonic() - started < timeout:
        received = upstream.span_ids()
        if expected <= received:
            return time.monotonic() - started
        if len(received) != last_count:
            last_count, last_change = len(received), time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return last_change - started
        time.sleep(0.25)
    return time.monotonic() - started


def _sdk_app(endpoint: str, name: str) -> Any:
    from tests.sdk_app import SdkApp, quiet_sdk_logs

    quiet_sdk_logs()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    return SdkApp("grpc", service_name=name)


class BacklogWatch(threading.Thread):
    """After the Collector's return: when did the spans created before it arrive (all, or the last of them)?"""

    def __init__(self, upstream: FakeCollector, backlog: set[bytes], t0: float) -> None:
        super().__init__(daemon=True)
        self.upstream = upstream
        self.backlog = backlog
        self.t0 = t0
        self.complete_at: float | None = None
        self.last_arrival = time.monotonic() - t0
        self._stop_event = threading.Event()

    def run(self) -> None:
        seen = -1
        while not self._stop_event.is_set():
            arrived = len(self.backlog & self.upstream.span_ids())
            now = time.monotonic() - self.t0
            if arrived != seen:
                seen, self.last_arrival = arrived, now
            if arrived == len(self.backlog):
                self.complete_at = now
                return
            self._stop_event.wait(0.5)

    def stop(self) -> float:
        """Seconds since start (of the run) when the backlog was complete, or when its last span arrived."""
        self._stop_event.set()
        self.join(10)
        return self.complete_at if self.complete_at is not None else self.last_arrival


def outage_run(settings: Settings, mode: str) -> dict[str, Any]:
    """One row of scenario 3: mode is `direct`, `memory` or `disk`."""
    t0 = time.monotonic()
    sidecar: SidecarProcess | None = None
    scraper: Scraper | None = None
    with FakeCollector() as upstream:
        try:
            if mode == "direct":
                endpoint = f"http://{upstream.grpc_endpoint}"
            else:
                ports = SidecarPorts()
                storage = settings.workdir / f"outage-{mode}-queue" if mode == "disk" else None
                sidecar = start_sidecar(bench_exporter(upstream.grpc_endpoint, ports, storage=storage),
                                        f"outage-{mode}", ports, settings.workdir)
                endpoint = sidecar.grpc_endpoint
                proc = sidecar.proc
                scraper = Scraper(ports.metrics, lambda: proc.pid if proc else None, t0, interval=0.25)
                scraper.start()
            app = _sdk_app(endpoint, f"bench-outage-{mode}")
            try:
                send_for(app, settings.steady, settings.rate)
                t_down = time.monotonic() - t0
                upstream.go_down()
                send_for(app, settings.outage, settings.rate)
                upstream.come_up()
                t_up = time.monotonic() - t0
                watch = BacklogWatch(upstream, {i.to_bytes(8, "big") for i in app.span_ids}, t0)
                watch.start()
                send_for(app, settings.steady, settings.rate)
                app.flush(60_000)
                sent = {i.to_bytes(8, "big") for i in app.span_ids}
                wait_delivered(upstream, sent, timeout=120.0)
                drained_at = watch.stop()
                time.sleep(2.0 if scraper else 0.0)  # the timeline shows the settled state too
            finally:
                app.shutdown()
            received = upstream.span_ids()
            total_received = sum(r.item_count for r in upstream.accepted("traces"))
        finally:
            timeline = scraper.stop() if scraper else []
            if sidecar is not None:
                sidecar.stop()
    return {"mode": mode, "sent": len(sent), "received": len(sent & received), "lost": len(sent - received),
            "duplicates": total_received - len(received), "t_down": t_down, "t_up": t_up,
            "drain_seconds": drained_at - t_up, "timeline": timeline}


def plot_outage(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("spans (cumulative)", ("accepted", "sent")), ("queue depth (requests)", ("queue",)),
              ("breaker state\n0 closed, 1 half-open, 2 open", ("breaker",)),
              ("degradation level", ("level",))]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 9), sharex=True)
    styles = {"memory": "-", "disk": "--"}
    for run in runs:
        samples = [s for s in run["timeline"] if s.get("up")]
        if not samples:
            continue
        t = [s["t"] for s in samples]
        for ax, (label, keys) in zip(axes, panels, strict=True):
            for key in keys:
                name = {"accepted": "accepted by the sidecar", "sent": "delivered upstream"}.get(key, key)
                ax.plot(t, [s[key] for s in samples], styles.get(run["mode"], "-"),
                        label=f"{name} ({run['mode']} queue)", linewidth=1.4)
            ax.set_ylabel(label, fontsize=8)
    for ax in axes:
        for run in runs[:1]:
            ax.axvspan(run["t_down"], run["t_up"], color="tab:red", alpha=0.12, label="Collector down")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("seconds since the start of the run")
    axes[2].set_ylim(-0.2, 2.2)
    axes[3].set_ylim(-0.2, 4.2)
    fig.suptitle("Outage: SDK application -> sidecar -> Collector (down for "
                 f"{runs[0]['t_up'] - runs[0]['t_down']:.0f}s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def scenario_outage(settings: Settings) -> Section:
    log(f"outage: Collector down for {settings.outage:g}s, SDK application at {settings.rate} spans/s; "
        "direct, memory queue, disk queue")
    runs = []
    for mode in ("direct", "memory", "disk"):
        run = outage_run(settings, mode)
        runs.append(run)
        log(f"  {mode}: sent {run['sent']}, lost {run['lost']}, drained {run['drain_seconds']:.1f}s after recovery")
    plot_outage([r for r in runs if r["mode"] != "direct"], settings.figure("outage"))
    labels = {"direct": "SDK -> Collector directly", "memory": "SDK -> sidecar (memory queue) -> Collector",
              "disk": "SDK -> sidecar (disk queue) -> Collector"}
    rows = [[labels[r["mode"]], r["sent"], r["received"], r["lost"], f"{r['lost'] / max(1, r['sent']):.1%}",
             r["duplicates"], r["drain_seconds"]] for r in runs]
    body = table(["path", "spans sent", "spans received", "spans lost", "lost", "duplicates",
                  "s to drain after recovery"], rows)
    body += (f"\n\nThe application (the real OpenTelemetry Python SDK, `tests/sdk_app.py`: BatchSpanProcessor, "
             f"gRPC exporter, every 10th span an error) sends {settings.rate} spans/s for {settings.steady:g}s, "
             f"the Collector (tests/fakes/collector.py) is down for {settings.outage:g}s while it keeps "
             f"sending, then {settings.steady:g}s more after it is back. Time to drain: from the Collector's "
             "return until every span created before it (the backlog) arrived, or the last of them that did. "
             "Sidecar settings: retry 500ms..5s, breaker recovery 2s..5s, "
             "health probe every 1s, queue 1000 requests.\n\n"
             f"![]({settings.figure('outage').name})")
    data = {r["mode"]: {k: v for k, v in r.items() if k != "timeline"} for r in runs}
    return Section("outage", "3. Collector outage", body, data)


def scenario_crash(settings: Settings) -> Section:
    log("crash: disk queue, Collector down, SIGKILL of the sidecar, restart, Collector back")
    ports = SidecarPorts()
    storage = settings.workdir / "crash-queue"
    config = bench_exporter("127.0.0.1:0", ports, storage=storage)
    with FakeCollector() as upstream:
        config["exporters"]["otlp_grpc"]["endpoint"] = upstream.grpc_endpoint
        sidecar = start_sidecar(config, "crash", ports, settings.workdir)
        app = _sdk_app(sidecar.grpc_endpoint, "bench-crash")
        try:
            send_for(app, settings.steady, settings.rate)
            upstream.go_down()
            send_for(app, settings.outage / 2, settings.rate)
            flushed = app.flush(30_000)  # everything created so far is acknowledged by the sidecar
            acknowledged = len(app.span_ids)
            assert sidecar.proc is not None
            queued = int(metric(sidecar, "sidecar_exporter_queue_size"))
            os.kill(sidecar.proc.pid, signal.SIGKILL)
            sidecar.proc.wait()
            log(f"  killed the sidecar holding {queued} queued requests ({acknowledged} spans acknowledged)")
            sidecar = start_sidecar(config, "crash", ports, settings.workdir)
            send_for(app, settings.outage / 2, settings.rate)
            upstream.come_up()
            t_up = time.monotonic()
            watch = BacklogWatch(upstream, {i.to_bytes(8, "big") for i in app.span_ids}, t_up)
            watch.start()
            send_for(app, settings.steady, settings.rate)
            app.flush(60_000)
            sent = {i.to_bytes(8, "big") for i in app.span_ids}
            wait_delivered(upstream, sent, timeout=120.0)
            drain = watch.stop()
            received = upstream.span_ids()
            total_received = sum(r.item_count for r in upstream.accepted("traces"))
        finally:
            app.shutdown()
            sidecar.stop()
    before_kill = {i.to_bytes(8, "big") for i in app.span_ids[:acknowledged]}
    data = {"sent": len(sent), "acknowledged_before_kill": acknowledged, "flushed": flushed,
            "queued_requests_at_kill": queued, "lost": len(sent - received),
            "lost_of_acknowledged_before_kill": len(before_kill - received),
            "duplicates": total_received - len(received), "drain_seconds": drain}
    log(f"  lost {data['lost']} of {len(sent)} ({data['lost_of_acknowledged_before_kill']} of the "
        f"{acknowledged} acknowledged before the kill), {data['duplicates']} duplicates")
    rows = [["spans sent by the application", len(sent)],
            ["of which acknowledged by the sidecar before SIGKILL", acknowledged],
            ["requests in the disk queue at SIGKILL", queued],
            ["spans lost (all)", data["lost"]],
            ["spans lost of those acknowledged before SIGKILL", data["lost_of_acknowledged_before_kill"]],
            ["duplicates delivered (at-least-once replay)", data["duplicates"]],
            ["s to drain the backlog after the Collector's return", drain]]
    body = table(["", "value"], rows)
    body += (f"\n\nDisk queue (SQLite WAL, synchronous=FULL). The SDK application sends {settings.rate} spans/s; "
             f"the Collector goes down after {settings.steady:g}s; {settings.outage / 2:g}s later the application "
             "flushes (so everything it created has been acknowledged by the sidecar) and the sidecar is killed "
             "with SIGKILL, restarted on the same directory at once; the application keeps sending, then the "
             "Collector comes back.")
    return Section("crash", "4. SIGKILL during the outage (disk queue)", body, data)


# -------------------------------------------------------------------------------------- 5: memory


def plot_memory(samples: list[dict[str, float]], limit: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    t = [s["t"] for s in samples]
    ax.plot(t, [s.get("rss", float("nan")) for s in samples], label="sidecar RSS (MiB)")
    ax.axhline(limit, color="tab:red", linestyle="--", label="service.memory_limit_mib")
    ax.axhline(0.8 * limit, color="tab:orange", linestyle=":", label="80 % (level 3)")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax2.plot(t, [s.get("level", float("nan")) for s in samples], label="degradation level")
    ax2.plot(t, [s.get("queue", float("nan")) / 1000 for s in samples], label="queue (thousand requests)")
    ax2.legend(fontsize=7, loc="lower right")
    ax2.grid(alpha=0.3)
    ax2.set_xlabel("seconds (upstream down throughout)")
    fig.suptitle("Memory: RSS with the upstream down and memory_limit_mib set")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def scenario_memory(settings: Settings) -> Section:
    limit = settings.memory_limit_mib
    log(f"memory: upstream down, memory_limit_mib {limit:g}, loadgen for {settings.memory_duration:g}s")
    ports = SidecarPorts()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: the upstream is down throughout
    config = bench_exporter(dead, ports, sending_queue={"num_consumers": 10, "queue_size": 100_000})
    config["service"]["memory_limit_mib"] = limit
    sidecar = start_sidecar(config, "memory", ports, settings.workdir)
    assert sidecar.proc is not None
    proc = sidecar.proc
    baseline = rss_mib(proc.pid)
    scraper = Scraper(ports.metrics, lambda: proc.pid, time.monotonic(), interval=0.1)
    scraper.start()
    try:
        result = run_loadgen(f"127.0.0.1:{ports.grpc}", concurrency=8, duration=settings.memory_duration,
                             error_fraction=ERROR_FRACTION, warmup=0.0)
        time.sleep(1.0)
        accepted = metric(sidecar, "sidecar_receiver_accepted_spans_total")
        dropped = metric(sidecar, "sidecar_dropped_items_total")
    finally:
        samples = scraper.stop()
        sidecar.stop()
    rss = [s["rss"] for s in samples if s.get("rss") == s.get("rss")]
    peak = max(rss) if rss else float("nan")
    above = sum(1 for v in rss if v > limit) * scraper.interval
    levels = sorted({int(s["level"]) for s in samples if s.get("up")})
    plot_memory(samples, limit, settings.figure("memory"))
    data = {"limit_mib": limit, "baseline_mib": baseline, "peak_mib": peak, "seconds_above_limit": above,
            "levels": levels, "accepted_spans": accepted, "shed_items": dropped,
            "refused_calls": result["failed"], "ok_calls": result["requests"],
            "failure_codes": result["failure_codes"]}
    log(f"  RSS baseline {baseline:.0f} MiB, peak {peak:.0f} MiB (limit {limit:g}); levels {levels}; "
        f"{result['failed']} calls refused")
    checkpoints = []
    for second in range(0, int(settings.memory_duration) + 2, max(1, int(settings.memory_duration) // 8)):
        near = [s for s in samples if abs(s["t"] - second) < 0.1]
        if near:
            s = near[0]
            checkpoints.append([f"{second}s", s.get("rss", float("nan")), int(s.get("level", 0)),
                                s.get("queue", float("nan"))])
    body = table(["service.memory_limit_mib", "RSS at start", "peak RSS", "s above the limit",
                  "levels reached", "calls accepted", "calls refused (UNAVAILABLE)", "spans shed"],
                 [[limit, baseline, peak, above, ", ".join(map(str, levels)), result["requests"], result["failed"],
                   dropped]])
    body += "\n\nRSS over time (MiB):\n\n" + table(["time", "RSS MiB", "level", "queue (requests)"], checkpoints)
    body += (f"\n\nThe exporter points at a port where nothing listens; the load generator pushes {SPANS}-span "
             f"requests (10 % error spans) at concurrency 8 for {settings.memory_duration:g}s into a memory queue "
             "large enough (100 000 requests) that the memory limit, not the queue, decides. RSS sampled every "
             "0.1 s from /proc.\n\n"
             f"![]({settings.figure('memory').name})")
    return Section("memory", "5. Memory under an outage with memory_limit_mib", body, data)


# ----------------------------------------------------------------------------------------- results


def machine(command: str) -> str:
    import google.protobuf
    import grpc
    from google.protobuf.internal import api_implementation

    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [["date", dt.datetime.now().strftime("%Y-%m-%d %H:%M")], ["command", f"`{command}`"],
            ["nproc", os.cpu_count()], ["CPU", cpu], ["kernel", platform.release()],
            ["python", platform.python_version()], ["grpcio", grpc.__version__],
            ["protobuf", f"{google.protobuf.__version__} ({api_implementation.Type()} backend)"],
            ["load average at start", load]]
    return table(["", ""], rows)


TARGETS = [
    ("throughput with 10 % error spans enriched", ">= 250,000 spans/s"),
    ("fast path (0 % error spans) vs direct", ">= 0.5 of direct"),
    ("added p50 latency, 512 spans, concurrency 1", "<= 3 ms"),
    ("spans lost in the outage, sidecar rows", "0"),
    ("spans lost after SIGKILL (disk queue)", "0"),
    ("RSS within memory_limit_mib", "peak <= limit"),
    ("fleet mode: calls hitting the upstream failing 20 s (4 and 8 sidecars, any breaker settings)", "<= 21"),
    ("fleet mode: recovery -> first delivered export (same rows)", "<= 2 s"),
    ("fleet mode: spans lost, Redis killed or failed over mid-failure, or not", "0"),
    ("issue 15: fast path (0 % error spans) vs direct", ">= 0.35 of direct"),
    ("issue 15: fast path vs rotel relaying the same load", ">= 1.25x rotel's spans/s"),
    ("issue 15: 10 % error spans enriched vs direct", ">= 0.25 of direct"),
    ("issue 15: CPU at 10k spans/s, 100-span requests (defaults)", "<= 1.5x rotel's"),
    ("issue 15: CPU at 10k spans/s, 512-span requests (defaults)", "<= 1.2x rotel's"),
    ("issue 26: 50 % error spans enriched vs direct", ">= 0.25 of direct"),
    ("issue 26: 10 % error spans enriched vs direct", ">= 0.35 of direct"),
    ("issue 26: added p50 latency, concurrency 1, 10 % error spans", "<= 1.3 ms"),
    ("issue 24: idle RSS, gRPC only", "<= 40 MiB"),
    ("issue 24: RSS at 10k spans/s, 100-span requests, gRPC only", "<= 50 MiB and <= 1.6x rotel's"),
    ("issue 24: RSS 60 s after a 30 s burst, gRPC only", "within 15 MiB of idle"),
    ("issue 24: exec -> /ready 200, gRPC only", "<= 0.4 s"),
]
FOOTPRINT_ROW = "sidecar, gRPC only"


def summary(results: dict[str, Any]) -> str:
    rows = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    tp = results.get("throughput", {}).get("modes", {})
    errors = tp.get(ENRICHED)
    fast = tp.get(FAST)
    rows.append([*TARGETS[0], f"{errors['spans_per_second']:,.0f} spans/s ({errors['ratio']:.2f} of direct)"
                 if errors else "-", verdict(errors["spans_per_second"] >= 250_000 if errors else None)])
    rows.append([*TARGETS[1], f"{fast['ratio']:.2f} ({fast['spans_per_second']:,.0f} spans/s)" if fast else "-",
                 verdict(fast["ratio"] >= 0.5 if fast else None)])
    lat = results.get("latency", {}).get("cases", {}).get("c1_e0")
    rows.append([*TARGETS[2], f"{lat['added_p50']:.2f} ms ({lat['direct_p50']:.2f} -> {lat['sidecar_p50']:.2f})"
                 if lat else "-", verdict(lat["added_p50"] <= 3.0 if lat else None)])
    out = results.get("outage", {})
    if out.get("memory") and out.get("disk"):
        lost = out["memory"]["lost"] + out["disk"]["lost"]
        rows.append([*TARGETS[3], f"memory {out['memory']['lost']}, disk {out['disk']['lost']} "
                     f"(direct: {out.get('direct', {}).get('lost', '-')})", verdict(lost == 0)])
    else:
        rows.append([*TARGETS[3], "-", verdict(None)])
    crash = results.get("crash")
    rows.append([*TARGETS[4], f"{crash['lost']} of {crash['sent']}" if crash else "-",
                 verdict(crash["lost"] == 0 if crash else None)])
    mem = results.get("memory")
    rows.append([*TARGETS[5], f"peak {mem['peak_mib']:.0f} MiB, limit {mem['limit_mib']:g} MiB" if mem else "-",
                 verdict(mem["peak_mib"] <= mem["limit_mib"] if mem else None)])
    fleet = results.get("fleet", {}).get("modes", {})
    fleet_runs = {name: r for name, r in fleet.items() if name.startswith("fleet")}
    plain = [r for name, r in fleet_runs.items() if "killed" not in name and "failed over" not in name]
    calls = [r["calls_during_failure"] for r in plain]
    rows.append([*TARGETS[6], ", ".join(str(c) for c in calls) if calls else "-",
                 verdict(max(calls) <= 21 if calls else None)])
    firsts = [r.get("recovery_to_first_export") for r in plain]
    known = [f for f in firsts if f is not None]
    rows.append([*TARGETS[7], ", ".join(f"{f:.2f} s" if f is not None else "-" for f in firsts) if firsts else "-",
                 verdict(len(known) == len(firsts) and max(known) <= 2.0 if firsts else None)])
    lost = [r["lost"] for r in fleet_runs.values()]
    rows.append([*TARGETS[8], ", ".join(str(v) for v in lost) if lost else "-",
                 verdict(sum(lost) == 0 if lost else None)])
    rows.append([*TARGETS[9], f"{fast['ratio']:.2f}" if fast else "-",
                 verdict(fast["ratio"] >= 0.35 if fast else None)])
    versus = fast.get("ratio_to_rotel") if fast else None
    rows.append([*TARGETS[10], f"{versus:.2f}x" if versus else "-", verdict(versus >= 1.25 if versus else None)])
    rows.append([*TARGETS[11], f"{errors['ratio']:.2f}" if errors else "-",
                 verdict(errors["ratio"] >= 0.25 if errors else None)])
    cpu = results.get("cpu", {}).get("sizes", {})
    for index, (size, goal) in enumerate((("100", 1.5), ("512", 1.2)), start=12):
        row = cpu.get(size, {}).get(SIDECAR_DEFAULTS)
        rows.append([*TARGETS[index], f"{row['ratio_to_rotel']:.2f}x ({row['cpu_percent']:.1f} % of a core vs "
                     f"{cpu[size][ROTEL_DEFAULTS]['cpu_percent']:.1f} %)" if row else "-",
                     verdict(row["ratio_to_rotel"] <= goal if row else None)])
    storm = tp.get(STORM)
    rows.append([*TARGETS[14], f"{storm['ratio']:.2f} ({storm['spans_per_second']:,.0f} spans/s)" if storm else "-",
                 verdict(storm["ratio"] >= 0.25 if storm else None)])
    rows.append([*TARGETS[15], f"{errors['ratio']:.2f}" if errors else "-",
                 verdict(errors["ratio"] >= 0.35 if errors else None)])
    lat10 = results.get("latency", {}).get("cases", {}).get("c1_e10")
    rows.append([*TARGETS[16], f"{lat10['added_p50']:.2f} ms ({lat10['direct_p50']:.2f} -> {lat10['sidecar_p50']:.2f})"
                 if lat10 else "-", verdict(lat10["added_p50"] <= 1.3 if lat10 else None)])
    foot = results.get("footprint", {}).get(FOOTPRINT_ROW)
    rows.append([*TARGETS[17], f"{foot['idle_rss_mib']:.1f} MiB" if foot else "-",
                 verdict(foot["idle_rss_mib"] <= 40 if foot else None)])
    rows.append([*TARGETS[18], f"{foot['rate_rss_mib']:.1f} MiB, {foot['rate_rss_vs_rotel']:.2f}x" if foot else "-",
                 verdict(foot["rate_rss_mib"] <= 50 and foot["rate_rss_vs_rotel"] <= 1.6 if foot else None)])
    rows.append([*TARGETS[19], f"{foot['after_minus_idle_mib']:+.1f} MiB" if foot else "-",
                 verdict(foot["after_minus_idle_mib"] <= 15 if foot else None)])
    rows.append([*TARGETS[20], f"{foot['start_s']:.2f} s" if foot else "-",
                 verdict(foot["start_s"] <= 0.4 if foot else None)])
    rows += [[target, goal, result, verdict(ok)]
             for target, goal, result, ok in scale_targets(results.get("fleet-scale", {}).get("runs", {}))]
    return table(["target", "goal", "result", ""], rows)


def write_results(sections: list[Section], command: str, results_path: Path) -> None:
    data_path = results_path.with_name(results_path.stem.lower() + ".json")
    stored: dict[str, Any] = {}
    if data_path.exists():
        with contextlib.suppress(ValueError):
            stored = json.loads(data_path.read_text())
    bodies: dict[str, str] = stored.get("_bodies", {})
    meta: dict[str, str] = stored.get("_meta", {})
    for section in sections:
        stored[section.key] = section.data
        bodies[section.key] = f"## {section.title}\n\n{section.body}\n"
        meta[section.key] = command
    stored["_bodies"] = bodies
    stored["_meta"] = meta
    if sections or "_machine" not in stored:
        stored["_machine"] = machine(command)
    data_path.write_text(json.dumps(stored, indent=1, default=str) + "\n")
    parts = ["# Benchmark results\n",
             "Generated by `bench/run.py` (`make bench`; `make bench-quick` for the short version). Each "
             "section is replaced by the scenario that produced it; the machine table is from the last run.\n",
             "## Machine\n", stored["_machine"] + "\n", "## Targets\n", summary(stored) + "\n"]
    for key in SECTIONS:
        if key in bodies:
            parts.append(bodies[key])
            if meta.get(key) and meta[key] != command:
                parts.append(f"_(from `{meta[key]}`)_\n")
    notes = BENCH / "notes.md"
    if notes.exists():
        parts.append(notes.read_text())
    text = "\n".join(parts)
    # Sections written by other tools (e.g. bench/soak.py's "## Soak") are kept as they are.
    ours = set(re.findall(r"^## (.+)$", text, flags=re.M))
    if results_path.exists():
        for match in re.finditer(r"^## (.+?)\n.*?(?=^## |\Z)", results_path.read_text(), flags=re.S | re.M):
            if match.group(1) not in ours:
                text = text.rstrip("\n") + "\n\n" + match.group(0).rstrip("\n") + "\n"
    results_path.write_text(text)


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="all", choices=("all", *SECTIONS, "render"),
                        help="render: only rewrite the results file from its JSON (e.g. after editing notes.md)")
    parser.add_argument("--quick", action="store_true", help="short runs (make bench-quick)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per throughput/latency run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per throughput/latency mode")
    parser.add_argument("--outage", type=float, default=None, help="seconds the Collector is down")
    parser.add_argument("--cpu-window", type=float, default=None, help="measured seconds per steady-rate run")
    parser.add_argument("--cpu-repeats", type=int, default=None, help="steady-rate runs per relay and size")
    parser.add_argument("--sizes", default=None, help="fleet-scale: members to simulate, e.g. 50,200,1000")
    parser.add_argument("--memory-limit", type=float, default=256.0, help="service.memory_limit_mib (scenario 5)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="footprint: also measure the sidecar of this checkout (with its own .venv), e.g. main")
    parser.add_argument("--results", type=Path, default=None,
                        help="results file (default bench/RESULTS.md; with --quick bench/RESULTS-quick.md)")
    args = parser.parse_args(argv)
    settings = Settings.make(args)
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.scenario == "render":
        shutil.rmtree(settings.workdir, ignore_errors=True)
        write_results([], command.strip(), settings.results)
        print(f"rewrote {settings.results}")
        return 0
    wanted = IN_ALL if args.scenario == "all" else (args.scenario,)
    started = time.monotonic()
    sections: list[Section] = []
    try:
        if "throughput" in wanted or "latency" in wanted:
            with sink_and_sidecar(settings) as pair:
                if "throughput" in wanted:
                    sections.append(scenario_throughput(settings, pair))
                if "latency" in wanted:
                    sections.append(scenario_latency(settings, pair))
        if "outage" in wanted:
            sections.append(scenario_outage(settings))
        if "crash" in wanted:
            sections.append(scenario_crash(settings))
        if "memory" in wanted:
            sections.append(scenario_memory(settings))
        if "cpu" in wanted:
            sections.append(scenario_cpu(settings))
        if "fleet" in wanted:
            from bench.fleet import scenario_fleet  # bench.fleet imports this module

            sections.append(scenario_fleet(settings))
        if "fleet-scale" in wanted:
            from bench.fleet_scale import scenario_fleet_scale

            sections.append(scenario_fleet_scale(settings))
        if "footprint" in wanted:
            from bench.footprint import scenario_footprint  # bench.footprint imports this module

            sections.append(scenario_footprint(settings, args.baseline))
    finally:
        if sections:
            write_results(sections, command.strip(), settings.results)
        shutil.rmtree(settings.workdir, ignore_errors=True)
    for section in sections:
        print(f"\n## {section.title}\n\n{section.body}\n")
    print(f"wrote {settings.results} in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
