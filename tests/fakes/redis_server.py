"""A real redis-server (the Debian package) on a free port, owned by one test: start, kill, restart.

Nothing is persisted (no RDB, no AOF): a restart after `kill` comes back empty, as a Redis that lost
its memory would, which is exactly what the sidecars must survive.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.sidecar_process import free_port


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None,
                 extra_args: list[str] | None = None, config_file: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # .ci/run installs it; a test needing it must fail loudly, not skip
            raise RuntimeError("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.password = password
        self.extra_args = extra_args or []  # e.g. --replicaof, --cluster-enabled (tests/fakes/redis_ha.py)
        self.config_file = config_file  # a sentinel needs one it may rewrite
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.proc is not None and self.proc.poll() is None:
            # A second server on the same port would fail to bind while the first answered its PING, and
            # the first would outlive the test.
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        first = [str(self.config_file)] if self.config_file else []
        args = [self.binary, *first, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
                "--protected-mode", "no", "--logfile", str(self.log_path)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.logs()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer within {timeout}s: {self.logs()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server must die too
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing, as a stalled Redis would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
