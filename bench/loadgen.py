"""OTLP/gRPC load generator: one pre-built ExportTraceServiceRequest sent by N concurrent callers.

    python -m bench.loadgen --target 127.0.0.1:4317 --concurrency 16 --duration 10 --error-fraction 0.1

The request (see bench/payload.py) is serialized once; each of the `--concurrency` callers keeps
one unary Export call in flight (grpc.aio on uvloop, raw bytes, no per-call serialization), for
`--warmup` seconds unmeasured and then `--duration` seconds measured. With `--rate S` it is open-loop
instead: one call started every `spans / S` seconds (S spans/s, a steady rate such as an
application's), at most `--concurrency` of them in flight (a start that would exceed it is counted
in `skipped`). It reports the spans/s the target acknowledged and the latency percentiles of the
calls made inside the window; with `--sink` it also reads the sink's span counter at the start and
the end of the window, which gives the spans/s actually delivered (through a sidecar, acknowledged
is not yet delivered). `--json` prints one JSON object instead of the table (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc
import orjson
from grpc import aio

from bench.payload import build_request
from bench.sink import STATS_METHOD, parse_options

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# With --announce, printed (one line each) when the measured window starts and ends: a runner measures
# another process's CPU over exactly that window.
WINDOW_START = "window-start"
WINDOW_END = "window-end"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass
class Result:
    target: str
    concurrency: int
    spans_per_request: int
    error_fraction: float
    request_bytes: int
    duration: float = 0.0
    requests: int = 0
    failed: int = 0
    failure_codes: dict[str, int] = field(default_factory=dict)
    rate: float | None = None  # spans/s offered (open-loop), None: closed-loop at `concurrency`
    skipped: int = 0  # open-loop starts not made because `concurrency` calls were still in flight
    spans_per_second: float = 0.0  # acknowledged by the target
    delivered_spans_per_second: float | None = None  # counted by the sink (with --sink)
    delivered_enriched: int | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"target {self.target}, concurrency {self.concurrency}, {self.spans_per_request} spans/request "
            f"({self.request_bytes} bytes), {self.error_fraction:.0%} error spans, {self.duration:.1f}s",
            f"  acknowledged   {self.spans_per_second:>12,.0f} spans/s  ({self.requests} requests, "
            f"{self.failed} failed {self.failure_codes or ''})",
        ]
        if self.delivered_spans_per_second is not None:
            lines.append(f"  delivered      {self.delivered_spans_per_second:>12,.0f} spans/s  (sink; "
                         f"{self.delivered_enriched} enriched spans)")
        lat = self.latency_ms
        if lat:
            lines.append(f"  latency ms     p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
                         f"max {lat['max']:.2f}")
        return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _sink_counts(channel: aio.Channel | None) -> tuple[float, float] | None:
    if channel is None:
        return None
    raw = await channel.unary_unary(STATS_METHOD)(b"", timeout=5.0)
    stats = orjson.loads(raw)
    return float(stats["spans"]), float(stats["enriched_spans"])


async def run(target: str, concurrency: int, duration: float, warmup: float, spans: int, error_fraction: float,
              sink: str | None = None, timeout: float = 30.0,
              options: list[tuple[str, str | int]] | None = None, rate: float | None = None,
              announce: bool = False) -> Result:
    payload = build_request(spans, error_fraction).SerializeToString()
    result = Result(target, concurrency, spans, error_fraction, len(payload), rate=rate)
    channel = aio.insecure_channel(target, options=CHANNEL_OPTIONS + (options or []))
    sink_channel = aio.insecure_channel(sink) if sink else None
    call = channel.unary_unary(TRACE_EXPORT)
    await asyncio.wait_for(channel.channel_ready(), 30.0)
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + duration
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    codes: dict[str, int] = {}
    perf = time.perf_counter

    async def one_call() -> float:
        """One Export call, counted when it falls in the window; returns the loop time it ended at."""
        began = perf()
        code = ""
        try:
            await call(payload, timeout=timeout)
            ok = True
        except aio.AioRpcError as exc:
            ok = False
            code = exc.code().name
        took = perf() - began
        now = loop.time()
        if window_start <= now <= window_end and now - took >= window_start:
            if ok:
                counts["ok"] += 1
                latencies.append(took)
            else:
                counts["failed"] += 1
                codes[code] = codes.get(code, 0) + 1
        if not ok:
            await asyncio.sleep(0.05)  # backpressure or an outage: do not spin
        return now

    async def caller() -> None:
        now = loop.time()
        while now < window_end:
            now = await one_call()

    in_flight: set[asyncio.Task[float]] = set()

    async def pacer(requests_per_second: float) -> None:
        """Open loop: a call every 1/requests_per_second s on a fixed schedule (a late start shifts none after it)."""
        interval = 1.0 / requests_per_second
        due = loop.time()
        while due < window_end:
            if len(in_flight) < concurrency:
                task = asyncio.create_task(one_call())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            elif due >= window_start:
                result.skipped += 1
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))
        if in_flight:
            await asyncio.wait(set(in_flight))

    if rate:
        tasks = [asyncio.create_task(pacer(rate / spans))]
    else:
        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await asyncio.sleep(max(0.0, window_start - loop.time()))
    before = await _sink_counts(sink_channel)
    measured_from = loop.time()
    if announce:
        print(WINDOW_START, flush=True)
    await asyncio.sleep(max(0.0, window_end - loop.time()))
    after = await _sink_counts(sink_channel)
    measured = loop.time() - measured_from
    if announce:
        print(WINDOW_END, flush=True)
    await asyncio.gather(*tasks)
    await channel.close()
    if sink_channel is not None:
        await sink_channel.close()
    result.duration = duration
    result.requests = counts["ok"]
    result.failed = counts["failed"]
    result.failure_codes = codes
    result.spans_per_second = counts["ok"] * spans / duration
    if before is not None and after is not None:
        result.delivered_spans_per_second = (after[0] - before[0]) / measured
        result.delivered_enriched = int(after[1] - before[1])
    latencies.sort()
    if latencies:
        result.latency_ms = {name: percentile(latencies, q) * 1000 for name, q in
                             (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:4317", help="host:port of an OTLP/gRPC server")
    parser.add_argument("--concurrency", type=int, default=16, help="unary calls kept in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument("--error-fraction", type=float, default=0.0, help="fraction of error spans (0..1)")
    parser.add_argument("--rate", type=float, default=None,
                        help="spans/s to offer at a steady pace (open loop); default: closed loop")
    parser.add_argument("--sink", default=None, help="host:port of bench.sink, to count delivered spans")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--announce", action="store_true",
                        help=f"print '{WINDOW_START}' and '{WINDOW_END}' lines around the measured window")
    parser.add_argument("--grpc-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra grpc channel option (repeatable)")
    args = parser.parse_args(argv)
    import uvloop

    try:
        result = uvloop.run(run(args.target, args.concurrency, args.duration, args.warmup, args.spans,
                                args.error_fraction, args.sink, options=parse_options(args.grpc_option),
                                rate=args.rate, announce=args.announce))
    except (TimeoutError, grpc.RpcError) as exc:
        print(f"loadgen: {args.target}: {exc!r}", file=sys.stderr)
        return 1
    print(orjson.dumps(asdict(result)).decode() if args.json else result.table(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
