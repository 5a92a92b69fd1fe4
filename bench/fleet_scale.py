"""Scenario 8 of bench/run.py: fleet mode at 50, 200 and 1,000 members (issue 28, item 3).

    python -m bench.run fleet-scale [--quick]

One machine runs only a handful of real sidecar processes, so the fleet is simulated: N members
spread over a few worker processes (`python -m bench.fleet_scale worker SPEC`), each an asyncio
loop (uvloop, as the sidecar) hosting N/k members. A member is the real exporter and the real fleet
code, wired as the service wires them; only the transport is an in-process simulated upstream
(the seam: bench/fleet_sim.py). All members share one real redis-server, started here on a free
port, each through its own redis-py client and pub/sub connection. The fleet sends 2,000
requests/s in total, spread evenly over the members.

Runs, for each N:

* outage, fleet on (and the same with fleet off, for comparison): healthy for a while (the Redis
  cost of a healthy fleet is measured in that window: `INFO commandstats`, `INFO stats`, `INFO
  cpu`), then every call answered UNAVAILABLE for 20 s, then healthy again. Measured: Export calls
  (data and probes) on the failing upstream, the time from the first failure to the fleet's open
  (the first `open` on the breaker channel, seen by a subscriber here) and until every member's
  breaker is open, and the first delivered export after recovery;
* scattered failures, fleet off and on: a healthy upstream whose calls fail independently with
  probability 1 % (then 5 %) for 60 s. Measured: fleet-wide opens (`open` messages on the channel),
  local breaker opens, and the delivery latency (client acknowledged -> upstream accepted) p99.

Each worker measures its own scheduling lag (how late a 20 ms sleep wakes up): when the machine
cannot keep up, the lag says by how much every figure may be late. It also times the collector's full
passes (a loop holds hundreds of members' heaps: the members' set-up is `gc.freeze()`-d, and no automatic
full pass runs during the load, as none would in a sidecar within a minute; one is timed after it), splits the
delivery latency into first attempts and retried requests, and times the fleet budget's answers to
retries (`retry_split`): a 1 % row's p99 sits at the edge of the retried share.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FLEET_SIZES = (50, 200, 1000)
TOTAL_RATE = 2000.0  # requests/s of the whole fleet
OUTAGE = 20.0
SCATTER_RATIOS = (0.01, 0.05)
LAG_TICK = 0.02
NO_FULL_PASSES = 10**9  # the collector's third threshold in a worker: no automatic full pass within a run


# ---------------------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Phases:
    """Seconds, relative to the start of the load."""

    healthy_from: float  # the healthy-fleet window (Redis cost) ...
    healthy_until: float
    fail_from: float | None  # the outage (None: no outage)
    fail_until: float | None
    latency_from: float  # delivery latencies of requests accepted from here on are kept
    load_until: float
    fail_ratio: float = 0.0


def outage_phases(outage: float = OUTAGE, warm: float = 4.0, healthy: float = 10.0, after: float = 8.0) -> Phases:
    fail_from = warm + healthy + 1.0
    return Phases(warm, warm + healthy, fail_from, fail_from + outage, warm, fail_from + outage + after)


def scatter_phases(ratio: float, duration: float, warm: float = 3.0) -> Phases:
    return Phases(warm, warm + duration, None, None, warm, warm + duration, fail_ratio=ratio)


@dataclass(frozen=True)
class RunSpec:
    members: int
    workers: int
    fleet: bool
    phases: Phases
    label: str


def outage_calls_target(members: int) -> float:
    """Issue 28: at most this many calls on the upstream during its 20 s failure, for a fleet of `members`."""
    return 0.5 * members + 20


def workers_for(members: int) -> int:
    """Worker processes: enough that no loop hosts more than about 250 members, at least 2."""
    return max(2, min(4, math.ceil(members / 250)))


def split(members: int, workers: int) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of the members each worker hosts, as even as possible."""
    bounds = [round(i * members / workers) for i in range(workers + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(workers)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def retry_split(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The delivery latencies split into requests delivered at their first attempt and retried ones, and what
    the fleet budget answered the retries (the p99 of a 1 % row sits at the edge of the retried 1 %)."""
    latencies = [v for w in workers for v in w["latencies_ms"]]
    retried = [r for w in workers for r in w.get("retried_ms", [])]
    retried_latency = [latency for latency, _ in retried]
    left = Counter(retried_latency)  # the retried are a subset of all: take them out, one each
    first = []
    for latency in latencies:
        if left[latency]:
            left[latency] -= 1
        else:
            first.append(latency)
    spends = [s for w in workers for s in w.get("fleet_spends", [])]
    spend_times = [d * 1000 for d, _ in spends]
    return {
        "retried": len(retried), "retried_share": len(retried) / len(latencies) if latencies else None,
        "first_attempt_p50_ms": percentile(first, 0.5), "first_attempt_p99_ms": percentile(first, 0.99),
        "first_attempt_max_ms": max(first, default=None),
        "retried_p50_ms": percentile(retried_latency, 0.5), "retried_p99_ms": percentile(retried_latency, 0.99),
        "retry_gap_p50_ms": percentile([g for _, g in retried], 0.5),
        "retry_gap_p99_ms": percentile([g for _, g in retried], 0.99),
        "local_budget_refused": sum(w.get("local_budget_refused", 0) for w in workers),
        "fleet_spends": len(spends), "fleet_granted": sum(1 for _, a in spends if a is True),
        "fleet_refused": sum(1 for _, a in spends if a is False),
        "fleet_unknown": sum(1 for _, a in spends if a is None),
        "fleet_spend_p50_ms": percentile(spend_times, 0.5), "fleet_spend_p99_ms": percentile(spend_times, 0.99),
    }


def outage_figures(workers: list[dict[str, Any]], messages: list[tuple[float, str]], fail_from: float,
                   fail_until: float) -> dict[str, Any]:
    """The outage's figures from what the workers' upstreams and members saw and the channel carried."""
    data = [c for w in workers for c in w["data"]]
    probes = [c for w in workers for c in w["probes"]]
    during = [t for t, _ in data + probes if fail_from <= t < fail_until]
    failures = sorted(t for t, ok in data + probes if not ok and fail_from <= t < fail_until)
    first_failure = failures[0] if failures else None
    opens = sorted(t for t, state in messages if state == "open" and t >= fail_from)
    fleet_open = opens[0] - first_failure if opens and first_failure is not None else None
    member_opens = [min((t for t, new in m if new == "open" and fail_from <= t < fail_until), default=None)
                    for w in workers for m in w["transitions"]]
    opened = [t for t in member_opens if t is not None]
    all_open = (max(opened) - first_failure if opened and len(opened) == len(member_opens)
                and first_failure is not None else None)
    first_data = min((t for t, ok in data if ok and t >= fail_until), default=None)
    first_probe = min((t for t, ok in probes if ok and t >= fail_until), default=None)
    return {
        "calls_during_failure": len(during),
        "data_calls": sum(1 for t, _ in data if fail_from <= t < fail_until),
        "probe_calls": sum(1 for t, _ in probes if fail_from <= t < fail_until),
        "calls_before_open": (sum(1 for t in during if t < opens[0]) if opens else None),
        "first_failure_to_fleet_open": fleet_open,
        "first_failure_to_all_open": all_open,
        "members_opened": len(opened),
        "fleet_opens": len(opens),
        "first_success_after_recovery": first_data - fail_until if first_data is not None else None,
        "first_probe_success_after_recovery": first_probe - fail_until if first_probe is not None else None,
    }


def redis_cost(before: dict[str, Any], after: dict[str, Any], seconds: float, members: int) -> dict[str, Any]:
    """Commands/s per member and redis-server CPU over a window, from two INFO snapshots."""
    def calls(info: dict[str, Any]) -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info["commandstats"].items()}

    first, last = calls(before), calls(after)
    per_command = {k: (v - first.get(k, 0)) / seconds for k, v in last.items() if v - first.get(k, 0) > 0}
    processed = (after["total_commands_processed"] - before["total_commands_processed"]) / seconds
    cpu = (after["cpu"] - before["cpu"]) / seconds
    return {"commands_per_s": processed, "commands_per_s_per_member": processed / members,
            "commandstats_per_s": dict(sorted(per_command.items(), key=lambda kv: -kv[1])),
            "redis_cpu_percent": 100.0 * cpu, "seconds": seconds}


# ---------------------------------------------------------------------------------------- worker


async def _worker(spec: dict[str, Any]) -> None:
    import logging

    from bench.fleet_sim import Member, SimUpstream, UpstreamPlan, export_classifier, request
    from sidecar.telemetry.events import Events
    from sidecar.telemetry.metrics import Metrics

    logging.basicConfig(level=logging.ERROR)  # the sidecar's warnings x N members would be the load
    lo, hi = spec["members"]
    upstream = SimUpstream(UpstreamPlan(), seed=lo + 1)
    events = Events(Metrics())
    classifier = export_classifier()
    members = [Member(i, spec["redis_url"], upstream, events, classifier, spec["key_prefix"]) for i in range(lo, hi)]
    started = time.monotonic()
    for member in members:
        await member.start()
        await asyncio.sleep(0.002)  # a fleet starts over time, not all in one tick
    setup = time.monotonic() - started
    # The members' long-lived objects (clients, connections, tasks, config) are set up now: keep them out of the
    # collector's full passes, whose pause grows with the heap. One loop holds hundreds of members' heaps, a
    # sidecar one: without this a full pass stalled a 250-member loop fleet-on for up to 0.58 s, 36 passes in
    # 25 s (fleet off: 94 ms, 4), every request in flight waiting (bench/notes.md, "... p99 at 1,000").
    gc.freeze()
    # Nor does the loop make the collector's automatic full passes during the run. Their frequency follows the
    # process's allocations and their length its heap, both those of 250 members here: 6 passes a minute of
    # 50-200 ms each (fleet on; fewer off, with fewer allocations), every request in flight waiting. One
    # sidecar at 2 requests/s allocates 1/250 of that, so its first full pass (about 10-30 ms, a sidecar's
    # heap) comes some 40 minutes in, never within a run: it makes none here either (bench/notes.md, "Fleet
    # scale: a member's background work halved").
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_PASSES)
    print(f"{len(members)} members started in {setup:.1f}s", file=sys.stderr, flush=True)
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    schedule = json.loads(line)
    base = schedule["base"]
    phases = Phases(**schedule["phases"])
    upstream.plan = UpstreamPlan(
        fail_from=base + phases.fail_from if phases.fail_from is not None else math.inf,
        fail_until=base + phases.fail_until if phases.fail_until is not None else math.inf,
        fail_ratio=phases.fail_ratio)
    upstream.record_latency_from = base + phases.latency_from
    for member in members:
        member.transitions.clear()
    rate = float(spec["rate"])
    lags: list[float] = []
    cpu_marks: dict[str, float] = {}
    refused = 0
    sent = 0

    async def lag_monitor() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK)
            lags.append(max(0.0, loop.time() - before - LAG_TICK))

    async def cpu_sampler() -> None:
        for name, at in (("healthy_from", phases.healthy_from), ("healthy_until", phases.healthy_until)):
            await asyncio.sleep(max(0.0, base + at - time.time()))
            cpu_marks[name] = time.process_time()

    # The collector's pauses, the stalls a loop hosting hundreds of members' objects may see (not a sidecar's).
    gc_pauses: list[float] = []
    gc_started: list[float] = []

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[:] = [time.perf_counter()]
        elif gc_started and info.get("generation") == 2:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    await asyncio.sleep(max(0.0, base - time.time()))
    gc.callbacks.append(gc_timer)
    monitor = asyncio.ensure_future(lag_monitor())
    sampler = asyncio.ensure_future(cpu_sampler())
    trace = spec["members"][0] << 40
    end = base + phases.load_until
    while (now := time.time()) < end:
        due = int((now - base) * rate)
        while sent < due:
            member = members[sent % len(members)]
            message, payload = request(time.time_ns(), (trace + sent).to_bytes(16, "big"))
            if not await member.accept(message, payload, time.time()):
                refused += 1
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)  # a loop behind schedule still lets the members run
        await asyncio.sleep(0.01)
    monitor.cancel()
    gc.callbacks.remove(gc_timer)
    print(f"load done: {sent} sent", file=sys.stderr, flush=True)
    await asyncio.sleep(0.5)  # what is in flight settles
    sampler.cancel()
    collecting = time.perf_counter()
    gc.collect()  # what a full pass of this loop's heap costs (none ran during the load; nothing measured waits)
    full_pass = time.perf_counter() - collecting
    healthy_cpu = None
    if "healthy_from" in cpu_marks and "healthy_until" in cpu_marks:
        healthy_cpu = (cpu_marks["healthy_until"] - cpu_marks["healthy_from"]) / (
            phases.healthy_until - phases.healthy_from)
    local_opens = sum(1 for m in members for t in m.transitions if t.new == "open" and t.source == "local")
    result = {
        "members": [lo, hi], "setup_seconds": setup, "sent": sent, "refused": refused,
        "data": upstream.calls.data, "probes": upstream.calls.probes,
        "latencies_ms": [round(v, 2) for v in upstream.calls.latencies_ms],
        "delivered": upstream.calls.requests_delivered,
        "retried_ms": [[round(a, 2), round(b, 2)] for a, b in upstream.calls.retried_ms],
        "local_budget_refused": sum(m.chain.budget.refused for m in members),
        "gc_full_collections": len(gc_pauses), "gc_full_max_ms": 1000 * max(gc_pauses, default=0.0),
        "gc_full_pass_after_ms": 1000 * full_pass,
        "fleet_spends": [[round(d, 4), a] for m in members for d, a in m.fleet_spends],
        "transitions": [[(t.at, t.new) for t in m.transitions] for m in members],
        "local_opens": local_opens,
        "lag_p50_ms": 1000 * (percentile(lags, 0.5) or 0.0), "lag_p99_ms": 1000 * (percentile(lags, 0.99) or 0.0),
        "lag_max_ms": 1000 * max(lags, default=0.0), "healthy_cpu_fraction": healthy_cpu,
    }
    write_result(Path(spec["result"]), result)
    # The stop below is bounded by a cancel scope, but a loop hosting hundreds of members can be too busy
    # to honour it in time: the result is written, so a watchdog ends the process regardless.
    threading.Timer(15.0, os._exit, args=(0,)).start()
    # Leave the fleet politely (free leases, drop heartbeats) so the next run starts clean, but within a
    # bound: the process exits right after, and the parent flushes Redis before the next run anyway.
    stopping = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10.0):
            await asyncio.gather(*(member.stop() for member in members), return_exceptions=True)
    print(f"members stopped in {time.monotonic() - stopping:.1f}s", file=sys.stderr, flush=True)


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Whole or not at all: the parent reads the file as soon as it exists."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.rename(path)
    print("result written", file=sys.stderr, flush=True)


def worker_main(spec_path: str) -> int:
    from sidecar import runtime

    runtime.install_uvloop()
    spec = json.loads(Path(spec_path).read_text())
    with contextlib.suppress(TimeoutError):  # a stop that outlasts its bound must not keep the result back
        asyncio.run(_worker(spec))
    os._exit(0)  # the result is written: skip the interpreter's teardown of N members' sockets and tasks


# ---------------------------------------------------------------------------------------- parent


@dataclass
class Channel:
    """Every breaker change on the fleet's channel, with the wall time it arrived here."""

    url: str
    prefix: str
    messages: list[tuple[float, str]] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)  # of each open, as the breaker record says (`cause`, `by`)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        import redis

        from bench.fleet_sim import ENDPOINT
        from sidecar.fleet.keys import Keys

        keys = Keys(self.prefix)
        client = redis.Redis.from_url(self.url, decode_responses=True)
        pubsub = client.pubsub()
        pubsub.subscribe(keys.channel)

        def listen() -> None:
            while not self._stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is not None and message.get("type") == "message":
                    parts = str(message["data"]).rsplit("\n", 4)
                    if len(parts) == 5:
                        self.messages.append((time.time(), parts[1]))
                        if parts[1] == "open":
                            record = client.hmget(keys.breaker(ENDPOINT), "cause", "by")
                            self.causes.append(f"{record[0]} by {record[1]}")
            pubsub.close()
            client.close()

        self._thread = threading.Thread(target=listen, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def info_snapshot(client: Any) -> dict[str, Any]:
    cpu = client.info("cpu")
    return {"commandstats": client.info("commandstats"),
            "total_commands_processed": int(client.info("stats")["total_commands_processed"]),
            "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), "at": time.time()}


def run_once(spec: RunSpec, redis_url: str, workdir: Path, log: Any = print) -> dict[str, Any]:
    """One run of `spec` against the redis-server at `redis_url` (flushed first)."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    client.config_resetstat()
    prefix = "otlp-sidecar:"
    rundir = Path(tempfile.mkdtemp(prefix=f"{spec.label.replace(' ', '-')}-", dir=workdir))
    procs: list[subprocess.Popen[str]] = []
    results: list[Path] = []
    channel = Channel(redis_url, prefix)
    channel.start()
    phases = spec.phases
    try:
        for index, (lo, hi) in enumerate(split(spec.members, spec.workers)):
            result = rundir / f"worker-{index}.json"
            results.append(result)
            spec_path = rundir / f"worker-{index}-spec.json"
            spec_path.write_text(json.dumps({
                "members": [lo, hi], "redis_url": redis_url if spec.fleet else None, "key_prefix": prefix,
                "rate": TOTAL_RATE * (hi - lo) / spec.members, "result": str(result)}))
            stderr = open(rundir / f"worker-{index}.log", "w")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_scale", "worker", str(spec_path)], cwd=REPO, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr))
            stderr.close()
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a worker of {spec.label} did not start: {line!r}; see {rundir}")
        base = time.time() + 0.5
        schedule = json.dumps({"base": base, "phases": asdict(phases)}) + "\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(schedule)
            proc.stdin.flush()
        time.sleep(max(0.0, base + phases.healthy_from - time.time()))
        before = info_snapshot(client)
        time.sleep(max(0.0, base + phases.healthy_until - time.time()))
        after = info_snapshot(client)
        deadline = time.time() + phases.load_until + 120
        while not all(path.exists() for path in results):
            if time.time() > deadline or any(proc.poll() not in (None, 0) for proc in procs):
                raise RuntimeError(f"a worker of {spec.label} failed; see {rundir}")
            time.sleep(0.2)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
    finally:
        channel.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        client.close()
    workers = [json.loads(path.read_text()) for path in results]
    latencies = [v for w in workers for v in w["latencies_ms"]]
    cpu = [w["healthy_cpu_fraction"] for w in workers if w["healthy_cpu_fraction"] is not None]
    out: dict[str, Any] = {
        "label": spec.label, "members": spec.members, "workers": spec.workers, "fleet": spec.fleet,
        "sent": sum(w["sent"] for w in workers), "refused": sum(w["refused"] for w in workers),
        "delivered": sum(w["delivered"] for w in workers),
        "rate": sum(w["sent"] for w in workers) / phases.load_until,
        "latency_p50_ms": percentile(latencies, 0.5), "latency_p99_ms": percentile(latencies, 0.99),
        "latency_max_ms": max(latencies, default=None),
        **retry_split(workers),
        "fleet_opens": sum(1 for _, state in channel.messages if state == "open"),
        # seconds after the load started: whether the opens of a scattered-failure row came at the fleet's start
        "open_times_s": [round(at - base, 2) for at, state in channel.messages if state == "open"],
        "open_causes": channel.causes,
        "local_opens": sum(w["local_opens"] for w in workers),
        "lag_p99_ms": max(w["lag_p99_ms"] for w in workers), "lag_max_ms": max(w["lag_max_ms"] for w in workers),
        "lag_p50_ms": statistics.median(w["lag_p50_ms"] for w in workers),
        "gc_full_collections": sum(w.get("gc_full_collections", 0) for w in workers),
        "gc_full_max_ms": max(w.get("gc_full_max_ms", 0.0) for w in workers),
        "gc_full_pass_after_ms": max(w.get("gc_full_pass_after_ms", 0.0) for w in workers),
        "setup_seconds": max(w["setup_seconds"] for w in workers),
        "worker_cpu_percent": 100.0 * sum(cpu) if cpu else None,
        "redis": redis_cost(before, after, after["at"] - before["at"], spec.members),
    }
    if phases.fail_from is not None and phases.fail_until is not None:
        out.update(outage_figures(workers, channel.messages, base + phases.fail_from, base + phases.fail_until))
    log(f"  {spec.label}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in out.items() if k != "redis")
        + f", redis {out['redis']['commands_per_s_per_member']:.2f} cmd/s/member "
          f"cpu {out['redis']['redis_cpu_percent']:.1f} %")
    return out


# ---------------------------------------------------------------------------------------- the scenario

# Commands a member sends itself; the rest of `INFO commandstats` runs inside the fleet's Lua scripts
# (Redis counts those too, in commandstats and in total_commands_processed). HDEL runs only inside BUDGET
# since failure reports became a sorted set, so it is not counted (nor GET: scripts use it; the sim has no
# handoff, whose one GET per heartbeat is the only GET a member sends itself).
SENT_BY_MEMBERS = ("evalsha", "eval", "ping", "set", "hello", "subscribe", "unsubscribe", "select",
                   "script|load", "client|setinfo", "client|setname")


def sent_per_member(redis: dict[str, Any], members: int) -> float:
    stats = redis["commandstats_per_s"]
    return sum(stats.get(name, 0.0) for name in SENT_BY_MEMBERS) / members


def scale_targets(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, bool | None]]:
    """Issue 28's simulation targets, for the Targets table of RESULTS.md: (target, goal, result, met), one row
    each, the figures of every N side by side (the stored `runs`, by N as a string)."""
    sizes = sorted(int(n) for n in runs)
    if not sizes:
        return []
    by_n = [runs[str(n)] for n in sizes]
    label = "issue 28, simulated fleet of " + " / ".join(f"{n:,}" for n in sizes)

    def joined(values: list[Any], form: str = "{}") -> str:
        return " / ".join("-" if v is None else form.format(v) for v in values)

    calls = [r["outage"]["calls_during_failure"] for r in by_n]
    goals = [outage_calls_target(n) for n in sizes]
    firsts = [r["outage"]["first_success_after_recovery"] for r in by_n]
    scatter = [(r["scatter_0.01_local"], r["scatter_0.01_fleet"]) for r in by_n]
    opens = [on["fleet_opens"] for _, on in scatter]
    added = [on["latency_p99_ms"] - off["latency_p99_ms"] for off, on in scatter]
    sent = [sent_per_member(r["outage"]["redis"], n) for n, r in zip(sizes, by_n, strict=True)]
    return [
        (f"{label}: calls on the upstream failing 20 s", "<= 0.5 x N + 20 (" + joined(goals, "{:g}") + ")",
         joined(calls), all(c <= g for c, g in zip(calls, goals, strict=True))),
        (f"{label}: recovery -> first delivered export", "<= 2 s", joined(firsts, "{:.2f} s"),
         all(f is not None and f <= 2.0 for f in firsts)),
        (f"{label}: fleet-wide opens, 1 % scattered failures for 60 s", "0", joined(opens), sum(opens) == 0),
        (f"{label}: added p99 delivery latency, 1 % scattered failures", "<= 250 ms over fleet mode off",
         joined(added, "{:+.0f} ms"), max(added) <= 250),
        (f"{label}: commands sent per member and second, healthy", "<= 5", joined(sent, "{:.2f}"), max(sent) <= 5),
    ]


def outage_row(n: int, on: dict[str, Any], off: dict[str, Any] | None) -> list[Any]:
    def seconds(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else "none in the run"

    target = outage_calls_target(n)
    return [n, on["workers"], f"{on['calls_during_failure']} ({on['data_calls']} / {on['probe_calls']})",
            f"{target:g}", seconds(on["first_failure_to_fleet_open"]), seconds(on["first_failure_to_all_open"]),
            seconds(on["first_success_after_recovery"]),
            f"{off['calls_during_failure']} / {seconds(off['first_success_after_recovery'])}" if off else "-",
            f"{on['lag_p99_ms']:.0f} / {on['lag_max_ms']:.0f} ms"]


def plot_scale(runs: dict[int, dict[str, Any]], path: Path, after: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(runs)
    fig, (calls_ax, first_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("outage", "fleet mode", "o-"), ("outage_local", "fleet mode off", "s--")):
        points = [(n, runs[n][key]) for n in sizes if key in runs[n]]
        calls_ax.plot([n for n, _ in points], [r["calls_during_failure"] for _, r in points], style, label=label)
        first = [(n, r["first_success_after_recovery"]) for n, r in points]
        first_ax.plot([n for n, _ in first], [v if v is not None else after for _, v in first], style,
                      label=label + f" (none within {after:g} s plotted at {after:g})")
    calls_ax.plot(sizes, [outage_calls_target(n) for n in sizes], ":", color="tab:red", label="target 0.5 x N + 20")
    first_ax.axhline(2.0, color="tab:red", linestyle=":", label="target 2 s")
    for ax, title in ((calls_ax, f"calls on the upstream during its {OUTAGE:g} s failure"),
                      (first_ax, "first delivered export after recovery (s)")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("members (N)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    calls_ax.set_yscale("log")
    fig.suptitle(f"Fleet scale: {TOTAL_RATE:,.0f} requests/s over N simulated members, one redis-server", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stored_runs(results: Path) -> dict[str, dict[str, Any]]:
    """The fleet-scale runs already in the results file's JSON, by N."""
    path = results.with_name(results.stem.lower() + ".json")
    with contextlib.suppress(OSError, ValueError):
        runs = json.loads(path.read_text()).get("fleet-scale", {}).get("runs", {})
        return {n: r for n, r in runs.items() if isinstance(r, dict) and "measured" in r}
    return {}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out + ("+changes" if dirty else "")


def open_causes(run: dict[str, Any]) -> str:
    """` (cause x count, ...)` of a run's fleet-wide opens, from the breaker record at each open."""
    counts: dict[str, int] = {}
    for cause in run.get("open_causes", []):
        name = cause.split(" by ")[0]
        counts[name] = counts.get(name, 0) + 1
    return " (" + ", ".join(f"{name} x {count}" for name, count in counts.items()) + ")" if counts else ""


def open_times(run: dict[str, Any]) -> str:
    """' at 0.4, 12.1, 30 s ...': the first fleet-wide opens, in seconds after the load started."""
    times = run.get("open_times_s") or []
    if not times:
        return ""
    return f" at {', '.join(f'{t:g}' for t in times[:3])} s{' ...' if len(times) > 3 else ''}"


def scenario_fleet_scale(settings: Any) -> Any:
    from bench.run import Section, log, table
    from tests.fakes.redis_server import RedisServer

    wanted = tuple(settings.fleet_sizes) if getattr(settings, "fleet_sizes", None) else FLEET_SIZES
    scatter = 20.0 if settings.quick else 60.0
    phases = outage_phases()
    # `--sizes` runs some N only (the whole scenario holds the shared bench lock ~20 minutes): the rows of
    # the other N are kept from the results file, each with the commit and time it was measured at.
    runs: dict[int, dict[str, Any]] = {int(n): r for n, r in stored_runs(settings.results).items()
                                       if int(n) not in wanted}
    with RedisServer(settings.workdir / "redis-fleet-scale") as server:
        for n in wanted:
            k = workers_for(n)
            log(f"fleet-scale: N={n} in {k} worker processes")
            runs[n] = {"measured": {"commit": git_commit(), "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "scatter_seconds": scatter}}
            runs[n]["outage"] = run_once(RunSpec(n, k, True, phases, f"N={n} outage fleet"), server.url,
                                         settings.workdir, log)
            runs[n]["outage_local"] = run_once(RunSpec(n, k, False, phases, f"N={n} outage local"), server.url,
                                               settings.workdir, log)
            for ratio in SCATTER_RATIOS:
                for fleet in (False, True):
                    key = f"scatter_{ratio:g}_{'fleet' if fleet else 'local'}"
                    runs[n][key] = run_once(RunSpec(n, k, fleet, scatter_phases(ratio, scatter),
                                                    f"N={n} {ratio:.0%} {'fleet' if fleet else 'local'}"),
                                            server.url, settings.workdir, log)
    sizes = sorted(runs)
    plot = settings.figure("fleet-scale")
    plot_scale(runs, plot, after=phases.load_until - (phases.fail_until or 0.0))
    outage_rows = [outage_row(n, runs[n]["outage"], runs[n].get("outage_local")) for n in sizes]
    cost_rows = []
    for n in sizes:
        on = runs[n]["outage"]
        redis = on["redis"]
        top = ", ".join(f"{name} {rate / n:.2f}" for name, rate in list(redis["commandstats_per_s"].items())[:6])
        cost_rows.append([n, f"{sent_per_member(redis, n):.2f}", f"{redis['commands_per_s_per_member']:.1f}",
                          f"{redis['commands_per_s']:,.0f}", f"{redis['redis_cpu_percent']:.1f} %", top,
                          f"{on['worker_cpu_percent']:.0f} %" if on["worker_cpu_percent"] is not None else "-"])
    def cpu(run: dict[str, Any]) -> str:
        return f"{run['worker_cpu_percent']:.0f} %" if run.get("worker_cpu_percent") is not None else "-"

    scatter_rows = []
    for n in sizes:
        for ratio in SCATTER_RATIOS:
            off, on = runs[n][f"scatter_{ratio:g}_local"], runs[n][f"scatter_{ratio:g}_fleet"]
            added = (on["latency_p99_ms"] - off["latency_p99_ms"]
                     if on["latency_p99_ms"] is not None and off["latency_p99_ms"] is not None else float("nan"))
            seconds = runs[n]["measured"]["scatter_seconds"]
            scatter_rows.append([n, f"{ratio:.0%}", f"{seconds:g} s", f"{on['fleet_opens']}{open_causes(on)}"
                                 + open_times(on),
                                 f"{off['local_opens']} / {on['local_opens']}",
                                 f"{off['latency_p99_ms']:.0f} ms", f"{on['latency_p99_ms']:.0f} ms",
                                 f"{added:+.0f} ms",
                                 f"{off['lag_p99_ms']:.0f} / {on['lag_p99_ms']:.0f} ms",
                                 f"{off['lag_max_ms']:.0f} / {on['lag_max_ms']:.0f} ms",
                                 f"{cpu(off)} / {cpu(on)}"])
    intro = (f"N = {', '.join(str(n) for n in sizes)} simulated sidecars in "
             f"{', '.join(str(workers_for(n)) for n in sizes)} worker processes. Each member is the real "
             "exporter (memory queue, batching consumers, retry, breaker, health prober) and the real fleet "
             "code (`Fleet`: its own Redis connection and pub/sub, shared breaker, evidence, probe lease, "
             "retry budget, heartbeat), all with the shipped defaults; only the transport is simulated "
             f"in-process (bench/fleet_sim.py). {TOTAL_RATE:,.0f} requests/s of one span in total, spread "
             "evenly over the members; one real redis-server. ")
    body = (intro +
            "Method and caveats: bench/notes.md, \"Fleet scale\".\n\n"
            f"**Outage**: the upstream answers UNAVAILABLE to every call for {OUTAGE:g} s after "
            f"{phases.fail_from:g} s of health. Calls count every Export on the failing upstream (data / probes).\n\n"
            + table(["N", "workers", "calls during the failure (data / probes)", "target 0.5 x N + 20",
                     "first failure -> fleet open", "-> every member open", "first success after recovery",
                     "fleet off: calls / first success", "harness lag p99 / max"], outage_rows)
            + "\n\n**Healthy fleet, Redis cost** (the outage run's healthy "
              f"{phases.healthy_until - phases.healthy_from:g} s window; target <= 5 commands/s per member). "
              "`sent` counts what members send (EVALSHA, PING, SET, HDEL, connection set-up); `executed` is "
              "`total_commands_processed`, which also counts the commands run inside the Lua scripts.\n\n"
            + table(["N", "sent / s / member", "executed / s / member", "executed / s (all)", "redis-server CPU",
                     "top commands (executed / s / member)", "worker CPU (all workers)"], cost_rows)
            + f"\n\n**Scattered failures**: a healthy upstream whose calls each fail with the given probability, "
              f"for {scatter:g} s; fleet mode off and on in turn. Fleet opens are the `open` messages on the "
              "fleet's breaker channel (with the seconds after the load's start of the first ones); latency is "
              "client acknowledgement -> accepted upstream, per request. The harness's lag and the workers' CPU "
              "(all workers, % of one core) of each row: fleet mode's per-member background work (its Redis "
              "round trips) shares the few worker processes with the members' delivery.\n\n"
            + table(["N", "failing", "for", "fleet-wide opens", "local breaker opens (off / on)", "p99 fleet off",
                     "p99 fleet on", "added p99", "harness lag p99 (off / on)", "lag max (off / on)",
                     "worker CPU (off / on)"], scatter_rows)
            + "\n\nMeasured: " + "; ".join(
                f"N = {n} at {runs[n]['measured']['at']} on {runs[n]['measured']['commit']}" for n in sizes)
            + f"\n\n![fleet scale]({plot.name})")
    return Section("fleet-scale", "8. Fleet scale: simulated members on one redis-server", body,
                   {"runs": {str(n): r for n, r in runs.items()}})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2]))
    sys.exit(f"usage: {os.path.basename(sys.argv[0])} worker SPEC "
             "(the scenario itself: python -m bench.run fleet-scale)")
