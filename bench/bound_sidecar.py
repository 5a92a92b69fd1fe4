"""The sidecar with its traces enrichment swapped for a cheaper stand-in, for bench/enrich_bound.py only.

    BENCH_ENRICH_MODE=cached python -m bench.bound_sidecar run --config sidecar.yaml

`BENCH_ENRICH_MODE` (read once, at import):

* `real` (or unset): the sidecar as shipped.
* `cached`: the cheapest enrichment that still produces the real output. The first time a request is
  seen, the real `enrich_traces_payload` computes its enriched bytes and stats; every later request
  with the same bytes (looked up by length, confirmed by one `==`, a memcmp) gets them back without
  any work. The benchmark's load generator sends one pre-built request over and over, so after the
  warm-up the sidecar pays only receiving, the validating parse, the accounting of the stats,
  queueing and sending the larger enriched request; the sink pays its parse of the larger request.
* `off`: no traces enrichment at all; the received bytes are forwarded as they came.

This is a measuring instrument, not a configuration: the stand-ins are installed by replacing the
name `enrich_traces_payload` in `sidecar.pipeline.router`, and nothing in sidecar/ knows about them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import sidecar.pipeline.router as router
from sidecar.__main__ import main
from sidecar.config.schema import EnrichProcessorConfig
from sidecar.pipeline.classify import Classifier
from sidecar.pipeline.enrich import EnrichStats

MODE_ENV = "BENCH_ENRICH_MODE"
MODES = ("real", "cached", "off")

_real = router.enrich_traces_payload
_seen: dict[int, tuple[bytes, EnrichStats, bytes | None]] = {}


def cached(raw: bytes, classifier: Classifier, config: EnrichProcessorConfig, *,
           collect: bool = False) -> tuple[EnrichStats, bytes | None]:
    """The real result for a request already seen (same bytes), else the real enrichment, remembered."""
    hit = _seen.get(len(raw))
    if hit is not None and hit[0] == raw:
        return hit[1], hit[2]
    stats, enriched = _real(raw, classifier, config, collect=collect)
    _seen[len(raw)] = (raw, stats, enriched)
    return stats, enriched


def off(raw: bytes, classifier: Classifier, config: EnrichProcessorConfig, *,
        collect: bool = False) -> tuple[EnrichStats, bytes | None]:
    """Nothing enriched: the pipeline forwards `raw` as received."""
    return EnrichStats(), None


def install(mode: str) -> None:
    if mode not in MODES:
        raise SystemExit(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    stand_in: Any = {"real": _real, "cached": cached, "off": off}[mode]
    router.enrich_traces_payload = stand_in  # type: ignore[attr-defined]


install(os.environ.get(MODE_ENV) or "real")

if __name__ == "__main__":
    sys.exit(main())
