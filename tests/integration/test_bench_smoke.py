"""Keeps the benchmark working: bench-quick's throughput scenario for a couple of seconds.

No wall-clock or throughput assertions: only that spans went through every path and that the
tables were produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_throughput_scenario_delivers_and_writes_tables(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "throughput", "--quick", "--duration", "2", "--repeats", "1",
         "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert "## 1. Throughput" in done.stdout  # the table is printed
    text = results.read_text()
    assert "## Machine" in text and "## Targets" in text and "## 1. Throughput" in text
    assert "| direct (loadgen -> sink) |" in text

    data = json.loads((tmp_path / "results.json").read_text())
    modes = data["throughput"]["modes"]
    assert set(modes) == {"direct (loadgen -> sink)", "sidecar, fast path (0 % error spans)",
                          "sidecar, 10 % error spans enriched",
                          "sidecar, 50 % error spans enriched (an error storm)",
                          "floor: null proxy (receive + forward, no work), 0 %",
                          "floor: null proxy + upb parse, 0 %", "floor: null proxy + upb parse, 10 %",
                          "peer: rotel relay (Rust; compression none, its batching), 0 %"}
    for name, row in modes.items():
        assert row["spans_per_second"] > 0, name
    assert modes["sidecar, fast path (0 % error spans)"]["enriched_share"] == 0
    assert modes["sidecar, 10 % error spans enriched"]["enriched_share"] > 0  # the sink saw enriched spans
    assert modes["sidecar, 50 % error spans enriched (an error storm)"]["enriched_share"] > 0.4
    assert modes["floor: null proxy + upb parse, 10 %"]["enriched_share"] == 0  # the floor does no work
    assert data["throughput"]["dropped"] == 0


def test_quick_cpu_scenario_measures_every_relay_at_both_sizes(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "cpu", "--quick", "--cpu-window", "1", "--cpu-repeats", "1",
         "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    text = results.read_text()
    assert "## 7. CPU at a steady rate" in text
    assert "| 100 | reference: the Collector testbed's budget | 20.00 |" in text

    data = json.loads((tmp_path / "results.json").read_text())["cpu"]
    assert data["rate"] == 10_000 and set(data["sizes"]) == {"100", "512"}
    for size, relays in data["sizes"].items():
        assert set(relays) == {"sidecar, defaults", "sidecar, compression none",
                               "sidecar, defaults but batch off (one upstream call per request)",
                               "sidecar, defaults, 50 % error spans enriched (an error storm)",
                               "rotel, defaults", "rotel, compression none", "floor: null proxy + upb parse"}, size
        for name, row in relays.items():
            # Every relay carried the load and its process was measured (CPU used, memory resident).
            assert row["delivered"] > 0 and row["failed"] == 0, (size, name)
            assert row["cpu_percent"] > 0 and row["us_per_span"] > 0 and row["rss_mib"] > 0, (size, name)
        assert relays["rotel, defaults"]["ratio_to_rotel"] == 1.0
