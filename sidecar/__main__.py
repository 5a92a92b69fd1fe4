"""Command line: `python -m sidecar [run] --config FILE`, `validate --config FILE`, and the operator
commands that talk to a running sidecar's admin API: `status`, `deadletters list|replay`,
`breaker reset`, `drain` (sidecar/admin/client.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_CONFIG = 2
EXIT_RUNTIME = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otlp-sidecar",
        description="OTLP resilience sidecar: put it between applications and the OpenTelemetry Collector.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the sidecar (the default)")
    run.add_argument("--config", required=True, help="Collector-style YAML file")
    run.add_argument("--recover", action="store_true",
                     help="move an unreadable queue database aside instead of refusing to start")
    validate = sub.add_parser("validate", help="check a configuration file without starting")
    validate.add_argument("--config", required=True)
    _admin_commands(sub)
    return parser


ADMIN_COMMANDS = ("status", "deadletters", "breaker", "drain")


def _admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="admin API host:port (default: $SIDECAR_ADMIN_ENDPOINT, "
                                           "else 127.0.0.1:4320)")
    parser.add_argument("--token", help="bearer token (default: $SIDECAR_ADMIN_TOKEN)")
    parser.add_argument("--config", help="take the admin endpoint and token from this sidecar configuration")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="queues, breakers, error rates and hotspots of a running sidecar")
    _admin_arguments(status)
    status.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                        help="a live view refreshed every SECONDS (default 2) until Ctrl-C; with --json, "
                             "one JSON document per refresh")
    status.add_argument("--count", type=int, default=None, metavar="N", help="with --watch: stop after N refreshes")
    status.add_argument("--top", type=int, default=10, metavar="N", help="error hotspots to show (default 10)")
    status.add_argument("--window", type=int, default=5, choices=range(1, 16), metavar="MINUTES",
                        help="count the hotspots over the last MINUTES, 1 to 15 (default 5)")
    status.add_argument("--fleet", action="store_true",
                        help="list the whole fleet from its Redis (extensions.fleet) instead of one sidecar")
    status.add_argument("--redis", help="with --fleet: the fleet's Redis URL (default: $SIDECAR_FLEET_ENDPOINT, "
                                        "or extensions.fleet of --config)")
    status.add_argument("--key-prefix", help="with --fleet: the fleet's key prefix (default: the config's, "
                                             "else otlp-sidecar:)")

    dead = sub.add_parser("deadletters", help="list or replay dead letters")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="list dead letters, oldest first")
    _admin_arguments(listing)
    listing.add_argument("--exporter", default="", help="one exporter (default: all)")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    replay = dead_sub.add_parser("replay", help="put dead letters back into their sending queue")
    _admin_arguments(replay)
    replay.add_argument("--exporter", default="",
                        help="one exporter (default: all; required with --ids when there are several)")
    replay.add_argument("--ids", type=int, nargs="+", default=[], help="dead-letter ids (default: all)")
    replay.add_argument("--include-partial", action="store_true",
                        help="replay partial successes too (skipped by default: the upstream already accepted "
                             "their other items, which a replay delivers again)")

    breaker = sub.add_parser("breaker", help="circuit breaker actions")
    breaker_sub = breaker.add_subparsers(dest="action", required=True)
    reset = breaker_sub.add_parser("reset", help="close circuit breakers now")
    _admin_arguments(reset)
    reset.add_argument("--exporter", default="", help="one exporter (default: all)")
    reset.add_argument("--upstream", default="", help="one upstream endpoint of the exporter (default: all)")

    drain = sub.add_parser("drain", help="wait until the sending queues are empty (exit 1 if not in time)")
    _admin_arguments(drain)
    drain.add_argument("--exporter", default="", help="one exporter (default: all)")
    drain.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")


def _normalise(argv: list[str]) -> list[str]:
    """`otlp-sidecar --config f.yaml` means `run --config f.yaml`, as the issue asks."""
    commands = {"run", "validate", *ADMIN_COMMANDS, "-h", "--help"}
    if not argv or argv[0] not in commands:
        return ["run", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args_list = _normalise(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(args_list)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "status" and args.fleet:
        from sidecar.fleet.status import run as run_fleet_status

        return run_fleet_status(args)
    if args.command in ADMIN_COMMANDS:
        from sidecar.admin.client import run as run_admin_command

        return run_admin_command(args)
    return _run(args.config, args.recover)


def _validate(path: str) -> int:
    from sidecar.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    pipelines = ", ".join(config.service.pipelines)
    print(f"{path}: configuration is valid (pipelines: {pipelines}; exporters: {', '.join(config.exporters)})")
    return 0


def _run(path: str, recover: bool) -> int:
    import asyncio

    from sidecar import runtime
    from sidecar.config import ConfigError, load_config

    runtime.tune_malloc()
    try:
        runtime.require_upb()
    except runtime.RuntimeRequirementError as exc:
        print(f"otlp-sidecar: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    from sidecar.service import StartupError, run_service
    from sidecar.telemetry.logs import setup_logging

    setup_logging(config.service.telemetry.logs.level, config.service.telemetry.logs.encoding)
    runtime.install_uvloop()
    try:
        return asyncio.run(run_service(config, recover=recover, config_path=path))
    except StartupError as exc:
        print(f"otlp-sidecar: cannot start: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
