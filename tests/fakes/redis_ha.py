"""Highly available Redis for the fleet's tests, from real redis-server processes on free ports.

`RedisSentinelSet`: one primary, one replica and three sentinels (`redis-server <conf> --sentinel`,
quorum 2, a primary counted down after 1 s), failed over with SENTINEL FAILOVER or by killing the primary.
`RedisClusterSet`: three primaries with a replica each, made a cluster by `redis-cli --cluster create`
(node timeout 1 s), failed over with CLUSTER FAILOVER on a replica or by killing a primary.
Each test starts and stops its own; nothing is persisted.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from tests.fakes.redis_server import RedisServer
from tests.sidecar_process import free_port

MASTER_NAME = "fleet"
DOWN_AFTER_MS = 1000


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout}s")


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2)


def role(port: int) -> str:
    with client(port) as c:
        return str(c.execute_command("ROLE")[0])


def cluster_state(port: int) -> str:
    with client(port) as c:
        info = c.execute_command("CLUSTER", "INFO")
    text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in dict(info).items())
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


class _ProcessSet(ABC):
    """start() on entering (stop() too if it fails half-way), stop() on leaving."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RedisSentinelSet(_ProcessSet):
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary = RedisServer(workdir / "a")
        self.replica = RedisServer(workdir / "b", extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinels: list[RedisServer] = []
        for i in range(3):
            folder = workdir / f"sentinel-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n")
            self.sentinels.append(RedisServer(folder, config_file=conf, extra_args=["--sentinel"]))

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def master_port(self, via: int = 0) -> int:
        """The primary's port as the sentinel `via` names it."""
        with client(self.sentinels[via].port) as c:
            host_port = c.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(host_port[1])

    def start(self) -> RedisSentinelSet:
        self.primary.start()
        self.replica.start()
        wait_until(lambda: client(self.replica.port).info("replication")["master_link_status"] == "up", 15,
                   "replication")
        for sentinel in self.sentinels:
            sentinel.start()

        def all_know_the_replica_and_each_other() -> bool:
            for sentinel in self.sentinels:
                with client(sentinel.port) as c:
                    state = c.sentinel_master(MASTER_NAME)
                    if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                        return False
            return True

        wait_until(all_know_the_replica_and_each_other, 20, "sentinel discovery")
        return self

    def failover(self, timeout: float = 20.0, via: int = 0) -> float:
        """SENTINEL FAILOVER through sentinel `via` (the replica becomes primary); seconds until it names
        the new one and that accepts writes."""
        old = self.master_port(via)
        started = time.monotonic()
        with client(self.sentinels[via].port) as c:
            c.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        wait_until(lambda: self.master_port(via) != old and role(self.master_port(via)) == "master", timeout,
                   "sentinel failover")
        return time.monotonic() - started

    def kill_primary(self, timeout: float = 30.0) -> float:
        """SIGKILL the primary; seconds until the sentinels promoted the replica."""
        old = self.master_port()
        victim = self.primary if self.primary.port == old else self.replica
        started = time.monotonic()
        victim.kill()
        wait_until(lambda: self.master_port() != old and role(self.master_port()) == "master", timeout,
                   "sentinel failover after the primary died")
        return time.monotonic() - started

    def stop(self) -> None:
        for server in [*self.sentinels, self.primary, self.replica]:
            server.kill()


class RedisClusterSet(_ProcessSet):
    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for i in range(primaries * (1 + replicas)):
            folder = workdir / f"node-{i}"
            port = free_port()
            self.nodes.append(RedisServer(folder, port=port, extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", str(DOWN_AFTER_MS), "--cluster-port", str(free_port())]))

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (Debian package redis-tools)")
        subprocess.run([cli, "--cluster", "create", *self.addresses, "--cluster-replicas", str(self.replicas),
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: self._healthy() and self._replicated(), 30, "cluster state ok, replicas attached")
        return self

    def _replicated(self) -> bool:
        with client(self.nodes[0].port) as c:
            shards: Any = c.execute_command("CLUSTER", "SLOTS")
        return all(len(shard) - 3 >= self.replicas for shard in shards) and all(
            client(n.port).info("replication").get("master_link_status", "up") == "up" for n in self.nodes)

    def _healthy(self) -> bool:
        return all(cluster_state(node.port) == "ok" for node in self._live())

    def _live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def owner(self, key: str) -> tuple[RedisServer, RedisServer | None]:
        """The primary that serves `key`'s slot, and one of its replicas (None while it has none)."""
        for node in self._live():
            with client(node.port) as c:
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
                shards: Any = c.execute_command("CLUSTER", "SLOTS")
            break
        for first, last, primary, *replicas in shards:
            if int(first) <= slot <= int(last):
                by_port = {n.port: n for n in self.nodes}
                return by_port[int(primary[1])], by_port[int(replicas[0][1])] if replicas else None
        raise RuntimeError(f"no node serves slot {slot}")

    def failover(self, key: str, timeout: float = 20.0) -> float:
        """CLUSTER FAILOVER on the replica of `key`'s primary; seconds until it serves the slot."""
        _, replica = self.owner(key)
        assert replica is not None, f"{key}'s primary has no replica to fail over to"
        started = time.monotonic()
        with client(replica.port) as c:
            c.execute_command("CLUSTER", "FAILOVER")
        wait_until(lambda: role(replica.port) == "master" and self.owner(key)[0] is replica, timeout,
                   "cluster failover")
        return time.monotonic() - started

    def kill_primary(self, key: str, timeout: float = 30.0) -> float:
        """SIGKILL the primary of `key`'s slot; seconds until its replica serves the slot."""
        primary, replica = self.owner(key)
        assert replica is not None, f"{key}'s primary has no replica to fail over to"
        started = time.monotonic()
        primary.kill()
        wait_until(lambda: role(replica.port) == "master" and self.owner(key)[0] is replica, timeout,
                   "cluster failover after the primary died")
        return time.monotonic() - started

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
