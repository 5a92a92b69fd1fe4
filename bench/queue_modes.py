"""Acknowledged puts per second of an exporter's queue in each storage mode (issue 14's spill tier).

    python -m bench.queue_modes [N]

`storage_mode: always` commits every request before the client's answer; `spill` keeps requests
in memory at degradation level 0 and commits them from level 1 on ("spilling"). Eight concurrent
putters of 2 KiB requests, synchronous=FULL, on the machine's temporary directory.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sidecar.config.schema import SendingQueueConfig
from sidecar.core.entry import QueueEntry
from sidecar.core.signals import Signal
from sidecar.queue.factory import open_queue
from sidecar.queue.tiered import TieredQueue

PUTTERS = 8
PAYLOAD = b"x" * 2048


async def puts_per_second(mode: str, spilling: bool, n: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        queue = await open_queue("otlp_grpc", SendingQueueConfig(queue_size=10 * n, storage="file_storage",
                                                                 storage_mode=mode), Path(directory))
        if isinstance(queue, TieredQueue):
            queue.spilling = spilling

        async def putter(first: int) -> None:
            for _ in range(first, n, PUTTERS):
                await queue.put(QueueEntry(Signal.TRACES, PAYLOAD, 1, (), time.time()))

        started = time.perf_counter()
        await asyncio.gather(*(putter(k) for k in range(PUTTERS)))
        elapsed = time.perf_counter() - started
        await queue.close()
    return n / elapsed


async def main(n: int) -> None:
    for mode, spilling, label in (("always", False, "always"), ("spill", False, "spill, level 0 (memory)"),
                                  ("spill", True, "spill, level >= 1 (disk)")):
        rate = await puts_per_second(mode, spilling, n)
        print(f"{label:<28} {rate:>10.0f} acknowledged puts/s")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
