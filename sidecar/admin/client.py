"""The operator commands that talk to a running sidecar's admin API (`python -m sidecar status` etc.;
their arguments are defined in sidecar/__main__.py).

Where: `--endpoint` (default `$SIDECAR_ADMIN_ENDPOINT`, else 127.0.0.1:4320), or `--config FILE`
to take `extensions.admin.endpoint` and `.token` from the sidecar's own configuration. The token:
`--token`, else `$SIDECAR_ADMIN_TOKEN` (keeps it out of the process list), else the config's.

Every failure is one line on stderr and exit code 1: the admin API unreachable, the token
refused, an unknown exporter or endpoint, a deadline exceeded.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import grpc

from sidecar.admin import status as render
from sidecar.admin.v1 import admin_pb2 as pb
from sidecar.admin.v1 import admin_pb2_grpc as pb_grpc

DEFAULT_ENDPOINT = "127.0.0.1:4320"
CALL_TIMEOUT = 10.0
EXIT_ERROR = 1


class AdminError(Exception):
    """A one-line reason the command failed."""




# ------------------------------------------------------------------ connection


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    endpoint = args.endpoint
    token = args.token or os.environ.get("SIDECAR_ADMIN_TOKEN") or None
    if args.config:
        from sidecar.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise AdminError(f"{args.config}: invalid configuration ({len(exc.errors)} error(s))") from None
        admin = config.extensions.admin
        if admin is None:
            raise AdminError(f"{args.config}: no extensions.admin configured")
        endpoint = endpoint or admin.endpoint
        token = token or admin.token
    endpoint = endpoint or os.environ.get("SIDECAR_ADMIN_ENDPOINT") or DEFAULT_ENDPOINT
    host, _, port = endpoint.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):  # a listen address: talk to it on loopback
        endpoint = f"127.0.0.1:{port}"
    return endpoint, token


class Client:
    def __init__(self, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = grpc.insecure_channel(endpoint, options=[("grpc.enable_retries", 0)])
        self.stub = pb_grpc.AdminStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise AdminError(_describe(exc, self.endpoint)) from None


def _describe(exc: grpc.RpcError, endpoint: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        reason = "connection refused" if "connection refused" in details.lower() else (
            details.splitlines()[0] if details else "unavailable")
        return (f"cannot reach the admin API at {endpoint}: {reason} (is the sidecar running, with `admin` "
                f"in service.extensions?)")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return f"the admin API at {endpoint} refused the call: {details} (pass --token or $SIDECAR_ADMIN_TOKEN)"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the admin API at {endpoint} did not answer in time"
    name = code.name if code is not None else "error"
    return f"admin API: {name.lower()}: {details}"


# ------------------------------------------------------------------ commands


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Run one admin command; returns the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        endpoint, token = _target(args)
        client = Client(endpoint, token)
        try:
            return _dispatch(client, args, out, sleep)
        finally:
            client.close()
    except AdminError as exc:
        print(f"otlp-sidecar: {exc}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0


def _dispatch(client: Client, args: argparse.Namespace, out: TextIO, sleep: Callable[[float], None]) -> int:
    command = args.command
    if command == "status":
        return _status(client, args, out, sleep)
    if command == "deadletters" and args.action == "list":
        listed = client.call("ListDeadLetters", pb.ListDeadLettersRequest(
            exporter=args.exporter, limit=max(0, args.limit), offset=max(0, args.offset)))
        _emit(out, args, listed, lambda: render.render_dead_letters(listed, time.time(), max(0, args.offset)))
        return 0
    if command == "deadletters" and args.action == "replay":
        replayed = client.call("ReplayDeadLetters", pb.ReplayDeadLettersRequest(
            exporter=args.exporter, ids=args.ids, include_partial=args.include_partial))
        _emit(out, args, replayed, lambda: render.render_replay(replayed))
        return 0
    if command == "breaker":
        reset = client.call("ResetBreaker", pb.ResetBreakerRequest(exporter=args.exporter, endpoint=args.upstream))
        _emit(out, args, reset, lambda: render.render_reset(reset))
        return 0
    if command == "drain":
        timeout = max(0.001, args.timeout)
        drained = client.call("Drain", pb.DrainRequest(exporter=args.exporter, timeout_seconds=timeout),
                              timeout=timeout + CALL_TIMEOUT)
        _emit(out, args, drained, lambda: render.render_drain(drained))
        return 0 if drained.drained else EXIT_ERROR
    raise AdminError(f"unknown command {command!r}")


def _emit(out: TextIO, args: argparse.Namespace, message: Any, text: Callable[[], str]) -> None:
    if args.json:
        out.write(json.dumps(render.to_plain(message), sort_keys=True) + "\n")
    else:
        out.write(text())
    out.flush()


def _status(client: Client, args: argparse.Namespace, out: TextIO, sleep: Callable[[float], None]) -> int:
    request = pb.GetStatusRequest(top_hotspots=max(0, args.top), hotspot_window_minutes=max(0, args.window))
    if args.watch is not None and not args.json:
        return _watch(client, request, args, out, sleep)
    refreshes = 0
    while True:
        status = client.call("GetStatus", request)
        _emit(out, args, status, functools.partial(_status_text, status))
        refreshes += 1
        if args.watch is None or (args.count is not None and refreshes >= args.count):
            return 0
        sleep(max(0.1, args.watch))


def _watch(client: Client, request: pb.GetStatusRequest, args: argparse.Namespace, out: TextIO,
           sleep: Callable[[float], None]) -> int:
    """The live view (sidecar/admin/live.py): redrawn in place on a terminal, printed once per refresh
    into a pipe or a file."""
    from rich.console import Console
    from rich.live import Live

    from sidecar.admin.live import render_live

    console = Console(file=out)
    refreshes = 0
    live: Live | None = None
    try:
        while True:
            view = render_live(client.call("GetStatus", request), time.time())
            if console.is_terminal:
                if live is None:
                    live = Live(view, console=console, auto_refresh=False, screen=False)
                    live.start()
                live.update(view, refresh=True)
            else:
                console.print(view)
                console.print()
            refreshes += 1
            if args.count is not None and refreshes >= args.count:
                return 0
            sleep(max(0.1, args.watch))
    finally:
        if live is not None:
            live.stop()


def _status_text(status: pb.GetStatusResponse) -> str:
    return render.render_status(status, time.time())
