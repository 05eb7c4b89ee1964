"""Test helpers: private redis-server processes, free ports, state dumps."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis

INSTALL_HINT = (
    "integration tests need a Redis server: none answers on 127.0.0.1:6379 and "
    "no redis-server binary is on PATH. Install one (apt-get install redis-server) "
    "or point TEST_REDIS_URL at a server the tests may use."
)


# The contract's status -> message table (API.md section 5), restated from
# the contract rather than imported from stat_service.errors, which it checks.
MESSAGES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_ping(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM a child process, SIGKILL it if it is still there after timeout."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A throwaway redis-server on a free loopback port, stopped by pid."""

    def __init__(self, *extra_args: str, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="stat-redis-")
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        log_path = os.path.join(self.dir, "redis.log")
        with open(log_path, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if redis_ping(self.url, timeout=0.2):
                return self
            if self.proc.poll() is not None:
                with open(log_path, errors="replace") as log:
                    said = log.read()[-600:]
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with "
                    f"{self.proc.returncode}: {said}"
                )
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def dump(client, prefix: str) -> dict:
    """Everything stored under ``prefix``: key -> (type, content)."""
    state = {}
    for key in client.scan_iter(match=prefix + "*", count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "zset":
            content = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            content = client.hgetall(key)
        else:
            content = client.dump(key)
        state[key] = (kind, content)
    return state


def delete_prefix(client, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


def close_client(client) -> None:
    """Close a client, and for a RedisCluster also what its close() leaves
    open (redis-py 8.1): the connection to its seed node, and connections of
    the node pools a long SCAN used. Their sockets' ResourceWarning would
    later fail whichever test runs when the garbage collector finds them
    (filterwarnings = error)."""
    client.close()
    manager = getattr(client, "nodes_manager", None)
    if manager is None:
        return
    for nodes in (manager.nodes_cache, manager.startup_nodes):
        for node in nodes.values():
            if node.redis_connection is not None:
                # close() leaves pooled connections of a multi-round SCAN
                node.redis_connection.connection_pool.disconnect()
