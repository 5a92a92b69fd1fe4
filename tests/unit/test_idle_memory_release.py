"""IdleMemoryRelease (sidecar/runtime.py): trim once the process is quiet after being busy, never under load."""

from __future__ import annotations

import asyncio

from sidecar.runtime import IdleMemoryRelease


class FakeCpu:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def test_releases_once_on_the_first_quiet_interval_after_a_busy_one() -> None:
    cpu, released = FakeCpu(), []
    trim = IdleMemoryRelease(interval=5.0, idle_share=0.02, cpu_seconds=cpu, release=lambda: released.append(1) or True)
    cpu.seconds += 0.01  # at rest: 0.2 % of a core
    assert not trim.tick()
    for _ in range(3):  # under load: 40 % of a core, never released
        cpu.seconds += 2.0
        assert not trim.tick()
    cpu.seconds += 0.05  # quiet: 1 %
    assert trim.tick()
    cpu.seconds += 0.05
    assert not trim.tick()  # once per burst, not every quiet interval
    assert released == [1] and trim.releases == 1
    cpu.seconds += 1.0  # another burst
    assert not trim.tick()
    assert trim.tick()
    assert trim.releases == 2


def test_steady_low_load_above_the_idle_share_never_releases() -> None:
    cpu = FakeCpu()
    trim = IdleMemoryRelease(interval=1.0, idle_share=0.02, cpu_seconds=cpu, release=lambda: True)
    for _ in range(20):
        cpu.seconds += 0.03
        assert not trim.tick()
    assert trim.releases == 0


async def test_runs_as_a_task_and_stops() -> None:
    cpu, released = FakeCpu(), asyncio.Event()
    trim = IdleMemoryRelease(interval=0.01, idle_share=0.02, cpu_seconds=cpu,
                             release=lambda: released.set() or True)
    trim.start()
    cpu.seconds += 5.0  # busy during the first interval, then quiet
    await asyncio.wait_for(released.wait(), 5)
    await trim.stop()
    assert trim.releases == 1


def test_tune_malloc_sets_what_the_environment_does_not() -> None:
    from sidecar import runtime

    if runtime._load_libc() is False:
        return  # not glibc: nothing to tune, nothing set
    every = runtime.tune_malloc({})
    assert every == [runtime.MALLOC_TRIM_ENV, runtime.MALLOC_MMAP_ENV, runtime.MALLOC_ARENA_ENV]
    assert runtime.tune_malloc({runtime.MALLOC_TRIM_ENV: "1048576"}) == [runtime.MALLOC_MMAP_ENV,
                                                                        runtime.MALLOC_ARENA_ENV]
    assert runtime.tune_malloc({**runtime.MALLOC_ENV, runtime.MALLOC_ARENA_ENV: "4"}) == []
