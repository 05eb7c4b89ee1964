"""A real Redis Cluster for the tests: 3 primaries, 1 replica each, on loopback.

Started with the ``redis-server`` binary and ``redis-cli --cluster create``,
stopped by pid. Failover is made fast (``cluster-node-timeout`` 1 s) so the
failover tests run in seconds.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import redis
from redis.crc import key_slot

from tests.support import INSTALL_HINT, RedisServer

NODE_TIMEOUT_MS = 1000
NODE_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
    # A replica that lost its primary is promoted however stale it is.
    "--cluster-replica-validity-factor", "0",
)  # fmt: skip


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randrange(10000, 22768)  # bus port below the ephemeral range
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """Six redis-server processes joined into one cluster."""

    def __init__(self, *extra_args: str, nodes: int = 6):
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError(INSTALL_HINT)
        self.cli = cli
        self.extra_args = extra_args
        self.servers = self._new_servers(nodes)

    def _new_servers(self, nodes: int) -> list[RedisServer]:
        ports: set[int] = set()
        while len(ports) < nodes:
            port = _cluster_port()
            # Another node's port must be neither this one nor its bus port.
            if not {port, port + 10000, port - 10000} & ports:
                ports.add(port)
        return [RedisServer(*NODE_ARGS, *self.extra_args, port=p) for p in ports]

    def _start_servers(self, attempts: int = 3) -> None:
        """Start every node; a port taken meanwhile means fresh ports, again."""
        for attempt in range(attempts):
            try:
                for server in self.servers:
                    server.start()
                return
            except RuntimeError:
                self.cleanup()  # never leave the started nodes running
                if attempt == attempts - 1:
                    raise
                self.servers = self._new_servers(len(self.servers))

    @property
    def url(self) -> str:
        """Any node's URL: the service finds the rest by itself."""
        return self.servers[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        self._start_servers()
        addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        self.wait_healthy(timeout, replicated=True)
        return self

    def node(self, server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=2, decode_responses=True)

    def wait_healthy(self, timeout: float = 30.0, *, replicated=False) -> None:
        """Until every live node sees all slots served and three primaries
        (and, if ``replicated``, every primary has a replica attached)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.servers if s.proc is not None]
            if all(self._healthy(s) for s in live) and (
                not replicated or all(self.replicas_of(p) for p in self.primaries())
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become healthy in time")
            time.sleep(0.1)

    def wait_failover(self, dead: RedisServer, timeout: float = 30.0) -> None:
        """Until a replica has taken over every slot of the ``dead`` primary."""
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.servers if s.proc is not None]
            if all(self._healthy(s) and not self._owns(s, dead) for s in live):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover from port {dead.port} in time")
            time.sleep(0.1)

    def _owns(self, observer: RedisServer, dead: RedisServer) -> bool:
        """Whether ``observer`` still routes some slot to ``dead``."""
        try:
            with self.node(observer) as r:
                slots = r.execute_command("CLUSTER", "SLOTS")
        except redis.RedisError:
            return True
        return any(int(primary[1]) == dead.port for _, _, primary, *_ in slots)

    def _healthy(self, server: RedisServer) -> bool:
        try:
            with self.node(server) as r:
                info = r.cluster("info")
                return (
                    info["cluster_state"] == "ok"
                    and int(info["cluster_slots_ok"]) == 16384
                    and int(info["cluster_size"]) == 3
                )
        except redis.RedisError:
            return False

    def role(self, server: RedisServer) -> str:
        with self.node(server) as r:
            return r.execute_command("ROLE")[0]

    def primaries(self) -> list[RedisServer]:
        return [
            s for s in self.servers if s.proc is not None and self.role(s) == "master"
        ]

    def primary_of(self, key: str) -> RedisServer:
        """The live server that serves ``key``'s slot as primary."""
        slot = key_slot(key.encode())
        live = next(s for s in self.servers if s.proc is not None)
        with self.node(live) as r:
            for start, end, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(s for s in self.servers if s.port == int(primary[1]))
        raise LookupError(f"no primary serves {key!r}")

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        with self.node(primary) as r:
            ports = {int(entry[1]) for entry in r.execute_command("ROLE")[2]}
        return [s for s in self.servers if s.port in ports]

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()
