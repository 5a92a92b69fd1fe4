"""`python -m sidecar status --fleet [--json]`: the fleet as its heartbeats in Redis describe it, and the
handoff backlog per endpoint (sidecar/fleet/handoff_status.py).

Where: `--redis URL` (default `$SIDECAR_FLEET_ENDPOINT`), or `--config FILE` to take
`extensions.fleet` (endpoint, password, key_prefix) from a sidecar's own configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import msgspec

from sidecar.config.schema import FleetConfig
from sidecar.fleet.client import FleetClient, close, describe, make_client
from sidecar.fleet.connection import FAILURES
from sidecar.fleet.fleet import evidence_rule
from sidecar.fleet.handoff_status import Backlog, backlog_json, backlog_lines, read_backlogs
from sidecar.fleet.keys import Keys
from sidecar.fleet.membership import Member, read_members
from sidecar.fleet.view import EVIDENCE_BATCH, MAX_WINDOW, EvidenceRule, fleet_rate, parse_report

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
TIMEOUT = 5.0
RATE_AFTER_CLOSE_MS = 3000  # the EVIDENCE script keeps the rate of the last open for this long after a close


class FleetStatusError(Exception):
    """`status --fleet` was not told where the fleet is (no --redis, no extensions.fleet, an invalid config):
    one line on stderr, exit 2."""


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    if args.redis:
        return FleetConfig(endpoint=args.redis, key_prefix=args.key_prefix or "otlp-sidecar:")
    if args.config:
        from sidecar.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise FleetStatusError(f"{args.config}: invalid configuration ({len(exc.errors)} error(s))") from None
        if config.extensions.fleet is None:
            raise FleetStatusError(f"{args.config}: no extensions.fleet configured")
        fleet = config.extensions.fleet
        return msgspec.structs.replace(fleet, key_prefix=args.key_prefix) if args.key_prefix else fleet
    endpoint = os.environ.get("SIDECAR_FLEET_ENDPOINT")
    if not endpoint:
        raise FleetStatusError("say where the fleet's Redis is: --redis URL, --config FILE or "
                               "$SIDECAR_FLEET_ENDPOINT")
    return FleetConfig(endpoint=endpoint, key_prefix=args.key_prefix or "otlp-sidecar:")


@dataclass(frozen=True, slots=True)
class EndpointState:
    """The fleet's shared view of one upstream endpoint: why it is open, who probes, who sees it failing."""

    endpoint: str
    state: str  # open | closed (closed too when no sidecar ever opened it)
    open_for: float  # seconds left of the fleet's open period
    open_period: float  # seconds: the current (or last) open period
    opened_by: str  # the instance whose report opened it last
    cause: str  # evidence | probe | breaker (see sidecar/fleet/scripts.py)
    prober: str  # the probe lease holder, "" none
    failing: list[str]  # members that reported failures within the longest evidence window (MAX_WINDOW)
    members: int  # sidecars with a live heartbeat that send to it
    failures: int  # failures reported within the evidence window that applies now
    needed: int  # failures within that window that open it fleet-wide (EvidenceRule, at the fleet's rate)
    window: float  # seconds: that window


def endpoints_of(members: list[Member]) -> list[str]:
    """The upstream endpoints the members' heartbeats name (their breakers)."""
    names = {endpoint for m in members for detail in (m.info.get("exporters") or {}).values()
             for endpoint in (detail.get("breakers") or {})}
    return sorted(names)


async def read_endpoints(client: FleetClient, keys: Keys, endpoints: list[str],
                         rule: EvidenceRule | None = None) -> list[EndpointState]:
    rule = rule or EvidenceRule()
    seconds, micros = await client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    states = []
    for endpoint in endpoints:
        record = await client.hgetall(keys.breaker(endpoint))
        holder = str(await client.get(keys.lease(endpoint)) or "")
        reports = await client.zrangebyscore(keys.evidence(endpoint), now_ms - MAX_WINDOW * 1000, "+inf",
                                             withscores=True)
        members = int(await client.zcount(keys.endpoint_members(endpoint), now_ms, "+inf"))
        second = now_ms // 1000
        counts = await client.hmget(keys.budget(endpoint), [f"n:{second - 1}", f"n:{second - 2}"])
        rate = fleet_rate(*(int(c or 0) for c in counts))
        settling = record.get("state", "closed") == "closed" and now_ms - int(record.get("at", 0)) < RATE_AFTER_CLOSE_MS
        if settling:
            rate = max(rate, float(record.get("rate", 0)))  # as the EVIDENCE script does just after a close
        window = rule.window(rate)
        parsed = [(parse_report(str(entry)), float(at)) for entry, at in cast(list[tuple[str, float]], reports)]
        failing = sorted({report.instance for report, _ in parsed})
        tally = rule.tally((report for report, at in parsed if at >= now_ms - window * 1000), rate)
        is_open = record.get("state") == "open"
        states.append(EndpointState(
            endpoint, "open" if is_open else "closed",
            max(0.0, (int(record.get("until", 0)) - now_ms) / 1000.0) if is_open else 0.0,
            int(record.get("timeout", 0)) / 1000.0, str(record.get("by", "")), str(record.get("cause", "")),
            holder, failing, members, tally.failures,
            rule.needed(rate, tally.calls, EVIDENCE_BATCH if settling else tally.wait), window))
    return states


async def fetch(config: FleetConfig) -> tuple[list[Member], list[EndpointState]]:
    client = make_client(config, TIMEOUT)
    keys = Keys(config.key_prefix)
    try:
        async with asyncio.timeout(TIMEOUT):
            members = await read_members(client, keys)
            return members, await read_endpoints(client, keys, endpoints_of(members), evidence_rule(config))
    finally:
        await close(client)


async def fetch_backlogs(config: FleetConfig, endpoints: list[str]) -> list[Backlog]:
    """The handoff backlog per endpoint (sidecar/fleet/handoff.py); binary replies: entries carry payloads."""
    client = make_client(config, TIMEOUT, decode_responses=False)
    try:
        async with asyncio.timeout(TIMEOUT):
            return await read_backlogs(client, Keys(config.key_prefix), endpoints, time.time())
    finally:
        await client.aclose()


def as_json(config: FleetConfig, members: list[Member], endpoints: list[EndpointState]) -> dict[str, Any]:
    return {"redis": describe(config), "key_prefix": config.key_prefix,
            "members": [{"instance": m.instance, "heartbeat_age": round(m.age, 3),
                         **{k: v for k, v in m.info.items() if k != "instance"}} for m in members],
            "endpoints": {e.endpoint: {k: v for k, v in asdict(e).items() if k != "endpoint"} for e in endpoints}}


def endpoint_lines(endpoints: list[EndpointState]) -> list[str]:
    lines = [f"{'ENDPOINT':<32} {'STATE':<7} {'OPEN FOR':>8} {'CAUSE':<8} {'BY':<20} {'PROBER':<20} FAILING"]
    for e in endpoints:
        open_for = f"{e.open_for:.1f}s" if e.state == "open" else "-"
        failing = f"{e.failures}/{e.needed} in {e.window:.2f}s, {len(e.failing)}/{e.members} members"
        if e.failing:
            failing += ": " + ", ".join(e.failing)
        lines.append(f"{e.endpoint:<32} {e.state:<7} {open_for:>8} {e.cause or '-':<8} {e.opened_by or '-':<20} "
                     f"{e.prober or '-':<20} {failing}")
    return lines


def as_table(config: FleetConfig, members: list[Member], endpoints: list[EndpointState]) -> str:
    lines = [f"fleet at {describe(config)} (prefix {config.key_prefix}): {len(members)} member(s)", ""]
    header = f"{'INSTANCE':<28} {'AGE':>6} {'VERSION':<9} {'EXPORTER':<18} {'QUEUE':>11} {'LVL':>3}  BREAKERS"
    lines.append(header)
    for member in members:
        exporters = member.info.get("exporters") or {"-": {}}
        for i, (name, detail) in enumerate(sorted(exporters.items())):
            breakers = ", ".join(f"{ep}={state}" for ep, state in sorted((detail.get("breakers") or {}).items()))
            queue = f"{detail.get('queue_size', '-')}/{detail.get('queue_capacity', '-')}"
            first = i == 0
            lines.append(f"{member.instance if first else '':<28} {f'{member.age:.1f}s' if first else '':>6} "
                         f"{str(member.info.get('version', '')) if first else '':<9} {name:<18} {queue:>11} "
                         f"{detail.get('degradation_level', '-')!s:>3}  {breakers}")
    if endpoints:
        lines += ["", *endpoint_lines(endpoints)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = fleet_config(args)
    except FleetStatusError as exc:
        print(f"otlp-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        members, endpoints = asyncio.run(fetch(config))
        backlogs = asyncio.run(fetch_backlogs(config, [e.endpoint for e in endpoints]))
    except FAILURES as exc:
        print(f"otlp-sidecar: fleet store {describe(config)} unreachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps({**as_json(config, members, endpoints), "handoff": backlog_json(backlogs)},
                         indent=2, sort_keys=True))
    else:
        print(as_table(config, members, endpoints) + ("\n\n" + "\n".join(backlog_lines(backlogs)) if backlogs else ""))
    return 0
