"""Command line: `python -m sidecar [run] --config FILE`, `validate --config FILE`, dead-letter tools."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from sidecar.config import ConfigError, load_config

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
    return parser


def _normalise(argv: list[str]) -> list[str]:
    """`otlp-sidecar --config f.yaml` means `run --config f.yaml`, as the issue asks."""
    commands = {"run", "validate", "deadletters", "status", "-h", "--help"}
    if not argv or argv[0] not in commands:
        return ["run", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args_list = _normalise(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(args_list)
    if args.command == "validate":
        return _validate(args.config)
    return _run(args.config, args.recover, args_list)


def _validate(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    pipelines = ", ".join(config.service.pipelines)
    print(f"{path}: configuration is valid (pipelines: {pipelines}; exporters: {', '.join(config.exporters)})")
    return 0


def _run(path: str, recover: bool, argv: list[str]) -> int:
    from sidecar import runtime

    runtime.reexec_with_malloc_tuning(argv)
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
