"""How fast could the sidecar run with error spans if the enrichment cost nothing? (issue 26)

    python -m bench.enrich_bound --repeats 3 --duration 6

One sink and three sidecars (bench/bound_sidecar.py), each with the benchmark's exporter settings
(`bench.run.bench_exporter`), measured interleaved against direct (load generator -> sink) as
`python -m bench.run throughput` measures them (concurrency 16, 512-span requests):

* `real`: the sidecar as shipped;
* `cached`: the enrichment replaced by a lookup of the request's enriched bytes, computed once by the
  real enrichment: the same output, so the same queueing, sending and sink parse of the larger request,
  with (almost) no enrichment work. If this is below a target, no enrichment can reach the target in
  this architecture on this machine;
* `off`: no enrichment; the received bytes are forwarded.

Each repetition measures direct at 0 % error spans (the ratio `bench.run throughput` reports), then for
each error fraction direct at that fraction and each sidecar. Prints one line per run and a summary:
ratio to direct at 0 % and at the same fraction, and CPU ms per request of the proxy, sink and loadgen.
Run it under the benchmark lock (`flock /work/.bench.lock ...` on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bound_sidecar import MODE_ENV, MODES
from bench.run import ERROR_FRACTION, STORM_FRACTION, Sink, bench_exporter, measure, median, sidecar_target
from tests.sidecar_process import SidecarPorts, SidecarProcess

CONCURRENCY = 16


def start(mode: str, sink: Sink, workdir: Path) -> SidecarProcess:
    ports = SidecarPorts()
    directory = workdir / mode
    directory.mkdir()
    previous = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = mode  # SidecarProcess passes the environment on
    try:
        process = SidecarProcess(bench_exporter(sink.target, ports), directory, ports, module="bench.bound_sidecar")
        return process.start(timeout=30.0)
    finally:
        if previous is None:
            os.environ.pop(MODE_ENV, None)
        else:
            os.environ[MODE_ENV] = previous


def summary(runs: dict[tuple[str, float], list[dict[str, Any]]]) -> list[str]:
    lines = ["| mode | error spans | ratio to direct 0 % (median, range) | ratio to direct at the same "
             "fraction | proxy CPU ms/request | sink CPU ms/request | loadgen CPU ms/request |",
             "|---|---|---|---|---|---|---|"]
    for (mode, fraction), results in runs.items():
        if mode == "direct":
            continue
        to_zero = [r["ratio_to_direct_0"] for r in results]
        same = [r["ratio_to_direct_same"] for r in results]
        lines.append(f"| {mode} | {fraction:.0%} | {median(to_zero):.3f} ({min(to_zero):.3f}-{max(to_zero):.3f}) "
                     f"| {median(same):.3f} | {median([r['sidecar_ms_per_request'] for r in results]):.2f} "
                     f"| {median([r['sink_ms_per_request'] for r in results]):.2f} "
                     f"| {median([r['loadgen_ms_per_request'] for r in results]):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--modes", default=",".join(MODES), help=f"sidecars to run, of {', '.join(MODES)}")
    args = parser.parse_args(argv)
    modes = [mode for mode in args.modes.split(",") if mode]
    fractions = (ERROR_FRACTION, STORM_FRACTION)
    workdir = Path(tempfile.mkdtemp(prefix="enrich-bound-"))
    runs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        sink = Sink()
        stack.callback(sink.stop)
        sidecars = {}
        for mode in modes:
            sidecars[mode] = start(mode, sink, workdir)
            stack.callback(sidecars[mode].stop)
        for repeat in range(args.repeats):
            zero = measure(sink, sink.target, None, CONCURRENCY, args.duration, 0.0)
            runs.setdefault(("direct", 0.0), []).append(zero)
            for fraction in fractions:
                direct = measure(sink, sink.target, None, CONCURRENCY, args.duration, fraction)
                runs.setdefault(("direct", fraction), []).append(direct)
                rate = direct["delivered_spans_per_second"]
                line = [f"[{repeat + 1}/{args.repeats}] {fraction:.0%}: direct {rate:,.0f}"]
                for mode, sidecar in sidecars.items():
                    target, pid = sidecar_target(sidecar)
                    result = measure(sink, target, pid, CONCURRENCY, args.duration, fraction)
                    rate = result["delivered_spans_per_second"]
                    result["ratio_to_direct_0"] = rate / zero["delivered_spans_per_second"]
                    result["ratio_to_direct_same"] = rate / direct["delivered_spans_per_second"]
                    runs.setdefault((mode, fraction), []).append(result)
                    line.append(f"{mode} {result['ratio_to_direct_0']:.3f} ({result['sidecar_ms_per_request']:.2f} "
                                f"ms CPU/request)")
                print("  ".join(line), flush=True)
    print("\n".join(summary(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
