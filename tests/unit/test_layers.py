"""Structure that the import-linter contract cannot see: metrics are touched only through typed events."""

from __future__ import annotations

import re
from pathlib import Path

import sidecar

PACKAGE = Path(sidecar.__file__).parent
# A prometheus child is reached through .labels(...); a bare metric through .inc/.set/.observe on metrics.X.
METRIC_USE = re.compile(r"\.labels\(|\bmetrics\.\w+\.(?:inc|set|observe|dec)\(")


def test_no_module_outside_telemetry_touches_a_prometheus_metric() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "telemetry" or "v1" in relative.parts:  # v1: generated admin API code
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if METRIC_USE.search(line):
                offenders.append(f"sidecar/{relative}:{number}: {line.strip()}")
    assert not offenders, "count through an event in sidecar/telemetry/events.py instead:\n" + "\n".join(offenders)
