"""The fleet-scale simulation (bench/fleet_scale.py) stays runnable and its figures stay sane.

A few members in one worker process against a real redis-server, with phases of a second or two:
no timing is asserted (the machine is shared), only that every figure the scenario reports is
produced and consistent with the others.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.fleet_scale import (
    Phases,
    RunSpec,
    outage_figures,
    outage_phases,
    percentile,
    redis_cost,
    retry_split,
    run_once,
    scale_targets,
    scatter_phases,
    sent_per_member,
    split,
)
from bench.fleet_sim import ENDPOINT, SimTransport, SimUpstream, UpstreamPlan, request
from sidecar.core.entry import QueueEntry
from sidecar.core.errors import ExportError
from sidecar.core.signals import Signal
from tests.fakes.redis_server import RedisServer


def test_split_covers_every_member_once() -> None:
    assert split(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert split(1000, 4) == [(0, 250), (250, 500), (500, 750), (750, 1000)]


def test_percentile() -> None:
    assert percentile([], 0.99) is None
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile([5.0], 0.5) == 5.0


def test_upstream_plan_fails_in_its_window_and_at_its_ratio() -> None:
    plan = UpstreamPlan(fail_from=10.0, fail_until=20.0, fail_ratio=0.01)
    assert plan.fails(10.0, 0.99) and plan.fails(19.99, 0.99)
    assert not plan.fails(20.0, 0.5) and not plan.fails(9.9, 0.5)
    assert plan.fails(25.0, 0.005)


def test_sim_transport_measures_each_merged_request() -> None:
    async def scenario() -> None:
        upstream = SimUpstream(UpstreamPlan(), seed=1)
        transport = SimTransport(ENDPOINT, upstream)
        accepted = 1_000_000_000_000_000_000  # ns: far in the past, so each latency is large and positive
        payloads = [request(accepted + i, bytes(16))[1] for i in range(3)]
        await transport.send(QueueEntry(Signal.TRACES, b"".join(payloads), 3, (), 0.0), 5.0)
        assert upstream.calls.requests_delivered == 3 and len(upstream.calls.latencies_ms) == 3
        upstream.plan = UpstreamPlan(fail_from=0.0, fail_until=float("inf"))
        with pytest.raises(ExportError):
            await transport.probe(1.0)
        assert upstream.calls.probes[-1][1] is False

    asyncio.run(scenario())


def test_sim_upstream_tells_retried_requests_from_first_attempts() -> None:
    async def scenario() -> None:
        upstream = SimUpstream(UpstreamPlan(fail_from=0.0, fail_until=float("inf")), seed=1)
        transport = SimTransport(ENDPOINT, upstream)
        accepted = 1_000_000_000_000_000_000
        retried = request(accepted, (1).to_bytes(16, "big"))[1]
        fresh = request(accepted + 1, (2).to_bytes(16, "big"))[1]
        with pytest.raises(ExportError):
            await transport.send(QueueEntry(Signal.TRACES, retried, 1, (), 0.0), 5.0)
        upstream.plan = UpstreamPlan()
        await transport.send(QueueEntry(Signal.TRACES, retried + fresh, 2, (), 0.0), 5.0)
        assert len(upstream.calls.latencies_ms) == 2 and len(upstream.calls.retried_ms) == 1
        latency, gap = upstream.calls.retried_ms[0]
        assert latency == upstream.calls.latencies_ms[0] and 0 < gap < latency
        await transport.send(QueueEntry(Signal.TRACES, retried, 1, (), 0.0), 5.0)  # delivered again: not retried
        assert len(upstream.calls.retried_ms) == 1

    asyncio.run(scenario())


def test_retry_split_separates_first_attempts_and_counts_fleet_answers() -> None:
    workers = [
        {"latencies_ms": [100.0, 101.0, 2500.0, 100.0], "retried_ms": [[2500.0, 2400.0]],
         "local_budget_refused": 1, "fleet_spends": [[0.005, True], [0.3, None]]},
        {"latencies_ms": [100.0, 4000.0], "retried_ms": [[100.0, 50.0], [4000.0, 3900.0]],
         "local_budget_refused": 0, "fleet_spends": [[0.004, False]]},
    ]
    figures = retry_split(workers)
    assert figures["retried"] == 3 and figures["retried_share"] == 0.5
    assert figures["first_attempt_max_ms"] == 101.0 and figures["first_attempt_p50_ms"] == 100.0
    assert figures["retried_p50_ms"] == 2500.0 and figures["retry_gap_p99_ms"] == 3900.0
    assert (figures["fleet_spends"], figures["fleet_granted"], figures["fleet_refused"],
            figures["fleet_unknown"]) == (3, 1, 1, 1)
    assert figures["local_budget_refused"] == 1 and figures["fleet_spend_p99_ms"] == 300.0


def test_outage_figures_from_synthetic_observations() -> None:
    worker = {
        "data": [(9.0, True), (10.1, False), (10.2, False), (10.4, False), (30.5, True)],
        "probes": [(15.0, False), (31.0, True)],
        "transitions": [[(10.3, "open"), (30.4, "half_open")], [(10.35, "open")]],
    }
    figures = outage_figures([worker], [(10.25, "open"), (30.45, "closed")], fail_from=10.0, fail_until=30.0)
    assert figures["calls_during_failure"] == 4
    assert (figures["data_calls"], figures["probe_calls"]) == (3, 1)
    assert figures["calls_before_open"] == 2
    assert figures["first_failure_to_fleet_open"] == pytest.approx(0.15)
    assert figures["first_failure_to_all_open"] == pytest.approx(0.25)
    assert figures["first_success_after_recovery"] == pytest.approx(0.5)
    assert figures["first_probe_success_after_recovery"] == pytest.approx(1.0)


def test_redis_cost_per_member() -> None:
    before = {"commandstats": {"cmdstat_ping": {"calls": 10}, "cmdstat_hget": {"calls": 100}},
              "total_commands_processed": 110, "cpu": 1.0}
    after = {"commandstats": {"cmdstat_ping": {"calls": 30}, "cmdstat_evalsha": {"calls": 20},
                              "cmdstat_hget": {"calls": 300}}, "total_commands_processed": 350, "cpu": 1.5}
    cost = redis_cost(before, after, seconds=2.0, members=10)
    assert cost["commands_per_s_per_member"] == pytest.approx(12.0)
    assert cost["redis_cpu_percent"] == pytest.approx(25.0)
    assert sent_per_member(cost, 10) == pytest.approx((10 + 10) / 10)  # ping + evalsha; hget runs in scripts


def short_outage() -> Phases:
    return outage_phases(outage=1.0, warm=0.3, healthy=1.0, after=1.0)


def stored_run(calls: int, first: float | None, opens: int, p99_off: float, p99_on: float, evalsha: float,
               members: int) -> dict[str, object]:
    """One N's stored runs, reduced to what the Targets table reads."""
    redis = {"commandstats_per_s": {"evalsha": evalsha * members}}
    return {"outage": {"calls_during_failure": calls, "first_success_after_recovery": first, "redis": redis},
            "scatter_0.01_local": {"latency_p99_ms": p99_off},
            "scatter_0.01_fleet": {"latency_p99_ms": p99_on, "fleet_opens": opens}}


def test_scale_targets_judge_every_n_against_its_own_goal() -> None:
    runs = {"50": stored_run(34, 1.08, 0, 182, 323, 3.0, 50), "1000": stored_run(132, 1.27, 0, 188, 298, 2.9, 1000)}
    rows = {target.split(": ", 1)[1]: (goal, result, ok) for target, goal, result, ok in scale_targets(runs)}
    assert rows["calls on the upstream failing 20 s"] == ("<= 0.5 x N + 20 (45 / 520)", "34 / 132", True)
    assert rows["recovery -> first delivered export"][1:] == ("1.08 s / 1.27 s", True)
    assert rows["added p99 delivery latency, 1 % scattered failures"][1:] == ("+141 ms / +110 ms", True)
    assert rows["commands sent per member and second, healthy"][1:] == ("3.00 / 2.90", True)

    runs["50"] = stored_run(46, None, 1, 182, 433, 5.5, 50)  # each just over its goal: 45 calls, +250 ms, 5
    assert [ok for *_, ok in scale_targets(runs)] == [False, False, False, False, False]
    runs["50"] = stored_run(45, 2.0, 0, 182, 432, 5.0, 50)  # each at its goal
    assert [ok for *_, ok in scale_targets(runs)] == [True, True, True, True, True]
    assert scale_targets({}) == []


def test_the_harness_runs_a_small_fleet_end_to_end(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        outage = run_once(RunSpec(6, 1, True, short_outage(), "smoke outage"), server.url, tmp_path, log=print)
        scatter = run_once(RunSpec(6, 1, False, scatter_phases(0.05, 1.0, warm=0.3), "smoke scatter"),
                           server.url, tmp_path, log=print)
    assert outage["sent"] > 500 and outage["delivered"] > 0
    assert outage["latency_p99_ms"] is not None and outage["latency_p99_ms"] > 0
    assert outage["calls_during_failure"] == outage["data_calls"] + outage["probe_calls"] > 0
    assert outage["first_failure_to_fleet_open"] is not None  # the failure opened the endpoint fleet-wide
    assert outage["fleet_opens"] >= 1 and 0 < outage["members_opened"] <= 6
    assert outage["redis"]["commands_per_s_per_member"] > 0 and outage["redis"]["redis_cpu_percent"] >= 0
    assert sent_per_member(outage["redis"], 6) > 0
    assert outage["lag_max_ms"] >= outage["lag_p99_ms"] >= 0
    # Fleet mode off: nothing reaches Redis but the bench's own INFO, no fleet-wide open.
    assert scatter["fleet_opens"] == 0 and sent_per_member(scatter["redis"], 6) == 0
    assert scatter["delivered"] > 0 and "calls_during_failure" not in scatter
