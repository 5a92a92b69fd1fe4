"""`python -m sidecar status --fleet [--json]`: the fleet as its heartbeats in Redis describe it.

Where: `--redis URL` (default `$SIDECAR_FLEET_ENDPOINT`), or `--config FILE` to take
`extensions.fleet` (endpoint, password, key_prefix) from a sidecar's own configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import msgspec

from sidecar.config.schema import FleetConfig
from sidecar.fleet.connection import FAILURES, make_client, redacted
from sidecar.fleet.keys import Keys
from sidecar.fleet.membership import Member, read_members

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2
TIMEOUT = 5.0


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


async def fetch(config: FleetConfig) -> list[Member]:
    client = make_client(config, TIMEOUT)
    try:
        async with asyncio.timeout(TIMEOUT):
            return await read_members(client, Keys(config.key_prefix))
    finally:
        await client.aclose()


def as_json(config: FleetConfig, members: list[Member]) -> dict[str, Any]:
    return {"redis": redacted(config.endpoint), "key_prefix": config.key_prefix,
            "members": [{"instance": m.instance, "heartbeat_age": round(m.age, 3),
                         **{k: v for k, v in m.info.items() if k != "instance"}} for m in members]}


def as_table(config: FleetConfig, members: list[Member]) -> str:
    lines = [f"fleet at {redacted(config.endpoint)} (prefix {config.key_prefix}): {len(members)} member(s)", ""]
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
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = fleet_config(args)
    except FleetStatusError as exc:
        print(f"otlp-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        members = asyncio.run(fetch(config))
    except FAILURES as exc:
        print(f"otlp-sidecar: fleet store {redacted(config.endpoint)} unreachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(as_json(config, members), indent=2, sort_keys=True))
    else:
        print(as_table(config, members))
    return 0
